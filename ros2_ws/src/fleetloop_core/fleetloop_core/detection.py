"""Detectors at the edge: letterbox, decoding of standard output layouts, NMS, the detection cascade.

``DetectorModel.load(dir)`` verifies the package like ``TierModel`` (sizes and sha256 before any
session exists), then checks that the manifest's declared output layout (``detection`` block,
see ``fleetloop_core.manifest.DetectionSpec``) matches the ONNX graph's outputs: a mismatch is a
ModelError naming the layout, the expected outputs and what the graph has.

Per frame: :func:`letterbox` resizes keeping the aspect ratio and pads to the model input (the
:class:`Letterbox` maps boxes back to frame pixels); the decoder turns the raw outputs into
candidate boxes (:func:`decode_yolo` for ``[N, 4 + C, A]`` centre-xywh without objectness,
:func:`decode_boxes_scores` for ``boxes`` + ``scores`` (+ ``labels``)); per-class non-maximum
suppression runs in OpenCV (``cv2.dnn.NMSBoxesBatched``). Boxes come back in frame pixels,
``x0, y0, x1, y1`` with pixel ``i`` spanning ``[i, i + 1)``.

:class:`DetectionCascade` runs T4 on every frame and T3 when T4 is unsure and the latency budget
allows (the classification cascade's rule), and scores each frame with
``fleetloop_core.uncertainty_detection``. Its :class:`DetectionResult` carries the same fields the
selector and the sidecar read from a classification ``FrameResult`` (frame label = class of the
best box or ``none``), so selection, the upload queue and replay work unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import cv2
import numpy as np
import onnxruntime as ort
from pydantic import Field

from fleetloop_core import uncertainty as unc
from fleetloop_core import uncertainty_detection as dunc
from fleetloop_core.cascade import TieredCascade
from fleetloop_core.config import ConfigModel
from fleetloop_core.errors import ModelError
from fleetloop_core.inference import TierModel
from fleetloop_core.manifest import DetectionSpec, Manifest
from fleetloop_core.preprocess import check_frame, convert_order

NONE_NAME = "none"


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


# --------------------------------------------------------------------------- the model


@dataclass(slots=True)
class DetectorOutputs:
    """One frame's detections and where the time went (seconds)."""

    detections: Detections
    embedding: np.ndarray | None
    preprocess_s: float
    inference_s: float
    decode_s: float  # decoding + NMS + mapping back to frame pixels
    finite: bool = True  # every raw output value finite (a NaN score decodes to "no box")

    @property
    def latency_s(self) -> float:
        return self.preprocess_s + self.inference_s + self.decode_s


_LAYOUT_HELP = {
    "yolo": "one output (N, 4 + classes, anchors)",
    "boxes_scores": "outputs boxes (N, anchors, 4) and scores (N, anchors, classes) or (N, anchors) "
    "with a labels output (N, anchors)",
}


class DetectorModel(TierModel):
    """One loaded, verified detector: ``detect(frame)`` -> boxes in frame pixels."""

    def __init__(self, manifest: Manifest, directory: Path, session: ort.InferenceSession):
        if manifest.task != "detection" or manifest.detection is None:
            raise ModelError(f"{directory}: task is {manifest.task!r}, not a detector (load it with TierModel)")
        self.spec: DetectionSpec = manifest.detection
        self.num_classes = len(manifest.labels)
        self.input_height, self.input_width = manifest.input.height, manifest.input.width
        super().__init__(manifest, directory, session)

    def _outputs_to_read(self) -> tuple[list[str], bool, bool]:
        spec = self.spec
        if spec.layout == "yolo":
            names = [spec.output]
        else:
            names = [spec.boxes, spec.scores] + ([spec.labels_output] if spec.labels_output else [])
        self._layout_names = list(names)
        if spec.embedding:
            names.append(spec.embedding)
        return names, spec.embedding is not None, False

    def _check_graph(self, model_path: Path) -> None:
        spec, manifest = self.spec, self.manifest
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{model_path}: expected one graph input, found {len(inputs)}")
        graph_in = inputs[0]
        if graph_in.name != manifest.input.name:
            raise ModelError(
                f"{model_path}: graph input is named {graph_in.name!r}, manifest says {manifest.input.name!r}"
            )
        if list(graph_in.shape[1:]) != list(manifest.input.shape[1:]):
            raise ModelError(f"{model_path}: graph input shape {graph_in.shape}, manifest says {manifest.input.shape}")
        outputs = {o.name: o for o in self.session.get_outputs()}
        found = ", ".join(f"{name} {list(o.shape)}" for name, o in outputs.items())
        declared = f"manifest declares detection layout {spec.layout!r} ({_LAYOUT_HELP[spec.layout]})"

        def fail(problem: str) -> ModelError:
            return ModelError(f"{model_path}: {declared}, but {problem}; the graph's outputs are: {found}")

        for name in self._output_names:
            if name not in outputs:
                raise fail(f"the graph has no output {name!r}")
        shapes = {name: list(o.shape) for name, o in outputs.items()}
        if any(not isinstance(d, int) for name in self._layout_names for d in shapes[name][1:]):
            # symbolic axes (a user's export): one dummy run shows the real shapes
            dummy = np.zeros((1, *self._expected_tail), self._expected_dtype)
            try:
                values = self.session.run(self._layout_names, {self.input_name: dummy})
            except Exception as exc:  # onnxruntime's own exception types
                raise fail(f"a dummy run failed ({exc})") from exc
            for name, value in zip(self._layout_names, values):
                shapes[name] = ["N", *value.shape[1:]]
        c = self.num_classes
        if spec.layout == "yolo":
            shape = shapes[spec.output]
            if len(shape) != 3:
                raise fail(f"output {spec.output!r} has {len(shape)} axes, not 3 (N, 4 + classes, anchors)")
            if isinstance(shape[1], int) and shape[1] != 4 + c:
                raise fail(f"output {spec.output!r} axis 1 is {shape[1]}, not 4 + {c} classes = {4 + c}")
            return
        boxes, scores = shapes[spec.boxes], shapes[spec.scores]
        if len(boxes) != 3 or (isinstance(boxes[2], int) and boxes[2] != 4):
            raise fail(f"output {spec.boxes!r} is {list(boxes)}, not (N, anchors, 4)")
        if spec.labels_output:
            if len(scores) != 2:
                raise fail(f"output {spec.scores!r} is {list(scores)}, not (N, anchors) beside a labels output")
            if len(shapes[spec.labels_output]) != 2:
                raise fail(f"output {spec.labels_output!r} is {shapes[spec.labels_output]}, not (N, anchors)")
        elif len(scores) != 3 or (isinstance(scores[2], int) and scores[2] != c):
            raise fail(
                f"output {spec.scores!r} is {list(scores)}, not (N, anchors, {c} classes) "
                f"(per-box scores need labels_output in the manifest)"
            )

    # ------------------------------------------------------------------ running
    def prepare(self, frame: np.ndarray, color_order: str = "RGB") -> tuple[np.ndarray, Letterbox]:
        """Return (model input (1, ...), letterbox geometry) of one uint8 frame."""
        check_frame(frame, color_order)
        image = convert_order(
            frame, color_order, "GRAY" if self.preprocessor.channels == 1 else self.manifest.input.color_order
        )
        fitted, geometry = letterbox(
            image,
            self.input_height,
            self.input_width,
            self.spec.pad_value,
            self.spec.letterbox,
            cv2.INTER_AREA if self.manifest.input.resize == "area" else cv2.INTER_LINEAR,
        )
        if fitted.ndim == 2:
            fitted = fitted[:, :, None]
        return self.preprocessor._finish(fitted[None]), geometry

    def decode(
        self, outputs: Sequence[np.ndarray], index: int, geometry: Letterbox, score_floor: float | None = None
    ) -> Detections:
        """Return the detections of image ``index`` of a batch's raw layout outputs."""
        spec = self.spec
        floor = spec.score_threshold if score_floor is None else score_floor
        size = (self.input_height, self.input_width)
        if spec.layout == "yolo":
            raw = outputs[0][index]
            if spec.scores_activated and not spec.normalised and raw.ndim == 2 and raw.shape[0] == 4 + self.num_classes:
                # hot path: pick the anchors above the floor first, then convert only those
                best = raw[4:].max(axis=0)
                keep = np.flatnonzero(best >= floor)
                if not len(keep):
                    return Detections.empty(self.num_classes)
                class_scores = raw[4:, keep].T
                classes = class_scores.argmax(axis=1)
                return postprocess(
                    cxcywh_to_xyxy(raw[:4, keep].T), best[keep], classes, class_scores, floor, spec, geometry
                )
            boxes, class_scores = decode_yolo(raw, self.num_classes, spec, size)
            classes = class_scores.argmax(axis=1)
            best = class_scores[np.arange(len(classes)), classes]
            return postprocess(boxes, best, classes, class_scores, floor, spec, geometry)
        labels = outputs[2][index] if spec.labels_output else None
        boxes, best, classes, class_scores = decode_boxes_scores(
            outputs[0][index], outputs[1][index], labels, self.num_classes, spec, size
        )
        return postprocess(boxes, best, classes, class_scores, floor, spec, geometry)

    def detect(self, frame: np.ndarray, color_order: str = "RGB", score_floor: float | None = None) -> DetectorOutputs:
        """Return one frame's detections (NMS survivors scoring >= ``score_floor``; default: the manifest's)."""
        start = time.perf_counter()
        model_input, geometry = self.prepare(frame, color_order)
        prepared = time.perf_counter()
        outputs = self.session.run(self._output_names, {self.input_name: model_input})
        inferred = time.perf_counter()
        detections = self.decode(outputs, 0, geometry, score_floor)
        decoded = time.perf_counter()
        embedding = outputs[-1][0] if self._has_embedding else None
        return DetectorOutputs(
            detections, embedding, prepared - start, inferred - prepared, decoded - inferred, _finite(outputs, 0)
        )

    def detect_batch(
        self,
        frames: Sequence[np.ndarray],
        color_order: str = "RGB",
        batch_size: int = 64,
        score_floor: float | None = None,
    ) -> list[DetectorOutputs]:
        """Return detections of many frames (any sizes), run in batches of ``batch_size``."""
        results: list[DetectorOutputs] = []
        for start in range(0, len(frames), batch_size):
            chunk = frames[start : start + batch_size]
            t0 = time.perf_counter()
            prepared = [self.prepare(frame, color_order) for frame in chunk]
            batch = np.concatenate([p[0] for p in prepared])
            t1 = time.perf_counter()
            outputs = self.session.run(self._output_names, {self.input_name: batch})
            t2 = time.perf_counter()
            for i, (_, geometry) in enumerate(prepared):
                d0 = time.perf_counter()
                detections = self.decode(outputs, i, geometry, score_floor)
                embedding = outputs[-1][i] if self._has_embedding else None
                results.append(
                    DetectorOutputs(
                        detections,
                        embedding,
                        (t1 - t0) / len(chunk),
                        (t2 - t1) / len(chunk),
                        time.perf_counter() - d0,
                        _finite(outputs, i),
                    )
                )
        return results

    def infer(self, frame: np.ndarray, color_order: str = "RGB"):
        raise ModelError(f"{self.manifest.name}: a detector has no class probabilities; use detect()")

    def infer_batch(self, frames: np.ndarray, color_order: str = "RGB", batch_size: int = 256):
        raise ModelError(f"{self.manifest.name}: a detector has no class probabilities; use detect_batch()")


def _finite(outputs: Sequence[np.ndarray], index: int) -> bool:
    """Return whether image ``index``'s raw outputs are all finite (NaN scores would decode to "no box")."""
    return all(bool(np.isfinite(output[index]).all()) for output in outputs if np.issubdtype(output.dtype, np.floating))


def frame_label_scores(detections: Detections, num_classes: int) -> np.ndarray:
    """Return the frame-level scores (C + 1,): per class its best box score, then 1 - the best box score.

    The maximum is how sure the detector is of the frame's label (its best box's class, or ``none``).
    """
    scores = np.zeros(num_classes + 1, np.float32)
    if len(detections):
        np.maximum.at(scores, detections.classes, detections.scores)
        scores[num_classes] = 1.0 - float(detections.scores.max())
    else:
        scores[num_classes] = 1.0
    return scores


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
    scores: dict[str, float]  # the six selector parts + the detection scores
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
        low, high = dunc.band_around(edge.spec.score_threshold, config.band_width)
        out = edge.detect(frame, color_order, score_floor=min(low, edge.spec.score_threshold))
        scores_start = time.perf_counter()
        parts = _frame_scores(out.detections, edge.spec.score_threshold, low, high)
        scoring_s = time.perf_counter() - scores_start
        used, used_out = edge, out
        latency = {edge.tier: out.latency_s}
        decode = {edge.tier: out.decode_s}
        inference = {edge.tier: out.inference_s}
        versions = {edge.tier: edge.version}
        tier_detections = {edge.tier: parts.confirmed}
        disagreement = dunc.Disagreement(0.0, 0, 0, 1.0, 0)
        escalated = False
        if escalation is not None:
            versions[escalation.tier] = escalation.version
            signal = {"band": parts.band, "box_entropy_max": parts.entropy_max, "box_entropy_mean": parts.entropy_mean}[
                config.escalation_signal
            ]
            if config.escalation_enabled and signal > config.escalate_above and self._within_budget(out.latency_s):
                high_out = escalation.detect(
                    frame,
                    color_order,
                    score_floor=min(
                        dunc.band_around(escalation.spec.score_threshold, config.band_width)[0],
                        escalation.spec.score_threshold,
                    ),
                )
                escalated = True
                latency[escalation.tier] = high_out.latency_s
                decode[escalation.tier] = high_out.decode_s
                inference[escalation.tier] = high_out.inference_s
                previous = self._escalation_latency_s
                self._escalation_latency_s = (
                    high_out.latency_s if previous is None else 0.8 * previous + 0.2 * high_out.latency_s
                )
                t0 = time.perf_counter()
                e_low, e_high = dunc.band_around(escalation.spec.score_threshold, config.band_width)
                high_parts = _frame_scores(high_out.detections, escalation.spec.score_threshold, e_low, e_high)
                tier_detections[escalation.tier] = high_parts.confirmed
                disagreement = dunc.box_disagreement(
                    parts.confirmed.boxes,
                    high_parts.confirmed.boxes,
                    parts.confirmed.classes,
                    high_parts.confirmed.classes,
                    config.match_iou,
                )
                scoring_s += time.perf_counter() - t0
                used, used_out, parts = escalation, high_out, high_parts
        t0 = time.perf_counter()
        detections = parts.confirmed
        classes = tuple(edge.labels)
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
        embedding = out.embedding
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = _DetectionStream(config, 0 if embedding is None else len(embedding))
        flicker = state.flicker.push(len(detections))
        novelty = state.memory.score(embedding) if state.memory is not None and embedding is not None else 0.0
        scores = dunc.score_parts(
            parts.band, parts.entropy_mean, parts.entropy_max, disagreement.score, flicker, novelty
        )
        scores.update(
            band=parts.band,
            band_count=float(parts.band_count),
            box_entropy_mean=parts.entropy_mean,
            box_entropy_max=parts.entropy_max,
            box_disagreement=disagreement.score,
            unmatched_boxes=float(disagreement.unmatched),
            matched_iou=disagreement.mean_iou,
            class_conflicts=float(disagreement.class_conflicts),
            count_flicker=flicker,
            boxes=float(len(detections)),
        )
        embeddings = {edge.tier: embedding} if embedding is not None else {}
        if escalated and used_out.embedding is not None:
            embeddings[used.tier] = used_out.embedding
        scoring_s += time.perf_counter() - t0
        return DetectionResult(
            label=label,
            label_name=classes[label] if label < none_index else NONE_NAME,
            confidence=confidence,
            tier_used=used.tier,
            probs=probs,
            scores=scores,
            escalated=escalated,
            latency_s=latency,
            model_versions=versions,
            tier_outputs={},
            embeddings=embeddings,
            detections=detections,
            tier_detections=tier_detections,
            candidates=parts.candidates,
            decode_latency_s=decode,
            inference_latency_s=inference,
            total_latency_s=time.perf_counter() - start,
            uncertainty_latency_s=scoring_s,
            classes=classes,
        )


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
