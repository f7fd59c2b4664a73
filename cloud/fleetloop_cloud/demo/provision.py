"""What every demo fleet starts from and how new models reach it: the run's signing keys, the signed
round-0 edge packages, and the canary-first rollout of a round's approved packages."""

from __future__ import annotations

import shutil
from pathlib import Path

from fleetloop_cloud.fleet_jobs import RolloutConfig

# rounds are minutes here: a canary that has not reported in 3 minutes (the fleet in 5) aborts the rollout
DEMO_ROLLOUT = RolloutConfig(canary_count=1, canary_timeout_s=180.0, fleet_timeout_s=300.0, poll_s=0.25)


def signing_keys(out: Path) -> tuple[Path, Path]:
    """Return (private signing key file, trusted public keys directory), made for this run under ``out/keys``."""
    from fleetloop_core.signing import generate_keypair, key_id

    trusted = out / "keys" / "trusted"
    trusted.mkdir(parents=True, exist_ok=True)
    private, public = generate_keypair()
    private_path = out / "keys" / "demo-signing.pem"
    private_path.write_bytes(private)
    private_path.chmod(0o600)
    (trusted / f"{key_id(public)}.pub").write_bytes(public)
    return private_path, trusted


def sign_round0_packages(models: Path, out: Path, private_pem: bytes) -> dict[str, Path]:
    """Return signed copies of the reference edge tiers (T3, T4): what robots are provisioned with."""
    from fleetloop_core.signing import sign_package

    packages = {}
    for tier in ("T3", "T4"):
        target = out / tier
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(models / tier, target, ignore=shutil.ignore_patterns(".*"))
        sign_package(target, private_pem)
        packages[tier] = target
    return packages


def roll_out(jobs, loop, robots: list[str], entries: list[dict], job_prefix: str, on_record=None) -> list[dict]:
    """Roll out a round's approved packages (the loop's registry ``entries``) to ``robots``; return the records
    (``on_record`` gets each as its rollout ends)."""
    from fleetloop_cloud.deploy import deploy_approved

    store = loop.config.store
    return deploy_approved(jobs, loop.registry.store, store, robots, entries, job_prefix, DEMO_ROLLOUT, on_record)
