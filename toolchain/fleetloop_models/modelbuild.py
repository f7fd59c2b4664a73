"""``fleetloop models build``: train the four reference tiers of a task on Fashion-MNIST and export them.

T1 (foundation, cloud) learns from domain-randomised frames (many random sites, never a field
site); T2 (domain teacher, cloud), T3 (fleet edge) and T4 (specialised edge) learn from clean
lab frames. Each tier has its own architecture and input size; each is exported to ONNX with a
manifest (input spec, labels, sha256, parameter count, training summary, test metrics).

One build for every task: the profile's ``task`` picks the trainer (``fleetloop_models.trainers``)
that renders the task's frames, fits the network, writes the package in the task's output layout
and scores it (classification: accuracy; detection: mAP@0.5 and mAP@0.5:0.95); this module
renders, caches, names, writes and measures alike for all.

Builds are cached: the manifest records a key over the profile, the data files and the code;
a rebuild with the same key is a no-op.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Literal, Optional, Sequence, TypeGuard

import numpy as np
from pydantic import Field

from fleetloop_sim import dataset
from fleetloop_core.config import ConfigModel, default_config_path, read_yaml, validate
from fleetloop_core.errors import ConfigError
from fleetloop_core.contracts.manifest import Tier, intact_package, write_manifest
from fleetloop_models import build_frames

from fleetloop_models.trainers import Trainer, registration, trainer_for
from fleetloop_sim.sim_tasks import DetectionSet, LabelledSet

log = logging.getLogger(__name__)

TIERS: tuple[Tier, ...] = ("T1", "T2", "T3", "T4")
TIER_NAMES: dict[Tier, str] = {"T1": "foundation", "T2": "domain-teacher", "T3": "fleet-edge", "T4": "specialised-edge"}


def is_tier(name: str) -> TypeGuard[Tier]:
    """Return whether ``name`` is one of the four tiers (T1..T4)."""
    return name in TIERS


class TierBuild(ConfigModel):
    """How one tier is built."""

    arch: str
    input_size: int = Field(ge=16, le=640)
    data: Literal["lab", "randomised"] = "lab"
    samples: int = Field(gt=0)
    epochs: int = Field(gt=0, le=100)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=3e-3, gt=0)
    layout: Optional[Literal["yolo", "boxes_scores", "boxes_scores_labels"]] = None  # detection profiles only
    weights: bool = True  # false: ship the ONNX graph only, no torch weights.pt (no warm start from it)


class BuildProfile(ConfigModel):
    """One build profile of config/models.yaml."""

    frame_height: int = Field(default=128, ge=32, le=480)
    frame_width: int = Field(default=128, ge=32, le=640)
    lab_frames: int = Field(gt=0)
    randomised_frames: int = Field(default=0, ge=0)
    randomised_sites: int = Field(default=64, gt=0)
    eval_frames: int = Field(default=500, gt=0)
    eval_sites: int = Field(default=4, gt=0)
    seed: int = 0
    tiers: dict[str, TierBuild]
    # tiers taken ready-made from a shipped, signed package (fleetloop_models.reference) instead of
    # being trained here: tier -> the build profile that trained it (``T1: foundation``)
    shipped: dict[str, str] = Field(default_factory=dict)
    task: Literal["classification", "detection"] = "classification"  # picks the trainer (fleetloop_models.trainers)
    max_items: int = Field(default=4, ge=1, le=16)  # detection: items per frame
    item_scale: tuple[float, float] = (0.2, 0.4)  # detection: of the shorter side
    # domain randomisation of the ``randomised`` frames: each random site's shift strength is drawn
    # from this range (0: the lab, a typical field site 0.8); ``uniform``: every item class equally
    # often (a foundation learns every class the lab holds items of), ``lab``: the lab's own prior
    randomised_strength: tuple[float, float] = (0.0, 1.2)
    randomised_prior: Literal["lab", "uniform"] = "lab"
    # render the training frames in pieces of this many frames, one process per core (0: one piece in
    # this process); each piece has its own seed, so the frames do not depend on the number of cores
    render_chunk: int = Field(default=0, ge=0)


def load_profile(name: str = "default", path: str | Path | None = None) -> BuildProfile:
    """Return build profile ``name`` from config/models.yaml (or ``path``)."""
    path = Path(path) if path else default_config_path("models.yaml")
    profiles = read_yaml(path).get("profiles")
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: missing section profiles")
    if name not in profiles:
        raise ConfigError(f"{path}: unknown profile {name!r} (known: {', '.join(profiles)})")
    profile = validate(BuildProfile, profiles[name], source=str(path), prefix=f"profiles.{name}")
    for section, named in (("tiers", profile.tiers), ("shipped", profile.shipped)):
        unknown = set(named) - set(TIERS)
        if unknown:
            raise ConfigError(
                f"{path}: profiles.{name}.{section}: unknown tier(s) {sorted(unknown)} (known: {', '.join(TIERS)})"
            )
    twice = set(profile.tiers) & set(profile.shipped)
    if twice:
        raise ConfigError(f"{path}: profiles.{name}: tier(s) {sorted(twice)} both built (tiers) and shipped")
    return profile


# the modules every task's build runs (under fleetloop_core/); each task adds its own (trainers.TRAINERS)
BUILD_CODE = (
    "fleetloop_models.zoo",
    "fleetloop_models.training",
    "fleetloop_models.modelbuild",
    "fleetloop_models.build_frames",
    "fleetloop_models.package_writer",
    "fleetloop_models.trainers",
    "fleetloop_sim.sim",
    "fleetloop_sim.sim_render",
    "fleetloop_sim.sim_tasks",
    "fleetloop_core.preprocess",
    "fleetloop_sim.dataset",
    "fleetloop_core.contracts.manifest",
)


def module_file(name: str) -> Path:
    """Return the source file of module ``name`` (found without importing it, beyond its parent packages)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ConfigError(f"build code fingerprint: module {name} not found")
    return Path(spec.origin)


def code_fingerprint(task: str) -> str:
    """Return a sha256 over the code that builds a ``task`` model (part of every build's cache key)."""
    digest = hashlib.sha256()
    for name in (*BUILD_CODE, *registration(task).code):
        digest.update(module_file(name).read_bytes())
    return digest.hexdigest()


def build_key(profile: BuildProfile, tier: str) -> str:
    """Return the cache key of one tier build: profile, data files and code (the shared and the task's)."""
    payload = {
        "tier": tier,
        "tier_build": profile.tiers[tier].model_dump(),
        "profile": profile.model_dump(exclude={"tiers"}),
        "data": dataset.fingerprint(),
        "code": code_fingerprint(profile.task),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cached(directory: Path, key: str) -> bool:
    manifest = intact_package(directory)
    return manifest is not None and manifest.training.get("build_key") == key


def _refuse_other_profiles(out_dir: Path, profile: BuildProfile, profile_name: str, tiers: Sequence[str]) -> None:
    """Refuse to replace a tier another build profile made in ``out_dir`` (``force`` replaces it).

    A rebuild of the same profile (its recipe or code changed) replaces its own tiers as before; what
    this stops is, e.g., a quick demo pointed at the default models retraining them in its small profile.
    """
    for tier in tiers:
        present = intact_package(out_dir / tier)
        held = present.training.get("profile") if present is not None else None
        expected = profile.shipped.get(tier, profile_name)
        if held is not None and held != expected:
            raise ConfigError(
                f"{out_dir / tier}: holds tier {tier} built by profile {held!r}; profile {profile_name!r} "
                f"would replace it with one built by {expected!r}: choose another directory for "
                f"{profile_name!r}, or replace it: fleetloop models build --profile {profile_name} "
                f"--out {out_dir} --force"
            )


def build_reference_models(
    out_dir: str | Path,
    profile_name: str = "default",
    config_path: str | Path | None = None,
    tiers: tuple[str, ...] | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Path]:
    """Build (or reuse from cache) the requested tiers (default: every tier the profile defines) under
    ``out_dir/<tier>``; return their dirs.

    Concurrent builds into the same ``out_dir`` (parallel test runs, two terminals) serialise on a
    lock file, and the second one finds the first one's cache.
    """
    import fcntl

    profile = load_profile(profile_name, config_path)  # a bad profile is said before anything is made
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out_dir, profile, profile_name, tiers, progress, force)


def _build_locked(
    out_dir: Path,
    profile: BuildProfile,
    profile_name: str,
    tiers: tuple[str, ...] | None,
    progress: bool,
    force: bool,
) -> dict[str, Path]:
    defined = (*profile.tiers, *profile.shipped)
    chosen = _defined_tiers(defined, profile_name, sorted(defined) if tiers is None else tiers)
    if not force:
        _refuse_other_profiles(out_dir, profile, profile_name, chosen)
    if any(t in profile.shipped for t in chosen):
        # imported here: it verifies signatures (cryptography), which a training container need not have
        from fleetloop_models import reference
    for tier in [t for t in chosen if t in profile.shipped]:
        trained_by = profile.shipped[tier]
        source = reference.shipped_package(trained_by, tier)
        manifest = reference.install_shipped(
            source, out_dir / tier, task=profile.task, tier=tier, trained_by=trained_by
        )
        log.info(
            "%s: shipped %s package %s %s (profile %s) verified",
            tier,
            profile.task,
            manifest.name,
            manifest.version,
            trained_by,
        )
    built = [t for t in chosen if t in profile.tiers]
    keys = {tier: build_key(profile, tier) for tier in built}
    todo = [t for t in built if force or not _cached(out_dir / t, keys[t])]
    for tier in built:
        if tier not in todo:
            log.info("%s: cached %s build %s is current, skipping", tier, profile.task, keys[tier][:12])
    if todo:
        trainer = trainer_for(profile.task)
        started = time.perf_counter()
        frames = build_frames.render_training_sets(
            trainer, profile, profile_name, {profile.tiers[t].data for t in todo}
        )
        render_seconds = time.perf_counter() - started
        tests = build_frames.TestSets.render(trainer, profile)
        for tier in todo:
            _build_tier(
                trainer, profile, profile_name, tier, frames, tests, keys[tier], render_seconds, out_dir, progress
            )
    return {t: out_dir / t for t in chosen}


def _defined_tiers(defined: Sequence[str], profile_name: str, tiers: Sequence[str]) -> list[Tier]:
    """Return ``tiers`` as tier names; a ConfigError names those the profile does not define."""
    missing = [t for t in tiers if t not in defined]
    if missing:
        raise ConfigError(f"profile {profile_name!r} does not define tier(s) {missing}")
    return [t for t in tiers if is_tier(t)]  # all of them: load_profile accepts known tiers only


def _build_tier(
    trainer: Trainer,
    profile: BuildProfile,
    profile_name: str,
    tier: Tier,
    frames: dict[str, LabelledSet | DetectionSet],
    tests: build_frames.TestSets,
    key: str,
    render_seconds: float,
    out_dir: Path,
    progress: bool,
) -> None:
    """Train one tier, write its package under ``out_dir/<tier>`` and add its test metrics."""
    spec = profile.tiers[tier]
    data = frames[spec.data]
    count = min(spec.samples, len(data))
    trained = trainer.train(tier, spec, data, count, profile, progress)
    report = trained.report
    info = {
        "build_key": key,
        "profile": profile_name,
        "samples": count,
        "epochs": spec.epochs,
        "seconds": round(report.seconds, 1),
        "render_seconds": round(render_seconds, 1),
        "final_loss": round(report.final_loss, 4),
        "device": report.device,
        "seed": trained.seed,
        **trained.info,
    }
    directory = out_dir / tier
    name = f"fleetloop-{tier.lower()}-{TIER_NAMES[tier]}"
    manifest = trainer.write(trained, directory, name, f"r0-{key[:8]}", tier, spec, info)
    metrics = evaluate(trainer, directory, tests)
    write_manifest(manifest.model_copy(update={"metrics": metrics}), directory)
    headline = trainer.metric
    log.info(
        "%s: trained %d samples x %d epochs in %.0f s; lab %s %.3f, field %s %.3f",
        tier,
        count,
        spec.epochs,
        report.seconds,
        headline,
        metrics[f"lab_test_{headline}"],
        headline,
        metrics[f"field_test_{headline}"],
    )


def evaluate(trainer: Trainer, directory: Path, tests: build_frames.TestSets) -> dict[str, float]:
    """Return the task's metrics of the exported model: lab test, each field site and their mean, 4 decimals."""
    model = trainer.load(directory)
    metrics: dict[str, float] = {f"lab_test_{k}": round(v, 4) for k, v in trainer.score(model, tests.lab).items()}
    per_site: dict[str, list[float]] = {}
    for site, test in zip(tests.sites, tests.field):
        for name, value in trainer.score(model, test).items():
            metrics[f"field_test_{name}.{site.name}"] = round(value, 4)
            per_site.setdefault(name, []).append(value)
    for name, values in per_site.items():
        metrics[f"field_test_{name}"] = round(float(np.mean(values)), 4)
    metrics["test_frames_per_set"] = int(len(tests.lab))
    return metrics
