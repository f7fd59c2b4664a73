"""The detection task: object detectors, boxes per frame (``DetectorModel``, ``DetectionCascade``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from fleetloop_core import uncertainty_detection as dunc
from fleetloop_core.config import ConfigModel
from fleetloop_core.detection import DetectorModel, frame_label_scores
from fleetloop_core.detection_cascade import DetectionCascade, DetectionResult
from fleetloop_core.errors import ModelError
from fleetloop_core.inference import TierModel
from fleetloop_core.tasks import ModelRun

# a shadow-check pair of boxes is the same object at this overlap (the detection cascade's default)
SHADOW_MATCH_IOU = 0.5


class DetectionWeights(ConfigModel):
    """Weight of each detection score part in a frame's value score (``selection.weights.detection``)."""

    band: float = Field(default=1.0, ge=0.0)  # boxes whose score sits near the decision threshold
    box_entropy_mean: float = Field(default=0.0, ge=0.0)  # mean class entropy of the frame's boxes
    box_entropy_max: float = Field(default=0.0, ge=0.0)  # the most class-ambiguous box's entropy
    disagreement: float = Field(default=1.0, ge=0.0)  # T4 vs T3 box sets; only escalated frames have it
    count_flicker: float = Field(default=0.5, ge=0.0)  # box-count changes over the stream's last frames
    novelty: float = Field(default=1.0, ge=0.0)  # embedding distance to the stream's recent frames


class DetectionTask:
    """Object detectors: boxes per frame."""

    name = "detection"
    config_key = "detection"
    model_class: type[TierModel] = DetectorModel
    score_parts: tuple[str, ...] = dunc.SCORE_PARTS
    weights_model: type[ConfigModel] = DetectionWeights

    def run(self, model: TierModel, frame: np.ndarray) -> ModelRun:
        if not isinstance(model, DetectorModel):
            raise ModelError(f"{model.manifest.name}: task {model.manifest.task!r} is not a detector")
        out = model.detect(frame)
        scores = frame_label_scores(out.detections, model.num_classes)
        if not out.finite:
            scores = np.full_like(scores, np.nan)
        return ModelRun(out.detections, scores, out.latency_s)

    def agree(self, current: ModelRun, candidate: ModelRun) -> bool:
        if not np.isfinite(candidate.scores).all():
            return False
        a, b = current.answer, candidate.answer
        found = dunc.box_disagreement(a.boxes, b.boxes, a.classes, b.classes, SHADOW_MATCH_IOU)
        return found.unmatched == 0 and found.class_conflicts == 0

    def served_confidence(self, result: Any, tier: str) -> float | None:
        if not isinstance(result, DetectionResult):
            return None
        detections = result.tier_detections.get(tier)
        return None if detections is None else float(frame_label_scores(detections, len(result.classes)).max())

    def cascade(self, edge: TierModel, escalation: TierModel | None = None, config: Any = None) -> DetectionCascade:
        if not isinstance(edge, DetectorModel) or not (escalation is None or isinstance(escalation, DetectorModel)):
            raise ModelError(f"{edge.manifest.name}: a detection cascade serves detectors only")
        return DetectionCascade(edge, escalation, config)
