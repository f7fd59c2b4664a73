"""INT8 variants of the edge tiers with ``onnxruntime.quantization`` (static, QDQ, per-channel by default).

Calibration runs field frames through the graph; only the compute-heavy operators (Conv, Gemm,
MatMul) are quantized, so the softmax and the in-graph uncertainty head stay in float. Whether
INT8 pays off depends on the CPU: on small models it can be slower and slightly less accurate
(FACTS.md), which is why :func:`compare` measures both and the gate decides.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fleetloop_core.errors import ModelError

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")


class _Frames:
    """onnxruntime CalibrationDataReader over uint8 NHWC frames (batches of ``batch``)."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 8):
        self.input_name, self.images, self.batch = input_name, images, batch
        self.position = 0

    def get_next(self):
        if self.position >= len(self.images):
            return None
        chunk = self.images[self.position : self.position + self.batch]
        self.position += self.batch
        return {self.input_name: np.ascontiguousarray(chunk)}

    def rewind(self) -> None:
        self.position = 0


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration: np.ndarray,
    input_name: str = "image",
    per_channel: bool = True,
) -> Path:
    """Write a statically quantized INT8 (QDQ, per-channel) copy of an ONNX model; return its path.

    ``calibration`` are uint8 NHWC frames already at the model's input size.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ModelError(f"{fp32_path}: INT8 calibration needs at least one field frame")
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(int8_path),
                _Frames(input_name, calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS),
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:  # onnxruntime.quantization raises many unrelated types
            raise ModelError(f"{fp32_path}: INT8 quantization failed ({exc})") from exc
    return int8_path


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def latency_ms(path: str | Path, images: np.ndarray, runs: int = 50, input_name: str = "image") -> float:
    """Return the median single-frame latency (ms) of an ONNX model on CPU, one thread."""
    session = _session(Path(path))
    frames = [images[i % len(images)][None] for i in range(runs)]
    session.run(None, {input_name: frames[0]})
    times = []
    for frame in frames:
        start = time.perf_counter()
        session.run(None, {input_name: frame})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


@dataclass(frozen=True)
class Int8Comparison:
    """INT8 vs FP32 on the same frames: latency (ms, batch 1, 1 thread) and prediction agreement."""

    fp32_ms: float
    int8_ms: float
    speedup: float  # fp32_ms / int8_ms (<1: INT8 is slower here)
    agreement: float  # share of frames where both predict the same class
    fp32_bytes: int
    int8_bytes: int
    frames: int

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def compare(
    fp32_path: str | Path, int8_path: str | Path, images: np.ndarray, runs: int = 50, input_name: str = "image"
) -> Int8Comparison:
    """Return latency and agreement of an INT8 model against its FP32 original on ``images``."""
    fp32, int8 = _session(Path(fp32_path)), _session(Path(int8_path))
    a = fp32.run(["probs"], {input_name: images})[0].argmax(axis=1)
    b = int8.run(["probs"], {input_name: images})[0].argmax(axis=1)
    fp32_ms = latency_ms(fp32_path, images, runs, input_name)
    int8_ms = latency_ms(int8_path, images, runs, input_name)
    return Int8Comparison(
        fp32_ms=fp32_ms,
        int8_ms=int8_ms,
        speedup=fp32_ms / int8_ms if int8_ms else 0.0,
        agreement=float((a == b).mean()),
        fp32_bytes=Path(fp32_path).stat().st_size,
        int8_bytes=Path(int8_path).stat().st_size,
        frames=len(images),
    )
