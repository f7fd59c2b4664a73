"""The watch after a swap: what the watchdog counts on the frames a new model serves, and when it ends.

The serving side keeps, per role, the latency and confidence of the frames served before a swap
(:class:`ServedBefore`); a swap starts a :class:`Watch` whose baselines come from them and from the
shadow check (:func:`start_watch`); every served frame is counted (:meth:`Watch.count`) and judged
(:meth:`Watch.judge`): roll back, passed, or go on. The verdict itself is
``fleetloop_core.model_checks.watchdog_verdict``; acting on it (swapping the previous model back) is
``fleetloop_core.model_serving``'s. Nothing here locks: the serving side calls it under its lock.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Optional

from fleetloop_core.cascade import FrameResult
from fleetloop_core.inference import TierModel
from fleetloop_core.model_checks import (
    WatchdogConfig,
    WatchStats,
    percentile,
    watch_confidence_baseline,
    watchdog_verdict,
)
from fleetloop_core.tasks import Task, task_of

ROLES = ("edge", "escalation")


class ServedBefore:
    """Per role, (latency s, served confidence) of the last frames it served: the watch's 'before'."""

    def __init__(self, frames: int):
        self._recent: dict[str, deque[tuple[float, float]]] = {role: deque(maxlen=frames) for role in ROLES}

    def record(self, role: str, model: TierModel, result: FrameResult) -> None:
        """Remember what ``model`` (serving ``role``) showed on one frame, when it ran on it."""
        if model.tier not in result.latency_s:
            return
        confidence = task_of(model).served_confidence(result, model.tier)
        if confidence is not None:
            self._recent[role].append((result.latency_s[model.tier], confidence))

    def take(self, role: str) -> list[tuple[float, float]]:
        """Return what ``role`` served so far and forget it (a swap starts a new 'before')."""
        recent = list(self._recent[role])
        self._recent[role].clear()
        return recent


@dataclass
class Watch:
    """One watch: the swapped-in version of ``role``, the model it replaced, its baselines and what it saw."""

    job_id: str
    role: str
    tier: str
    version: str
    previous: TierModel
    task: Task
    started: float  # the manager's clock, seconds
    baseline_latency_s: float  # median before the swap; NaN after a shadow check (see watchdog_verdict)
    baseline_confidence: float
    baseline_p95_s: float
    stats: WatchStats = field(default_factory=WatchStats)
    done: threading.Event = field(default_factory=threading.Event)
    verdict: Optional[str] = None  # why it was rolled back
    rolled_back_at: Optional[float] = None
    ended_at: Optional[float] = None  # when it passed (the manager's clock)

    def count(self, result: FrameResult | None, bad: bool) -> None:
        """Count one frame (``result`` None: an inference error) when the watched version served it."""
        if result is not None and result.model_versions.get(self.tier) != self.version:
            return
        stats = self.stats
        stats.frames += 1
        if bad:
            stats.errors += 1
        elif result is not None and self.tier in result.latency_s:
            stats.latencies_s.append(result.latency_s[self.tier])
            confidence = self.task.served_confidence(result, self.tier)
            if confidence is not None:
                stats.confidences.append(confidence)

    def judge(self, config: WatchdogConfig, now: float) -> Literal["roll_back", "passed"] | None:
        """Return ``roll_back`` (the reason in ``verdict``), ``passed`` (its window is over) or None (go on)."""
        verdict = watchdog_verdict(
            self.stats, self.baseline_latency_s, self.baseline_confidence, config, self.baseline_p95_s
        )
        if verdict is not None:
            self.verdict = verdict
            return "roll_back"
        if self.stats.frames >= config.window_frames or self.time_up(config, now):
            return "passed"
        return None

    def time_up(self, config: WatchdogConfig, now: float) -> bool:
        """Whether the watch ends on time: ``window_s`` has passed and it saw ``min_frames``, or, short of
        them, ``unjudged_after_s`` has passed (the camera stopped after the swap: it passes unjudged)."""
        elapsed = now - self.started
        return elapsed >= config.window_s and (self.judged(config) or elapsed >= config.unjudged_after_s)

    def judged(self, config: WatchdogConfig) -> bool:
        """Whether the watch saw the frames its rates need (``min_frames``): one that waited
        ``unjudged_after_s`` for them in vain passes without evidence either way."""
        return self.stats.frames >= config.min_frames

    def unjudged_reason(self, config: WatchdogConfig) -> str:
        """Say why a watch passed without judging (for the job's reason and the event)."""
        elapsed = (self.ended_at if self.ended_at is not None else self.started) - self.started
        return (
            f"it ended {elapsed:.1f} s after the swap with {self.stats.frames} frames, fewer than the "
            f"{config.min_frames} the watchdog judges (it waits up to {config.unjudged_after_s:g} s for them)"
        )

    def figures(self, latency: bool = False) -> dict[str, float]:
        """Return frames and errors seen (and the latency p95 in ms, when ``latency`` and any was measured)."""
        figures = {"watch_frames": float(self.stats.frames), "watch_errors": float(self.stats.errors)}
        if latency and self.stats.latencies_s:
            figures["watch_latency_p95_ms"] = percentile(self.stats.latencies_s, 95) * 1000.0
        return figures


def start_watch(
    job_id: str,
    role: str,
    candidate: TierModel,
    previous: TierModel,
    served_before: list[tuple[float, float]],
    expected_confidence: float,
    current_shadow_confidence: float,
    now: float,
) -> Watch:
    """Return the watch of ``candidate`` replacing ``previous``, its baselines from what ``previous`` served.

    ``expected_confidence`` / ``current_shadow_confidence``: the candidate's / the serving model's mean
    confidence in the shadow check (NaN without one; :func:`watch_confidence_baseline` makes the baseline).
    """
    latencies = [latency for latency, _ in served_before]
    # after a shadow check the before/after latency ratio is not judged (see watchdog_verdict)
    baseline_latency = (
        percentile(latencies, 50) if latencies and not math.isfinite(current_shadow_confidence) else float("nan")
    )
    baseline_confidence = watch_confidence_baseline(
        role, expected_confidence, current_shadow_confidence, [confidence for _, confidence in served_before]
    )
    baseline_p95 = percentile(latencies, 95) if latencies else float("nan")
    return Watch(
        job_id,
        role,
        candidate.tier,
        candidate.version,
        previous,
        task_of(candidate),
        now,
        baseline_latency,
        baseline_confidence,
        baseline_p95,
    )


__all__ = ["ServedBefore", "Watch", "start_watch"]
