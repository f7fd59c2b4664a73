"""The classification task: image classifiers, one class per frame (``TierModel``, ``Cascade``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pydantic import Field

from fleetloop_core import uncertainty as unc
from fleetloop_core.cascade import Cascade
from fleetloop_core.config import ConfigModel
from fleetloop_core.inference import TierModel
from fleetloop_core.tasks import ModelRun


class ClassificationWeights(ConfigModel):
    """Weight of each classification score part in a frame's value score (``selection.weights.classification``)."""

    entropy: float = Field(default=0.0, ge=0.0)  # normalised entropy of the served tier's probabilities
    margin: float = Field(default=1.0, ge=0.0)  # 1 - (top-1 - top-2 probability)
    least_confidence: float = Field(default=0.0, ge=0.0)  # 1 - top-1 probability, rescaled to [0, 1]
    disagreement: float = Field(default=1.0, ge=0.0)  # T4 vs T3 (Jensen-Shannon); only escalated frames have it
    flicker: float = Field(default=0.5, ge=0.0)  # label changes over the stream's last frames
    novelty: float = Field(default=1.0, ge=0.0)  # embedding distance to the stream's recent frames


class ClassificationTask:
    """Image classifiers: class probabilities per frame."""

    name = "classification"
    config_key = "cascade"
    model_class = TierModel
    score_parts: tuple[str, ...] = unc.SCORES
    weights_model: type[ConfigModel] = ClassificationWeights

    def run(self, model: TierModel, frame: np.ndarray) -> ModelRun:
        out = model.infer(frame)
        probs = out.probs[0]
        return ModelRun(int(np.argmax(probs)), probs, out.latency_s)

    def agree(self, current: ModelRun, candidate: ModelRun) -> bool:
        return current.answer == candidate.answer and bool(np.isfinite(candidate.scores).all())

    def served_confidence(self, result: Any, tier: str) -> float | None:
        outputs = result.tier_outputs.get(tier)
        return None if outputs is None else float(outputs.max())

    def cascade(self, edge: TierModel, escalation: TierModel | None = None, config: Any = None) -> Cascade:
        return Cascade(edge, escalation, config)
