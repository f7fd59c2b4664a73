"""Routing decisions (pure functions): threshold from audited data, acceptance, tracks, propagation.

* :func:`choose_threshold` picks the lowest calibrated-confidence threshold at which the frames
  humans labeled at random (the unbiased validation sample) show an auto-label accuracy whose
  Wilson lower bound (``z``; 0 = point estimate) reaches the target, among frames where the
  tiers agree. With too little evidence it returns ``inf``: nothing is auto-accepted, humans
  label, and automation rises as audited data accumulates.
* :func:`derive_tracks` groups frames into tracks: the robot's ``track_hint`` when present,
  else consecutive frames of one stream close in time whose teacher embeddings are similar.
* :func:`propagate` lets one human label confirm the other frames of its track *on which the
  tiers agree with it*; those labels are audited like any other auto-label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np


def _wilson_bound(successes: int, n: int, z: float, side: int) -> float:
    """Return the Wilson score bound of a proportion at ``z`` (side -1: lower, +1: upper; z=0: the estimate)."""
    p = successes / n
    if z <= 0:
        return p
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(1.0, max(0.0, (centre + side * spread) / (1 + z2 / n)))


def wilson_lower(successes: int, n: int, z: float) -> float:
    """Return the Wilson score lower bound of a proportion at ``z`` (z=0: the point estimate; n=0: 0)."""
    return _wilson_bound(successes, n, z, -1) if n > 0 else 0.0


def wilson_upper(successes: int, n: int, z: float) -> float:
    """Return the Wilson score upper bound of a proportion at ``z`` (z=0: the point estimate; n=0: 1)."""
    return _wilson_bound(successes, n, z, +1) if n > 0 else 1.0


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Return the two-sided Wilson score interval (low, high) of a proportion; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - spread)
    high = 1.0 if successes == n else min(1.0, centre + spread)
    return low, high


def audit_figures(sources: list[str], correct: list[bool], confidence_level: float) -> dict:
    """Return audited frames, right ones, accuracy (None of none) and its Wilson interval, overall and per label
    source."""
    by_source: dict[str, dict] = {}
    for source, ok in zip(sources, correct):
        entry = by_source.setdefault(source, {"frames": 0, "correct": 0})
        entry["frames"] += 1
        entry["correct"] += int(ok)
    for entry in by_source.values():
        entry["accuracy"] = entry["correct"] / entry["frames"]
        entry["ci"] = list(wilson_interval(entry["correct"], entry["frames"], confidence_level))
    right = int(sum(correct))
    return {
        "frames": len(correct),
        "correct": right,
        "accuracy": right / len(correct) if correct else None,
        "ci": list(wilson_interval(right, len(correct), confidence_level)),
        "by_source": by_source,
    }


@dataclass(frozen=True)
class Threshold:
    """A routing threshold and the evidence behind it."""

    value: float  # accept calibrated confidence >= value; inf: accept nothing
    validation_frames: int  # human-labeled random frames considered
    eligible_frames: int  # of which the tiers agreed
    accepted_frames: int  # of which at or above the threshold
    accuracy: float  # auto-label accuracy on those (point estimate)
    lower_bound: float  # its Wilson lower bound at z
    reason: str

    @property
    def automated(self) -> bool:
        """Return whether any frame can be auto-accepted."""
        return math.isfinite(self.value)

    def to_dict(self) -> dict:
        """Return JSON-able data (inf as None)."""
        return {
            "value": self.value if self.automated else None,
            "validation_frames": self.validation_frames,
            "eligible_frames": self.eligible_frames,
            "accepted_frames": self.accepted_frames,
            "accuracy": round(self.accuracy, 4),
            "lower_bound": round(self.lower_bound, 4),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Evidence:
    """How the validation frames a threshold would accept fare against the target."""

    meets: bool  # they reach the target
    accuracy: float  # point estimate (the Threshold's ``accuracy``)
    lower_bound: float  # its Wilson lower bound (the Threshold's ``lower_bound``)
    met: str  # the Threshold's ``reason`` when these frames are the ones accepted
    missed: str  # its reason when no threshold passes (these frames: the most confident ``min_accepted``)


def lowest_threshold(
    confidence: np.ndarray,
    eligible: np.ndarray,
    min_accepted: int,
    floor: float,
    judge: Callable[[np.ndarray], Evidence],
) -> Threshold:
    """Return the lowest confidence threshold whose accepted validation frames ``judge`` passes.

    A threshold accepts the eligible frames (tiers agree) at or above it, every tie included, and
    at least ``min_accepted`` of them; ``judge`` gets their indices, most confident first. Below
    ``floor`` no threshold is tried. With too few eligible frames, or none passing, the threshold
    is ``inf`` (nothing is auto-accepted); the judge's verdict on the ``min_accepted`` most
    confident frames then says why.
    """
    confidence = np.asarray(confidence, np.float64)
    eligible = np.asarray(eligible, bool)
    n_validation, n_eligible = len(confidence), int(eligible.sum())
    if n_eligible < min_accepted:
        reason = f"only {n_eligible} eligible validation frames (need {min_accepted})"
        return Threshold(math.inf, n_validation, n_eligible, 0, 0.0, 0.0, reason)
    index = np.flatnonzero(eligible)
    order = index[np.argsort(-confidence[index], kind="stable")]
    conf_sorted = confidence[order]
    best, best_evidence = 0, None
    for k in range(min_accepted, n_eligible + 1):
        # a threshold accepts every tie: only cut where the next confidence is strictly lower
        if k < n_eligible and conf_sorted[k] == conf_sorted[k - 1]:
            continue
        if conf_sorted[k - 1] < floor:
            break
        evidence = judge(order[:k])
        if evidence.meets:
            best, best_evidence = k, evidence
    if best_evidence is None:
        evidence = judge(order[:min_accepted])
        return Threshold(
            math.inf, n_validation, n_eligible, 0, evidence.accuracy, evidence.lower_bound, evidence.missed
        )
    value = max(float(conf_sorted[best - 1]), floor)
    e = best_evidence
    return Threshold(value, n_validation, n_eligible, best, e.accuracy, e.lower_bound, e.met)


def choose_threshold(
    confidence: np.ndarray,
    correct: np.ndarray,
    eligible: np.ndarray,
    target: float,
    z: float = 1.0,
    min_accepted: int = 30,
    floor: float = 0.0,
) -> Threshold:
    """Return the lowest threshold whose accepted validation frames meet ``target`` accuracy.

    ``confidence`` are calibrated confidences in [0, 1], ``correct`` whether the auto-label matched
    the human label, ``eligible`` whether the tiers agreed (only those may be accepted). The bound
    is the Wilson lower bound at ``z``; at least ``min_accepted`` validation frames must be at or
    above the threshold. ``floor`` (from audit tightening) is a minimum for the result.
    """
    correct = np.asarray(correct, bool)

    def judge(accepted: np.ndarray) -> Evidence:
        hits, n = int(correct[accepted].sum()), len(accepted)
        bound = wilson_lower(hits, n, z)
        met = f"lowest threshold whose {n} accepted validation frames meet {target:.3f}"
        missed = f"no threshold reaches {target:.3f} (Wilson lower bound at z={z}) on the validation sample"
        return Evidence(bound >= target, hits / n, bound, met, missed)

    return lowest_threshold(confidence, eligible, min_accepted, floor, judge)


def accept(confidence: np.ndarray, agree: np.ndarray, threshold: float) -> np.ndarray:
    """Return the auto-accept mask: tiers agree and calibrated confidence >= threshold."""
    return np.asarray(agree, bool) & (np.asarray(confidence) >= threshold)


def derive_tracks(
    robots: Sequence[str],
    streams: Sequence[str],
    stamps_ns: np.ndarray,
    embeddings: np.ndarray | None,
    hints: Sequence[str | None],
    frame_ids: Sequence[str],
    max_gap_s: float = 1.0,
    min_similarity: float = 0.9,
    use_hints: bool = True,
    hint_max_gap_s: float = 2.0,
    hint_min_similarity: float = 0.7,
) -> list[str]:
    """Return a track key per frame (a frame alone is its own track).

    Frames with a robot ``hint`` join ``<robot>/<stream>/hint:<hint>`` while each follows the hint's
    previous frame within ``hint_max_gap_s`` and with an embedding cosine of at least
    ``hint_min_similarity``; where one does not, the hint's frames from it on form a new track
    (``...#<n>``): a robot's tracker runs on its edge model, and a weak one chains what it cannot
    tell apart (measured: a round-0 T4 made one "track" of 69 uploads over 109 s, seven classes).
    Frames without a hint chain with the previous frame of the same stream when at most
    ``max_gap_s`` apart and their embeddings' cosine is at least ``min_similarity``. Embeddings must
    be unit length.
    """
    n = len(frame_ids)
    keys = [""] * n
    order = sorted(range(n), key=lambda i: (robots[i], streams[i], int(stamps_ns[i])))
    previous = None
    chain_key = ""
    hint_tails: dict[str, tuple[int, int]] = {}  # hint track -> (its latest frame, its segment)

    def continues(before: int, after: int, max_gap: float, similarity: float) -> bool:
        if (int(stamps_ns[after]) - int(stamps_ns[before])) / 1e9 > max_gap:
            return False
        return embeddings is None or float(np.dot(embeddings[before], embeddings[after])) >= similarity

    for i in order:
        hint = hints[i] if use_hints else None
        if hint:
            base = f"{robots[i]}/{streams[i]}/hint:{hint}"
            tail, segment = hint_tails.get(base, (-1, 0))
            if tail >= 0 and not continues(tail, i, hint_max_gap_s, hint_min_similarity):
                segment += 1
            hint_tails[base] = (i, segment)
            keys[i] = base if segment == 0 else f"{base}#{segment}"
            previous = None  # an item track interrupts any background chain
            continue
        joined = False
        if previous is not None and robots[previous] == robots[i] and streams[previous] == streams[i]:
            joined = embeddings is not None and continues(previous, i, max_gap_s, min_similarity)
        if not joined:
            chain_key = f"{robots[i]}/{streams[i]}/auto:{frame_ids[i]}"
        keys[i] = chain_key
        previous = i
    return keys


@dataclass
class Propagation:
    """What propagation decided: labels by frame index, disputes and ambiguous tracks."""

    labels: dict[int, int] = field(default_factory=dict)
    disputed: list[int] = field(default_factory=list)  # accepted frames contradicting their track's human label
    ambiguous_tracks: list[str] = field(default_factory=list)


def propagate(
    track_keys: Sequence[str],
    predicted: np.ndarray,
    agree: np.ndarray,
    confidence: np.ndarray,
    human: dict[int, int],
    candidates: np.ndarray,
    accepted: np.ndarray | None = None,
    min_confidence: float = 0.0,
) -> Propagation:
    """Return labels propagated from human-labeled frames to the rest of their tracks.

    A candidate frame takes its track's human label when the track's human labels agree on one
    class, the tiers agree on the frame, and their label is that class (calibrated confidence at
    least ``min_confidence``). Already ``accepted`` frames whose label contradicts their track's
    human label are returned as disputed (they go back to review).
    """
    out = Propagation()
    by_track: dict[str, set[int]] = {}
    for index, label in human.items():
        by_track.setdefault(track_keys[index], set()).add(int(label))
    for track, labels in by_track.items():
        if len(labels) > 1:
            out.ambiguous_tracks.append(track)
    for index, track in enumerate(track_keys):
        labels = by_track.get(track)
        if not labels or len(labels) != 1 or index in human:
            continue
        (label,) = labels
        if (
            candidates[index]
            and agree[index]
            and int(predicted[index]) == label
            and confidence[index] >= min_confidence
        ):
            out.labels[index] = label
        elif accepted is not None and accepted[index] and int(predicted[index]) != label:
            out.disputed.append(index)
    return out


def class_thresholds(
    confidence: np.ndarray,
    label: np.ndarray,
    correct: np.ndarray,
    classes: int,
    target: float,
    z: float = 1.0,
    min_accepted: int = 30,
    floor: float = 0.0,
) -> list[Threshold]:
    """Return one threshold per class (Mondrian), each from the validation frames auto-labeled that class.

    A class with at least ``min_accepted`` validation frames is routed on its own evidence, so a
    class the teachers confuse (shirt) cannot ride on one they never miss (trouser). The classes
    with fewer frames form one group routed on their pooled evidence (their errors count against
    all of them); a class or group without a passing threshold is not automated (``inf``).
    ``correct``: whether the auto-label matched the human label.
    """
    confidence, label, correct = np.asarray(confidence, np.float64), np.asarray(label), np.asarray(correct, bool)
    counts = np.bincount(label.astype(np.int64), minlength=classes) if len(label) else np.zeros(classes, int)
    own = counts >= min_accepted

    def threshold(mask: np.ndarray) -> Threshold:
        ones = np.ones(int(mask.sum()), bool)
        return choose_threshold(confidence[mask], correct[mask], ones, target, z, min_accepted, floor)

    pooled_classes = [c for c in range(classes) if not own[c]]
    pooled = threshold(np.isin(label, pooled_classes)) if pooled_classes else None
    out = []
    for c in range(classes):
        if own[c]:
            out.append(threshold(label == c))
        else:
            assert pooled is not None
            reason = f"{pooled.reason} (pooled: {len(pooled_classes)} classes with under {min_accepted} frames each)"
            out.append(replace(pooled, reason=reason))
    return out


def needs_another_opinion(answers: Sequence[int], suggestion: int | None) -> bool:
    """Return whether a frame's human answers (oldest first) need one more person: a first answer that
    contradicts the shown ``suggestion``, or a second that contradicts the first (the third decides)."""
    if suggestion is None or not answers or len(answers) >= 3:
        return False
    if len(answers) == 1:
        return int(answers[0]) != int(suggestion)
    return int(answers[1]) != int(answers[0])


def accept_by_class(confidence: np.ndarray, label: np.ndarray, thresholds: Sequence[Threshold]) -> np.ndarray:
    """Return the auto-accept mask: calibrated confidence at or above the threshold of the frame's class."""
    values = np.asarray([t.value for t in thresholds], np.float64)
    return np.asarray(confidence, np.float64) >= values[np.asarray(label, np.int64)]


@dataclass(frozen=True)
class Revalidation:
    """Whether pooled evidence still holds for changed teachers, judged on a fresh random sample."""

    keep: bool
    frames: int  # fresh frames the pooled thresholds accept
    correct: int
    upper_bound: float  # Wilson upper bound of their accuracy
    reason: str


def revalidate(
    accepted: np.ndarray, correct: np.ndarray, fresh: np.ndarray, target: float, confidence_level: float = 0.95
) -> Revalidation:
    """Return whether the fresh sample agrees with thresholds chosen on pooled evidence.

    ``accepted``: the validation frames the pooled thresholds accept; ``fresh``: those drawn this
    round (after the teacher changed). The pooled evidence is kept unless the fresh accepted frames'
    accuracy is significantly below ``target`` (the Wilson interval's upper end under it).
    """
    chosen = np.asarray(accepted, bool) & np.asarray(fresh, bool)
    n, hits = int(chosen.sum()), int(np.asarray(correct, bool)[chosen].sum())
    if n == 0:
        return Revalidation(True, 0, 0, 1.0, "no fresh frame accepted: nothing contradicts the pooled evidence")
    _, high = wilson_interval(hits, n, confidence_level)
    if high < target:
        reason = f"fresh sample: {hits}/{n} accepted frames correct, upper bound {high:.3f} < {target:.3f}"
        return Revalidation(False, n, hits, high, reason + ": evidence reset to this round")
    return Revalidation(True, n, hits, high, f"fresh sample: {hits}/{n} accepted frames correct, consistent")
