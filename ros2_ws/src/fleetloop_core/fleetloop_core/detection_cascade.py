"""The detection cascade: T4 on every frame, T3 when T4 is unsure and the latency budget allows.

The classification cascade's rule with detection's uncertainty (``fleetloop_core.uncertainty_detection``).
Its :class:`DetectionResult` carries the same fields the selector and the sidecar read from a
classification ``FrameResult`` (frame label = class of the best box or ``none``), so selection,
the upload queue and replay work unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from fleetloop_core import uncertainty as unc
from fleetloop_core import uncertainty_detection as dunc
from fleetloop_core.cascade import TieredCascade
from fleetloop_core.config import ConfigModel
from fleetloop_core.errors import ModelError

from fleetloop_core.box_decoding import Detections
from fleetloop_core.detection import DetectorModel, DetectorOutputs, NONE_NAME, frame_label_scores


# --------------------------------------------------------------------------- the cascade

EscalationSignal = Literal["band", "box_entropy_max", "box_entropy_mean"]


class DetectionCascadeConfig(ConfigModel):
    """How the detection cascade escalates, what it calls uncertain and what state it keeps."""

    # escalate when the signal > this; measured on the detection-default T4 (field site 0): the score band held
    # >= 1 box on > 99 % of frames (per-class NMS keeps faint duplicates), box class entropy > 0.5 on 29 %
    escalate_above: float = Field(default=0.5, ge=0.0, le=1.0)
    escalation_signal: EscalationSignal = "box_entropy_max"
    latency_budget_ms: float = Field(default=40.0, gt=0.0)  # per frame, T4 + T3
    band_width: float = Field(default=0.15, gt=0.0, le=0.5)  # score band: threshold +- this
    match_iou: float = Field(default=0.5, gt=0.0, le=1.0)  # T4 vs T3 box matching
    novelty_memory: int = Field(default=256, ge=1)
    flicker_window: int = Field(default=8, ge=2)
    escalation_enabled: bool = True


@dataclass(slots=True)
class DetectionResult:
    """What the detection cascade concluded about one frame (fields the selector reads first)."""

    label: int  # class of the best box, or len(classes) for none
    label_name: str
    confidence: float  # score of the best box; 1 - best candidate score when none
    tier_used: str
    probs: np.ndarray  # (C + 1,) per class the best box score; last: 1 - best score
    scores: dict[str, float]  # the detection task's score parts (dunc.SCORE_PARTS) + the figures behind them
    escalated: bool
    latency_s: dict[str, float]  # per tier: preprocess + inference + decode/NMS (seconds)
    model_versions: dict[str, str]
    tier_outputs: dict[str, np.ndarray]  # kept empty for detections (sidecars carry boxes instead)
    embeddings: dict[str, np.ndarray]
    detections: Detections  # of the tier used, score >= its threshold
    tier_detections: dict[str, Detections] = field(default_factory=dict)
    candidates: Detections | None = None  # of the tier used, down to the score band's low edge
    decode_latency_s: dict[str, float] = field(default_factory=dict)
    inference_latency_s: dict[str, float] = field(default_factory=dict)
    total_latency_s: float = 0.0
    uncertainty_latency_s: float = 0.0
    classes: tuple[str, ...] = ()
    task: str = "detection"  # whose score parts ``scores`` holds (the selector weighs them by task)

    @property
    def boxes(self) -> np.ndarray:
        return self.detections.boxes

    def sidecar_detections(self) -> dict[str, list[list[float]]]:
        """Return per tier that ran the rows ``[x0, y0, x1, y1, score, class]`` (for the upload sidecar)."""
        return {tier: d.rows() for tier, d in self.tier_detections.items()}


class _DetectionStream:
    __slots__ = ("flicker", "memory")

    def __init__(self, config: DetectionCascadeConfig, dim: int):
        self.flicker = unc.FlickerWindow(config.flicker_window)
        self.memory = unc.EmbeddingMemory(dim, config.novelty_memory, True) if dim else None


class DetectionCascade(TieredCascade[DetectorModel]):
    """Runs the T4 detector on every frame and the T3 detector when T4 is unsure and time allows."""

    def __init__(
        self, edge: DetectorModel, escalation: DetectorModel | None = None, config: DetectionCascadeConfig | None = None
    ):
        self.config = config or DetectionCascadeConfig()
        super().__init__(edge, escalation)
        self._streams: dict[str, _DetectionStream] = {}

    def _check(self, edge: DetectorModel, escalation: DetectorModel | None) -> None:
        for model in (edge, escalation):
            if model is not None and not isinstance(model, DetectorModel):
                raise ModelError(
                    f"{model.manifest.name}: task {model.manifest.task!r} cannot serve a detection cascade"
                )
        super()._check(edge, escalation)

    @property
    def frame_labels(self) -> tuple[str, ...]:
        """Return the frame-level label names: the detector's classes, then ``none``."""
        return (*self.edge.labels, NONE_NAME)

    def infer(self, frame: np.ndarray, stream: str = "default", color_order: str = "RGB") -> DetectionResult:
        """Return the cascade's detections and uncertainty for one uint8 frame of ``stream``."""
        start = time.perf_counter()
        edge, escalation = self._pair  # one consistent pair per frame
        config = self.config
        out, parts, scoring_s = _run_tier(edge, frame, color_order, config.band_width)
        passes = {edge.tier: out}
        versions = {edge.tier: edge.version}
        tier_detections = {edge.tier: parts.confirmed}
        disagreement = dunc.Disagreement(0.0, 0, 0, 1.0, 0)
        used, used_out = edge, out
        if escalation is not None:
            versions[escalation.tier] = escalation.version
            signal = {"band": parts.band, "box_entropy_max": parts.entropy_max, "box_entropy_mean": parts.entropy_mean}[
                config.escalation_signal
            ]
            if config.escalation_enabled and signal > config.escalate_above and self._within_budget(out.latency_s):
                high_out, high_parts, high_scoring_s = _run_tier(escalation, frame, color_order, config.band_width)
                passes[escalation.tier] = high_out
                self._escalation_latency.record(high_out.latency_s)
                t0 = time.perf_counter()
                tier_detections[escalation.tier] = high_parts.confirmed
                disagreement = dunc.box_disagreement(
                    parts.confirmed.boxes,
                    high_parts.confirmed.boxes,
                    parts.confirmed.classes,
                    high_parts.confirmed.classes,
                    config.match_iou,
                )
                scoring_s += high_scoring_s + time.perf_counter() - t0
                used, used_out, parts = escalation, high_out, high_parts
        t0 = time.perf_counter()
        result = self._result(stream, used, used_out, out.embedding, parts, disagreement)
        result.tier_detections, result.model_versions = tier_detections, versions
        result.latency_s = {tier: p.latency_s for tier, p in passes.items()}
        result.decode_latency_s = {tier: p.decode_s for tier, p in passes.items()}
        result.inference_latency_s = {tier: p.inference_s for tier, p in passes.items()}
        result.uncertainty_latency_s = scoring_s + time.perf_counter() - t0
        result.total_latency_s = time.perf_counter() - start
        return result

    def _result(
        self,
        stream: str,
        used: DetectorModel,
        used_out: DetectorOutputs,
        edge_embedding: np.ndarray | None,
        parts: _Parts,
        disagreement: dunc.Disagreement,
    ) -> DetectionResult:
        """Return the frame's result from the serving tier's detections and the stream's temporal state.

        Latencies, versions and per-tier detections are filled in by :meth:`infer`.
        """
        detections = parts.confirmed
        classes = tuple(self.edge.labels)
        none_index = len(classes)
        probs = frame_label_scores(detections, none_index)
        if not used_out.finite:
            probs[:] = np.nan  # what the watchdog counts as an error, as for classifiers
        if len(detections):
            best = int(np.argmax(detections.scores))
            label, confidence = int(detections.classes[best]), float(detections.scores[best])
        else:
            label = none_index
            confidence = 1.0 - (float(parts.candidates.scores.max()) if len(parts.candidates) else 0.0)
        state = self._streams.get(stream)
        if state is None:
            dim = 0 if edge_embedding is None else len(edge_embedding)
            state = self._streams[stream] = _DetectionStream(self.config, dim)
        flicker = state.flicker.push(len(detections))
        novelty = state.memory.score(edge_embedding) if state.memory is not None and edge_embedding is not None else 0.0
        embeddings = {self.edge.tier: edge_embedding} if edge_embedding is not None else {}
        if used is not self.edge and used_out.embedding is not None:
            embeddings[used.tier] = used_out.embedding
        return DetectionResult(
            label=label,
            label_name=classes[label] if label < none_index else NONE_NAME,
            confidence=confidence,
            tier_used=used.tier,
            probs=probs,
            scores=_scores(parts, disagreement, flicker, novelty, len(detections)),
            escalated=used is not self.edge,
            latency_s={},
            model_versions={},
            tier_outputs={},
            embeddings=embeddings,
            detections=detections,
            tier_detections={},
            candidates=parts.candidates,
            decode_latency_s={},
            inference_latency_s={},
            total_latency_s=0.0,
            uncertainty_latency_s=0.0,
            classes=classes,
        )


def _run_tier(
    model: DetectorModel, frame: np.ndarray, color_order: str, band_width: float
) -> tuple[DetectorOutputs, _Parts, float]:
    """Return one tier's detections down to its uncertainty band's low edge, their score parts and scoring seconds."""
    threshold = model.spec.score_threshold
    low, high = dunc.band_around(threshold, band_width)
    out = model.detect(frame, color_order, score_floor=min(low, threshold))
    start = time.perf_counter()
    parts = _frame_scores(out.detections, threshold, low, high)
    return out, parts, time.perf_counter() - start


def _scores(
    parts: _Parts, disagreement: dunc.Disagreement, flicker: float, novelty: float, boxes: int
) -> dict[str, float]:
    """Return the frame's score parts (``dunc.SCORE_PARTS``, each in [0, 1]) and the figures behind them."""
    return {
        "band": parts.band,
        "box_entropy_mean": parts.entropy_mean,
        "box_entropy_max": parts.entropy_max,
        "disagreement": disagreement.score,
        "count_flicker": flicker,
        "novelty": novelty,
        # the figures behind the parts (sidecars carry them; the selector weighs only the parts)
        "band_count": float(parts.band_count),
        "unmatched_boxes": float(disagreement.unmatched),
        "matched_iou": disagreement.mean_iou,
        "class_conflicts": float(disagreement.class_conflicts),
        "boxes": float(boxes),
    }


@dataclass(frozen=True)
class _Parts:
    confirmed: Detections  # score >= threshold
    candidates: Detections  # score >= band low edge
    band: float
    band_count: int
    entropy_mean: float
    entropy_max: float


def _frame_scores(candidates: Detections, threshold: float, low: float, high: float) -> _Parts:
    confirmed = candidates.select(candidates.scores >= threshold)
    count = int(dunc.band_count(candidates.scores[None], low, high)[0]) if len(candidates) else 0
    if confirmed.class_scores is not None and len(confirmed):
        mean, peak = dunc.box_entropy_stats(confirmed.class_scores[None])
        entropy_mean, entropy_max = float(mean[0]), float(peak[0])
    else:
        entropy_mean = entropy_max = 0.0
    return _Parts(confirmed, candidates, float(dunc.band_score(count)), count, entropy_mean, entropy_max)
