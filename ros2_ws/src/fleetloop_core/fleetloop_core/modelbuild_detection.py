"""``fleetloop models build --profile detection-...``: train the four reference detector tiers and export them.

The detection counterpart of ``fleetloop_core.modelbuild`` (which dispatches here when a profile
says ``task: detection``). T1 (foundation) learns from domain-randomised detection frames, T2, T3
and T4 from lab frames (``fleetloop_core.sim``, task ``detection``: several items per frame, overlaps,
truncation). Each tier is exported to ONNX in the output layout its profile names (``yolo`` or
``boxes_scores``, see ``fleetloop_core.training_detection``) with a manifest whose ``detection``
block declares that layout, plus ``weights.pt`` so the cloud can warm-start from it. Metrics:
mAP@0.5 and mAP@0.5:0.95 (pycocotools) on a lab test set and on per-site field test sets.

Builds are cached like the classifiers': the manifest records a key over the profile, the data
files and the code; a rebuild with the same key is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from fleetloop_core import dataset, sim, sim_tasks
from fleetloop_core.errors import ConfigError
from fleetloop_core.manifest import TIER_PLACEMENT, DetectionSpec, InputSpec, Manifest, file_entry, write_manifest
from fleetloop_core.modelbuild import TIER_NAMES, BuildProfile, _cached

log = logging.getLogger(__name__)

DEFAULT_LAYOUTS = {"T1": "yolo", "T2": "boxes_scores", "T3": "boxes_scores", "T4": "yolo"}
WEIGHTS = "weights.pt"


def _code_fingerprint() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in (
        "zoo.py",
        "zoo_detection.py",
        "training.py",
        "training_detection.py",
        "modelbuild_detection.py",
        "sim.py",
        "sim_render.py",
        "sim_tasks.py",
        "dataset.py",
        "detection.py",
        "manifest.py",
    ):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def detection_build_key(profile: BuildProfile, tier: str) -> str:
    """Return the cache key of one detector build: profile, data files and code."""
    payload = {
        "tier": tier,
        "tier_build": profile.tiers[tier].model_dump(),
        "profile": profile.model_dump(exclude={"tiers"}),
        "data": dataset.fingerprint(),
        "code": _code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def detection_spec(layout: str) -> DetectionSpec:
    """Return the manifest's detection block for one of our export layouts."""
    if layout == "yolo":
        return DetectionSpec(layout="yolo", output="output0", embedding="embedding")
    if layout == "boxes_scores":
        return DetectionSpec(
            layout="boxes_scores", boxes="boxes", scores="scores", box_format="xyxy", embedding="embedding"
        )
    if layout == "boxes_scores_labels":
        return DetectionSpec(
            layout="boxes_scores",
            boxes="boxes",
            scores="scores",
            labels_output="labels",
            box_format="xyxy",
            embedding="embedding",
        )
    raise ConfigError(f"unknown detector layout {layout!r} (known: yolo, boxes_scores, boxes_scores_labels)")


def fit_into(
    images: np.ndarray, truths: Sequence[sim_tasks.DetectionTruth], size: int, pad_value: int = 114
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Return frames letterboxed to size x size and their boxes mapped into input pixels.

    Bilinear, as the detectors' manifests declare (``resize: linear``): area resampling at a
    non-integer ratio (128 -> 96) cost the robot ~4x more per frame for no measurable gain.
    """
    from fleetloop_core.box_decoding import letterbox

    out = np.empty((len(images), size, size, 3), np.uint8)
    boxes, classes = [], []
    for i, (image, truth) in enumerate(zip(images, truths)):
        fitted, geometry = letterbox(image, size, size, pad_value)
        out[i] = fitted
        boxes.append(geometry.to_input(truth.boxes))
        classes.append(truth.classes)
    return out, boxes, classes


def write_detector_package(
    model,
    directory: Path,
    name: str,
    version: str,
    tier: str,
    arch: str,
    layout: str,
    labels: Sequence[str],
    training_info: dict,
    parameters: int,
    metrics: dict | None = None,
) -> Manifest:
    """Export ``model`` (a DetectorDeployable) as a package: model.onnx in ``layout``, weights.pt, manifest.json."""
    import torch

    from fleetloop_core import training
    from fleetloop_core.training_detection import export_detector_onnx

    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = export_detector_onnx(model, directory / "model.onnx", layout)  # type: ignore[arg-type]
    torch.save(model.state_dict(), directory / WEIGHTS)
    manifest = Manifest(
        name=name,
        version=version,
        tier=tier,
        task="detection",
        placement=TIER_PLACEMENT[tier],
        input=InputSpec(
            shape=[-1, model.height, model.width, 3],
            dtype="uint8",
            layout="NHWC",
            color_order="RGB",
            mean=list(training.DEFAULT_MEAN),
            std=list(training.DEFAULT_STD),
            normalisation_in_graph=True,
            resize="linear",
        ),
        labels=list(labels),
        files=[file_entry(onnx_path, directory), file_entry(directory / WEIGHTS, directory, role="extra")],
        parameters=parameters,
        architecture=arch,
        training=training_info,
        metrics=metrics or {},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        detection=detection_spec(layout),
    )
    write_manifest(manifest, directory)
    return manifest


def build_detectors(
    out_dir: Path,
    profile_name: str,
    profile: BuildProfile,
    tiers: tuple[str, ...],
    progress: bool = True,
    force: bool = False,
) -> dict[str, Path]:
    """Build (or reuse from cache) the detector tiers under ``out_dir/<tier>``; return their dirs."""
    missing = [t for t in tiers if t not in profile.tiers]
    if missing:
        raise ConfigError(f"profile {profile_name!r} does not define tier(s) {missing}")
    keys = {tier: detection_build_key(profile, tier) for tier in tiers}
    todo = [t for t in tiers if force or not _cached(out_dir / t, keys[t])]
    result = {t: out_dir / t for t in tiers}
    for tier in tiers:
        if tier not in todo:
            log.info("%s: cached detector build %s is current, skipping", tier, keys[tier][:12])
    if not todo:
        return result

    from fleetloop_core import training_detection as td
    from fleetloop_core import zoo, zoo_detection

    pool = sim.item_pool()
    height, width = profile.frame_height, profile.frame_width
    task = sim_tasks.Detection(max_items=profile.max_items, item_scale=profile.item_scale)
    common = dict(height=height, width=width, pool=pool, task=task)
    needs = {profile.tiers[t].data for t in todo}
    started = time.perf_counter()
    frames: dict[str, sim_tasks.DetectionSet] = {}
    if "lab" in needs:
        frames["lab"] = sim.render_set(
            sim.LAB_SITE,
            pool.lab_train,
            profile.lab_frames,
            seed=("det-lab", profile.seed),
            sites=sim.lab_sites(seed=profile.seed),
            none_fraction=0.1,
            **common,
        )
    if "randomised" in needs:
        if profile.randomised_frames <= 0:
            raise ConfigError(f"profile {profile_name!r}: a tier uses randomised data but randomised_frames is 0")
        frames["randomised"] = sim.render_set(
            sim.LAB_SITE,
            pool.lab_train,
            profile.randomised_frames,
            seed=("det-randomised", profile.seed),
            sites=sim.randomised_sites(profile.randomised_sites, profile.seed),
            none_fraction=0.1,
            **common,
        )
    render_seconds = time.perf_counter() - started
    lab_test = sim.render_set(
        sim.LAB_SITE,
        pool.lab_test,
        profile.eval_frames,
        seed=("det-lab-test", profile.seed),
        sites=sim.lab_sites(seed=profile.seed + 1),
        none_fraction=0.1,
        **common,
    )
    field_sites = sim.make_fleet_sites(profile.eval_sites, seed=profile.seed)
    field_tests = [
        sim.field_test_set(
            site, profile.eval_frames, seed=profile.seed, height=height, width=width, pool=pool, task="detection"
        )
        for site in field_sites
    ]
    for tier in todo:
        spec = profile.tiers[tier]
        data = frames[spec.data]
        count = min(spec.samples, len(data))
        images, boxes, classes = fit_into(data.images[:count], data.truths[:count], spec.input_size)
        targets = td.assign(boxes, classes, spec.input_size, spec.input_size)
        net = zoo_detection.build(spec.arch, num_classes=len(sim_tasks.DETECTION_CLASSES))
        layout = spec.layout or DEFAULT_LAYOUTS[tier]
        model = td.DetectorDeployable(net, spec.input_size, spec.input_size, layout="yolo")
        # each tier its own seed: two tiers of one architecture must not be one network twice
        seed = profile.seed + ("T1", "T2", "T3", "T4").index(tier)
        config = td.DetectorFitConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=seed)
        report = td.fit_detector(
            model, images, targets, config=config, desc=f"{tier} {TIER_NAMES[tier]} detector", progress=progress
        )
        directory = out_dir / tier
        info = {
            "build_key": keys[tier],
            "profile": profile_name,
            "data": f"{count} Fashion-MNIST detection frames ({spec.data}, {height}x{width}, up to "
            f"{profile.max_items} items, letterboxed to {spec.input_size})",
            "samples": count,
            "boxes": int(sum(len(b) for b in boxes)),
            "epochs": spec.epochs,
            "seconds": round(report.seconds, 1),
            "render_seconds": round(render_seconds, 1),
            "final_loss": round(report.final_loss, 4),
            "device": report.device,
            "seed": seed,
        }
        write_detector_package(
            model,
            directory,
            f"fleetloop-{tier.lower()}-{TIER_NAMES[tier]}-detector",
            f"r0-{keys[tier][:8]}",
            tier,
            spec.arch,
            layout,
            sim_tasks.DETECTION_CLASSES,
            info,
            zoo.parameter_count(net),
        )
        metrics = evaluate_detector(directory, lab_test, field_tests, field_sites)
        from fleetloop_core.manifest import load_manifest

        manifest = load_manifest(directory)
        write_manifest(manifest.model_copy(update={"metrics": metrics}), directory)
        log.info(
            "%s: detector trained on %d frames x %d epochs in %.0f s; lab mAP@0.5 %.3f, field mAP@0.5 %.3f",
            tier,
            count,
            spec.epochs,
            report.seconds,
            metrics["lab_test_map50"],
            metrics["field_test_map50"],
        )
    return result


def evaluate_detector(
    directory: Path,
    lab_test: sim_tasks.DetectionSet,
    field_tests: Sequence[sim_tasks.DetectionSet],
    sites: Sequence[sim.Site],
) -> dict:
    """Return mAP@0.5 and mAP@0.5:0.95 of the exported detector on the lab set and each site's field set."""
    from fleetloop_core.detection import DetectorModel
    from fleetloop_core.detection_metrics import evaluate_map

    model = DetectorModel.load(directory, providers=("cpu",), warmup=0)

    def score(data: sim_tasks.DetectionSet):
        # mAP ranks every box: decode down to a low floor so the precision-recall curve is complete
        outputs = model.detect_batch(list(data.images), score_floor=0.05)
        predictions = [(o.detections.boxes, o.detections.scores, o.detections.classes) for o in outputs]
        truths = [(t.boxes, t.classes) for t in data.truths]
        return evaluate_map(predictions, truths, model.labels)

    metrics: dict = {}
    lab = score(lab_test)
    metrics["lab_test_map50"], metrics["lab_test_map"] = round(lab.map50, 4), round(lab.map, 4)
    per_site50, per_site = [], []
    for site, test in zip(sites, field_tests):
        result = score(test)
        metrics[f"field_test_map50.{site.name}"] = round(result.map50, 4)
        metrics[f"field_test_map.{site.name}"] = round(result.map, 4)
        per_site50.append(result.map50)
        per_site.append(result.map)
    metrics["field_test_map50"] = round(float(np.mean(per_site50)), 4)
    metrics["field_test_map"] = round(float(np.mean(per_site)), 4)
    metrics["test_frames_per_set"] = int(len(lab_test))
    return metrics
