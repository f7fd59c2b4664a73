"""Detection's trainer: the deployable detector, its output layouts, fitting with dense targets, its export.

Exported graphs take raw uint8 NHWC pixels (normalised in the graph, like the classifiers) and
output, in input pixels and without non-maximum suppression (``fleetloop_core.detection`` decodes
and suppresses):

* layout ``yolo``: ``output0`` (N, 4 + C, A) = centre-x, centre-y, width, height, then C class
  scores (sigmoid, no objectness) per cell: the common YOLOv8 export;
* layout ``boxes_scores``: ``boxes`` (N, A, 4) x0, y0, x1, y1 and ``scores`` (N, A, C);
* layout ``boxes_scores_labels``: ``boxes`` (N, A, 4), ``scores`` (N, A) of the best class and
  ``labels`` (N, A) int64 (the shape of exports that keep no per-class scores);

plus ``embedding`` (N, D, unit length) for the robots' novelty score and deduplication.

The loss and target encoding are in ``fleetloop_models.trainers.detection_targets``. Distillation
adds the teacher's per-cell class scores as soft targets (binary cross-entropy) and its boxes where
it is confident (GIoU), so a student learns from every uploaded frame, labelled or not. The loop,
the schedule and the export machinery are ``fleetloop_models.training``'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from fleetloop_models import training, zoo
from fleetloop_sim import sim_tasks
from fleetloop_core.errors import ConfigError
from fleetloop_core.contracts.manifest import DetectionSpec, Manifest, TaskName, Tier
from fleetloop_models.modelbuild import TIER_NAMES, TIERS, BuildProfile, TierBuild
from fleetloop_models.package_writer import write_package
from fleetloop_models.trainers import Trained, Trainer
from fleetloop_models.trainers.detection_targets import Targets, assign, dense_loss, flip_batch
from fleetloop_models.zoo import STRIDE, DetectorNet, cell_centres

if TYPE_CHECKING:
    from fleetloop_core.detection import DetectorModel

Layout = Literal["yolo", "boxes_scores", "boxes_scores_labels"]
LAYOUT_OUTPUTS: dict[str, tuple[str, ...]] = {
    "yolo": ("output0", "embedding"),
    "boxes_scores": ("boxes", "scores", "embedding"),
    "boxes_scores_labels": ("boxes", "scores", "labels", "embedding"),
}
DEFAULT_LAYOUTS: dict[Tier, Layout] = {"T1": "yolo", "T2": "boxes_scores", "T3": "boxes_scores", "T4": "yolo"}


class DetectorDeployable(training.PixelInput):
    """A detector wrapped for deployment: uint8 NHWC in; one output layout out (see module docstring)."""

    net: DetectorNet
    centres: torch.Tensor  # buffer (register_buffer), declared for the type checker

    def __init__(
        self,
        net: DetectorNet,
        height: int,
        width: int,
        layout: Layout = "yolo",
        mean: Sequence[float] = training.DEFAULT_MEAN,
        std: Sequence[float] = training.DEFAULT_STD,
    ):
        if height % STRIDE or width % STRIDE:
            raise ValueError(f"detector input {width}x{height} must be a multiple of the stride {STRIDE}")
        if layout not in LAYOUT_OUTPUTS:
            raise ValueError(f"unknown detector layout {layout!r} (known: {', '.join(LAYOUT_OUTPUTS)})")
        super().__init__(mean, std)
        self.net = net
        self.height, self.width, self.layout = height, width, layout
        self.register_buffer("centres", cell_centres(height, width))

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def raw(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (class logits (N, C, A), boxes x0y0x1y1 (N, A, 4) in input pixels, embedding (N, D))."""
        logits, ltrb, embedding = self.net(self.normalise(pixels))
        centres = self.centres
        boxes = torch.cat([centres - ltrb[..., :2], centres + ltrb[..., 2:]], dim=-1)
        return logits, boxes, embedding

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, boxes, embedding = self.raw(pixels)
        scores = torch.sigmoid(logits)
        embedding = F.normalize(embedding, dim=1, eps=1e-6)
        if self.layout == "yolo":
            centre = (boxes[..., :2] + boxes[..., 2:]) * 0.5
            size = boxes[..., 2:] - boxes[..., :2]
            return torch.cat([torch.cat([centre, size], dim=-1).transpose(1, 2), scores], dim=1), embedding
        per_anchor = scores.transpose(1, 2)  # (N, A, C)
        if self.layout == "boxes_scores":
            return boxes, per_anchor, embedding
        best, labels = per_anchor.max(dim=-1)
        return boxes, best, labels, embedding


@dataclass
class DetectorFitConfig(training.Recipe):
    """How to train a detector: the common recipe plus the loss weights and distillation."""

    epochs: int = 6
    batch_size: int = 32
    box_weight: float = 2.0
    distil_weight: float = 1.0  # soft class targets
    distil_box_weight: float = 1.0  # teacher boxes where the teacher is confident
    distil_confident: float = 0.4  # teacher class score above which its box is a target

    warmup_share: ClassVar[float] = 0.2


def fit_detector(
    model: DetectorDeployable,
    images: np.ndarray,
    targets: Targets | None = None,
    teacher: tuple[np.ndarray, np.ndarray] | None = None,
    config: DetectorFitConfig | None = None,
    desc: str = "train detector",
    progress: bool = True,
    labelled: np.ndarray | None = None,
) -> training.FitReport:
    """Train ``model`` in place on uint8 NHWC ``images`` (at the model's input size); return a report.

    ``targets``: dense ground truth (:func:`assign`); ``labelled`` (N,) bool says which frames
    have ground truth (others contribute distillation only). ``teacher``: (scores (N, C, A),
    boxes (N, A, 4)) from :func:`predict_dense` of a teacher on the same grid.
    """
    config = config or DetectorFitConfig()
    if targets is None and teacher is None:
        raise ValueError("fit_detector needs targets, a teacher, or both")
    if len(images) == 0:
        raise ValueError("fit_detector got an empty training set")
    if images.shape[1] != model.height or images.shape[2] != model.width:
        raise ValueError(
            f"images are {images.shape[2]}x{images.shape[1]}, the detector takes "
            f"{model.width}x{model.height} (letterbox them first)"
        )
    # on a shared machine one thread often beats two fighting for the cores: let the caller say
    training.set_threads(config.threads or int(os.environ.get("FLEETLOOP_TRAIN_THREADS", "0")) or None)
    n, cells, cols = len(images), model.centres.shape[0], model.width // STRIDE
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    cls_all = torch.from_numpy(targets.classes) if targets is not None else torch.full((n, cells), -1)
    box_all = torch.from_numpy(targets.boxes) if targets is not None else torch.zeros((n, cells, 4))
    has_truth = torch.from_numpy(
        np.asarray(labelled if labelled is not None else np.full(n, targets is not None), bool)
    )
    t_scores = torch.from_numpy(np.asarray(teacher[0], np.float32)) if teacher is not None else None
    t_boxes = torch.from_numpy(np.asarray(teacher[1], np.float32)) if teacher is not None else None

    def batch_loss(idx: torch.Tensor, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        x, cls, boxes, truth = x_all[idx], cls_all[idx], box_all[idx], has_truth[idx]
        extra = [t_scores[idx], t_boxes[idx]] if t_scores is not None and t_boxes is not None else []
        if config.flip and bool(torch.rand(1, generator=generator) < 0.5):
            x, cls, boxes, extra = flip_batch(x, cls, boxes, model.width, cols, extra)
        logits, pred_boxes, _ = model.raw(x.to(device))
        extra = [tensor.to(device) for tensor in extra]
        return dense_loss(logits, pred_boxes, cls.to(device), boxes.to(device), truth.to(device), extra, config)

    return training.run_fit(model, n, config, batch_loss, desc, progress)


def predict_dense(
    model: DetectorDeployable, images: np.ndarray, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Return (class scores (N, C, A) in [0, 1], boxes (N, A, 4) input pixels) with the torch model."""

    def outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, boxes, _ = model.raw(x)
        return torch.sigmoid(logits), boxes

    scores, boxes = training.predict_batches(model, images, batch_size, outputs)
    return scores, boxes


def export_detector_onnx(model: DetectorDeployable, path: str | Path, layout: Layout | None = None) -> Path:
    """Write ``model`` in ``layout`` (default its own) as a single-file ONNX graph (opset 17, dynamic batch)."""
    model = model.eval().cpu()
    previous = model.layout
    if layout is not None:
        model.layout = layout
    try:
        outputs = LAYOUT_OUTPUTS[model.layout]
        return training.export_graph(model, path, (model.height, model.width, 3), outputs, static=True)
    finally:
        model.layout = previous


def detection_spec(layout: str) -> DetectionSpec:
    """Return the manifest's detection block for one of our export layouts."""
    if layout == "yolo":
        return DetectionSpec(layout="yolo", output="output0", embedding="embedding")
    if layout not in ("boxes_scores", "boxes_scores_labels"):
        raise ConfigError(f"unknown detector layout {layout!r} (known: {', '.join(LAYOUT_OUTPUTS)})")
    labels = "labels" if layout == "boxes_scores_labels" else None
    return DetectionSpec(
        layout="boxes_scores",
        boxes="boxes",
        scores="scores",
        labels_output=labels,
        box_format="xyxy",
        embedding="embedding",
    )


def write_detector_package(
    model: DetectorDeployable,
    directory: Path,
    name: str,
    version: str,
    tier: Tier,
    arch: str,
    layout: Layout,
    labels: Sequence[str],
    training_info: dict[str, Any],
    parameters: int,
    metrics: dict[str, Any] | None = None,
    weights: bool = True,
) -> Manifest:
    """Export ``model`` as a package: model.onnx in ``layout``, weights.pt (when ``weights``), manifest.json."""
    spec = detection_spec(layout)  # an unknown layout fails before anything is written
    return write_package(
        model,
        directory,
        lambda path: export_detector_onnx(model, path, layout),
        name=name,
        version=version,
        tier=tier,
        task="detection",
        architecture=arch,
        labels=labels,
        input_size=(model.height, model.width),
        resize="linear",
        training=training_info,
        parameters=parameters,
        metrics=metrics,
        weights=weights,
        detection=spec,
    )


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


class DetectionTrainer:
    """Detection's part of the reference-model build (``fleetloop_models.trainers.Trainer``)."""

    task: TaskName = "detection"
    labels: Sequence[str] = sim_tasks.DETECTION_CLASSES
    seed_prefix = "det-"
    metric = "map50"

    def sim_part(self, profile: BuildProfile) -> sim_tasks.Detection:
        """Return what the build's frames hold: up to ``profile.max_items`` boxed items of its scale."""
        return sim_tasks.Detection(max_items=profile.max_items, item_scale=profile.item_scale)

    def train(
        self,
        tier: Tier,
        spec: TierBuild,
        data: sim_tasks.DetectionSet,
        count: int,
        profile: BuildProfile,
        progress: bool,
    ) -> Trained:
        """Return a fresh ``spec.arch`` detector trained on the first ``count`` frames of ``data``."""
        images, boxes, classes = fit_into(data.images[:count], data.truths[:count], spec.input_size)
        targets = assign(boxes, classes, spec.input_size, spec.input_size)
        net = zoo.build_detector(spec.arch, num_classes=len(self.labels))
        model = DetectorDeployable(net, spec.input_size, spec.input_size, layout="yolo")
        # each tier its own seed: two tiers of one architecture must not be one network twice
        seed = profile.seed + TIERS.index(tier)
        config = DetectorFitConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=seed)
        desc = f"{tier} {TIER_NAMES[tier]} detector"
        report = fit_detector(model, images, targets, config=config, desc=desc, progress=progress)
        note = (
            f"{count} Fashion-MNIST detection frames ({spec.data}, {profile.frame_height}x{profile.frame_width}, "
            f"up to {profile.max_items} items, letterboxed to {spec.input_size})"
        )
        return Trained(model, report, seed, {"data": note, "boxes": int(sum(len(b) for b in boxes))})

    def write(
        self,
        trained: Trained,
        directory: Path,
        name: str,
        version: str,
        tier: Tier,
        spec: TierBuild,
        info: dict[str, Any],
    ) -> Manifest:
        """Write the package: model.onnx in the tier's layout, weights.pt, manifest.json."""
        model = trained.model
        layout = spec.layout or DEFAULT_LAYOUTS[tier]
        parameters = zoo.parameter_count(model.net)
        return write_detector_package(
            model,
            directory,
            f"{name}-detector",
            version,
            tier,
            spec.arch,
            layout,
            self.labels,
            info,
            parameters,
            weights=spec.weights,
        )

    def load(self, directory: Path) -> DetectorModel:
        """Return the exported detector of a package, on the CPU."""
        from fleetloop_core.detection import DetectorModel

        return DetectorModel.load(directory, providers=("cpu",), warmup=0)

    def score(self, model: DetectorModel, data: sim_tasks.DetectionSet) -> dict[str, float]:
        """Return mAP@0.5 (``map50``) and mAP@0.5:0.95 (``map``) of ``model`` on ``data`` (pycocotools)."""
        from fleetloop_models.detection_metrics import evaluate_map

        # mAP ranks every box: decode down to a low floor so the precision-recall curve is complete
        outputs = model.detect_batch(list(data.images), score_floor=0.05)
        predictions = [(o.detections.boxes, o.detections.scores, o.detections.classes) for o in outputs]
        result = evaluate_map(predictions, [(t.boxes, t.classes) for t in data.truths], model.labels)
        return {"map50": result.map50, "map": result.map}


TRAINER: Trainer = DetectionTrainer()
