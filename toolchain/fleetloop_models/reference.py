"""Shipped reference packages: tiers a build profile takes ready-made instead of training them.

The foundation tiers are trained at a scale two CPU cores cannot reach in a demo's time (profiles
``foundation`` and ``detection-foundation``, minutes on one GPU). What that training gave is shipped
in ``fleetloop_models/reference/<profile>/<tier>/``, signed by the FleetLoop reference key
(``reference/keys/*.pub``); a profile's ``shipped`` section names, per tier, the profile that trained
it. Installing one is loading a package like any other: the signature against the reference keys,
every file's size and sha256, and that it is what the profile expects (task, tier, the training
profile). A package failing any check is refused with the reason, and nothing is installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fleetloop_core.contracts.manifest import Manifest, intact_package, load_manifest, verify_files
from fleetloop_core.errors import ModelError
from fleetloop_core.signing import TrustedKeys, verify_package

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def shipped_package(profile_name: str, tier: str, root: Path = REFERENCE_DIR) -> Path:
    """Return the directory of the shipped ``tier`` package that build profile ``profile_name`` trained."""
    directory = root / profile_name / tier
    if not (directory / "manifest.json").is_file():
        raise ModelError(f"{directory}: no shipped {tier} package of profile {profile_name!r}")
    return directory


def reference_keys(root: Path = REFERENCE_DIR) -> TrustedKeys:
    """Return the public keys that sign the shipped packages."""
    return TrustedKeys.from_directory(root / "keys")


def install_shipped(
    source: Path, target: Path, *, task: str, tier: str, trained_by: str, trusted: TrustedKeys | None = None
) -> Manifest:
    """Verify the shipped package in ``source`` and copy it to ``target`` (unless already there); return its manifest.

    ``trained_by``: the build profile the package must say trained it.
    """
    manifest = verify_package(source, trusted or reference_keys())
    expected = {"task": task, "tier": tier, "training profile": trained_by}
    found = {"task": manifest.task, "tier": manifest.tier, "training profile": manifest.training.get("profile")}
    for what, value in expected.items():
        if found[what] != value:
            raise ModelError(f"{source}: shipped package's {what} is {found[what]!r}, expected {value!r}")
    if _installed(target, manifest):
        return manifest
    staging = target.with_name(target.name + ".installing")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    verify_files(load_manifest(staging), staging)  # what was copied is what was verified
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return manifest


def _installed(target: Path, manifest: Manifest) -> bool:
    """Return whether ``target`` holds this very package (same signature, every file intact)."""
    present = intact_package(target)
    return present is not None and present.signature is not None and present.signature == manifest.signature


REPRODUCE = {
    "classification": "fleetloop models build --profile foundation --out OUT",
    "detection": "fleetloop models build --profile detection-foundation --out OUT",
}


def training_report(directory: Path) -> str:
    """Return the Markdown training report of a package: how it was trained, how to train it again, its scores."""
    manifest = load_manifest(directory)
    training, metrics = manifest.training, manifest.metrics
    lines = [
        f"# {manifest.name} {manifest.version}: training report",
        "",
        f"- task {manifest.task}, tier {manifest.tier}, architecture `{manifest.architecture}`, "
        f"{manifest.parameters:,} parameters",
        f"- data: {training.get('data')}; {training.get('samples')} frames x {training.get('epochs')} epochs",
        f"- trained on `{training.get('device')}` in {training.get('seconds')} s (frames rendered in "
        f"{training.get('render_seconds')} s); final loss {training.get('final_loss')}; seed {training.get('seed')}",
        f"- build key `{training.get('build_key')}` (profile `{training.get('profile')}` of config/models.yaml)",
        "",
        "Reproduce (on a machine with a CUDA GPU; the CPU works too, at hours instead of minutes):",
        "",
        "```",
        f"{REPRODUCE[manifest.task]}  # then: fleetloop models sign OUT/T1 --key <the reference key>",
        "```",
        "",
        "GPU kernels are not bit-reproducible (cuDNN picks kernels by speed): a rebuild follows the same",
        "recipe on the same frames but gives other bytes (its scores have not been measured twice). The",
        "scores below are of this package, on held-out frames the training never saw (field: items never",
        "streamed, at the fleet's sites; lab: lab items outside the training split).",
        "",
        "| test set | score |",
        "| --- | ---: |",
    ]
    lines += [f"| `{key}` | {value} |" for key, value in sorted(metrics.items()) if key.count(".") <= 1]
    per_site_class = sorted(key for key in metrics if key.count(".") == 2)
    if per_site_class:
        lines += ["", "Per class and site:", "", "| test set | score |", "| --- | ---: |"]
        lines += [f"| `{key}` | {metrics[key]} |" for key in per_site_class]
    return "\n".join(lines) + "\n"
