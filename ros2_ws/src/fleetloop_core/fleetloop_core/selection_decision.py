"""What the selector says about one frame: the :class:`Decision` and why, the value score, and the
sidecar fields of a kept frame (where it came from, what the cascade said, the decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from fleetloop_core.config import ConfigModel
from fleetloop_core.contracts.sidecar import Decision as SidecarDecision
from fleetloop_core.record import UploadRecord


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


class Origin(NamedTuple):
    """Where a kept frame came from, as its sidecar says (capture stamp in ns)."""

    stamp_ns: int
    stream: str
    robot_id: str
    site: str
    simulation: Any
    track_hint: str | None


def value_score(scores: Mapping[str, float], weights: ConfigModel) -> float:
    """Return the weighted mean of the score parts in [0, 1] (what the Selector computes per frame).

    ``weights``: one task's weights (``SelectionConfig.weights.of(task)``).
    """
    pairs = [(w, float(scores.get(name, 0.0))) for name, w in weights.model_dump().items() if w > 0]
    total = sum(w for w, _ in pairs)
    return sum(w * s for w, s in pairs) / total if total else 0.0


def sidecar_fields(
    labels: Sequence[str], result: Any, origin: Origin, decision: Decision, embedding: np.ndarray | None
) -> dict[str, Any]:
    """Return the sidecar's fields of a kept frame (built when the queue persists the record)."""
    fields: dict[str, Any] = {
        "robot_id": origin.robot_id,
        "stream": origin.stream,
        "stamp_ns": int(origin.stamp_ns),
        "labels": list(labels),
        "model_versions": dict(result.model_versions),
        "tier_outputs": {tier: [round(float(p), 6) for p in probs] for tier, probs in result.tier_outputs.items()},
        "prediction": int(result.label),
        "confidence": float(result.confidence),
        "tier_used": result.tier_used,
        "scores": {k: round(float(v), 6) for k, v in result.scores.items()},
        "decision": decision.to_sidecar(),
        "site": origin.site,
    }
    if embedding is not None:
        fields["embedding"] = [round(float(v), 6) for v in embedding]
    detections = getattr(result, "sidecar_detections", None)  # a detection cascade's boxes per tier
    if detections is not None:
        fields["detections"] = detections()
    if origin.simulation is not None:
        fields["simulation"] = origin.simulation
    if origin.track_hint is not None:
        fields["track_hint"] = origin.track_hint
    return fields
