"""Box auto-labels and their routing (pure functions): consensus of two detector tiers, quality against
human boxes, the threshold chosen from audited data.

* :func:`consensus` matches the two tiers' boxes by IoU (``fleetloop_core.uncertainty_detection``)
  and fuses each matched pair by weighted box fusion (coordinates averaged with the scores as
  weights, score = mean of the tiers' scores, class = argmax of the summed class scores). A box one
  tier found and the other did not (a *one-tier box*) stays in the suggestion with its score times
  its tier's weight and makes the frame *disagree*, as do a class conflict and a mean IoU of matched
  pairs below ``min_iou``. Without evidence the weight is 1/2 (WBF's rule for a box seen by one of
  two models); with evidence (:func:`solo_evidence`: how often a tier's one-tier boxes were right
  on frames people boxed) it is the Wilson upper bound of that precision, and a tier whose bound is
  below ``min_solo_weight`` (where deleting its boxes costs people more than drawing the few right
  ones would) has its one-tier boxes dropped: they neither enter the suggestion nor veto agreement,
  and they lower the frame's confidence by their weighted score only. The frame's confidence is its
  weakest fused box's score, and at most 1 - the best score of the boxes either tier saw below the
  decision threshold (so an "empty" frame with a faint candidate is less sure than one where the
  tiers saw nothing at all).
* :func:`compare` measures an auto-label against human boxes the way the audit does: boxes matched
  at IoU >= 0.5; the *mean IoU* averages over every box of either side, an unmatched box counting 0
  (so a missed or an invented box costs as much as a bad one); *class accuracy* is over matched pairs.
* :func:`choose_threshold` picks the lowest confidence threshold whose accepted validation frames
  (humans labelled them at random) meet both targets (default mean IoU >= 0.7 and class accuracy
  >= 98 %, the latter as a Wilson lower bound at ``z``); with too little evidence nothing is
  automated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fleetloop_core.uncertainty_detection import match_boxes

from fleetloop_cloud.routing import Evidence, Threshold, lowest_threshold, wilson_lower

WBF_WEIGHT = 0.5  # a box one of two models saw keeps half its score (weighted box fusion)


@dataclass(frozen=True)
class BoxSet:
    """Boxes of one frame: (K, 4) x0y0x1y1 pixels, scores (K,), classes (K,), optional class scores (K, C)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float]], with_scores: bool = True) -> "BoxSet":
        """Return a BoxSet of rows ``[x0, y0, x1, y1, score, class]`` (or ``[x0, y0, x1, y1, class]``)."""
        array = np.asarray(rows, np.float64).reshape(-1, 6 if with_scores else 5)
        scores = array[:, 4] if with_scores else np.ones(len(array))
        return cls(array[:, :4].astype(np.float32), scores.astype(np.float32), array[:, -1].astype(np.int64))

    def rows(self, with_scores: bool = True) -> list[list[float]]:
        """Return JSON-able rows ``[x0, y0, x1, y1, (score,) class]``."""
        out = []
        for box, score, cls in zip(self.boxes, self.scores, self.classes):
            row = [round(float(v), 2) for v in box]
            if with_scores:
                row.append(round(float(score), 4))
            out.append(row + [int(cls)])
        return out


def empty_set() -> BoxSet:
    return BoxSet(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


@dataclass(frozen=True)
class Consensus:
    """Two tiers' boxes on one frame, fused, and whether they agree."""

    fused: BoxSet  # the suggestion: matched pairs fused + kept one-tier boxes at their weighted score
    matched: int
    unmatched: int
    mean_iou: float  # of matched pairs (1 when both tiers found nothing)
    class_conflicts: int
    confidence: float  # [0, 1]: the weakest fused box's score; 1 for an agreed empty frame
    agree: bool

    @property
    def uncertainty(self) -> float:
        """Return 1 - confidence, raised to 1 where the tiers disagree ([0, 1])."""
        return 1.0 if not self.agree else 1.0 - self.confidence


def _take(boxes: BoxSet, keep: np.ndarray) -> BoxSet:
    return BoxSet(
        boxes.boxes[keep],
        boxes.scores[keep],
        boxes.classes[keep],
        None if boxes.class_scores is None else boxes.class_scores[keep],
    )


def _split(boxes: BoxSet, threshold: float) -> tuple[BoxSet, float]:
    keep = boxes.scores >= threshold
    dropped = float(boxes.scores[~keep].max()) if (~keep).any() else 0.0
    return (boxes if keep.all() else _take(boxes, keep)), dropped


@dataclass(frozen=True)
class SoloEvidence:
    """One tier's one-tier boxes on frames people boxed: how many a human box confirmed (same class, IoU)."""

    right: int = 0
    total: int = 0

    def weight(self, z: float = 1.0, min_boxes: int = 20) -> float:
        """Return the score factor of the tier's one-tier boxes: the Wilson upper bound at ``z`` of their
        precision, or WBF's 1/2 with fewer than ``min_boxes`` of them seen."""
        if self.total < min_boxes:
            return WBF_WEIGHT
        return 1.0 - wilson_lower(self.total - self.right, self.total, z)

    def to_dict(self) -> dict:
        return {"right": self.right, "total": self.total}


def solo_evidence(
    frames: Sequence[tuple[BoxSet, BoxSet, BoxSet]], match_iou: float = 0.5, threshold: float = 0.0
) -> tuple[SoloEvidence, SoloEvidence]:
    """Return, for tier A and tier B, how many of the boxes only that tier found (scoring >= ``threshold``,
    not matched by the other tier at ``match_iou``) a human box confirms (IoU >= ``match_iou``, same
    class), over ``frames`` of (tier A's boxes, tier B's boxes, the human's boxes)."""
    counts = [[0, 0], [0, 0]]
    for a, b, human in frames:
        a, _ = _split(a, threshold)
        b, _ = _split(b, threshold)
        matching = match_boxes(a.boxes, b.boxes, match_iou)
        for k, (source, indices) in enumerate(((a, matching.unmatched_a), (b, matching.unmatched_b))):
            if len(indices):
                check = compare(_take(source, indices), human, match_iou)
                counts[k][0] += int(check.class_correct.sum())
                counts[k][1] += len(indices)
    return SoloEvidence(*counts[0]), SoloEvidence(*counts[1])


def consensus(
    a: BoxSet,
    b: BoxSet,
    match_iou: float = 0.5,
    min_iou: float = 0.7,
    threshold: float = 0.0,
    solo_weights: tuple[float, float] = (WBF_WEIGHT, WBF_WEIGHT),
    min_solo_weight: float = 0.0,
) -> Consensus:
    """Return the fused auto-label of two tiers' boxes on one frame (see the module docstring).

    Boxes scoring below ``threshold`` are candidates only: they are not in the suggestion, but the
    strongest of them lowers the frame's confidence to at most 1 - its score (a frame is as
    confident as its weakest kept box and its strongest dropped one). ``solo_weights`` scale the
    one-tier boxes of tier A and tier B; a tier's weight below ``min_solo_weight`` drops them.
    """
    a, dropped_a = _split(a, threshold)
    b, dropped_b = _split(b, threshold)
    doubt = 1.0 - max(dropped_a, dropped_b)
    if len(a) == 0 and len(b) == 0:
        return Consensus(empty_set(), 0, 0, 1.0, 0, doubt, True)
    matching = match_boxes(a.boxes, b.boxes, match_iou)
    boxes, scores, classes = [], [], []
    conflicts = 0
    for (i, j), _ in zip(matching.pairs, matching.ious):
        wa, wb = float(a.scores[i]), float(b.scores[j])
        weight = max(wa + wb, 1e-9)
        boxes.append((a.boxes[i] * wa + b.boxes[j] * wb) / weight)
        scores.append((wa + wb) / 2.0)
        if a.class_scores is not None and b.class_scores is not None:
            cls = int(np.argmax(a.class_scores[i] + b.class_scores[j]))
        else:
            cls = int(a.classes[i]) if wa >= wb else int(b.classes[j])
        conflicts += int(a.classes[i] != b.classes[j])
        classes.append(cls)
    unmatched = 0
    for source, indices, weight in zip((a, b), (matching.unmatched_a, matching.unmatched_b), solo_weights):
        for i in indices:
            if weight < min_solo_weight:  # this tier's one-tier boxes are wrong by evidence: a doubt, no box
                doubt = min(doubt, 1.0 - float(source.scores[i]) * weight)
                continue
            boxes.append(source.boxes[i])
            scores.append(float(source.scores[i]) * weight)
            classes.append(int(source.classes[i]))
            unmatched += 1
    fused = BoxSet(
        np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(classes, np.int64)
    )
    matched = len(matching.pairs)
    mean_iou = float(matching.ious.mean()) if matched else (1.0 if unmatched == 0 else 0.0)  # 1: all dropped
    agree = unmatched == 0 and conflicts == 0 and mean_iou >= min_iou
    confidence = min(float(fused.scores.min()) if len(fused) else 1.0, doubt)
    return Consensus(fused, matched, unmatched, mean_iou, conflicts, confidence, agree)


# ------------------------------------------------------------------------------------ quality


@dataclass(frozen=True)
class Comparison:
    """An auto-label against human boxes on one frame."""

    ious: np.ndarray  # IoU of each matched pair
    class_correct: np.ndarray  # per matched pair: same class
    unmatched_auto: int  # boxes the auto-label invented
    unmatched_human: int  # boxes the auto-label missed

    @property
    def boxes(self) -> int:
        """Return the boxes of either side counted once (pairs + unmatched)."""
        return len(self.ious) + self.unmatched_auto + self.unmatched_human

    @property
    def exact(self) -> bool:
        """Return True when every box matched with its class right (the frame needs no correction)."""
        return self.unmatched_auto == 0 and self.unmatched_human == 0 and bool(np.all(self.class_correct))


def compare(auto: BoxSet, human: BoxSet, match_iou: float = 0.5) -> Comparison:
    """Return how an auto-label compares with human boxes on one frame (matched at ``match_iou``)."""
    matching = match_boxes(auto.boxes, human.boxes, match_iou)
    correct = (
        (auto.classes[matching.pairs[:, 0]] == human.classes[matching.pairs[:, 1]])
        if len(matching.pairs)
        else np.zeros(0, bool)
    )
    return Comparison(
        matching.ious.astype(np.float64),
        np.asarray(correct, bool),
        len(matching.unmatched_a),
        len(matching.unmatched_b),
    )


@dataclass(frozen=True)
class Quality:
    """Aggregate quality of many auto-labels against human boxes (the audit's figures)."""

    frames: int
    boxes: int  # boxes of either side counted once
    matched: int
    mean_iou: float  # over every box, unmatched ones counting 0; 1 for frames that are all empty
    matched_iou: float  # over matched pairs only
    class_correct: int
    class_accuracy: float  # over matched pairs (1 with no pairs)
    exact_frames: int

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "boxes": self.boxes,
            "matched": self.matched,
            "mean_iou": round(self.mean_iou, 4),
            "matched_iou": round(self.matched_iou, 4),
            "class_correct": self.class_correct,
            "class_accuracy": round(self.class_accuracy, 4),
            "exact_frames": self.exact_frames,
        }

    def meets(self, target_iou: float, target_class_accuracy: float, z: float = 0.0) -> bool:
        """Return whether mean IoU and (Wilson lower bound at ``z`` of) class accuracy reach the targets."""
        return (
            self.mean_iou >= target_iou and wilson_lower(self.class_correct, self.matched, z) >= target_class_accuracy
            if self.matched
            else self.mean_iou >= target_iou
        )


def aggregate(comparisons: Sequence[Comparison]) -> Quality:
    """Return the quality over many frames."""
    iou_sum = sum(float(c.ious.sum()) for c in comparisons)
    boxes = sum(c.boxes for c in comparisons)
    matched = sum(len(c.ious) for c in comparisons)
    correct = sum(int(c.class_correct.sum()) for c in comparisons)
    return Quality(
        frames=len(comparisons),
        boxes=boxes,
        matched=matched,
        mean_iou=iou_sum / boxes if boxes else 1.0,
        matched_iou=iou_sum / matched if matched else 1.0,
        class_correct=correct,
        class_accuracy=correct / matched if matched else 1.0,
        exact_frames=sum(c.exact for c in comparisons),
    )


# ------------------------------------------------------------------------------------ threshold


@dataclass(frozen=True)
class BoxTargets:
    """What auto-accepted box labels must reach, measured against human boxes."""

    mean_iou: float = 0.7
    class_accuracy: float = 0.98
    z: float = 1.0  # Wilson lower bound of the class accuracy at z (0: point estimate)
    min_accepted: int = 20  # validation frames at or above the threshold


def choose_threshold(
    confidence: np.ndarray,
    comparisons: Sequence[Comparison],
    eligible: np.ndarray,
    targets: BoxTargets = BoxTargets(),
    floor: float = 0.0,
) -> Threshold:
    """Return the lowest confidence threshold whose accepted validation frames meet both targets.

    ``confidence`` (N,) are the frames' consensus confidences, ``comparisons`` their auto-labels
    against the human boxes, ``eligible`` whether the tiers agreed (only those may be accepted).
    The Threshold's ``accuracy`` is the class accuracy and ``lower_bound`` its Wilson bound; the
    reason states the mean IoU reached.
    """

    def judge(accepted: np.ndarray) -> Evidence:
        quality = aggregate([comparisons[i] for i in accepted])
        met = (
            f"lowest threshold whose {len(accepted)} accepted validation frames reach mean IoU "
            f"{quality.mean_iou:.3f} >= {targets.mean_iou:.2f} and class accuracy "
            f"{quality.class_accuracy:.3f} (bound >= {targets.class_accuracy:.3f})"
        )
        missed = (
            f"no threshold reaches mean IoU {targets.mean_iou:.2f} and class accuracy "
            f"{targets.class_accuracy:.3f} on the validation sample (best {targets.min_accepted} frames: "
            f"mean IoU {quality.mean_iou:.3f}, class accuracy {quality.class_accuracy:.3f})"
        )
        return Evidence(
            quality.meets(targets.mean_iou, targets.class_accuracy, targets.z),
            quality.class_accuracy,
            wilson_lower(quality.class_correct, quality.matched, targets.z),
            met,
            missed,
        )

    return lowest_threshold(confidence, eligible, targets.min_accepted, floor, judge)


@dataclass
class Edits:
    """What a human changed in a suggestion (for box-level costs): kept, adjusted, deleted, drawn, reclassed."""

    kept: int = 0
    adjusted: int = 0
    deleted: int = 0
    drawn: int = 0
    reclassed: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kept": self.kept,
            "adjusted": self.adjusted,
            "deleted": self.deleted,
            "drawn": self.drawn,
            "reclassed": self.reclassed,
        }


def edits(suggestion: BoxSet | None, answer: BoxSet, same_iou: float = 0.9, match_iou: float = 0.3) -> Edits:
    """Return the edits that turn ``suggestion`` into ``answer``: a kept box overlaps its suggestion at
    ``same_iou`` or more, an adjusted one at ``match_iou`` or more; other answer boxes were drawn."""
    if suggestion is None or len(suggestion) == 0:
        return Edits(drawn=len(answer))
    matching = match_boxes(suggestion.boxes, answer.boxes, match_iou)
    out = Edits(deleted=len(matching.unmatched_a), drawn=len(matching.unmatched_b))
    for (i, j), iou in zip(matching.pairs, matching.ious):
        if iou >= same_iou:
            out.kept += 1
        else:
            out.adjusted += 1
        if suggestion.classes[i] != answer.classes[j]:
            out.reclassed += 1
    return out
