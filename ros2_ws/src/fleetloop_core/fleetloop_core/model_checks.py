"""The model manager's pure checks: the shadow check's verdict and the watchdog's, with their configs.

:func:`shadow_verdict` judges a candidate against the serving model on the same frames before it may
serve; :func:`watchdog_verdict` judges it after the swap, against :func:`watch_confidence_baseline`
and the latencies before. No I/O here: ``fleetloop_core.model_deploy`` and ``model_watch`` run them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from pydantic import Field, model_validator

from fleetloop_core.config import ConfigModel


class ShadowConfig(ConfigModel):
    """Thresholds the candidate must meet on the ring buffer's frames before it may serve."""

    enabled: bool = True
    min_frames: int = Field(default=8, ge=1)  # fewer buffered frames: wait, then fail
    frame_wait_s: float = Field(default=10.0, ge=0.0)  # how long to wait for min_frames
    min_agreement: float = Field(default=0.7, ge=0.0, le=1.0)  # top-1 agreement with the current model ...
    # ... on the frames where the current model's top probability is at least this (0: every frame). A
    # better model disagrees where the old one was unsure; disagreeing where it was sure is the red flag.
    # Fewer than min_frames such frames: too little evidence, the agreement check passes (figure reported).
    agreement_min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    max_latency_p99_ms: float = Field(default=50.0, gt=0.0)  # candidate p99, batch 1, absolute
    # systematic slow-down: candidate median / current median on the same frames (medians, because
    # with K frames a p99 is one scheduler hiccup away from anything) ...
    max_latency_ratio: float = Field(default=3.0, gt=0.0)
    latency_floor_ms: float = Field(default=5.0, ge=0.0)  # ... only enforced above this (noise)
    constant_tolerance: float = Field(default=1e-6, ge=0.0)  # max |p - mean p| under which output is constant
    min_confidence_ratio: float = Field(default=0.5, ge=0.0, le=1.0)  # candidate / current mean confidence, same frames
    pace_s: float = Field(default=0.002, ge=0.0)  # pause between frames: the check yields to serving


class WatchdogConfig(ConfigModel):
    """Limits after a swap; crossing one rolls back to the previous model at once."""

    enabled: bool = True
    window_frames: int = Field(default=50, ge=1)  # the watch ends after this many frames ...
    window_s: float = Field(default=30.0, gt=0.0)  # ... or this many seconds, whichever first, once it saw min_frames
    min_frames: int = Field(default=10, ge=1)  # frames before rates are judged
    # a watch short of min_frames when window_s ends waits for them, up to this many seconds after the swap, then
    # passes unjudged: a canary parked after its swap (no frames) is no evidence either way, and its rollout's
    # fleet phase should not follow it on none (>= window_s; the rollout's canary_timeout_s must allow it)
    unjudged_after_s: float = Field(default=300.0, gt=0.0)
    max_latency_ms: float = Field(default=50.0, gt=0.0)  # p95 of the swapped tier's latency
    max_latency_ratio: float = Field(default=3.0, gt=0.0)  # median latency / median before the swap ...
    latency_floor_ms: float = Field(default=5.0, ge=0.0)  # ... only enforced above this
    # mean confidence after the swap / the candidate's own mean confidence in its shadow check
    # (without a shadow check: / the previous model's mean confidence before the swap)
    min_confidence_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    # confidence depends on the scene (a stretch of background, one item): judged only over this many frames
    confidence_min_frames: int = Field(default=100, ge=1)
    max_error_rate: float = Field(default=0.1, ge=0.0, le=1.0)  # errors and non-finite outputs

    @model_validator(mode="after")
    def _wait_after_window(self) -> "WatchdogConfig":
        if self.unjudged_after_s < self.window_s:
            raise ValueError(f"unjudged_after_s ({self.unjudged_after_s}) must be >= window_s ({self.window_s})")
        return self


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile of ``values`` (NaN when empty)."""
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else float("nan")


@dataclass
class ShadowReport:
    """The shadow check's verdict and figures (agreement in [0, 1], latencies in ms)."""

    passed: bool
    reasons: list[str]
    figures: dict[str, float]


def shadow_verdict(
    current_probs: np.ndarray,
    candidate_probs: np.ndarray,
    current_latency_s: Sequence[float],
    candidate_latency_s: Sequence[float],
    config: ShadowConfig,
    agreed: np.ndarray | None = None,
) -> ShadowReport:
    """Return whether the candidate may serve, judged on the same frames as the current model.

    ``*_probs`` are (N, K) frame-level scores in [0, 1] (a classifier's probabilities; a detector's
    ``fleetloop_core.detection.frame_label_scores``), their maximum the model's confidence;
    ``agreed`` (N,) says per frame whether the two answers agree as the task defines it (default:
    the same top-1 score index); latencies are seconds per frame at batch 1.
    """
    frames = len(candidate_probs)
    finite = np.isfinite(candidate_probs).all(axis=1)
    non_finite = int(frames - finite.sum())
    sure = current_probs.max(axis=1) >= config.agreement_min_confidence
    judged = int(sure.sum())
    if agreed is None:
        agreed = candidate_probs.argmax(axis=1) == current_probs.argmax(axis=1)
    same = np.asarray(agreed, bool) & finite
    figures = {
        "frames": float(frames),
        "agreement": float(same.sum() / max(frames, 1)),
        "latency_p99_ms": percentile(candidate_latency_s, 99) * 1000.0,
        "latency_p50_ms": percentile(candidate_latency_s, 50) * 1000.0,
        "current_latency_p99_ms": percentile(current_latency_s, 99) * 1000.0,
        "current_latency_p50_ms": percentile(current_latency_s, 50) * 1000.0,
        "non_finite_frames": float(non_finite),
        "output_spread": (
            float(np.abs(candidate_probs - candidate_probs.mean(axis=0)).max()) if non_finite == 0 else 0.0
        ),
        "confidence_mean": float(candidate_probs[finite].max(axis=1).mean()) if finite.any() else float("nan"),
        "current_confidence_mean": float(current_probs.max(axis=1).mean()),
        "agreement_where_sure": float(same[sure].sum() / judged) if judged else float("nan"),
        "agreement_frames": float(judged),
    }
    spread_current = float(np.abs(current_probs - current_probs.mean(axis=0)).max())
    reasons = [
        *_output_problems(figures, spread_current, config),
        *_agreement_problems(figures, config),
        *_latency_problems(figures, config),
    ]
    return ShadowReport(not reasons, reasons, figures)


def _output_problems(figures: dict[str, float], spread_current: float, config: ShadowConfig) -> list[str]:
    """Return the problems of the candidate's outputs themselves: non-finite values, or constant ones."""
    frames, non_finite, spread = int(figures["frames"]), int(figures["non_finite_frames"]), figures["output_spread"]
    if non_finite:
        return [f"non-finite outputs (NaN/inf) on {non_finite} of {frames} frames"]
    if spread <= config.constant_tolerance < spread_current:
        return [
            f"constant output: probabilities vary by {spread:.2g} over {frames} frames "
            f"(current model: {spread_current:.2g})"
        ]
    return []


def _agreement_problems(figures: dict[str, float], config: ShadowConfig) -> list[str]:
    """Return the problems of the candidate against the current model: agreement and confidence."""
    problems = []
    judged, agreement = int(figures["agreement_frames"]), figures["agreement_where_sure"]
    if (
        judged
        and agreement < config.min_agreement
        and (config.agreement_min_confidence <= 0 or judged >= config.min_frames)
    ):
        where = (
            f" on the {judged} frames it was sure of (>= {config.agreement_min_confidence})"
            if config.agreement_min_confidence > 0
            else ""
        )
        problems.append(f"agreement {agreement:.3f} with the current model{where} is below {config.min_agreement}")
    confidence, current_confidence = figures["confidence_mean"], figures["current_confidence_mean"]
    if confidence < config.min_confidence_ratio * current_confidence:
        problems.append(
            f"mean confidence {confidence:.3f} is below {config.min_confidence_ratio} x the current "
            f"model's {current_confidence:.3f} on the same frames"
        )
    return problems


def _latency_problems(figures: dict[str, float], config: ShadowConfig) -> list[str]:
    """Return the candidate's latency problems: the absolute p99 budget and the median ratio."""
    problems = []
    p99_candidate, p99_current = figures["latency_p99_ms"], figures["current_latency_p99_ms"]
    p50_candidate, p50_current = figures["latency_p50_ms"], figures["current_latency_p50_ms"]
    # the absolute budget judges the candidate only when the serving model meets it on the same frames,
    # in the same thread: otherwise the CPU is busy and the median ratio below is the fair test
    if p99_candidate > config.max_latency_p99_ms >= p99_current:
        problems.append(
            f"latency p99 {p99_candidate:.2f} ms is above {config.max_latency_p99_ms} ms "
            f"(current model: {p99_current:.2f} ms on the same frames)"
        )
    ratio_limit = max(config.max_latency_ratio * p50_current, config.latency_floor_ms)
    if p50_candidate > ratio_limit:
        problems.append(
            f"median latency {p50_candidate:.2f} ms is above {ratio_limit:.2f} ms "
            f"({config.max_latency_ratio} x the current model's {p50_current:.2f} ms)"
        )
    return problems


@dataclass
class WatchStats:
    """What the watchdog has seen since the swap (latencies in seconds, confidences in [0, 1])."""

    latencies_s: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    errors: int = 0
    frames: int = 0


def watchdog_verdict(
    stats: WatchStats,
    baseline_latency_s: float,
    baseline_confidence: float,
    config: WatchdogConfig,
    baseline_p95_s: float = float("nan"),
) -> str | None:
    """Return why the new model must be rolled back, or None while it behaves.

    ``baseline_*`` are the median latency (s) and p95 latency (s) of the previous model before the swap
    and the expected mean confidence (:func:`watch_confidence_baseline`). The absolute latency limit
    applies only when the previous model met it (a busy CPU slows both). The median ratio against
    before the swap is skipped when ``baseline_latency_s`` is NaN: after a shadow check, which compared
    the two models on the same frames interleaved (the fair test), a before/after ratio mostly measures
    how the machine's load changed (seen in a loaded demo: a T3 at 0.5 ms in its shadow check rolled
    back at a 44.7 ms median while make test ran beside it).
    """
    if stats.frames < config.min_frames:
        return None
    error_rate = stats.errors / stats.frames
    if error_rate > config.max_error_rate:
        return f"error rate {error_rate:.3f} over {stats.frames} frames is above {config.max_error_rate}"
    if stats.latencies_s:
        p95_ms = percentile(stats.latencies_s, 95) * 1000.0
        before_ms = baseline_p95_s * 1000.0
        if p95_ms > config.max_latency_ms and not before_ms > config.max_latency_ms:
            return f"latency p95 {p95_ms:.2f} ms is above {config.max_latency_ms} ms"
        median_ms = percentile(stats.latencies_s, 50) * 1000.0
        limit = max(config.max_latency_ratio * baseline_latency_s * 1000.0, config.latency_floor_ms)
        if math.isfinite(baseline_latency_s) and median_ms > limit:
            return f"median latency {median_ms:.2f} ms is above {limit:.2f} ms ({config.max_latency_ratio} x before)"
    if (
        len(stats.confidences) >= config.confidence_min_frames
        and baseline_confidence > 0
        and math.isfinite(baseline_confidence)
    ):
        mean = float(np.mean(stats.confidences))
        if mean < config.min_confidence_ratio * baseline_confidence:
            return (
                f"confidence collapsed: mean {mean:.3f} is below {config.min_confidence_ratio} x "
                f"{baseline_confidence:.3f} expected"
            )
    return None


def watch_confidence_baseline(
    role: str, candidate_shadow: float, current_shadow: float, served_before: Sequence[float]
) -> float:
    """Return the mean confidence the watchdog expects of a new model on the frames its role serves.

    The shadow check runs both models on the ring buffer, a sample of *all* frames. The edge role serves
    every frame: the candidate's shadow mean is the expectation (a better-calibrated model may be less
    sure than its predecessor; that is no fault). The escalation role serves only the frames the edge
    model was unsure of, where every model is less sure: the candidate's shadow mean is scaled by how
    much less sure the previous model was on the frames it served than on the shadow frames (seen in a
    loaded demo: a T3 served at 0.30 against 0.73 in its shadow check and was rolled back as a
    "collapse"). Without a shadow figure: the previous model's mean on the frames it served.
    """
    served = float(np.mean(served_before)) if len(served_before) else float("nan")
    if not math.isfinite(candidate_shadow):
        return served
    if role == "escalation" and math.isfinite(served) and math.isfinite(current_shadow) and current_shadow > 0:
        return candidate_shadow * served / current_shadow
    return candidate_shadow


__all__ = [
    "ShadowConfig",
    "ShadowReport",
    "WatchStats",
    "WatchdogConfig",
    "percentile",
    "shadow_verdict",
    "watch_confidence_baseline",
    "watchdog_verdict",
]
