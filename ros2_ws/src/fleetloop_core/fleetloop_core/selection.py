"""On-robot frame selection: which frames are worth a label, within a budget, without duplicates.

~425 lines: the per-frame decision, its budget, dedup, clips and live re-tuning share one lock and one state.

Per frame the :class:`Selector` turns the cascade's uncertainty scores into one value score (a
weighted mean of the score parts, in [0, 1]; the parts and their weights are those of the
result's task: ``weights.classification.margin``, ``weights.detection.band``, ...), asks the
configured *policy* whether the frame is a candidate, then checks the budget (frames per hour and
bytes per hour, token buckets refilled by the frames' stamps) and deduplicates candidates against
a bounded memory of what it already kept (perceptual hash from OpenCV's img_hash plus embedding
cosine distance). A small fixed random fraction is kept regardless of score and flagged
``random=True`` so the cloud can estimate unbiased field accuracy. Every :class:`Decision` says why.

Policies are registered by name in :data:`fleetloop_core.selection_policies.POLICIES` (one
function, one parameter model, one registry line) and chosen in ``config/selection.yaml``,
validated by :mod:`fleetloop_core.selection_config`::

    policy: {name: adaptive_budget, params: {window: 1024}}

The budget's token buckets and the memory of kept frames are in :mod:`fleetloop_core.selection_limits`;
the decision, the value score and a kept frame's sidecar fields in :mod:`fleetloop_core.selection_decision`.

The per-frame path is a few microseconds of Python; the perceptual hash (~0.1 ms) runs only
for candidates, and the frame is encoded only when the queue persists the record
(``fleetloop_core.record``).
"""

from __future__ import annotations

import random as _random
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from fleetloop_core.errors import ConfigError
from fleetloop_core.record import UploadRecord
from fleetloop_core.selection_config import (
    BudgetConfig,
    SelectionConfig,
    apply_changes,
    per_class_errors,
    policy_params,
    selection_config,
)
from fleetloop_core.selection_policies import POLICIES, ClassQuotaParams, PolicyState, Verdict

from fleetloop_core.selection_clips import Clips
from fleetloop_core.selection_decision import Decision, Origin, sidecar_fields
from fleetloop_core.selection_limits import DedupMemory, SelectionTime, TokenBucket

# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class _Active:
    """A config compiled for the hot path; swapped as one reference."""

    config: SelectionConfig
    weights: dict[str, tuple[tuple[str, float], ...]]  # per task: (score part, weight > 0)
    inverse_weight_sums: dict[str, float]  # per task
    policy_name: str
    policy: Callable[[float, Any, Any, PolicyState], Verdict]
    params: Any
    random_fraction: float
    class_scale: np.ndarray | None = None  # per label index: the value score's factor (class_weights)
    class_by_probability: bool = False  # class_weight_by: probability (factor 1 + (scale - 1) . probs)


@dataclass
class SelectorStats:
    """Counters since the selector started."""

    offered: int = 0
    kept: int = 0
    random: int = 0
    candidates: int = 0
    duplicates: int = 0
    budget_limited: int = 0
    clip: int = 0  # kept as clip frames (``clip`` in the config)
    kept_by_class: dict[int, int] = field(default_factory=dict)


def _class_factor(result: Any, scale: np.ndarray, by_probability: bool) -> float:
    """Return the value score's factor for a frame under ``class_weights`` (``scale`` per label index): the
    weight of its label; ``by_probability``: the larger of that and 1 + (scale - 1) . the model's probabilities."""
    label = getattr(result, "label", -1)
    factor = float(scale[label]) if 0 <= label < len(scale) else 1.0
    if by_probability:
        probs = getattr(result, "probs", None)
        if probs is not None and len(probs) == len(scale) and np.isfinite(probs).all():
            factor = max(factor, 1.0 + float(np.dot(scale - 1.0, probs)))
    return factor


class Selector:
    """Decides keep/drop per frame for one robot; thread-safe; re-tunable with :meth:`update`."""

    def __init__(
        self,
        config: SelectionConfig | None = None,
        robot_id: str = "robot",
        labels: tuple[str, ...] | list[str] | None = None,
        source: str = "<config>",
        clock: Callable[[], int] = time.monotonic_ns,
    ):
        self.robot_id = robot_id
        self.labels = tuple(labels) if labels is not None else ()
        self._lock = threading.Lock()
        self.stats = SelectorStats()
        self._mean_bytes: float | None = None
        config = config or SelectionConfig()
        self._active = self._compile(config, source)
        self._rng = _random.Random(config.seed)
        self._state = self._new_state(self._active)
        self._frames_bucket, self._bytes_bucket = self._buckets(config.budget)
        self._dedup = DedupMemory(config.dedup)
        self._clips = Clips(config.clip)
        self._time = SelectionTime(clock)  # ``clock``: when frames arrive (for cameras whose stamps do not advance)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> SelectionConfig:
        return self._active.config

    def _compile(self, config: SelectionConfig, source: str) -> _Active:
        params = policy_params(config, source)
        errors = per_class_errors(config.class_weights, self.labels, "class_weights", 100.0)
        if isinstance(params, ClassQuotaParams):
            errors += per_class_errors(params.shares, self.labels, "policy.params.shares", 1.0)
        if errors:
            raise ConfigError(f"{source}: {errors[0]}")
        scale = None
        if config.class_weights:
            scale = np.ones(len(self.labels), np.float64)
            for name, weight in config.class_weights.items():
                scale[self.labels.index(name)] = weight
        weights = {
            task: tuple((name, float(w)) for name, w in task_weights.items() if w > 0)
            for task, task_weights in config.weights.model_dump().items()
        }
        return _Active(
            config=config,
            weights=weights,
            inverse_weight_sums={task: 1.0 / sum(w for _, w in pairs) for task, pairs in weights.items()},
            policy_name=config.policy.name,
            policy=POLICIES[config.policy.name].function,
            params=params,
            random_fraction=config.random_fraction,
            class_scale=scale,
            class_by_probability=config.class_weight_by == "probability",
        )

    def _new_state(self, active: _Active) -> PolicyState:
        state = PolicyState(rng=self._rng, labels=self.labels, target_fraction=self._target_fraction)
        if active.policy_name == "class_quota":
            params: ClassQuotaParams = active.params
            classes = max(len(self.labels), 1)
            limits = np.full(classes, params.max_share, np.float64)
            for name, share in params.shares.items():  # checked in _compile
                limits[self.labels.index(name)] = share
            state.class_counts = np.zeros(classes, np.float64)
            state.class_limits = limits
        return state

    @staticmethod
    def _buckets(
        budget: BudgetConfig, previous: tuple[TokenBucket, TokenBucket] | None = None
    ) -> tuple[TokenBucket, TokenBucket]:
        frames_capacity = max(1.0, budget.frames_per_hour * budget.burst_seconds / 3600.0)
        bytes_capacity = max(1.0, budget.bytes_per_hour * budget.burst_seconds / 3600.0)
        frames = TokenBucket(budget.frames_per_hour, frames_capacity, previous[0].tokens if previous else None)
        data = TokenBucket(budget.bytes_per_hour, bytes_capacity, previous[1].tokens if previous else None)
        if previous:
            frames.last_ns, data.last_ns = previous[0].last_ns, previous[1].last_ns
        return frames, data

    def update(self, **changes: Any) -> SelectionConfig:
        """Apply validated changes atomically between two frames; return the new config.

        Keys are dotted (``update(**{"budget.frames_per_hour": 300})``), ``__``-separated
        (``update(policy__params__threshold=0.4)``) or sections (``update(dedup={"memory": 64})``).
        Raises ConfigError (nothing changes) when a value is invalid.
        """
        with self._lock:
            return self._install(apply_changes(self._active.config, changes, source="selector update"))

    def restore(self, config: SelectionConfig) -> SelectionConfig:
        """Replace the whole config atomically between two frames (a campaign's expiry puts the config from
        before it back, keys the campaign added included); ConfigError (nothing changes) when invalid."""
        with self._lock:
            return self._install(selection_config(config.model_dump(), "selector restore"))

    def _install(self, config: SelectionConfig) -> SelectionConfig:
        """Make ``config`` the active one, keeping what it does not change (called with the lock held)."""
        active = self._compile(config, "selector update")
        old = self._active.config
        state = self._state
        if config.policy != old.policy:
            state = self._new_state(active)
        buckets = (self._frames_bucket, self._bytes_bucket)
        if config.budget != old.budget:
            buckets = self._buckets(config.budget, buckets)
        dedup = self._dedup
        if config.dedup.memory != old.dedup.memory or config.dedup.hash != old.dedup.hash:
            dedup = DedupMemory(config.dedup)
        elif config.dedup != old.dedup:
            dedup.config = config.dedup
        if config.seed != old.seed:
            self._rng.seed(config.seed)
        if config.clip != old.clip:
            self._clips = Clips(config.clip)
        self._state, (self._frames_bucket, self._bytes_bucket), self._dedup = state, buckets, dedup
        self._active = active
        return config

    # ------------------------------------------------------------------ budget
    def _target_fraction(self, frames_per_s: float) -> float:
        """Return the share of frames the budget affords for candidates (random samples excluded)."""
        config = self._active.config
        rate_per_hour = frames_per_s * 3600.0
        if rate_per_hour <= 0:
            return 0.0
        frames = config.budget.frames_per_hour
        if self._mean_bytes:
            frames = min(frames, config.budget.bytes_per_hour / self._mean_bytes)
        return max(frames / rate_per_hour - config.random_fraction, 0.0)

    def _on_encoded(self, size_bytes: int) -> None:
        with self._lock:
            self._bytes_bucket.tokens -= size_bytes
            self._mean_bytes = size_bytes if self._mean_bytes is None else 0.9 * self._mean_bytes + 0.1 * size_bytes

    # ------------------------------------------------------------------ the decision
    def offer(
        self,
        frame: np.ndarray,
        result: Any,
        stamp_ns: int,
        stream: str = "camera",
        robot_id: str | None = None,
        site: str = "",
        simulation: Any = None,
        track_hint: str | None = None,
    ) -> Decision:
        """Return the decision for one frame (uint8 RGB) and the cascade's FrameResult of it.

        ``stamp_ns`` is the frame's capture time (ns); budgets refill by it, so replaying a bag
        faster than real time spends the budget of the bag's duration, not of the wall clock (by arrival
        where a stream's stamps do not advance: ``SelectionTime``). The sidecar keeps the stamp as sent.
        ``track_hint`` defaults to the cascade's robot-side track id (``result.track``).
        """
        # ~70 lines on purpose: the per-frame path (a few microseconds), read top to bottom as the decision is made
        if track_hint is None:
            track_hint = getattr(result, "track", None)
        with self._lock:
            active = self._active
            scores = result.scores
            weights = active.weights.get(result.task)
            if weights is None:
                raise ConfigError(f"no selection weights for task {result.task!r} (known: {', '.join(active.weights)})")
            value = 0.0
            for name, weight in weights:
                value += weight * scores[name]
            value *= active.inverse_weight_sums[result.task]
            if active.class_scale is not None:
                value = min(1.0, value * _class_factor(result, active.class_scale, active.class_by_probability))
            state = self._state
            state.frames += 1
            state.stamp_ns = now_ns = self._time.place(stream, stamp_ns)  # budgets and rates run on it
            stats = self.stats
            stats.offered += 1
            if active.random_fraction and self._rng.random() < active.random_fraction:
                verdict = Verdict(True, None, "random sample (kept regardless of score)", random=True)
                # the random fraction runs alongside the policy, which still sees the frame
                active.policy(value, result, active.params, state)
            else:
                verdict = active.policy(value, result, active.params, state)
            if not verdict.candidate:
                clip = self._clips.due(stream, track_hint)
                if clip is not None:
                    origin = Origin(stamp_ns, stream, robot_id or self.robot_id, site, simulation, track_hint)
                    return self._clip_frame(frame, result, origin, now_ns, value, clip, active)
                # buckets refill lazily, at the next candidate: nothing spends tokens in between, so
                # one refill over the gap equals many small ones; the tokens shown here are as of
                # the last candidate
                return Decision(
                    False,
                    value,
                    active.policy_name,
                    verdict.threshold,
                    verdict.reason,
                    False,
                    False,
                    False,
                    None,
                    None,
                    self._frames_bucket.tokens,
                    self._bytes_bucket.tokens,
                    None,
                    scores,
                    weights,
                )
            origin = Origin(stamp_ns, stream, robot_id or self.robot_id, site, simulation, track_hint)
            decision = self._candidate(frame, result, origin, now_ns, value, verdict, active)
            if decision.keep and not verdict.random:
                self._clips.open(stream, track_hint, now_ns)
            return decision

    def _clip_frame(
        self, frame: np.ndarray, result: Any, origin: Origin, now_ns: int, value: float, clip: Any, active: _Active
    ) -> Decision:
        """Return the decision for a frame of an open clip: a candidate that leaves the others' share of the burst."""
        reason = f"clip frame {clip.kept + 1} of track {clip.track} (after the frame at {clip.anchor_ns})"
        reserve = (1.0 - active.config.clip.budget_share) * self._frames_bucket.capacity
        decision = self._candidate(frame, result, origin, now_ns, value, Verdict(True, None, reason), active, reserve)
        if decision.keep:
            self._clips.kept(clip)
            self.stats.clip += 1
        return decision

    def _candidate(
        self,
        frame: np.ndarray,
        result: Any,
        origin: Origin,
        now_ns: int,
        value: float,
        verdict: Verdict,
        active: _Active,
        reserve: float = 0.0,
    ) -> Decision:
        """Return the decision for a frame the policy passed (or a clip frame): the budget, then dedup, then kept.

        ``reserve``: frame tokens the candidate must leave in the bucket (clip frames leave the part
        of the burst that is not theirs to new candidates).
        """
        self._frames_bucket.refill(now_ns)
        self._bytes_bucket.refill(now_ns)
        decision = Decision(
            False,
            value,
            active.policy_name,
            verdict.threshold,
            verdict.reason,
            random=verdict.random,
            _scores=result.scores,
            _weights=active.weights[result.task],
        )
        if not verdict.random:
            self.stats.candidates += 1
        if self._over_budget(decision, verdict, reserve):
            return decision
        embedding = result.embeddings.get("T4") if result.embeddings else None
        if embedding is None and result.embeddings:
            embedding = next(iter(result.embeddings.values()))
        if active.config.dedup.enabled and self._duplicate(frame, embedding, verdict, decision):
            return decision
        self._frames_bucket.tokens -= 1.0
        decision.keep = True
        decision.reason = f"kept: {verdict.reason}"
        self._count_kept(int(result.label), verdict, active)
        config = active.config
        priority = max(value, config.random_priority) if verdict.random else value
        decision.record = UploadRecord(
            image=np.array(frame, np.uint8, copy=True),
            priority=float(priority),
            encoding=config.record.encoding,
            jpeg_quality=config.record.jpeg_quality,
            on_encoded=self._on_encoded,
            make_fields=partial(
                sidecar_fields,
                self.labels,
                result,
                origin,
                decision,
                embedding if config.record.include_embedding else None,
            ),
        )
        decision.frame_tokens, decision.byte_tokens = self._frames_bucket.tokens, self._bytes_bucket.tokens
        return decision

    def _over_budget(self, decision: Decision, verdict: Verdict, reserve: float = 0.0) -> bool:
        """Return whether the budget refuses the candidate (and say so in ``decision``)."""
        frames_bucket, bytes_bucket = self._frames_bucket, self._bytes_bucket
        # random samples may borrow up to one burst (so the policy's candidates cannot crowd them
        # out); the debt is paid back by later frames, so the long-run rate stays on budget
        floor_frames = 1.0 - frames_bucket.capacity if verdict.random else 1.0 + reserve
        floor_bytes = -bytes_bucket.capacity if verdict.random else 0.0
        if frames_bucket.tokens >= floor_frames and bytes_bucket.tokens > floor_bytes:
            return False
        decision.budget_limited = True
        decision.reason = f"{verdict.reason}; budget spent"
        self.stats.budget_limited += 1
        decision.frame_tokens, decision.byte_tokens = frames_bucket.tokens, bytes_bucket.tokens
        return True

    def _duplicate(self, frame, embedding, verdict: Verdict, decision: Decision) -> bool:
        """Return whether the candidate nearly repeats a kept frame (and say so); remember it otherwise."""
        dedup = self._dedup
        image_hash = dedup.image_hash(frame) if dedup.config.hash_max_distance >= 0 else None
        hamming, distance = dedup.match(image_hash, embedding)
        decision.hash_distance, decision.embedding_distance = hamming, round(distance, 6)
        if not verdict.random:  # random samples are never dropped as duplicates (unbiased field estimate)
            duplicate = dedup.is_duplicate(hamming, distance)
            state = self._state
            state.pass_ratio = 0.98 * state.pass_ratio + 0.02 * (0.0 if duplicate else 1.0)
            if duplicate:
                decision.duplicate = True
                decision.reason = f"{verdict.reason}; near-duplicate (hash {hamming} bits, cosine {distance:.4f})"
                self.stats.duplicates += 1
                decision.frame_tokens, decision.byte_tokens = self._frames_bucket.tokens, self._bytes_bucket.tokens
                return True
        dedup.remember(image_hash, embedding)
        return False

    def _count_kept(self, label: int, verdict: Verdict, active: _Active) -> None:
        """Count a kept frame in the stats and in the class quota's running shares."""
        stats, state = self.stats, self._state
        stats.kept += 1
        stats.random += verdict.random
        stats.kept_by_class[label] = stats.kept_by_class.get(label, 0) + 1
        if state.class_counts is not None and label < len(state.class_counts):
            params: ClassQuotaParams = active.params
            state.class_counts *= 1.0 - 1.0 / params.window
            state.class_counts[label] += 1.0

    # ------------------------------------------------------------------ introspection
    def state(self) -> dict[str, Any]:
        """Return the budget and policy state (for diagnostics and the ROS node's status)."""
        with self._lock:
            state = self._state
            if state.stamp_ns:
                self._frames_bucket.refill(state.stamp_ns)
                self._bytes_bucket.refill(state.stamp_ns)
            return {
                "policy": self._active.policy_name,
                "threshold": state.threshold,
                "frames_per_s": round(state.frames_per_s, 3),
                "target_fraction": round(self._target_fraction(state.frames_per_s), 6),
                "candidate_fraction": round(state.candidate_fraction, 6),
                "pass_ratio": round(state.pass_ratio, 4),
                "frame_tokens": round(self._frames_bucket.tokens, 3),
                "byte_tokens": round(self._bytes_bucket.tokens, 1),
                "mean_record_bytes": round(self._mean_bytes, 1) if self._mean_bytes else None,
                "dedup_memory": len(self._dedup),
                "frames_by_arrival": self._time.not_advancing,  # their stamps did not advance
                "offered": self.stats.offered,
                "kept": self.stats.kept,
            }
