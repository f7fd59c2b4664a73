"""The on-robot tier cascade: T4 on every frame, T3 when T4 is unsure and time allows.

Per frame the result carries the tier used, probabilities, top-k, embeddings, per-tier latency
and every uncertainty score (``fleetloop_core.uncertainty``); tier disagreement is recorded when
both tiers ran. Models can be replaced between two frames (:meth:`Cascade.set_model`), which is
what the model manager's hot-swap uses.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from pydantic import Field

from fleetloop_core import uncertainty as unc
from fleetloop_core.config import ConfigModel
from fleetloop_core.errors import ModelError
from fleetloop_core.inference import TierModel, TierOutputs

EscalationSignal = Literal["entropy", "margin", "least_confidence"]
_SIGNAL_INDEX = {"entropy": 0, "margin": 1, "least_confidence": 2}


class CascadeConfig(ConfigModel):
    """How the cascade escalates and what state it keeps."""

    escalate_above: float = Field(default=0.5, ge=0.0, le=1.0)  # escalate when signal > this
    escalation_signal: EscalationSignal = "margin"
    latency_budget_ms: float = Field(default=20.0, gt=0.0)  # per frame, T4 + T3
    top_k: int = Field(default=3, ge=1)
    novelty_memory: int = Field(default=256, ge=1)  # embeddings remembered per stream
    flicker_window: int = Field(default=8, ge=2)  # frames per stream
    escalation_enabled: bool = True
    # frames of a stream whose T4 embeddings stay at least this similar (cosine) to the previous
    # frame share a track id (FrameResult.track): the robot-side tracker behind sidecar track hints
    track_similarity: float = Field(default=0.9, ge=-1.0, le=1.0)


@dataclass(slots=True)
class FrameResult:
    """What the cascade concluded about one frame."""

    label: int
    label_name: str
    confidence: float  # probability of the label, [0, 1]
    tier_used: str  # "T4" or "T3"
    probs: np.ndarray  # (C,) of the tier used
    scores: dict[str, float]  # the classification task's score parts (uncertainty.SCORES)
    escalated: bool
    latency_s: dict[str, float]  # per tier, seconds
    model_versions: dict[str, str]
    tier_outputs: dict[str, np.ndarray]  # probs per tier that ran
    embeddings: dict[str, np.ndarray]
    total_latency_s: float = 0.0
    uncertainty_latency_s: float = 0.0  # time spent on flicker + novelty + score bookkeeping
    k: int = 3
    track: str | None = None  # robot-side track id: "<stream>@<session>-<n>", None without embeddings
    task: str = "classification"  # whose score parts ``scores`` holds (the selector weighs them by task)

    @property
    def top_k(self) -> list[tuple[int, float]]:
        """Return the ``k`` most probable (class index, probability) pairs, best first."""
        probs = self.probs
        k = min(self.k, len(probs))
        top = np.argpartition(probs, -k)[-k:]
        top = top[np.argsort(probs[top])[::-1]]
        return [(int(i), float(probs[i])) for i in top]


def _scores_of(out: TierOutputs) -> tuple[float, float, float]:
    if out.uncertainty is not None:
        entropy, margin, least = out.uncertainty[0].tolist()
        return entropy, margin, least
    probs = out.probs
    return float(unc.entropy(probs)[0]), float(unc.margin(probs)[0]), float(unc.least_confidence(probs)[0])


class _StreamState:
    __slots__ = ("flicker", "memory", "tracks")

    def __init__(self, config: CascadeConfig, dim: int, unit_embeddings: bool, stream: str = ""):
        self.flicker = unc.FlickerWindow(config.flicker_window)
        self.memory = unc.EmbeddingMemory(dim, config.novelty_memory, unit_embeddings) if dim else None
        # track ids must not repeat across streams or process restarts: prefix them with the stream and
        # the session start (two streams opened in the same millisecond had the same ids)
        self.tracks = unc.TrackChain(f"{stream}@{time.time_ns() // 1_000_000:x}", config.track_similarity)


M = TypeVar("M", bound=TierModel)


class EscalationLatency:
    """What the escalation tier is expected to cost, from its last measured runs, and whether a frame may run it.

    The estimate is the (lower) median of the last ``WINDOW`` runs, so one slow run (the process preempted
    on a busy machine, a page fault) does not decide alone; while T4 plus the estimate is over the budget,
    one in ``PROBE_EVERY`` frames that would escalate runs the tier anyway to measure it again (not when T4
    alone is over: that frame has no room whatever T3 costs). An average refreshed only by escalations
    latched: one slow run stopped escalation until the next swap of T3 (a demo robot escalated none of a
    round's frames while the robot beside it escalated as usual).
    """

    WINDOW = 5
    PROBE_EVERY = 50

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=self.WINDOW)
        self.expected_s = 0.0
        self._skipped = 0

    def allows(self, edge_latency_s: float, budget_ms: float) -> bool:
        """Whether a frame whose T4 took ``edge_latency_s`` runs T3 within ``budget_ms`` (or as a probe)."""
        if (edge_latency_s + self.expected_s) * 1000.0 <= budget_ms:
            return True
        if edge_latency_s * 1000.0 > budget_ms:
            return False
        self._skipped += 1
        if self._skipped < self.PROBE_EVERY:
            return False
        self._skipped = 0
        return True

    def record(self, latency_s: float) -> None:
        """Remember one measured run of the escalation tier."""
        self._recent.append(latency_s)
        ordered = sorted(self._recent)
        self.expected_s = ordered[(len(ordered) - 1) // 2]


class TieredCascade(Generic[M]):
    """What every cascade shares: the (edge, escalation) models, swapped atomically, and the latency budget.

    The two models are one reference, replaced as a whole between two frames, so a frame always sees one
    consistent pair. Subclasses say which models may serve together (``_check``) and run the frames.
    """

    config: Any  # the subclass's config model (latency_budget_ms at least)

    def __init__(self, edge: M, escalation: M | None = None):
        self._lock = threading.Lock()
        self._pair: tuple[M, M | None] = (edge, escalation)
        self._escalation_latency = EscalationLatency()
        self._streams: dict[str, Any] = {}
        self._check(edge, escalation)

    def _check(self, edge: M, escalation: M | None) -> None:
        """Raise ModelError when ``edge`` and ``escalation`` cannot serve together."""
        if escalation is not None and list(escalation.labels) != list(edge.labels):
            raise ModelError(
                f"tiers disagree on labels: {edge.manifest.name} has {edge.labels}, "
                f"{escalation.manifest.name} has {escalation.labels}"
            )

    @property
    def edge(self) -> M:
        return self._pair[0]

    @property
    def escalation(self) -> M | None:
        return self._pair[1]

    def set_model(self, role: str, model: M | None) -> M | None:
        """Replace one tier (``edge`` or ``escalation``) atomically, between two frames; return the one replaced."""
        if role not in ("edge", "escalation"):
            raise ValueError(f"unknown cascade role {role!r} (edge, escalation)")
        with self._lock:
            edge, escalation = self._pair
            if role == "edge":
                if model is None:
                    raise ValueError("the edge tier cannot be removed")
                self._check(model, escalation)
                previous: M | None = edge
                self._pair = (model, escalation)
                self._streams.clear()  # per-stream state (embeddings) of another model is not comparable
            else:
                self._check(edge, model)
                previous = escalation
                self._pair = (edge, model)
                self._escalation_latency = EscalationLatency()  # another model: its own latency
        return previous

    @property
    def frame_labels(self) -> tuple[str, ...]:
        """Return the names of the frame-level labels a result scores (the edge model's labels)."""
        return tuple(self.edge.labels)

    def model_versions(self) -> dict[str, str]:
        """Return the serving version per tier."""
        return {m.tier: m.version for m in self._pair if m is not None}

    def _within_budget(self, edge_latency_s: float) -> bool:
        return self._escalation_latency.allows(edge_latency_s, self.config.latency_budget_ms)


class Cascade(TieredCascade[TierModel]):
    """Runs T4 (``edge``) on every frame and escalates to T3 (``escalation``) when warranted."""

    def __init__(self, edge: TierModel, escalation: TierModel | None = None, config: CascadeConfig | None = None):
        self.config = config or CascadeConfig()
        super().__init__(edge, escalation)
        self._streams: dict[str, _StreamState] = {}

    # ------------------------------------------------------------------ inference
    def infer(self, frame: np.ndarray, stream: str = "default", color_order: str = "RGB") -> FrameResult:
        """Return the cascade's result for one uint8 frame of ``stream``."""
        # ~65 lines on purpose: the per-frame hot path, its timing points in order (benchmarks/edge_inference.py)
        start = time.perf_counter()
        edge, escalation = self._pair  # one consistent pair per frame
        config = self.config
        out = edge.infer(frame, color_order)
        edge_done = time.perf_counter()
        entropy, margin, least = _scores_of(out)
        edge_scores_s = time.perf_counter() - edge_done
        edge_tier = edge.tier
        tier_outputs = {edge_tier: out.probs[0]}
        latency = {edge_tier: out.latency_s}
        versions = {edge_tier: edge.version}
        used, used_out = edge, out
        disagreement = 0.0
        escalated = False
        if escalation is not None:
            versions[escalation.tier] = escalation.version
            signal = (entropy, margin, least)[_SIGNAL_INDEX[config.escalation_signal]]
            if config.escalation_enabled and signal > config.escalate_above and self._within_budget(out.latency_s):
                high = escalation.infer(frame, color_order)
                escalated = True
                latency[escalation.tier] = high.latency_s
                self._escalation_latency.record(high.latency_s)
                tier_outputs[escalation.tier] = high.probs[0]
                disagreement = float(unc.disagreement(out.probs, high.probs)[0])
                used, used_out = escalation, high
                entropy, margin, least = _scores_of(high)
        scores_start = time.perf_counter()
        probs = used_out.probs[0]
        label = int(probs.argmax())
        embedding = out.embedding[0] if out.embedding is not None else None
        flicker, novelty, track = self._temporal(config, stream, label, embedding)
        scores = {
            "entropy": entropy,
            "margin": margin,
            "least_confidence": least,
            "disagreement": disagreement,
            "flicker": flicker,
            "novelty": novelty,
        }
        scores_end = time.perf_counter()
        embeddings = {edge_tier: embedding} if embedding is not None else {}
        if escalated and used_out.embedding is not None:
            embeddings[used.tier] = used_out.embedding[0]
        return FrameResult(
            label=label,
            label_name=used.labels[label],
            confidence=float(probs[label]),
            tier_used=used.tier,
            probs=probs,
            scores=scores,
            escalated=escalated,
            latency_s=latency,
            model_versions=versions,
            tier_outputs=tier_outputs,
            embeddings=embeddings,
            total_latency_s=time.perf_counter() - start,
            uncertainty_latency_s=edge_scores_s + (scores_end - scores_start),
            k=config.top_k,
            track=track,
        )

    def _temporal(
        self, config: CascadeConfig, stream: str, label: int, embedding: np.ndarray | None
    ) -> tuple[float, float, str | None]:
        """Return (label flicker, embedding novelty, robot-side track id) of the stream's latest frame."""
        state = self._streams.get(stream)
        if state is None:
            dim = 0 if embedding is None else len(embedding)
            normalised = self.edge.manifest.outputs.embedding_normalised
            state = self._streams[stream] = _StreamState(config, dim, normalised, stream)
        flicker = state.flicker.push(label)
        if state.memory is None or embedding is None:
            return flicker, 0.0, None
        novelty = state.memory.score(embedding)
        return flicker, novelty, state.tracks.next(state.memory.last_similarity)
