"""Detector training on the SageMaker training-container contract (``fleetloop_cloud.train`` dispatches here
when the ``models`` channel holds detectors).

Same contract, same backends (local process or SageMaker training job), channels in the
bounding-box augmented-manifest format (``fleetloop_cloud.box_manifest``):

1. T2 (domain teacher) trains on every accepted box label (``train``) plus lab frames with their
   true boxes (``replay``, so classes rare in the field are not forgotten), warm-starting from the
   production package's ``weights.pt``;
2. T3 and T4 are distilled from the new T2 on every uploaded frame (``unlabeled``): the teacher's
   per-cell class scores are soft targets and its confident boxes box targets (dense distillation,
   ``fleetloop_core.training_detection``), plus the accepted boxes where a frame has them. When a
   student's input size differs from the teacher's, the teacher's decoded boxes (score >= 0.5) are
   the student's targets instead (pseudo-labels);
3. each tier is exported in its production package's output layout, with ``weights.pt``.

Detectors train on one host (several hosts in resourceconfig.json is refused with the reason) and get no
INT8 variant (the classifiers' quantisation is not applied to detectors).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from fleetloop_core.manifest import Manifest, load_manifest

from fleetloop_cloud.box_manifest import BoxChannel, read_box_channel
from fleetloop_cloud.train import REPORT, WEIGHTS, Cluster, Hyperparameters, TrainingError


def is_detection(models_dir: Path) -> bool:
    """Return whether the ``models`` channel's T2 package is a detector."""
    path = Path(models_dir) / "T2" / "manifest.json"
    return path.is_file() and load_manifest(path).task == "detection"


def export_layout(manifest: Manifest) -> str:
    """Return the export layout that reproduces a package's declared detection layout."""
    spec = manifest.detection
    if spec is None:
        raise TrainingError(f"{manifest.name}: not a detector package")
    if spec.layout == "yolo":
        return "yolo"
    return "boxes_scores_labels" if spec.labels_output else "boxes_scores"


def load_detector_base(models_dir: Path, tier: str):
    """Return (manifest, DetectorDeployable, warm) for a tier: production weights when shipped, else fresh."""
    import torch

    from fleetloop_core import training_detection as td
    from fleetloop_core import zoo_detection

    directory = Path(models_dir) / tier
    manifest = load_manifest(directory)
    if manifest.task != "detection" or not manifest.architecture:
        raise TrainingError(f"{directory}: not a detector package with an architecture; cannot rebuild {tier}")
    net = zoo_detection.build(manifest.architecture, len(manifest.labels))
    model = td.DetectorDeployable(
        net, manifest.input.height, manifest.input.width, mean=manifest.input.mean, std=manifest.input.std
    )
    warm = any(f.path == WEIGHTS for f in manifest.files)
    if warm:
        model.load_state_dict(torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
    return manifest, model, warm


def fit_channel(data: BoxChannel, size: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Return (frames letterboxed to size x size, boxes in input pixels, classes, labelled mask)."""
    from fleetloop_core.box_decoding import letterbox

    images = np.empty((len(data), size, size, 3), np.uint8)
    boxes, classes, labelled = [], [], np.zeros(len(data), bool)
    for i, (image, label) in enumerate(zip(data.images, data.boxes)):
        fitted, geometry = letterbox(image, size, size)
        images[i] = fitted
        if label is None:
            boxes.append(np.zeros((0, 4), np.float32))
            classes.append(np.zeros(0, np.int64))
            continue
        labelled[i] = True
        boxes.append(geometry.to_input(label.boxes))
        classes.append(label.classes)
    return images, boxes, classes, labelled


def _concat(*channels: BoxChannel) -> BoxChannel:
    out = BoxChannel([], [], [], [])
    for channel in channels:
        out.images += channel.images
        out.boxes += channel.boxes
        out.frame_ids += channel.frame_ids
        out.sites += channel.sites
    return out


def run_detection_training(
    channels: dict[str, Optional[Path]],
    model_dir: Path,
    hp: Hyperparameters,
    cluster: Cluster | None = None,
    progress: bool = True,
) -> dict:
    """Train T2, distil T3/T4 (detectors), export packages into ``model_dir``; return the report."""
    from fleetloop_core import training_detection as td
    from fleetloop_core import zoo
    from fleetloop_core.modelbuild_detection import write_detector_package

    cluster = cluster or Cluster(["algo-1"], "algo-1")
    if cluster.world_size > 1:
        raise TrainingError(
            f"detector training runs on one host; the job has {cluster.world_size} "
            f"({', '.join(cluster.hosts)}): set instance_count: 1"
        )
    started = time.perf_counter()
    tiers = [t.strip() for t in hp.tiers.split(",") if t.strip()]
    models_dir = Path(channels["models"])  # type: ignore[arg-type]
    manifest2, teacher, warm2 = load_detector_base(models_dir, "T2")
    classes = list(manifest2.labels)
    train = read_box_channel("train", channels.get("train"), classes, required=True)
    replay = read_box_channel("replay", channels.get("replay"), classes, required=False)
    unlabeled = read_box_channel("unlabeled", channels.get("unlabeled"), classes, required=False)
    report: dict = {
        "version": hp.version,
        "task": "detection",
        "tiers": {},
        "hosts": 1,
        "channels": {"train": len(train), "replay": len(replay), "unlabeled": len(unlabeled)},
    }

    def config(epochs: int, n: int) -> td.DetectorFitConfig:
        # one-cycle needs a few steps: shrink the batch for tiny sets
        return td.DetectorFitConfig(
            epochs=epochs,
            batch_size=max(2, min(hp.batch_size, n // 8 or 2)),
            lr=hp.lr,
            seed=hp.seed,
            threads=hp.threads,
        )

    # 1. T2 on every accepted box label (+ lab replay)
    labelled = _concat(train, replay)
    size2 = manifest2.input.height
    x2, b2, c2, _ = fit_channel(labelled, size2)
    if "T2" in tiers:
        epochs = hp.warm_start_epochs if warm2 else hp.teacher_epochs
        fit = td.fit_detector(
            teacher,
            x2,
            td.assign(b2, c2, size2, size2),
            config=config(epochs, len(x2)),
            desc=f"T2 detector {hp.version}",
            progress=progress,
        )
        info = {
            "round_version": hp.version,
            "samples": int(len(x2)),
            "field_labels": len(train),
            "replay_labels": len(replay),
            "boxes": int(sum(len(b) for b in b2)),
            "warm_start": warm2,
            "epochs": fit.epochs,
            "seconds": round(fit.seconds, 2),
            "final_loss": round(fit.final_loss, 4),
            "device": fit.device,
        }
        report["tiers"]["T2"] = info
        write_detector_package(
            teacher,
            model_dir / "T2",
            manifest2.name,
            hp.version,
            "T2",
            manifest2.architecture,
            export_layout(manifest2),
            classes,
            info,
            zoo.parameter_count(teacher.net),
        )

    # 2. distil T3 and T4 from the new T2 on every uploaded frame, with the accepted boxes where known
    accepted = {f: b for f, b in zip(train.frame_ids, train.boxes)}
    pool = unlabeled if len(unlabeled) else train
    distil = BoxChannel(
        list(pool.images),
        [accepted.get(f, b) for f, b in zip(pool.frame_ids, pool.boxes)],
        list(pool.frame_ids),
        list(pool.sites),
    )
    distil = _concat(distil, replay)
    for tier in (t for t in ("T3", "T4") if t in tiers):
        manifest, student, warm = load_detector_base(models_dir, tier)
        size = manifest.input.height
        images, boxes, cls, has = fit_channel(distil, size)
        if size == size2:
            soft = td.predict_dense(teacher.eval(), images)
            targets = td.assign(boxes, cls, size, size)
            mode = "dense"
        else:
            # different grids: the teacher's confident boxes are the student's targets on unlabeled frames
            teacher_images, _, _, _ = fit_channel(distil, size2)
            scores, dense_boxes = td.predict_dense(teacher.eval(), teacher_images)
            scale = size / size2
            for i in np.flatnonzero(~has):
                best = scores[i].max(axis=0)
                keep = best >= 0.5
                boxes[i] = dense_boxes[i][keep] * scale
                cls[i] = scores[i].argmax(axis=0)[keep]
            soft, targets, has = None, td.assign(boxes, cls, size, size), np.ones(len(images), bool)
            mode = "pseudo-labels"
        epochs = hp.warm_start_epochs if warm else hp.distil_epochs
        fit = td.fit_detector(
            student,
            images,
            targets,
            teacher=soft,
            labelled=has,
            config=config(epochs, len(images)),
            desc=f"{tier} detector {hp.version}",
            progress=progress,
        )
        info = {
            "round_version": hp.version,
            "distilled_from": f"{manifest2.name} {hp.version}",
            "mode": mode,
            "samples": int(len(images)),
            "labeled": int(has.sum()),
            "warm_start": warm,
            "epochs": fit.epochs,
            "seconds": round(fit.seconds, 2),
            "final_loss": round(fit.final_loss, 4),
            "device": fit.device,
        }
        report["tiers"][tier] = info
        write_detector_package(
            student,
            model_dir / tier,
            manifest.name,
            hp.version,
            tier,
            manifest.architecture,
            export_layout(manifest),
            classes,
            info,
            zoo.parameter_count(student.net),
        )
    report["seconds"] = round(time.perf_counter() - started, 2)
    (model_dir / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True))
    return report
