"""Training, distillation, dense prediction and ONNX export of detector tiers (torch, CPU or GPU).

The style of ``fleetloop_core.training`` for detectors. Imported only where models are built
(``fleetloop models build --profile detection-...``, the cloud's detection training); nothing on
a robot's inference path imports torch.

Exported graphs take raw uint8 NHWC pixels (normalised in the graph, like the classifiers) and
output, in input pixels and without non-maximum suppression (``fleetloop_core.detection`` decodes
and suppresses):

* layout ``yolo``: ``output0`` (N, 4 + C, A) = centre-x, centre-y, width, height, then C class
  scores (sigmoid, no objectness) per cell: the common YOLOv8 export;
* layout ``boxes_scores``: ``boxes`` (N, A, 4) x0, y0, x1, y1 and ``scores`` (N, A, C);
* layout ``boxes_scores_labels``: ``boxes`` (N, A, 4), ``scores`` (N, A) of the best class and
  ``labels`` (N, A) int64 (the shape of exports that keep no per-class scores);

plus ``embedding`` (N, D, unit length) for the robots' novelty score and deduplication.

Training assigns each ground-truth box to the cells whose centre lies in the box's central region
(FCOS centre sampling, radius 1.5 cells; the smallest box wins a contested cell; every box gets at
least the cell holding its centre) and minimises sigmoid focal loss on the class maps plus GIoU
loss on the boxes of assigned cells. Distillation adds the teacher's per-cell class scores as soft
targets (binary cross-entropy) and its boxes where it is confident (GIoU), so a student learns from
every uploaded frame, labelled or not.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from fleetloop_core.training import DEFAULT_MEAN, DEFAULT_STD, OPSET, set_threads
from fleetloop_core.zoo_detection import STRIDE, DetectorNet, cell_centres

Layout = Literal["yolo", "boxes_scores", "boxes_scores_labels"]
LAYOUT_OUTPUTS: dict[str, tuple[str, ...]] = {
    "yolo": ("output0", "embedding"),
    "boxes_scores": ("boxes", "scores", "embedding"),
    "boxes_scores_labels": ("boxes", "scores", "labels", "embedding"),
}


class DetectorDeployable(nn.Module):
    """A detector wrapped for deployment: uint8 NHWC in; one output layout out (see module docstring)."""

    def __init__(
        self,
        net: DetectorNet,
        height: int,
        width: int,
        layout: Layout = "yolo",
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
    ):
        super().__init__()
        if height % STRIDE or width % STRIDE:
            raise ValueError(f"detector input {width}x{height} must be a multiple of the stride {STRIDE}")
        if layout not in LAYOUT_OUTPUTS:
            raise ValueError(f"unknown detector layout {layout!r} (known: {', '.join(LAYOUT_OUTPUTS)})")
        self.net = net
        self.height, self.width, self.layout = height, width, layout
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("offset", mean_t / std_t)
        self.register_buffer("centres", cell_centres(height, width))
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, C) -> normalised float (N, C, H, W)."""
        return pixels.permute(0, 3, 1, 2).float() * self.scale - self.offset

    def raw(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (class logits (N, C, A), boxes x0y0x1y1 (N, A, 4) in input pixels, embedding (N, D))."""
        logits, ltrb, embedding = self.net(self.normalise(pixels))
        centres = self.centres
        boxes = torch.cat([centres - ltrb[..., :2], centres + ltrb[..., 2:]], dim=-1)
        return logits, boxes, embedding

    def forward(self, pixels: torch.Tensor):
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


# ------------------------------------------------------------------------------------ targets


@dataclass
class Targets:
    """Dense training targets: class index per cell (-1 background) and the assigned box (N, A, 4)."""

    classes: np.ndarray  # (N, A) int64
    boxes: np.ndarray  # (N, A, 4) float32 x0, y0, x1, y1 (input pixels)


def assign(
    boxes_list: Sequence[np.ndarray], classes_list: Sequence[np.ndarray], height: int, width: int, radius: float = 1.5
) -> Targets:
    """Return dense targets for ground-truth boxes (in input pixels) on the stride-8 grid."""
    centres = cell_centres(height, width).numpy()
    cells = len(centres)
    n = len(boxes_list)
    classes = np.full((n, cells), -1, np.int64)
    targets = np.zeros((n, cells, 4), np.float32)
    for i, (boxes, labels) in enumerate(zip(boxes_list, classes_list)):
        if len(boxes) == 0:
            continue
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        box_centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (
            (centres[:, None, 0] > boxes[None, :, 0])
            & (centres[:, None, 0] < boxes[None, :, 2])
            & (centres[:, None, 1] > boxes[None, :, 1])
            & (centres[:, None, 1] < boxes[None, :, 3])
        )
        near = np.abs(centres[:, None, :] - box_centre[None]).max(axis=2) <= radius * STRIDE
        candidate = inside & near
        # the cell holding the box centre is always a candidate (tiny or thin boxes)
        cols, rows = width // STRIDE, height // STRIDE
        home = np.clip((box_centre[:, 1] // STRIDE).astype(int), 0, rows - 1) * cols + np.clip(
            (box_centre[:, 0] // STRIDE).astype(int), 0, cols - 1
        )
        candidate[home, np.arange(len(boxes))] = True
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        cost = np.where(candidate, area[None, :], np.inf)
        best = cost.argmin(axis=1)
        positive = np.isfinite(cost[np.arange(cells), best])
        classes[i, positive] = np.asarray(labels, np.int64)[best[positive]]
        targets[i, positive] = boxes[best[positive]]
    return Targets(classes, targets)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return 1 - generalised IoU of box pairs (..., 4) x0y0x1y1, in [0, 2]."""
    x0 = torch.maximum(pred[..., 0], target[..., 0])
    y0 = torch.maximum(pred[..., 1], target[..., 1])
    x1 = torch.minimum(pred[..., 2], target[..., 2])
    y1 = torch.minimum(pred[..., 3], target[..., 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    area_p = (pred[..., 2] - pred[..., 0]).clamp(min=0) * (pred[..., 3] - pred[..., 1]).clamp(min=0)
    area_t = (target[..., 2] - target[..., 0]).clamp(min=0) * (target[..., 3] - target[..., 1]).clamp(min=0)
    union = area_p + area_t - inter + 1e-6
    iou = inter / union
    cx0 = torch.minimum(pred[..., 0], target[..., 0])
    cy0 = torch.minimum(pred[..., 1], target[..., 1])
    cx1 = torch.maximum(pred[..., 2], target[..., 2])
    cy1 = torch.maximum(pred[..., 3], target[..., 3])
    hull = (cx1 - cx0) * (cy1 - cy0) + 1e-6
    return 1.0 - (iou - (hull - union) / hull)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Return the element-wise sigmoid focal loss (RetinaNet) for soft or hard targets in [0, 1]."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return weight * (1 - p_t) ** gamma * ce


# ------------------------------------------------------------------------------------ training


@dataclass
class DetectorFitConfig:
    """How to train a detector: epochs, batch size, peak learning rate (one-cycle), seed, distillation."""

    epochs: int = 6
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    flip: bool = True
    box_weight: float = 2.0
    distil_weight: float = 1.0  # soft class targets
    distil_box_weight: float = 1.0  # teacher boxes where the teacher is confident
    distil_confident: float = 0.4  # teacher class score above which its box is a target
    threads: int | None = None  # None: FLEETLOOP_TRAIN_THREADS, else every core


@dataclass
class DetectorFitReport:
    """What training did: frames, epochs, seconds, final loss, per-epoch losses."""

    samples: int
    epochs: int
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    device: str = "cpu"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _flip(
    x: torch.Tensor, cls: torch.Tensor, boxes: torch.Tensor, width: int, cols: int, extra: list[torch.Tensor]
) -> tuple:
    """Mirror a batch left-right with its dense targets (cells reorder, box x coordinates mirror)."""
    n = x.shape[0]
    x = x.flip(2)
    order = torch.arange(cls.shape[1], device=cls.device).view(-1, cols).flip(1).reshape(-1)
    cls = cls[:, order]
    boxes = boxes[:, order]
    boxes = torch.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], dim=-1)
    flipped = []
    for tensor in extra:
        if tensor.dim() == 3 and tensor.shape[-1] == 4:  # teacher boxes (n, A, 4)
            t = tensor[:, order]
            flipped.append(torch.stack([width - t[..., 2], t[..., 1], width - t[..., 0], t[..., 3]], dim=-1))
        else:  # teacher scores (n, C, A)
            flipped.append(tensor[..., order])
    del n
    return x, cls, boxes, flipped


def fit_detector(
    model: DetectorDeployable,
    images: np.ndarray,
    targets: Targets | None = None,
    teacher: tuple[np.ndarray, np.ndarray] | None = None,
    config: DetectorFitConfig | None = None,
    desc: str = "train detector",
    progress: bool = True,
    labelled: np.ndarray | None = None,
) -> DetectorFitReport:
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
    set_threads(config.threads or int(os.environ.get("FLEETLOOP_TRAIN_THREADS", "0")) or None)
    torch.manual_seed(config.seed)
    device = _device()
    model.to(device).train()
    n = len(images)
    cols = model.width // STRIDE
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    if targets is not None:
        cls_all = torch.from_numpy(targets.classes)
        box_all = torch.from_numpy(targets.boxes)
    else:
        cls_all = torch.full((n, model.centres.shape[0]), -1, dtype=torch.int64)
        box_all = torch.zeros((n, model.centres.shape[0], 4))
    has_truth = torch.from_numpy(
        np.asarray(labelled if labelled is not None else np.full(n, targets is not None), bool)
    )
    t_scores = torch.from_numpy(np.asarray(teacher[0], np.float32)) if teacher is not None else None
    t_boxes = torch.from_numpy(np.asarray(teacher[1], np.float32)) if teacher is not None else None
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs, pct_start=0.2
    )
    generator = torch.Generator().manual_seed(config.seed)
    classes = model.num_classes
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(
        total=steps_per_epoch * config.epochs,
        desc=desc,
        disable=not progress,
        unit="batch",
        leave=False,
        dynamic_ncols=True,
    )
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        running, count = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x, cls, boxes = x_all[idx], cls_all[idx], box_all[idx]
            truth = has_truth[idx]
            extra = [t_scores[idx], t_boxes[idx]] if t_scores is not None else []
            if config.flip and bool(torch.rand(1, generator=generator) < 0.5):
                x, cls, boxes, extra = _flip(x, cls, boxes, model.width, cols, extra)
            x, cls, boxes, truth = x.to(device), cls.to(device), boxes.to(device), truth.to(device)
            logits, pred_boxes, _ = model.raw(x)
            loss = torch.zeros((), device=device)
            if truth.any():
                lt, bt, ct = logits[truth], pred_boxes[truth], cls[truth]
                positive = ct >= 0
                one_hot = torch.zeros_like(lt)
                if positive.any():
                    index = positive.nonzero(as_tuple=True)
                    one_hot[index[0], ct[positive], index[1]] = 1.0
                pos = max(float(positive.sum()), 1.0)
                loss = loss + focal_loss(lt, one_hot).sum() / pos
                if positive.any():
                    loss = loss + config.box_weight * giou_loss(bt[positive], boxes[truth][positive]).sum() / pos
            if extra:
                soft, teacher_boxes = extra[0].to(device), extra[1].to(device)
                loss = loss + config.distil_weight * classes * F.binary_cross_entropy_with_logits(logits, soft)
                confident = soft.max(dim=1).values > config.distil_confident
                if confident.any():
                    weight = soft.max(dim=1).values[confident]
                    loss = (
                        loss
                        + config.distil_box_weight
                        * (giou_loss(pred_boxes[confident], teacher_boxes[confident]) * weight).sum()
                        / weight.sum()
                    )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running += float(loss.detach()) * len(idx)
            count += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / count:.3f}")
        losses.append(running / max(count, 1))
    bar.close()
    model.eval().cpu()
    return DetectorFitReport(
        samples=n,
        epochs=config.epochs,
        seconds=time.perf_counter() - start,
        final_loss=losses[-1],
        losses=losses,
        device=str(device),
    )


@torch.no_grad()
def predict_dense(
    model: DetectorDeployable, images: np.ndarray, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Return (class scores (N, C, A) in [0, 1], boxes (N, A, 4) input pixels) with the torch model."""
    model.eval()
    device = next(model.parameters()).device
    scores, boxes = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        logits, b, _ = model.raw(x)
        scores.append(torch.sigmoid(logits).cpu().numpy())
        boxes.append(b.cpu().numpy())
    return np.concatenate(scores), np.concatenate(boxes)


def export_detector_onnx(model: DetectorDeployable, path: str | Path, layout: Layout | None = None) -> Path:
    """Write ``model`` in ``layout`` (default its own) as a single-file ONNX graph (opset 17, dynamic batch)."""
    model = model.eval().cpu()
    previous = model.layout
    if layout is not None:
        model.layout = layout
    try:
        names = LAYOUT_OUTPUTS[model.layout]
        dummy = torch.zeros((1, model.height, model.width, 3), dtype=torch.uint8)
        buffer = io.BytesIO()
        torch.onnx.export(
            model,
            (dummy,),
            buffer,
            input_names=["image"],
            output_names=list(names),
            dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in names}},
            opset_version=OPSET,
            dynamo=False,
        )
        with torch.no_grad():
            shapes = [tuple(t.shape) for t in model(dummy)]
    finally:
        model.layout = previous
    data = _static_output_shapes(buffer.getvalue(), names, shapes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def _static_output_shapes(model_bytes: bytes, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> bytes:
    """Return the ONNX graph with every output axis but the batch declared static (the exporter leaves
    concatenated and transposed axes symbolic), so loaders can check a layout without running it."""
    import onnx

    graph = onnx.load_from_string(model_bytes)
    for output in graph.graph.output:
        if output.name not in names:
            continue
        shape = shapes[list(names).index(output.name)]
        dims = output.type.tensor_type.shape.dim
        for axis, size in enumerate(shape):
            if axis == 0 or axis >= len(dims):
                continue
            dims[axis].ClearField("dim_param")
            dims[axis].dim_value = int(size)
    return graph.SerializeToString()
