"""Selection policies: whether a frame's value score makes it a candidate for upload.

Each policy is one function ``(score, result, params, state) -> Verdict``, one parameter model and
one line in :data:`POLICIES`; ``config/selection.yaml`` picks one by name::

    policy: {name: adaptive_budget, params: {window: 1024}}
"""

from __future__ import annotations

import random as _random
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np
from pydantic import Field

from fleetloop_core.config import ConfigModel


class Verdict(NamedTuple):
    """A policy's answer: is the frame a candidate, against which threshold, and why."""

    candidate: bool
    threshold: float | None
    reason: str
    random: bool = False


class ThresholdParams(ConfigModel):
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)  # keep when score >= this


class AdaptiveParams(ConfigModel):
    window: int = Field(default=1024, ge=16)  # recent scores the quantile is taken over
    update_every: int = Field(default=32, ge=1)  # frames between quantile updates
    initial_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    min_threshold: float = Field(default=0.0, ge=0.0, le=1.0)  # never keep below this score
    warmup_frames: int = Field(default=64, ge=1)


class ScorePartParams(ConfigModel):
    threshold: float = Field(default=0.3, ge=0.0, le=1.0)  # keep when that score part >= this


class ClassQuotaParams(ConfigModel):
    threshold: float = Field(default=0.3, ge=0.0, le=1.0)  # minimum value score
    max_share: float = Field(default=0.25, gt=0.0, le=1.0)  # of recently kept frames, per class
    shares: dict[str, float] = Field(default_factory=dict)  # per-class overrides, by label name
    window: int = Field(default=200, ge=1)  # kept frames the shares are taken over
    warmup_kept: int = Field(default=10, ge=0)  # no quota before this many kept


class RandomParams(ConfigModel):
    fraction: float = Field(default=0.01, ge=0.0, le=1.0)


@dataclass
class PolicyState:
    """State a policy may keep between frames (one per selector; reset when the policy changes)."""

    rng: _random.Random
    labels: tuple[str, ...]
    target_fraction: Callable[[float], float]  # frames/s -> budgeted share of frames for candidates
    frames: int = 0
    stamp_ns: int = 0
    # adaptive_budget: ring of recent scores and stamps
    score_ring: array = field(default_factory=lambda: array("d"))
    stamp_ring: array = field(default_factory=lambda: array("q"))
    keep_verdict: Verdict = Verdict(True, 0.0, "")  # set by _set_verdicts before the first use
    drop_verdict: Verdict = Verdict(False, 0.0, "")
    filled: int = 0
    cursor: int = 0
    threshold: float | None = None
    candidate_fraction: float = 0.0
    pass_ratio: float = 1.0  # EMA of kept / candidates (dedup, quota)
    frames_per_s: float = 0.0
    # class_quota: decayed counts of kept frames per class
    class_counts: np.ndarray | None = None
    class_limits: np.ndarray | None = None


def threshold_policy(score: float, result: Any, params: ThresholdParams, state: PolicyState) -> Verdict:
    """Candidate when the value score reaches a fixed threshold."""
    if score >= params.threshold:
        return Verdict(True, params.threshold, "score >= threshold")
    return Verdict(False, params.threshold, "score < threshold")


def adaptive_budget_policy(score: float, result: Any, params: AdaptiveParams, state: PolicyState) -> Verdict:
    """Candidate when the score is in the top share of recent scores that the budget affords.

    The threshold is the (1 - p) quantile of the last ``window`` scores, recomputed every
    ``update_every`` frames, where p is the budgeted fraction of frames (from the frame and
    byte budgets and the observed frame rate) divided by the share of candidates that survive
    deduplication. When the score distribution shifts, the quantile follows within a window,
    so the kept rate returns to the budget without a hand-tuned threshold.
    """
    ring = state.score_ring
    if len(ring) != params.window:
        state.score_ring = ring = array("d", bytes(8 * params.window))  # array: cheap item writes
        state.stamp_ring = array("q", bytes(8 * params.window))
        state.filled = state.cursor = 0
        state.threshold = None
        _set_verdicts(state, params.initial_threshold)
    cursor = state.cursor
    ring[cursor] = score
    state.stamp_ring[cursor] = state.stamp_ns
    state.cursor = (cursor + 1) % params.window
    if state.filled < params.window:
        state.filled += 1
    if state.filled >= params.warmup_frames and (state.threshold is None or state.frames % params.update_every == 0):
        _update_adaptive(params, state)
    threshold = state.threshold if state.threshold is not None else params.initial_threshold
    if score >= threshold and score >= params.min_threshold and score > 0.0:
        return state.keep_verdict
    return state.drop_verdict


def _set_verdicts(state: PolicyState, threshold: float) -> None:
    # a frame's verdict is immutable: share one per threshold instead of building one per frame
    state.keep_verdict = Verdict(True, threshold, "score in the budgeted top quantile")
    state.drop_verdict = Verdict(False, threshold, "score below the budgeted quantile")


def _update_adaptive(params: AdaptiveParams, state: PolicyState) -> None:
    filled = state.filled
    stamps = np.frombuffer(state.stamp_ring, np.int64)[:filled]
    span_ns = int(stamps.max()) - int(stamps.min())
    if span_ns <= 0:
        return
    state.frames_per_s = (filled - 1) * 1e9 / span_ns
    fraction = state.target_fraction(state.frames_per_s) / max(state.pass_ratio, 0.05)
    fraction = min(max(fraction, 0.0), 1.0)
    state.candidate_fraction = fraction
    scores = np.frombuffer(state.score_ring, np.float64)[:filled]
    if fraction <= 0.0:
        state.threshold = 1.0 + 1e-6
    else:
        # the k-th largest score: exactly k of the window reach it (ties aside)
        k = max(1, int(round(fraction * filled)))
        state.threshold = float(np.partition(scores, filled - k)[filled - k])
    _set_verdicts(state, state.threshold)


def novelty_policy(score: float, result: Any, params: ScorePartParams, state: PolicyState) -> Verdict:
    """Candidate when the embedding novelty alone reaches the threshold (new-looking frames)."""
    if result.scores.get("novelty", 0.0) >= params.threshold:
        return Verdict(True, params.threshold, "novelty >= threshold")
    return Verdict(False, params.threshold, "novelty < threshold")


def disagreement_policy(score: float, result: Any, params: ScorePartParams, state: PolicyState) -> Verdict:
    """Candidate when the tiers disagree at least this much (only frames that escalated can)."""
    if result.scores.get("disagreement", 0.0) >= params.threshold:
        return Verdict(True, params.threshold, "tier disagreement >= threshold")
    return Verdict(False, params.threshold, "tier disagreement < threshold")


def class_quota_policy(score: float, result: Any, params: ClassQuotaParams, state: PolicyState) -> Verdict:
    """Candidate when the score reaches the threshold and the predicted class is under its quota.

    Quotas are shares of the recently kept frames (decayed counts over ``window`` kept frames),
    so a site where one class dominates the camera cannot fill the budget with it.
    """
    if score < params.threshold:
        return Verdict(False, params.threshold, "score < threshold")
    counts, limits = state.class_counts, state.class_limits
    label = int(result.label)
    if counts is None or limits is None or label >= len(counts):
        return Verdict(True, params.threshold, "score >= threshold")
    total = float(counts.sum())
    if total < params.warmup_kept:
        return Verdict(True, params.threshold, "score >= threshold (quota warming up)")
    share = (counts[label] + 1.0) / (total + 1.0)
    if share > limits[label]:
        return Verdict(False, params.threshold, f"class quota reached ({share:.2f} > {limits[label]:.2f})")
    return Verdict(True, params.threshold, "score >= threshold, class under quota")


def random_policy(score: float, result: Any, params: RandomParams, state: PolicyState) -> Verdict:
    """Candidate with a fixed probability, whatever the score (the unbiased baseline)."""
    if state.rng.random() < params.fraction:
        return Verdict(True, None, "random sample", random=True)
    return Verdict(False, None, "not sampled")


@dataclass(frozen=True)
class Policy:
    """A registered policy: its function and the model its ``params`` are validated with."""

    function: Callable[[float, Any, Any, PolicyState], Verdict]
    params: type[ConfigModel]
    description: str


POLICIES: dict[str, Policy] = {
    "threshold": Policy(threshold_policy, ThresholdParams, "fixed value-score threshold"),
    "adaptive_budget": Policy(adaptive_budget_policy, AdaptiveParams, "streaming quantile that meets the budget"),
    "novelty": Policy(novelty_policy, ScorePartParams, "embedding novelty threshold"),
    "disagreement": Policy(disagreement_policy, ScorePartParams, "T4/T3 disagreement threshold"),
    "class_quota": Policy(class_quota_policy, ClassQuotaParams, "threshold with per-class shares"),
    "random": Policy(random_policy, RandomParams, "uniform random sampling"),
}
