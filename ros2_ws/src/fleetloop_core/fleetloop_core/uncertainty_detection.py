"""Detection uncertainty: pure, vectorised scores over boxes, each documented with its range.

Frames in a batch hold different numbers of boxes, so batch functions take padded arrays: row
``b`` of ``scores`` (B, K) holds frame b's box scores and NaN where it has fewer than K boxes
(:func:`pad` builds them). Per-frame functions take one frame's arrays. Boxes are (K, 4)
``x0, y0, x1, y1`` in pixels; scores are class confidences in [0, 1].

Scores (1 = as uncertain as it gets, 0 = certain):

* :func:`band_count` / :func:`band_score`: boxes whose score lies in a band around the decision
  threshold (the Roboflow active-learning rule), as a count (0, 1, 2, ...) and as
  ``1 - 0.5 ** count`` in [0, 1) (0 boxes -> 0, 1 -> 0.5, 2 -> 0.75, ...);
* :func:`box_entropy`: per box, the entropy of its per-class scores normalised to sum 1, divided
  by log(C), in [0, 1]; :func:`box_entropy_stats` gives the frame's mean and max (0 without boxes);
* :func:`box_disagreement`: two tiers' box sets matched greedily by IoU (pairs at or above
  ``iou_threshold``, highest IoU first): the unmatched boxes (count, >= 0), the mean IoU of the
  matched pairs (in [iou_threshold, 1]; 1 when neither tier found a box, 0 when one found boxes and
  no pair matched), class conflicts among the pairs (count) and one score in [0, 1],
  ``1 - sum(matched IoU) / (M + N - matched)``: 0 when both tiers found the same boxes, 1 when no
  box of one overlaps a box of the other (a soft Jaccard distance between the two sets);
* :func:`count_flicker`: the fraction of frame-to-frame changes of the number of boxes along a
  window of a stream, in [0, 1] (``fleetloop_core.uncertainty.flicker`` on counts).

:data:`SCORE_PARTS` names what the selector weighs on a detection frame (the detection task's
``score_parts``; ``selection.weights.detection`` in the selector's config): ``band``,
``box_entropy_mean``, ``box_entropy_max``, ``disagreement`` (the box disagreement score),
``count_flicker`` and ``novelty`` (embedding novelty, as for classification). ``disagreement`` and
``novelty`` keep the names they have for every task, so the policies that read one part
(``disagreement``, ``novelty``) work on any task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fleetloop_core import uncertainty as unc

_EPS = 1e-12
SCORE_PARTS = ("band", "box_entropy_mean", "box_entropy_max", "disagreement", "count_flicker", "novelty")


# --------------------------------------------------------------------------- padding


def pad(rows: Sequence[np.ndarray], width: int | None = None, fill: float = np.nan) -> np.ndarray:
    """Return per-frame arrays (K_b, ...) stacked into (B, K, ...) with ``fill`` after each frame's rows."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    tail = next((np.asarray(r).shape[1:] for r in rows if np.asarray(r).ndim > 1), ())
    out = np.full((len(rows), width, *tail), fill, np.float32)
    for i, row in enumerate(rows):
        row = np.asarray(row, np.float32)
        if len(row):
            out[i, : len(row)] = row[:width]
    return out


# --------------------------------------------------------------------------- score band


def band_count(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    """Return, per frame, the number of boxes with ``low <= score < high`` (NaN padding ignored); (B,) int64."""
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"score band must satisfy 0 <= low <= high <= 1 (got {low}, {high})")
    s = np.asarray(scores, np.float32)
    if s.ndim == 1:
        s = s[None]
    with np.errstate(invalid="ignore"):
        inside = (s >= low) & (s < high)
    return inside.sum(axis=1).astype(np.int64)


def band_score(count: np.ndarray | int) -> np.ndarray:
    """Return ``1 - 0.5 ** count`` in [0, 1): 0 with no box in the band, approaching 1 with many."""
    c = np.maximum(np.asarray(count, np.float64), 0.0)
    return (1.0 - np.power(0.5, c)).astype(np.float32)


def band_around(threshold: float, width: float) -> tuple[float, float]:
    """Return the band ``[threshold - width, threshold + width)`` clipped to [0, 1]."""
    return max(0.0, threshold - width), min(1.0, threshold + width)


# --------------------------------------------------------------------------- class entropy


def box_entropy(class_scores: np.ndarray) -> np.ndarray:
    """Return each box's normalised class entropy in [0, 1] from per-class scores (..., C); NaN rows stay NaN.

    Scores are independent sigmoids for most detectors, so they are first normalised to sum 1; a
    row of zeros counts as uniform (the detector has no opinion: entropy 1).
    """
    s = np.asarray(class_scores, np.float64)
    if s.shape[-1] < 2:
        raise ValueError(f"per-class scores need >= 2 classes, got shape {s.shape}")
    s = np.clip(s, 0.0, None)
    total = s.sum(axis=-1, keepdims=True)
    p = np.where(total > _EPS, s / np.where(total > _EPS, total, 1.0), 1.0 / s.shape[-1])
    h = -np.sum(p * np.log(np.clip(p, _EPS, 1.0)), axis=-1) / math.log(s.shape[-1])
    return np.clip(h, 0.0, 1.0).astype(np.float32)


def box_entropy_stats(class_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return per frame (mean, max) of the box entropies of padded (B, K, C) scores; 0 for frames without boxes."""
    s = np.asarray(class_scores, np.float32)
    if s.ndim == 2:
        s = s[None]
    if s.shape[1] == 0:
        zeros = np.zeros(s.shape[0], np.float32)
        return zeros, zeros.copy()
    h = box_entropy(np.nan_to_num(s, nan=0.0))
    valid = ~np.isnan(s).any(axis=-1)
    count = valid.sum(axis=1)
    mean = np.where(count > 0, np.where(valid, h, 0.0).sum(axis=1) / np.maximum(count, 1), 0.0)
    peak = np.where(valid, h, 0.0).max(axis=1)
    return mean.astype(np.float32), peak.astype(np.float32)


# --------------------------------------------------------------------------- box matching


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the (M, N) IoU matrix of boxes ``a`` (M, 4) and ``b`` (N, 4), each in [0, 1]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0).astype(np.float32)


@dataclass(frozen=True)
class Matching:
    """Greedy IoU matching of two box sets: pairs (i in a, j in b) with their IoU, and the unmatched."""

    pairs: np.ndarray  # (P, 2) int64
    ious: np.ndarray  # (P,) float32, each >= the threshold
    unmatched_a: np.ndarray  # indices into a
    unmatched_b: np.ndarray  # indices into b


def match_boxes(a: np.ndarray, b: np.ndarray, iou_threshold: float = 0.5) -> Matching:
    """Return the greedy one-to-one matching of ``a`` and ``b`` (highest IoU first, pairs >= ``iou_threshold``)."""
    iou = pairwise_iou(a, b)
    m, n = iou.shape
    pairs, values = [], []
    if m and n:
        order = np.argsort(-iou, axis=None, kind="stable")
        used_a = np.zeros(m, bool)
        used_b = np.zeros(n, bool)
        for flat in order:
            i, j = divmod(int(flat), n)
            value = iou[i, j]
            if value < iou_threshold or (value <= 0.0 and iou_threshold <= 0.0):
                break
            if used_a[i] or used_b[j]:
                continue
            used_a[i] = used_b[j] = True
            pairs.append((i, j))
            values.append(value)
            if len(pairs) == min(m, n):
                break
    pairs_array = np.asarray(pairs, np.int64).reshape(-1, 2)
    matched_a = set(pairs_array[:, 0].tolist())
    matched_b = set(pairs_array[:, 1].tolist())
    return Matching(
        pairs_array,
        np.asarray(values, np.float32),
        np.asarray([i for i in range(m) if i not in matched_a], np.int64),
        np.asarray([j for j in range(n) if j not in matched_b], np.int64),
    )


@dataclass(frozen=True)
class Disagreement:
    """How two tiers' box sets differ (see the module docstring for every range)."""

    score: float  # [0, 1]: 1 - sum(matched IoU) / (M + N - matched)
    unmatched: int  # boxes of either tier without a partner
    matched: int
    mean_iou: float  # of matched pairs; 1 when both empty; 0 when boxes but no pair
    class_conflicts: int  # matched pairs whose classes differ


def box_disagreement(
    boxes_a: np.ndarray,
    boxes_b: np.ndarray,
    classes_a: np.ndarray | None = None,
    classes_b: np.ndarray | None = None,
    iou_threshold: float = 0.5,
) -> Disagreement:
    """Return the disagreement between two tiers' boxes on one frame (classes optional)."""
    boxes_a = np.asarray(boxes_a, np.float32).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, np.float32).reshape(-1, 4)
    m, n = len(boxes_a), len(boxes_b)
    if m == 0 and n == 0:
        return Disagreement(0.0, 0, 0, 1.0, 0)
    matching = match_boxes(boxes_a, boxes_b, iou_threshold)
    matched = len(matching.pairs)
    union = m + n - matched
    score = 1.0 - float(matching.ious.sum()) / union
    conflicts = 0
    if matched and classes_a is not None and classes_b is not None:
        ca = np.asarray(classes_a)[matching.pairs[:, 0]]
        cb = np.asarray(classes_b)[matching.pairs[:, 1]]
        conflicts = int((ca != cb).sum())
    mean_iou = float(matching.ious.mean()) if matched else 0.0
    return Disagreement(float(np.clip(score, 0.0, 1.0)), union - matched, matched, mean_iou, conflicts)


# --------------------------------------------------------------------------- temporal


def count_flicker(count_windows: np.ndarray) -> np.ndarray:
    """Return the fraction of frame-to-frame changes of the box count in each window (B, W), in [0, 1]."""
    return unc.flicker(np.asarray(count_windows, np.int64))
