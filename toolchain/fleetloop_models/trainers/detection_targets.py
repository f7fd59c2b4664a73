"""Detection's target encoding and losses: dense per-cell targets, GIoU, sigmoid focal loss, the mirror augmentation.

Training assigns each ground-truth box to the cells whose centre lies in the box's central region
(FCOS centre sampling, radius 1.5 cells; the smallest box wins a contested cell; every box gets at
least the cell holding its centre) and minimises sigmoid focal loss on the class maps plus GIoU
loss on the boxes of assigned cells (``fleetloop_models.trainers.detection``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from fleetloop_models.zoo import STRIDE, cell_centres

if TYPE_CHECKING:
    from fleetloop_models.trainers.detection import DetectorFitConfig


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


def _mirror(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Return x0y0x1y1 boxes (..., 4) mirrored left-right in an input ``width`` pixels wide."""
    return torch.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], dim=-1)


def flip_batch(
    x: torch.Tensor, cls: torch.Tensor, boxes: torch.Tensor, width: int, cols: int, teacher: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Mirror a batch left-right with its dense targets (cells reorder, box x coordinates mirror).

    ``teacher``: [] or [scores (n, C, A), boxes (n, A, 4)], mirrored alike.
    """
    order = torch.arange(cls.shape[1], device=cls.device).view(-1, cols).flip(1).reshape(-1)
    mirrored = [_mirror(teacher[1][:, order], width)] if teacher else []
    return (
        x.flip(2),
        cls[:, order],
        _mirror(boxes[:, order], width),
        [teacher[0][..., order], *mirrored] if teacher else [],
    )


def dense_loss(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    cls: torch.Tensor,
    boxes: torch.Tensor,
    truth: torch.Tensor,
    teacher: list[torch.Tensor],
    config: DetectorFitConfig,
) -> torch.Tensor:
    """Return one batch's detection loss: focal + GIoU on frames with ground truth, plus distillation.

    ``logits`` (n, C, A) and ``pred_boxes`` (n, A, 4) from the student; ``cls`` (n, A) and ``boxes``
    (n, A, 4) the dense targets; ``truth`` (n,) bool which frames have them; ``teacher``: [] or
    [scores (n, C, A), boxes (n, A, 4)]; ``config`` a ``DetectorFitConfig`` (its loss weights).
    """
    loss = torch.zeros((), device=logits.device)
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
    if teacher:
        soft, teacher_boxes = teacher
        classes = logits.shape[1]
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
    return loss
