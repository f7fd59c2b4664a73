"""The classification task: image classifiers, one class per frame (``TierModel``, ``Cascade``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fleetloop_core.cascade import Cascade
from fleetloop_core.inference import TierModel
from fleetloop_core.tasks import ModelRun


class ClassificationTask:
    """Image classifiers: class probabilities per frame."""

    name = "classification"
    config_key = "cascade"
    model_class = TierModel

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
