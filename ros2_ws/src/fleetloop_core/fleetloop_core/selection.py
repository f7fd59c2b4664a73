"""On-robot frame selection: which frames are worth a label, within a budget, without duplicates.

Per frame the :class:`Selector` turns the cascade's uncertainty scores into one value score (a
weighted mean of the score parts, in [0, 1]), asks the configured *policy* whether the frame is
a candidate, then checks the budget (frames per hour and bytes per hour, token buckets refilled
by the frames' stamps) and deduplicates candidates against a bounded memory of what it already
kept (perceptual hash from OpenCV's img_hash plus embedding cosine distance). A small fixed
random fraction is kept regardless of score and flagged ``random=True`` so the cloud can
estimate unbiased field accuracy. Every :class:`Decision` says why.

Policies are registered by name in :data:`POLICIES` (one function, one parameter model, one
registry line) and chosen in ``config/selection.yaml``::

    policy: {name: adaptive_budget, params: {window: 1024}}

The per-frame path is a few microseconds of Python; the perceptual hash (~0.1 ms) runs only
for candidates, and the frame is encoded only when the queue persists the record
(``fleetloop_core.record``).
"""

from __future__ import annotations

import random as _random
import threading
from array import array
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, NamedTuple

import cv2
import numpy as np
from pydantic import Field, model_validator

from fleetloop_core.config import ConfigModel, default_config_path, read_yaml, validate
from fleetloop_core.errors import ConfigError
from fleetloop_core.record import UploadRecord
from fleetloop_core.sidecar import Decision as SidecarDecision

SCORE_PARTS = ("entropy", "margin", "least_confidence", "disagreement", "flicker", "novelty")
NS_PER_HOUR = 3_600_000_000_000


# --------------------------------------------------------------------------- config


class ScoreWeights(ConfigModel):
    """Weight of each uncertainty score in the frame's value score (a weighted mean)."""

    entropy: float = Field(default=0.0, ge=0.0)
    margin: float = Field(default=1.0, ge=0.0)
    least_confidence: float = Field(default=0.0, ge=0.0)
    disagreement: float = Field(default=1.0, ge=0.0)
    flicker: float = Field(default=0.5, ge=0.0)
    novelty: float = Field(default=1.0, ge=0.0)

    @model_validator(mode="after")
    def _some_weight(self) -> "ScoreWeights":
        if sum(self.model_dump().values()) <= 0.0:
            raise ValueError("at least one weight must be > 0")
        return self


class BudgetConfig(ConfigModel):
    """Upload budget of one robot (all its streams), as token buckets over the frames' stamps."""

    frames_per_hour: float = Field(default=600.0, gt=0.0)
    bytes_per_hour: float = Field(default=200_000_000.0, gt=0.0)
    burst_seconds: float = Field(default=60.0, gt=0.0)  # bucket capacity, in seconds of budget


class DedupConfig(ConfigModel):
    """Near-duplicate suppression against a bounded memory of kept frames."""

    enabled: bool = True
    memory: int = Field(default=512, ge=1)  # kept frames remembered
    hash: Literal["phash", "average"] = "phash"  # OpenCV img_hash algorithm (64 bits)
    hash_max_distance: int = Field(default=8, ge=-1, le=64)  # Hamming bits; -1 disables the hash
    embedding_max_distance: float = Field(default=0.0002, ge=-1.0, le=2.0)  # 1 - cos; < 0 disables


class RecordConfig(ConfigModel):
    """How kept frames are encoded and what their sidecars carry."""

    encoding: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    include_embedding: bool = True


class PolicyConfig(ConfigModel):
    """Which policy decides candidates, and its parameters (validated against the policy)."""

    name: str = "adaptive_budget"
    params: dict[str, Any] = Field(default_factory=dict)


class SelectionConfig(ConfigModel):
    """Everything the selector needs (``config/selection.yaml``)."""

    weights: ScoreWeights = ScoreWeights()
    policy: PolicyConfig = PolicyConfig()
    budget: BudgetConfig = BudgetConfig()
    dedup: DedupConfig = DedupConfig()
    random_fraction: float = Field(default=0.002, ge=0.0, le=1.0)  # of all frames, kept regardless
    random_priority: float = Field(default=1.0, ge=0.0)  # queue priority of random samples
    record: RecordConfig = RecordConfig()
    seed: int = 0  # of the random sampling


# --------------------------------------------------------------------------- policies


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


def policy_params(config: SelectionConfig, source: str = "<config>") -> ConfigModel:
    """Return the validated params of the configured policy; ConfigError naming source, name and key."""
    name = config.policy.name
    policy = POLICIES.get(name)
    if policy is None:
        raise ConfigError(
            f"{source}: policy.name: unknown selection policy {name!r} (known: {', '.join(sorted(POLICIES))})"
        )
    return validate(policy.params, config.policy.params, source, prefix="policy.params")


def selection_config(data: Mapping[str, Any], source: str = "<config>") -> SelectionConfig:
    """Return a SelectionConfig from a mapping, policy and params checked; ConfigError otherwise."""
    config = validate(SelectionConfig, data, source)
    policy_params(config, source)
    return config


def load_selection_config(path: str | Path | None = None) -> SelectionConfig:
    """Return the selection config in ``path`` (default ``config/selection.yaml``), fully validated."""
    path = Path(path) if path is not None else default_config_path("selection.yaml")
    return selection_config(read_yaml(path), str(path))


def apply_changes(config: SelectionConfig, changes: Mapping[str, Any], source: str = "update") -> SelectionConfig:
    """Return ``config`` with ``changes`` applied and validated (ConfigError naming the key otherwise).

    Keys are dotted paths (``budget.frames_per_hour``, ``policy.params.threshold``), the same
    with ``__`` (usable as keyword arguments), or sections with a mapping merged into them.
    Switching ``policy.name`` without new ``policy.params`` starts from the new policy's defaults.
    """
    data = config.model_dump()
    dotted = {key.replace("__", "."): value for key, value in changes.items()}
    new_name = dotted.get("policy.name")
    if isinstance(dotted.get("policy"), Mapping):
        new_name = dotted["policy"].get("name", new_name)
    if new_name is not None and new_name != config.policy.name:
        data["policy"]["params"] = {}  # the old policy's params mean nothing to the new one
    for key, value in dotted.items():
        path = key.split(".")
        target = data
        for part in path[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key}: {part} is a value, not a section")
            target = node
        last = path[-1]
        if isinstance(value, Mapping) and isinstance(target.get(last), dict):
            target[last] = {**target[last], **value}
        else:
            target[last] = value
    return selection_config(data, source)


# --------------------------------------------------------------------------- budget and dedup


class TokenBucket:
    """Tokens refilled at ``rate_per_hour`` of stamp time up to ``capacity``; may go into debt."""

    __slots__ = ("rate_per_ns", "capacity", "tokens", "last_ns")

    def __init__(self, rate_per_hour: float, capacity: float, tokens: float | None = None):
        self.rate_per_ns = rate_per_hour / NS_PER_HOUR
        self.capacity = capacity
        self.tokens = capacity if tokens is None else min(tokens, capacity)
        self.last_ns: int | None = None

    def refill(self, stamp_ns: int) -> None:
        """Add the tokens earned since the last stamp (stamps going backwards earn nothing)."""
        last = self.last_ns
        if last is None or stamp_ns > last:
            if last is not None:
                tokens = self.tokens + (stamp_ns - last) * self.rate_per_ns
                self.tokens = tokens if tokens < self.capacity else self.capacity
            self.last_ns = stamp_ns


def _hamming(hashes: np.ndarray, value: np.uint64) -> np.ndarray:
    x = np.bitwise_xor(hashes, value)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)  # numpy < 2


# opencv-contrib's img_hash module is missing from the stubs cv2 ships
_HASHERS = {"phash": cv2.img_hash.PHash_create, "average": cv2.img_hash.AverageHash_create}  # type: ignore[attr-defined]


class DedupMemory:
    """Perceptual hashes and unit embeddings of the last ``capacity`` kept frames."""

    def __init__(self, config: DedupConfig):
        self.config = config
        self._hasher = _HASHERS[config.hash]()
        self._hashes = np.zeros(config.memory, np.uint64)
        self._embeddings: np.ndarray | None = None
        self._count = 0
        self._next = 0

    def __len__(self) -> int:
        return self._count

    def image_hash(self, image: np.ndarray) -> np.uint64:
        """Return the 64-bit perceptual hash of a uint8 frame."""
        return np.frombuffer(self._hasher.compute(image).tobytes(), np.uint64)[0]

    def match(self, image_hash: np.uint64 | None, embedding: np.ndarray | None) -> tuple[int, float]:
        """Return (smallest Hamming distance, smallest cosine distance) to the memory (64 / 2 if empty)."""
        count = self._count
        if count == 0:
            return 64, 2.0
        hamming = int(_hamming(self._hashes[:count], image_hash).min()) if image_hash is not None else 64
        distance = 2.0
        if embedding is not None and self._embeddings is not None and embedding.shape[0] == self._embeddings.shape[1]:
            norm = float(np.linalg.norm(embedding))
            if norm > 0.0:
                distance = 1.0 - float((self._embeddings[:count] @ embedding).max()) / norm
        return hamming, distance

    def is_duplicate(self, hamming: int, distance: float) -> bool:
        """Return True when either signal is within its configured distance."""
        config = self.config
        return (config.hash_max_distance >= 0 and hamming <= config.hash_max_distance) or (
            config.embedding_max_distance >= 0 and distance <= config.embedding_max_distance
        )

    def remember(self, image_hash: np.uint64 | None, embedding: np.ndarray | None) -> None:
        """Store one kept frame's hash and embedding (the oldest is forgotten when full)."""
        slot = self._next
        self._hashes[slot] = image_hash if image_hash is not None else np.uint64(0)
        if embedding is not None:
            if self._embeddings is None or self._embeddings.shape[1] != embedding.shape[0]:
                self._embeddings = np.zeros((self.config.memory, embedding.shape[0]), np.float32)
            norm = float(np.linalg.norm(embedding))
            self._embeddings[slot] = embedding / norm if norm > 0 else 0.0
        self._next = (slot + 1) % self.config.memory
        self._count = min(self._count + 1, self.config.memory)


# --------------------------------------------------------------------------- decisions


@dataclass(slots=True)
class Decision:
    """The selector's answer for one frame and why (all scores in [0, 1])."""

    keep: bool
    score: float  # weighted value score
    policy: str
    threshold: float | None
    reason: str
    random: bool = False  # kept by the random fraction: an unbiased sample
    duplicate: bool = False  # a candidate dropped as a near-duplicate
    budget_limited: bool = False  # a candidate dropped because the budget was spent
    hash_distance: int | None = None  # to the closest kept frame (candidates only)
    embedding_distance: float | None = None
    frame_tokens: float = 0.0  # budget left after this decision
    byte_tokens: float = 0.0
    record: UploadRecord | None = None  # when kept: ready for UploadQueue.put
    _scores: Mapping[str, float] | None = None
    _weights: tuple[tuple[str, float], ...] = ()

    @property
    def parts(self) -> dict[str, float]:
        """Return each score part's weighted contribution to ``score``."""
        total = sum(w for _, w in self._weights) or 1.0
        scores = self._scores or {}
        return {name: weight * float(scores.get(name, 0.0)) / total for name, weight in self._weights}

    @property
    def budget(self) -> dict[str, float]:
        """Return the budget state after this decision (tokens left in each bucket)."""
        return {"frame_tokens": round(self.frame_tokens, 3), "byte_tokens": round(self.byte_tokens, 1)}

    def to_sidecar(self) -> SidecarDecision:
        """Return the decision as it travels in the frame's sidecar."""
        return SidecarDecision(
            keep=self.keep,
            policy=self.policy,
            score=round(self.score, 6),
            threshold=self.threshold,
            reason=self.reason,
            parts={k: round(v, 6) for k, v in self.parts.items()},
            random=self.random,
            budget=self.budget,
        )


@dataclass(frozen=True)
class _Active:
    """A config compiled for the hot path; swapped as one reference."""

    config: SelectionConfig
    weights: tuple[tuple[str, float], ...]
    inverse_weight_sum: float
    policy_name: str
    policy: Callable[[float, Any, Any, PolicyState], Verdict]
    params: Any
    random_fraction: float


@dataclass
class SelectorStats:
    """Counters since the selector started."""

    offered: int = 0
    kept: int = 0
    random: int = 0
    candidates: int = 0
    duplicates: int = 0
    budget_limited: int = 0
    kept_by_class: dict[int, int] = field(default_factory=dict)


class Selector:
    """Decides keep/drop per frame for one robot; thread-safe; re-tunable with :meth:`update`."""

    def __init__(
        self,
        config: SelectionConfig | None = None,
        robot_id: str = "robot",
        labels: tuple[str, ...] | list[str] | None = None,
        source: str = "<config>",
    ):
        self.robot_id = robot_id
        self.labels = tuple(labels) if labels is not None else ()
        self._lock = threading.Lock()
        self.stats = SelectorStats()
        self._mean_bytes: float | None = None
        config = config or SelectionConfig()
        self._active = self._compile(config, source)
        self._rng = _random.Random(config.seed)
        self._state = self._new_state(self._active, source)
        self._frames_bucket, self._bytes_bucket = self._buckets(config.budget)
        self._dedup = DedupMemory(config.dedup)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> SelectionConfig:
        return self._active.config

    def _compile(self, config: SelectionConfig, source: str) -> _Active:
        params = policy_params(config, source)
        weights = tuple((name, float(w)) for name, w in config.weights.model_dump().items() if w > 0)
        return _Active(
            config=config,
            weights=weights,
            inverse_weight_sum=1.0 / sum(w for _, w in weights),
            policy_name=config.policy.name,
            policy=POLICIES[config.policy.name].function,
            params=params,
            random_fraction=config.random_fraction,
        )

    def _new_state(self, active: _Active, source: str) -> PolicyState:
        state = PolicyState(rng=self._rng, labels=self.labels, target_fraction=self._target_fraction)
        if active.policy_name == "class_quota":
            params: ClassQuotaParams = active.params
            classes = max(len(self.labels), 1)
            limits = np.full(classes, params.max_share, np.float64)
            for name, share in params.shares.items():
                if name not in self.labels:
                    raise ConfigError(
                        f"{source}: policy.params.shares: unknown class {name!r} "
                        f"(known: {', '.join(self.labels) or 'none: the selector has no labels'})"
                    )
                if not 0.0 <= share <= 1.0:
                    raise ConfigError(f"{source}: policy.params.shares.{name} must be in [0, 1] (got {share})")
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
            config = apply_changes(self._active.config, changes, source="selector update")
            active = self._compile(config, "selector update")
            old = self._active.config
            state = self._state
            if config.policy != old.policy:
                state = self._new_state(active, "selector update")
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
        faster than real time spends the budget of the bag's duration, not of the wall clock.
        ``track_hint`` defaults to the cascade's robot-side track id (``result.track``).
        """
        if track_hint is None:
            track_hint = getattr(result, "track", None)
        with self._lock:
            active = self._active
            scores = result.scores
            value = 0.0
            for name, weight in active.weights:
                value += weight * scores[name]
            value *= active.inverse_weight_sum
            state = self._state
            state.frames += 1
            state.stamp_ns = stamp_ns
            stats = self.stats
            stats.offered += 1
            if active.random_fraction and self._rng.random() < active.random_fraction:
                verdict = Verdict(True, None, "random sample (kept regardless of score)", random=True)
                # the random fraction runs alongside the policy, which still sees the frame
                active.policy(value, result, active.params, state)
            else:
                verdict = active.policy(value, result, active.params, state)
            if not verdict.candidate:
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
                    active.weights,
                )
            return self._candidate(
                frame, result, stamp_ns, stream, robot_id, site, simulation, track_hint, value, verdict, active
            )

    def _candidate(
        self,
        frame,
        result,
        stamp_ns,
        stream,
        robot_id,
        site,
        simulation,
        track_hint,
        value: float,
        verdict: Verdict,
        active: _Active,
    ) -> Decision:
        stats, state, config = self.stats, self._state, active.config
        frames_bucket, bytes_bucket = self._frames_bucket, self._bytes_bucket
        frames_bucket.refill(stamp_ns)
        bytes_bucket.refill(stamp_ns)
        decision = Decision(
            False,
            value,
            active.policy_name,
            verdict.threshold,
            verdict.reason,
            random=verdict.random,
            _scores=result.scores,
            _weights=active.weights,
        )
        if not verdict.random:
            stats.candidates += 1
        # random samples may borrow up to one burst (so the policy's candidates cannot crowd them
        # out); the debt is paid back by later frames, so the long-run rate stays on budget
        floor_frames = 1.0 - frames_bucket.capacity if verdict.random else 1.0
        floor_bytes = -bytes_bucket.capacity if verdict.random else 0.0
        if frames_bucket.tokens < floor_frames or bytes_bucket.tokens <= floor_bytes:
            decision.budget_limited = True
            decision.reason = f"{verdict.reason}; budget spent"
            stats.budget_limited += 1
            decision.frame_tokens, decision.byte_tokens = frames_bucket.tokens, bytes_bucket.tokens
            return decision
        embedding = result.embeddings.get("T4") if result.embeddings else None
        if embedding is None and result.embeddings:
            embedding = next(iter(result.embeddings.values()))
        dedup = self._dedup
        image_hash = None
        if config.dedup.enabled:
            image_hash = dedup.image_hash(frame) if config.dedup.hash_max_distance >= 0 else None
            hamming, distance = dedup.match(image_hash, embedding)
            decision.hash_distance, decision.embedding_distance = hamming, round(distance, 6)
            if not verdict.random:
                duplicate = dedup.is_duplicate(hamming, distance)
                state.pass_ratio = 0.98 * state.pass_ratio + 0.02 * (0.0 if duplicate else 1.0)
                if duplicate:
                    decision.duplicate = True
                    decision.reason = f"{verdict.reason}; near-duplicate (hash {hamming} bits, cosine {distance:.4f})"
                    stats.duplicates += 1
                    decision.frame_tokens, decision.byte_tokens = frames_bucket.tokens, bytes_bucket.tokens
                    return decision
            dedup.remember(image_hash, embedding)
        frames_bucket.tokens -= 1.0
        decision.keep = True
        decision.reason = f"kept: {verdict.reason}"
        decision.frame_tokens, decision.byte_tokens = frames_bucket.tokens, bytes_bucket.tokens
        stats.kept += 1
        stats.random += verdict.random
        label = int(result.label)
        stats.kept_by_class[label] = stats.kept_by_class.get(label, 0) + 1
        if state.class_counts is not None and label < len(state.class_counts):
            params: ClassQuotaParams = active.params
            state.class_counts *= 1.0 - 1.0 / params.window
            state.class_counts[label] += 1.0
        priority = max(value, config.random_priority) if verdict.random else value
        decision.record = UploadRecord(
            image=np.array(frame, np.uint8, copy=True),
            priority=float(priority),
            encoding=config.record.encoding,
            jpeg_quality=config.record.jpeg_quality,
            on_encoded=self._on_encoded,
            make_fields=partial(
                self._sidecar_fields,
                result,
                stamp_ns,
                stream,
                robot_id,
                site,
                simulation,
                track_hint,
                decision,
                embedding if config.record.include_embedding else None,
            ),
        )
        return decision

    def _sidecar_fields(
        self,
        result,
        stamp_ns,
        stream,
        robot_id,
        site,
        simulation,
        track_hint,
        decision: Decision,
        embedding: np.ndarray | None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "robot_id": robot_id or self.robot_id,
            "stream": stream,
            "stamp_ns": int(stamp_ns),
            "labels": list(self.labels),
            "model_versions": dict(result.model_versions),
            "tier_outputs": {tier: [round(float(p), 6) for p in probs] for tier, probs in result.tier_outputs.items()},
            "prediction": int(result.label),
            "confidence": float(result.confidence),
            "tier_used": result.tier_used,
            "scores": {k: round(float(v), 6) for k, v in result.scores.items()},
            "decision": decision.to_sidecar(),
            "site": site,
        }
        if embedding is not None:
            fields["embedding"] = [round(float(v), 6) for v in embedding]
        detections = getattr(result, "sidecar_detections", None)  # a detection cascade's boxes per tier
        if detections is not None:
            fields["detections"] = detections()
        if simulation is not None:
            fields["simulation"] = simulation
        if track_hint is not None:
            fields["track_hint"] = track_hint
        return fields

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
                "offered": self.stats.offered,
                "kept": self.stats.kept,
            }


def value_score(scores: Mapping[str, float], weights: ScoreWeights) -> float:
    """Return the weighted mean of the score parts in [0, 1] (what the Selector computes per frame)."""
    pairs = [(w, float(scores.get(name, 0.0))) for name, w in weights.model_dump().items() if w > 0]
    total = sum(w for w, _ in pairs)
    return sum(w * s for w, s in pairs) / total if total else 0.0
