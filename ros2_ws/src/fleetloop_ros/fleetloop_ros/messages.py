"""Field-by-field copies between fleetloop_core results and our ROS messages (no decisions here)."""

from __future__ import annotations

import array
import math
from typing import Any, Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from fleetloop_interfaces.msg import (
    BoundingBox2D,
    Detection2D,
    Detection2DArray,
    FrameDecision,
    FrameResult,
    ObjectHypothesis,
    ObjectHypothesisWithPose,
    Point2D,
    Pose2D,
    TierOutput,
    TierVersion,
)
from std_msgs.msg import Header

from fleetloop_core.cascade import FrameResult as CoreFrameResult
from fleetloop_core.health import Check

_LEVEL_BYTES = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR, 3: DiagnosticStatus.STALE}


def _floats(values: Any) -> array.array:
    """Return float32 values as array.array('f'): the generated setters take it without per-element checks."""
    return array.array("f", np.ascontiguousarray(values, np.float32).tobytes())


def stamp_ns(stamp: Time) -> int:
    """Return a builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def time_msg(ns: int) -> Time:
    """Return integer nanoseconds as builtin_interfaces/Time."""
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def frame_result_msg(
    result: CoreFrameResult,
    header: Header,
    stream: str,
    sequence: int,
    labels: Sequence[str],
    versions: Sequence[TierVersion],
    latency_ms: float = math.nan,
) -> FrameResult:
    """Return the FrameResult message of one cascade result (header copied from the image)."""
    scores = result.scores
    embedding = result.embeddings.get("T4") if result.embeddings else None
    if embedding is None and result.embeddings:
        embedding = next(iter(result.embeddings.values()))
    return FrameResult(
        header=header,
        stream=stream,
        sequence=int(sequence),
        label=int(result.label),
        label_name=result.label_name,
        confidence=float(result.confidence),
        tier_used=result.tier_used,
        escalated=bool(result.escalated),
        probs=_floats(result.probs),
        labels=list(labels),
        tier_outputs=[TierOutput(tier=tier, probs=_floats(probs)) for tier, probs in result.tier_outputs.items()],
        embedding=_floats(embedding) if embedding is not None else array.array("f"),
        task=result.task,
        score_names=list(scores),
        scores=_floats(list(scores.values())),
        models=[v for v in versions if v.tier in result.model_versions],
        inference_ms=float(result.total_latency_s * 1000.0),
        latency_ms=float(latency_ms),
    )


def detections_msg(
    result: Any, header: Header, stream: str, sequence: int, class_names: Sequence[str], versions: Sequence[TierVersion]
) -> Detection2DArray:
    """Return the Detection2DArray of one detection-cascade result (boxes in the image's pixels)."""
    found = result.detections
    detections = []
    for index, (box, score, cls) in enumerate(zip(found.boxes.tolist(), found.scores.tolist(), found.classes.tolist())):
        x0, y0, x1, y1 = box
        detections.append(
            Detection2D(
                header=header,
                id=str(index),
                results=[ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=str(cls), score=float(score)))],
                bbox=BoundingBox2D(
                    center=Pose2D(position=Point2D(x=(x0 + x1) / 2.0, y=(y0 + y1) / 2.0), theta=0.0),
                    size_x=x1 - x0,
                    size_y=y1 - y0,
                ),
            )
        )
    return Detection2DArray(
        header=header,
        detections=detections,
        stream=stream,
        sequence=int(sequence),
        class_names=list(class_names),
        tier_used=result.tier_used,
        escalated=bool(result.escalated),
        models=[v for v in versions if v.tier in result.model_versions],
        inference_ms=float(result.total_latency_s * 1000.0),
    )


def boxes_from_msg(msg: Detection2DArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (boxes (K, 4) x0y0x1y1 pixels, scores (K,), classes (K,)) of a Detection2DArray."""
    rows, scores, classes = [], [], []
    for detection in msg.detections:
        centre, hypothesis = detection.bbox.center.position, detection.results[0].hypothesis
        half_x, half_y = detection.bbox.size_x / 2.0, detection.bbox.size_y / 2.0
        rows.append([centre.x - half_x, centre.y - half_y, centre.x + half_x, centre.y + half_y])
        scores.append(hypothesis.score)
        classes.append(int(hypothesis.class_id))
    return (np.asarray(rows, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(classes, np.int64))


def core_result_from_msg(msg: FrameResult) -> CoreFrameResult:
    """Return the cascade result a FrameResult message carries (for a selector in another process)."""
    probs = np.asarray(msg.probs, np.float32)
    embedding = np.asarray(msg.embedding, np.float32)
    return CoreFrameResult(
        label=int(msg.label),
        label_name=msg.label_name,
        confidence=float(msg.confidence),
        tier_used=msg.tier_used,
        probs=probs,
        scores={name: float(score) for name, score in zip(msg.score_names, msg.scores)},
        escalated=bool(msg.escalated),
        latency_s={},
        model_versions={m.tier: m.version for m in msg.models},
        tier_outputs={t.tier: np.asarray(t.probs, np.float32) for t in msg.tier_outputs},
        embeddings={"T4": embedding} if embedding.size else {},
        total_latency_s=float(msg.inference_ms) / 1000.0,
        task=msg.task or "classification",
    )


def frame_decision_msg(decision: Any, header: Header, stream: str) -> FrameDecision:
    """Return the FrameDecision message of a selector decision (fleetloop_core.selection_decision.Decision)."""
    threshold = decision.threshold
    return FrameDecision(
        header=header,
        stream=stream,
        keep=bool(decision.keep),
        random=bool(decision.random),
        duplicate=bool(decision.duplicate),
        budget_limited=bool(decision.budget_limited),
        policy=str(decision.policy),
        score=float(decision.score),
        threshold=float(threshold) if threshold is not None else math.nan,
        reason=str(decision.reason),
    )


def diagnostic_status(check: Check, node_name: str, hardware_id: str) -> DiagnosticStatus:
    """Return the DiagnosticStatus of one graded check."""
    return DiagnosticStatus(
        level=_LEVEL_BYTES[check.level],
        name=f"{node_name}: {check.name}",
        message=check.message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in check.values.items()],
    )


def level_of(status: DiagnosticStatus) -> int:
    """Return a DiagnosticStatus level as an int (the field is a byte)."""
    level = status.level
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)


def values_of(status: DiagnosticStatus) -> Mapping[str, str]:
    """Return a DiagnosticStatus's key/value pairs as a dict."""
    return {kv.key: kv.value for kv in status.values}
