"""The detector trainer of a training job (``fleetloop_cloud.train`` runs it when the ``models`` channel
holds detectors).

Same contract, same backends (local process or SageMaker training job), channels in the
bounding-box augmented-manifest format (``fleetloop_cloud.box_manifest``):

1. T2 (domain teacher) trains on every accepted box label (``train``) plus lab frames with their
   true boxes (``replay``, so classes rare in the field are not forgotten), warm-starting from the
   production package's ``weights.pt``;
2. T3 and T4 are distilled from the new T2 on every uploaded frame (``unlabeled``): the teacher's
   per-cell class scores are soft targets and its confident boxes box targets (dense distillation,
   ``fleetloop_models.trainers.detection``), plus the accepted boxes where a frame has them. When a
   student's input size differs from the teacher's, the teacher's decoded boxes (score >= 0.5) are
   the student's targets instead (pseudo-labels);
3. each tier is exported in its production package's output layout, with ``weights.pt``.

Detectors train on one host (several hosts in resourceconfig.json is refused with the reason) and get no
INT8 variant (the classifiers' quantisation is not applied to detectors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fleetloop_core.contracts.manifest import Manifest, load_manifest

from fleetloop_cloud.box_manifest import BoxChannel, read_box_channel
from fleetloop_cloud.training_job import TrainingError, TrainingRun, load_weights, tier_info


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
    from fleetloop_models import zoo as zoo_detection
    from fleetloop_models.trainers import detection as td

    directory = Path(models_dir) / tier
    manifest = load_manifest(directory)
    if manifest.task != "detection" or not manifest.architecture:
        raise TrainingError(f"{directory}: not a detector package with an architecture; cannot rebuild {tier}")
    net = zoo_detection.build(manifest.architecture, len(manifest.labels))
    model = td.DetectorDeployable(
        net, manifest.input.height, manifest.input.width, mean=manifest.input.mean, std=manifest.input.std
    )
    return manifest, model, load_weights(model, manifest, directory)


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


def _fit_config(run: TrainingRun, epochs: int, samples: int):
    """Return the detector fit settings of one tier."""
    from fleetloop_models.trainers import detection as td

    hp = run.hp
    return td.DetectorFitConfig(
        epochs=epochs, batch_size=hp.batch_for(samples), lr=hp.lr, seed=hp.seed, threads=hp.threads
    )


def _write(run: TrainingRun, model, manifest: Manifest, tier: str, classes: list[str], info: dict) -> None:
    """Export a trained detector in its production package's layout, with ``weights.pt``."""
    from fleetloop_models import zoo
    from fleetloop_models.trainers.detection import write_detector_package

    layout, parameters = export_layout(manifest), zoo.parameter_count(model.net)
    directory = run.model_dir / tier
    write_detector_package(
        model, directory, manifest.name, run.hp.version, tier, manifest.architecture, layout, classes, info, parameters
    )


def train_detectors(run: TrainingRun) -> dict:
    """Train T2, distil T3/T4 (detectors), export packages into the model dir; return the report."""
    from fleetloop_models.trainers import detection as td

    hp, cluster = run.hp, run.cluster
    if cluster.world_size > 1:
        raise TrainingError(
            f"detector training runs on one host; the job has {cluster.world_size} "
            f"({', '.join(cluster.hosts)}): set instance_count: 1"
        )
    manifest2, teacher, warm2 = load_detector_base(run.models_dir, "T2")
    classes = list(manifest2.labels)
    train = read_box_channel("train", run.channels.get("train"), classes, required=True)
    replay = read_box_channel("replay", run.channels.get("replay"), classes, required=False)
    unlabeled = read_box_channel("unlabeled", run.channels.get("unlabeled"), classes, required=False)
    report: dict = {
        "version": hp.version,
        "task": "detection",
        "tiers": {},
        "hosts": 1,
        "channels": {"train": len(train), "replay": len(replay), "unlabeled": len(unlabeled)},
    }
    # 1. T2 on every accepted box label (+ lab replay)
    size2 = manifest2.input.height
    x2, b2, c2, _ = fit_channel(_concat(train, replay), size2)
    if "T2" in run.tiers:
        fit = td.fit_detector(
            teacher,
            x2,
            td.assign(b2, c2, size2, size2),
            config=_fit_config(run, hp.epochs(warm2, hp.teacher_epochs), len(x2)),
            desc=f"T2 detector {hp.version}",
            progress=run.progress,
        )
        info = tier_info(
            hp, fit, len(x2), warm2, field_labels=len(train), replay_labels=len(replay), boxes=sum(len(b) for b in b2)
        )
        report["tiers"]["T2"] = info
        _write(run, teacher, manifest2, "T2", classes, info)
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
    for tier in (t for t in ("T3", "T4") if t in run.tiers):
        report["tiers"][tier] = _distil(run, tier, distil, teacher, manifest2, classes)
    return report


def _distil(run: TrainingRun, tier: str, distil: BoxChannel, teacher, manifest2: Manifest, classes: list[str]) -> dict:
    """Distil one student detector from the new teacher and write its package; return its training record."""
    from fleetloop_models.trainers import detection as td

    hp = run.hp
    size2 = manifest2.input.height
    manifest, student, warm = load_detector_base(run.models_dir, tier)
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
    fit = td.fit_detector(
        student,
        images,
        targets,
        teacher=soft,
        labelled=has,
        config=_fit_config(run, hp.epochs(warm, hp.distil_epochs), len(images)),
        desc=f"{tier} detector {hp.version}",
        progress=run.progress,
    )
    distilled_from = f"{manifest2.name} {hp.version}"
    info = tier_info(hp, fit, len(images), warm, distilled_from=distilled_from, mode=mode, labeled=int(has.sum()))
    _write(run, student, manifest, tier, classes, info)
    return info
