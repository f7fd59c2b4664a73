"""Frame -> model input, vectorised with OpenCV/numpy (no per-pixel Python).

Frames are uint8 arrays: (H, W) grey, (H, W, 3) RGB/BGR or (H, W, 4) RGBA/BGRA, or a batch
(N, H, W, C) of equal frames. The model's :class:`~fleetloop_core.contracts.manifest.InputSpec` says what
comes out: size, colour order, dtype, layout and, unless the graph does it, normalisation.
"""

from __future__ import annotations

import cv2
import numpy as np

from fleetloop_core.errors import InputError
from fleetloop_core.contracts.manifest import InputSpec

FRAME_ORDERS = ("RGB", "BGR", "GRAY", "RGBA", "BGRA")
_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
_CONVERT = {
    ("RGB", "BGR"): cv2.COLOR_RGB2BGR,
    ("BGR", "RGB"): cv2.COLOR_BGR2RGB,
    ("RGB", "GRAY"): cv2.COLOR_RGB2GRAY,
    ("BGR", "GRAY"): cv2.COLOR_BGR2GRAY,
    ("GRAY", "RGB"): cv2.COLOR_GRAY2RGB,
    ("GRAY", "BGR"): cv2.COLOR_GRAY2BGR,
    ("RGBA", "RGB"): cv2.COLOR_RGBA2RGB,
    ("RGBA", "BGR"): cv2.COLOR_RGBA2BGR,
    ("RGBA", "GRAY"): cv2.COLOR_RGBA2GRAY,
    ("BGRA", "BGR"): cv2.COLOR_BGRA2BGR,
    ("BGRA", "RGB"): cv2.COLOR_BGRA2RGB,
    ("BGRA", "GRAY"): cv2.COLOR_BGRA2GRAY,
}
_CHANNELS = {"RGB": 3, "BGR": 3, "GRAY": 1, "RGBA": 4, "BGRA": 4}


def check_frame(frame: np.ndarray, color_order: str) -> None:
    """Raise InputError unless ``frame`` is a uint8 image with the channels ``color_order`` implies."""
    if color_order not in _CHANNELS:
        raise InputError(f"unknown colour order {color_order!r} (known: {', '.join(FRAME_ORDERS)})")
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(f"frame dtype: expected uint8, got {frame.dtype}")
    channels = 1 if frame.ndim == 2 else frame.shape[-1] if frame.ndim == 3 else None
    if channels is None:
        raise InputError(f"frame shape: expected (H, W) or (H, W, C), got {frame.shape}")
    if channels != _CHANNELS[color_order]:
        raise InputError(
            f"frame channels: expected {_CHANNELS[color_order]} for {color_order}, got {channels} (shape {frame.shape})"
        )
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise InputError(f"frame shape: too small to resize, got {frame.shape}")


def resize_to(frame: np.ndarray, height: int, width: int, method: str = "area") -> np.ndarray:
    """Return ``frame`` resized to (height, width); the frame itself when already that size."""
    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    return cv2.resize(frame, (width, height), interpolation=_INTERPOLATION[method])


def convert_order(frame: np.ndarray, source: str, target: str) -> np.ndarray:
    """Return ``frame`` converted from colour order ``source`` to ``target``."""
    if source == target:
        return frame
    code = _CONVERT.get((source, target))
    if code is None:
        raise InputError(f"cannot convert colour order {source} to {target}")
    return cv2.cvtColor(frame, code)


class Preprocessor:
    """Turns frames into the input tensor of one model (precomputed constants, no per-call setup)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self.height, self.width, self.channels = spec.height, spec.width, spec.channels
        self._method = spec.resize
        if not spec.normalisation_in_graph and spec.dtype == "float32":
            std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
            mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
            self._scale = (1.0 / (255.0 * std)).astype(np.float32)
            self._offset = (mean / std).astype(np.float32)
        else:
            self._scale = self._offset = None  # type: ignore[assignment]  # float32 inputs only use them
        self._native_shape = (self.height, self.width, self.channels)
        self._passthrough = spec.dtype == "uint8" and spec.layout == "NHWC" and self.channels == 3

    def one(self, frame: np.ndarray, color_order: str = "RGB") -> np.ndarray:
        """Return the model input (1, ...) for a single frame."""
        # fast path: a frame already in the model's size, order and layout is only viewed as a batch
        if (
            self._passthrough
            and color_order == self.spec.color_order
            and type(frame) is np.ndarray
            and frame.shape == self._native_shape
            and frame.dtype == np.uint8
        ):
            return frame[None]
        check_frame(frame, color_order)
        image = convert_order(frame, color_order, self.spec.color_order)
        image = resize_to(image, self.height, self.width, self._method)
        if image.ndim == 2:
            image = image[:, :, None]
        return self._finish(image[None])

    def batch(self, frames: np.ndarray, color_order: str = "RGB") -> np.ndarray:
        """Return the model input (N, ...) for a batch (N, H, W[, C]) of frames."""
        frames = np.asarray(frames)
        if frames.ndim not in (3, 4):
            raise InputError(f"batch shape: expected (N, H, W[, C]), got {frames.shape}")
        if len(frames) == 0:
            raise InputError("batch is empty")
        out = np.empty((len(frames), self.height, self.width, self.channels), np.uint8)
        for index, frame in enumerate(frames):
            check_frame(frame, color_order)
            image = resize_to(
                convert_order(frame, color_order, self.spec.color_order), self.height, self.width, self._method
            )
            out[index] = image.reshape(self.height, self.width, self.channels)
        return self._finish(out)

    def _finish(self, nhwc: np.ndarray) -> np.ndarray:
        spec = self.spec
        if spec.dtype == "uint8":
            return nhwc if spec.layout == "NHWC" else np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
        nchw = nhwc.transpose(0, 3, 1, 2).astype(np.float32)
        if self._scale is not None:
            nchw *= self._scale
            nchw -= self._offset
        return nchw if spec.layout == "NCHW" else np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
