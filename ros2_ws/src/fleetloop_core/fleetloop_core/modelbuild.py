"""``fleetloop models build``: train the four reference tiers on Fashion-MNIST and export them.

T1 (foundation, cloud) learns from domain-randomised frames (many random sites, never a field
site); T2 (domain teacher, cloud), T3 (fleet edge) and T4 (specialised edge) learn from clean
lab frames. Each tier has its own architecture and input size; each is exported to ONNX with a
manifest (input spec, labels, sha256, parameter count, training summary, test metrics).

Builds are cached: the manifest records a key over the profile, the data files and this code;
a rebuild with the same key is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from fleetloop_core import dataset, sim
from fleetloop_core.config import ConfigModel, default_config_path, read_yaml, validate
from fleetloop_core.errors import ConfigError, ModelError
from fleetloop_core.manifest import (
    TIER_PLACEMENT,
    InputSpec,
    Manifest,
    OutputSpec,
    file_entry,
    load_manifest,
    verify_files,
    write_manifest,
)

log = logging.getLogger(__name__)

TIERS = ("T1", "T2", "T3", "T4")
WEIGHTS_FILE = "weights.pt"  # torch state dict beside the ONNX graph (role "extra" in the manifest)
TIER_NAMES = {"T1": "foundation", "T2": "domain-teacher", "T3": "fleet-edge", "T4": "specialised-edge"}


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
    task: Literal["classification", "detection"] = "classification"  # detection: modelbuild_detection
    max_items: int = Field(default=4, ge=1, le=16)  # detection: items per frame
    item_scale: tuple[float, float] = (0.2, 0.4)  # detection: of the shorter side


def load_profile(name: str = "default", path: str | Path | None = None) -> BuildProfile:
    """Return build profile ``name`` from config/models.yaml (or ``path``)."""
    path = Path(path) if path else default_config_path("models.yaml")
    profiles = read_yaml(path).get("profiles")
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: missing section profiles")
    if name not in profiles:
        raise ConfigError(f"{path}: unknown profile {name!r} (known: {', '.join(profiles)})")
    profile = validate(BuildProfile, profiles[name], source=str(path), prefix=f"profiles.{name}")
    unknown = set(profile.tiers) - set(TIERS)
    if unknown:
        raise ConfigError(
            f"{path}: profiles.{name}.tiers: unknown tier(s) {sorted(unknown)} (known: {', '.join(TIERS)})"
        )
    return profile


def _code_fingerprint() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in (
        "zoo.py",
        "training.py",
        "modelbuild.py",
        "sim.py",
        "sim_render.py",
        "sim_tasks.py",
        "preprocess.py",
        "dataset.py",
    ):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def build_key(profile: BuildProfile, tier: str) -> str:
    """Return the cache key of one tier build: profile, data files and code."""
    detection_only = {"task", "max_items", "item_scale"} if profile.task == "classification" else set()
    payload = {
        "tier": tier,
        "tier_build": profile.tiers[tier].model_dump(exclude={"layout"} if profile.task == "classification" else None),
        "profile": profile.model_dump(exclude={"tiers", *detection_only}),
        "data": dataset.fingerprint(),
        "code": _code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cached(directory: Path, key: str) -> bool:
    try:
        manifest = load_manifest(directory)
        verify_files(manifest, directory)
    except ModelError:
        return False
    return manifest.training.get("build_key") == key


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    from fleetloop_core.preprocess import resize_to

    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for i, image in enumerate(images):
        out[i] = resize_to(image, size, size, "area")
    return out


def build_reference_models(
    out_dir: str | Path,
    profile_name: str = "default",
    config_path: str | Path | None = None,
    tiers: tuple[str, ...] = TIERS,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Path]:
    """Build (or reuse from cache) the requested tiers under ``out_dir/<tier>``; return their dirs.

    Concurrent builds into the same ``out_dir`` (parallel test runs, two terminals) serialise on a
    lock file, and the second one finds the first one's cache.
    """
    import fcntl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out_dir, profile_name, config_path, tiers, progress, force)


def _build_locked(
    out_dir: Path,
    profile_name: str,
    config_path: str | Path | None,
    tiers: tuple[str, ...],
    progress: bool,
    force: bool,
) -> dict[str, Path]:
    profile = load_profile(profile_name, config_path)
    keys = {tier: build_key(profile, tier) for tier in tiers if tier in profile.tiers}
    missing = [t for t in tiers if t not in profile.tiers]
    if missing:
        raise ConfigError(f"profile {profile_name!r} does not define tier(s) {missing}")
    if profile.task == "detection":
        from fleetloop_core.modelbuild_detection import build_detectors

        return build_detectors(out_dir, profile_name, profile, tiers, progress, force)
    todo = [t for t in tiers if force or not _cached(out_dir / t, keys[t])]
    result = {t: out_dir / t for t in tiers}
    for tier in tiers:
        if tier not in todo:
            log.info("%s: cached build %s is current, skipping", tier, keys[tier][:12])
    if not todo:
        return result

    # imported here so that robots (no torch) can import this package
    from fleetloop_core import training, zoo

    pool = sim.item_pool()
    height, width = profile.frame_height, profile.frame_width
    needs = {profile.tiers[t].data for t in todo}
    started = time.perf_counter()
    frames: dict[str, sim.LabelledSet] = {}
    if "lab" in needs:
        frames["lab"] = sim.render_set(
            sim.LAB_SITE,
            pool.lab_train,
            profile.lab_frames,
            seed=("lab", profile.seed),
            height=height,
            width=width,
            pool=pool,
            sites=sim.lab_sites(seed=profile.seed),
        )
    if "randomised" in needs:
        if profile.randomised_frames <= 0:
            raise ConfigError(f"profile {profile_name!r}: a tier uses randomised data but randomised_frames is 0")
        sites = sim.randomised_sites(profile.randomised_sites, profile.seed)
        frames["randomised"] = sim.render_set(
            sim.LAB_SITE,
            pool.lab_train,
            profile.randomised_frames,
            seed=("randomised", profile.seed),
            height=height,
            width=width,
            pool=pool,
            sites=sites,
            none_fraction=0.1,
        )
    render_seconds = time.perf_counter() - started
    lab_test = sim.render_set(
        sim.LAB_SITE,
        pool.lab_test,
        profile.eval_frames,
        seed=("lab-test", profile.seed),
        height=height,
        width=width,
        pool=pool,
        sites=sim.lab_sites(seed=profile.seed + 1),
    )
    field_sites = sim.make_fleet_sites(profile.eval_sites, seed=profile.seed)
    field_tests = [
        sim.field_test_set(site, profile.eval_frames, seed=profile.seed, height=height, width=width, pool=pool)
        for site in field_sites
    ]

    for tier in todo:
        spec = profile.tiers[tier]
        data = frames[spec.data]
        count = min(spec.samples, len(data))
        images = _resize_all(data.images[:count], spec.input_size)
        labels = data.labels[:count]
        net = zoo.build(spec.arch, num_classes=len(dataset.LABELS))
        model = training.Deployable(net)
        config = training.FitConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=profile.seed)
        report = training.fit(
            model, images, labels, config=config, desc=f"{tier} {TIER_NAMES[tier]}", progress=progress
        )
        directory = out_dir / tier
        directory.mkdir(parents=True, exist_ok=True)
        onnx_path = training.export_onnx(model, directory / "model.onnx", spec.input_size, spec.input_size)
        # the torch weights travel with the package: the cloud's next training warm-starts from them
        import torch

        weights_path = directory / WEIGHTS_FILE
        torch.save(model.state_dict(), weights_path)
        manifest = Manifest(
            name=f"fleetloop-{tier.lower()}-{TIER_NAMES[tier]}",
            version=f"r0-{keys[tier][:8]}",
            tier=tier,
            task="classification",
            placement=TIER_PLACEMENT[tier],
            input=InputSpec(
                shape=[-1, spec.input_size, spec.input_size, 3],
                dtype="uint8",
                layout="NHWC",
                color_order="RGB",
                mean=list(training.DEFAULT_MEAN),
                std=list(training.DEFAULT_STD),
                normalisation_in_graph=True,
                resize="area",
            ),
            outputs=OutputSpec(
                probs="probs", embedding="embedding", embedding_normalised=True, uncertainty="uncertainty"
            ),
            labels=list(dataset.LABELS),
            files=[file_entry(onnx_path, directory), file_entry(weights_path, directory, role="extra")],
            parameters=zoo.parameter_count(net),
            architecture=spec.arch,
            training={
                "build_key": keys[tier],
                "profile": profile_name,
                "data": f"Fashion-MNIST train items 0..49999 rendered as {spec.data} frames "
                f"({height}x{width}, resized to {spec.input_size})",
                "samples": count,
                "epochs": spec.epochs,
                "seconds": round(report.seconds, 1),
                "render_seconds": round(render_seconds, 1),
                "final_loss": round(report.final_loss, 4),
                "device": report.device,
                "seed": profile.seed,
            },
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        write_manifest(manifest, directory)
        metrics = evaluate_model(directory, lab_test, field_tests, field_sites)
        write_manifest(manifest.model_copy(update={"metrics": metrics}), directory)
        log.info(
            "%s: trained %d samples x %d epochs in %.0f s; lab acc %.3f, field acc %.3f",
            tier,
            count,
            spec.epochs,
            report.seconds,
            metrics["lab_test_accuracy"],
            metrics["field_test_accuracy"],
        )
    return result


def evaluate_model(
    directory: Path, lab_test: sim.LabelledSet, field_tests: list[sim.LabelledSet], sites: list[sim.Site]
) -> dict[str, float]:
    """Return accuracy of the exported ONNX model on the lab test set and per-site field test sets."""
    from fleetloop_core.inference import TierModel

    model = TierModel.load(directory, providers=("cpu",), warmup=0)
    metrics: dict[str, float] = {}
    lab_pred = model.infer_batch(lab_test.images).probs.argmax(axis=1)
    metrics["lab_test_accuracy"] = round(float((lab_pred == lab_test.labels).mean()), 4)
    per_site = []
    for site, test in zip(sites, field_tests):
        pred = model.infer_batch(test.images).probs.argmax(axis=1)
        accuracy = float((pred == test.labels).mean())
        metrics[f"field_test_accuracy.{site.name}"] = round(accuracy, 4)
        per_site.append(accuracy)
    metrics["field_test_accuracy"] = round(float(np.mean(per_site)), 4)
    metrics["test_frames_per_set"] = int(len(lab_test))
    return metrics
