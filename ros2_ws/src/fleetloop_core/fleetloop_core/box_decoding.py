"""Detector outputs to boxes: letterbox geometry, decoding of standard output layouts, NMS.

:func:`letterbox` resizes keeping the aspect ratio and pads to the model input (the
:class:`Letterbox` maps boxes back to frame pixels); the decoder turns the raw outputs into
candidate boxes (:func:`decode_yolo` for ``[N, 4 + C, A]`` centre-xywh without objectness,
:func:`decode_boxes_scores` for ``boxes`` + ``scores`` (+ ``labels``)); per-class non-maximum
suppression runs in OpenCV (``cv2.dnn.NMSBoxesBatched``). Boxes come back in frame pixels,
``x0, y0, x1, y1`` with pixel ``i`` spanning ``[i, i + 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from fleetloop_core.errors import ModelError
from fleetloop_core.contracts.manifest import DetectionSpec


# --------------------------------------------------------------------------- letterbox


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input: input = frame * scale + pad (per axis)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    frame_width: int
    frame_height: int

    @property
    def identity(self) -> bool:
        return self.scale_x == 1.0 and self.scale_y == 1.0 and self.pad_x == 0.0 and self.pad_y == 0.0

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Return input-pixel boxes (K, 4) mapped back to frame pixels and clipped to the frame."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if self.identity:
            out = boxes.copy()
        else:
            out = np.empty_like(boxes)
            out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
            out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0.0, self.frame_width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0.0, self.frame_height, out=out[:, 1::2])
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Return frame-pixel boxes (K, 4) mapped into model-input pixels (training targets)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        out = np.empty_like(boxes)
        out[:, 0::2] = boxes[:, 0::2] * self.scale_x + self.pad_x
        out[:, 1::2] = boxes[:, 1::2] * self.scale_y + self.pad_y
        return out


def letterbox_geometry(
    frame_height: int, frame_width: int, input_height: int, input_width: int, keep_aspect: bool = True
) -> Letterbox:
    """Return the mapping of a frame into a model input (centred padding when the aspect ratios differ)."""
    if not keep_aspect:
        return Letterbox(input_width / frame_width, input_height / frame_height, 0.0, 0.0, frame_width, frame_height)
    scale = min(input_width / frame_width, input_height / frame_height)
    new_w, new_h = round(frame_width * scale), round(frame_height * scale)
    pad_x, pad_y = (input_width - new_w) // 2, (input_height - new_h) // 2
    # the resized image is new_w x new_h exactly: use its true scale per axis
    return Letterbox(new_w / frame_width, new_h / frame_height, float(pad_x), float(pad_y), frame_width, frame_height)


def letterbox(
    frame: np.ndarray,
    input_height: int,
    input_width: int,
    pad_value: int = 114,
    keep_aspect: bool = True,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, Letterbox]:
    """Return (the frame fitted into input_height x input_width, its Letterbox); the frame itself when it fits."""
    height, width = frame.shape[:2]
    geometry = letterbox_geometry(height, width, input_height, input_width, keep_aspect)
    if geometry.identity:
        return frame, geometry
    new_w = round(width * geometry.scale_x)
    new_h = round(height * geometry.scale_y)
    resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
    if (new_w, new_h) == (input_width, input_height):
        return resized, geometry
    pad_x, pad_y = int(geometry.pad_x), int(geometry.pad_y)
    out = cv2.copyMakeBorder(
        resized,
        pad_y,
        input_height - new_h - pad_y,
        pad_x,
        input_width - new_w - pad_x,
        cv2.BORDER_CONSTANT,
        value=(pad_value,) * (frame.shape[2] if frame.ndim == 3 else 1),
    )
    return out, geometry


# --------------------------------------------------------------------------- decoding


@dataclass(slots=True)
class Detections:
    """Boxes of one frame after NMS: ``boxes`` (K, 4) x0y0x1y1 pixels, ``scores`` (K,), ``classes`` (K,).

    ``class_scores`` (K, C) when the model exports per-class scores, else None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, num_classes: int | None = None) -> "Detections":
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            None if num_classes is None else np.zeros((0, num_classes), np.float32),
        )

    def select(self, mask: np.ndarray) -> "Detections":
        """Return the detections where ``mask`` is true (a bool array or indices)."""
        return Detections(
            self.boxes[mask],
            self.scores[mask],
            self.classes[mask],
            None if self.class_scores is None else self.class_scores[mask],
        )

    def rows(self, digits: int = 2) -> list[list[float]]:
        """Return JSON-able rows ``[x0, y0, x1, y1, score, class]``."""
        return [
            [round(float(v), digits) for v in box] + [round(float(s), 4), int(c)]
            for box, s, c in zip(self.boxes, self.scores, self.classes)
        ]


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Return centre-x, centre-y, width, height boxes (..., 4) as x0, y0, x1, y1."""
    boxes = np.asarray(boxes, np.float32)
    half = boxes[..., 2:4] * 0.5
    return np.concatenate([boxes[..., 0:2] - half, boxes[..., 0:2] + half], axis=-1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def decode_yolo(
    output: np.ndarray, num_classes: int, spec: DetectionSpec, input_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Return (boxes xyxy (A, 4) input pixels, class scores (A, C)) of one image's YOLO output (4 + C, A)."""
    output = np.asarray(output, np.float32)
    if output.ndim != 2 or output.shape[0] != 4 + num_classes:
        raise ModelError(f"yolo output: expected (4 + {num_classes}, anchors), got {output.shape}")
    boxes = cxcywh_to_xyxy(output[:4].T)
    scores = output[4:].T
    if not spec.scores_activated:
        scores = _sigmoid(scores)
    if spec.normalised:
        boxes = boxes * np.asarray([input_size[1], input_size[0]] * 2, np.float32)
    return boxes, scores


def decode_boxes_scores(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray | None,
    num_classes: int,
    spec: DetectionSpec,
    input_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Return (boxes xyxy (A, 4), best score (A,), class (A,), class scores (A, C) or None) of one image."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if spec.box_format == "cxcywh":
        boxes = cxcywh_to_xyxy(boxes)
    if spec.normalised:
        boxes = boxes * np.asarray([input_size[1], input_size[0]] * 2, np.float32)
    scores = np.asarray(scores, np.float32)
    if not spec.scores_activated:
        scores = _sigmoid(scores)
    if scores.ndim == 2:
        if scores.shape[1] != num_classes:
            raise ModelError(f"scores output: expected (anchors, {num_classes}), got {scores.shape}")
        classes = scores.argmax(axis=1)
        return boxes, scores[np.arange(len(scores)), classes], classes.astype(np.int64), scores
    if labels is None:
        raise ModelError("scores output has one score per box but the layout names no labels output")
    return boxes, scores.reshape(-1), np.asarray(labels, np.int64).reshape(-1), None


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> np.ndarray:
    """Return the indices kept by per-class non-maximum suppression (OpenCV), best score first."""
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    xywh = np.empty((len(boxes), 4), np.float32)
    xywh[:, :2] = boxes[:, :2]
    np.maximum(boxes[:, 2:] - boxes[:, :2], 0.0, out=xywh[:, 2:])
    # cv2's stubs declare sequences; OpenCV takes the arrays as they are (no per-box Python objects)
    nms_batched: Any = cv2.dnn.NMSBoxesBatched
    kept = nms_batched(
        xywh,
        scores.astype(np.float32, copy=False),
        classes.astype(np.int32, copy=False),
        float(score_threshold),
        float(iou_threshold),
        1.0,
        int(max_detections),
    )
    keep = np.asarray(kept, np.int64).reshape(-1)
    if len(keep) > 1:
        # OpenCV returns each class's survivors together: order them by score across classes
        keep = keep[np.argsort(-scores[keep], kind="stable")]
    return keep[:max_detections]


def postprocess(
    boxes: np.ndarray,
    best: np.ndarray,
    classes: np.ndarray,
    class_scores: np.ndarray | None,
    score_floor: float,
    spec: DetectionSpec,
    geometry: Letterbox,
) -> Detections:
    """Return the NMS survivors scoring at least ``score_floor``, mapped back to frame pixels."""
    candidates = np.flatnonzero(best >= score_floor)
    if len(candidates) == 0:
        return Detections.empty(None if class_scores is None else class_scores.shape[1])
    if len(candidates) < len(best):
        boxes, best, classes = boxes[candidates], best[candidates], classes[candidates]
        class_scores = None if class_scores is None else class_scores[candidates]
    keep = nms(boxes, best, classes, score_floor, spec.nms_iou, spec.max_detections)
    return Detections(
        geometry.to_frame(boxes[keep]),
        best[keep].astype(np.float32),
        classes[keep].astype(np.int64),
        None if class_scores is None else class_scores[keep].astype(np.float32),
    )
