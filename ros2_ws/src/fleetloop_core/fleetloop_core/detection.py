"""Detectors at the edge: the verified model and its per-frame outputs.

``DetectorModel.load(dir)`` verifies the package like ``TierModel`` (sizes and sha256 before any
session exists), then checks that the manifest's declared output layout (``detection`` block,
see ``fleetloop_core.contracts.manifest.DetectionSpec``) matches the ONNX graph's outputs: a mismatch is a
ModelError naming the layout, the expected outputs and what the graph has. ``detect(frame)``
letterboxes, runs and decodes (``fleetloop_core.box_decoding``); the detection cascade is in
``fleetloop_core.detection_cascade``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import onnxruntime as ort

from fleetloop_core.errors import ModelError
from fleetloop_core.inference import TierModel
from fleetloop_core.contracts.manifest import DetectionSpec, Manifest
from fleetloop_core.box_decoding import (
    Detections,
    Letterbox,
    cxcywh_to_xyxy,
    decode_boxes_scores,
    decode_yolo,
    letterbox,
    postprocess,
)
from fleetloop_core.preprocess import check_frame, convert_order

NONE_NAME = "none"


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
