"""Load a verified ONNX model and run it: execution-provider choice, preprocessing, batches.

``TierModel.load(path)`` reads the manifest, checks every file's size and sha256 *before* an
ONNX Runtime session exists (a corrupt or truncated file loads nothing), checks the graph's
inputs and outputs against the manifest, picks execution providers from a preference list
(default TensorRT, then CUDA, then CPU, filtered by what this onnxruntime build offers) and logs
what is really in use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np
import onnxruntime as ort

from fleetloop_core.errors import InputError, ModelError
from fleetloop_core.contracts.manifest import MANIFEST_NAME, Manifest, load_manifest, verify_files
from fleetloop_core.preprocess import Preprocessor

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_Model = TypeVar("_Model", bound="TierModel")
_ORT_TYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}


def choose_providers(preference: Sequence[str], available: Sequence[str]) -> list[str]:
    """Return the preferred providers this runtime offers, in preference order, CPU always last.

    Names may be ONNX Runtime names or the aliases tensorrt/trt/cuda/cpu.
    """
    names = [PROVIDER_ALIASES.get(p.lower(), p) for p in preference]
    chosen = [p for p in dict.fromkeys(names) if p in available and p != "CPUExecutionProvider"]
    if "CPUExecutionProvider" in available:
        chosen.append("CPUExecutionProvider")
    if not chosen:
        raise ModelError(f"none of the execution providers {list(names)} is available (have {list(available)})")
    return chosen


def provider_shortfall(requested: Sequence[str], available: Sequence[str], in_use: Sequence[str]) -> str | None:
    """Return why the first requested execution provider is not the one in use (None when it is).

    Two ways to miss it: the onnxruntime build lacks it (a CPU wheel where onnxruntime-gpu was
    meant), or the build has it but its libraries did not load, so ONNX Runtime fell back silently
    (e.g. TensorRT's libnvinfer off the loader path).
    """
    if not requested or not in_use:
        return None
    wanted = PROVIDER_ALIASES.get(requested[0].lower(), requested[0])
    if wanted == in_use[0]:
        return None
    if wanted not in available:
        why = f"this onnxruntime build does not have it (available: {', '.join(available)})"
    else:
        why = (
            "its libraries failed to load, so ONNX Runtime fell back (for TensorRT: is libnvinfer on the loader path?)"
        )
    return f"requested execution provider {wanted} is not in use: {why}; running on {in_use[0]}"


def provider_options(provider: str, cache_dir: str | None) -> dict[str, str]:
    """Return the options we pass to one provider (TensorRT: fp16 and a persistent engine cache)."""
    if provider == "TensorrtExecutionProvider":
        options = {"trt_fp16_enable": "True"}
        if cache_dir:
            options.update(trt_engine_cache_enable="True", trt_engine_cache_path=cache_dir)
        return options
    return {}


@dataclass(slots=True)
class TierOutputs:
    """Outputs of one run: probs (N, C), embedding (N, D) or None, uncertainty (N, 3) or None."""

    probs: np.ndarray
    embedding: np.ndarray | None
    uncertainty: np.ndarray | None
    latency_s: float


class TierModel:
    """One loaded, verified model and its ONNX Runtime session."""

    def __init__(self, manifest: Manifest, directory: Path, session: ort.InferenceSession):
        self.manifest = manifest
        self.directory = directory
        self.session = session
        self.preprocessor = Preprocessor(manifest.input)
        self.providers = list(session.get_providers())
        self.labels = list(manifest.labels)
        self.input_name = manifest.input.name
        self._expected_tail = tuple(manifest.input.shape[1:])
        self._expected_dtype = np.dtype(manifest.input.dtype)
        self._output_names, self._has_embedding, self._has_uncertainty = self._outputs_to_read()

    def _outputs_to_read(self) -> tuple[list[str], bool, bool]:
        """Return (graph output names to run, whether an embedding is among them, whether an uncertainty is)."""
        outputs = self.manifest.outputs
        names = [outputs.probs]
        if outputs.embedding is not None:
            names.append(outputs.embedding)
        if outputs.uncertainty is not None:
            names.append(outputs.uncertainty)
        return names, outputs.embedding is not None, outputs.uncertainty is not None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls: type[_Model],
        path: str | Path,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 1,
        warmup: int = 3,
        cache_dir: str | None = None,
    ) -> _Model:
        """Return the model at ``path`` (a model directory or its manifest.json), verified and warm."""
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        manifest = load_manifest(directory / MANIFEST_NAME if path.is_dir() else path)
        if manifest.task == "detection" and cls is TierModel:
            raise ModelError(
                f"{directory}: task 'detection': load detectors with fleetloop_core.detection.DetectorModel "
                f"(or detection.load_model, which picks by task)"
            )
        verify_files(manifest, directory)
        model_path = directory / manifest.model_file.path
        chosen = choose_providers(providers, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(intra_op_threads))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        trt_cache = cache_dir or str(directory / ".trt-cache")
        try:
            session = ort.InferenceSession(
                str(model_path),
                sess_options=options,
                providers=chosen,
                provider_options=[provider_options(p, trt_cache) for p in chosen],
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise ModelError(f"{model_path}: ONNX Runtime cannot load the model ({exc})") from exc
        model = cls(manifest, directory, session)
        model._check_graph(model_path)
        in_use = model.providers
        log.info(
            "%s %s (%s): providers requested %s, in use %s",
            manifest.name,
            manifest.version,
            manifest.tier,
            chosen,
            in_use,
        )
        shortfall = provider_shortfall(providers, ort.get_available_providers(), in_use)
        if shortfall:
            log.warning("%s %s: %s", manifest.name, manifest.version, shortfall)
        if warmup:
            model.warmup(warmup)
        return model

    def _check_graph(self, model_path: Path) -> None:
        spec = self.manifest.input
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{model_path}: expected one graph input, found {len(inputs)}")
        graph_in = inputs[0]
        if graph_in.name != spec.name:
            raise ModelError(f"{model_path}: graph input is named {graph_in.name!r}, manifest says {spec.name!r}")
        if graph_in.type != _ORT_TYPES[spec.dtype]:
            raise ModelError(f"{model_path}: graph input type {graph_in.type}, manifest says {spec.dtype}")
        graph_shape = list(graph_in.shape)
        if len(graph_shape) != 4 or [d for d in graph_shape[1:]] != list(spec.shape[1:]):
            raise ModelError(f"{model_path}: graph input shape {graph_shape}, manifest says {spec.shape}")
        names = {o.name: o for o in self.session.get_outputs()}
        for wanted in self._output_names:
            if wanted not in names:
                raise ModelError(f"{model_path}: manifest output {wanted!r} not in graph outputs {sorted(names)}")
        classes = names[self.manifest.outputs.probs].shape[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise ModelError(f"{model_path}: graph has {classes} classes, manifest lists {len(self.labels)} labels")

    # ------------------------------------------------------------------ running
    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def tier(self) -> str:
        return self.manifest.tier

    def warmup(self, runs: int = 3) -> None:
        """Run ``runs`` dummy inferences so first-frame latency is not paid on a real frame."""
        dummy = np.zeros((1, *self._expected_tail), self._expected_dtype)
        for _ in range(runs):
            self.session.run(self._output_names, {self.input_name: dummy})

    def run(self, model_input: np.ndarray) -> TierOutputs:
        """Return outputs for an already preprocessed batch; InputError on shape or dtype mismatch."""
        if (
            model_input.dtype != self._expected_dtype
            or model_input.shape[1:] != self._expected_tail
            or model_input.ndim != 4
        ):
            raise InputError(
                f"{self.manifest.name}: expected input (N, {', '.join(map(str, self._expected_tail))}) "
                f"{self._expected_dtype}, got {tuple(model_input.shape)} {model_input.dtype}"
            )
        start = time.perf_counter()
        outputs = self.session.run(self._output_names, {self.input_name: model_input})
        latency = time.perf_counter() - start
        embedding = outputs[1] if self._has_embedding else None
        uncertainty = outputs[-1] if self._has_uncertainty else None
        return TierOutputs(outputs[0], embedding, uncertainty, latency)

    def infer(self, frame: np.ndarray, color_order: str = "RGB") -> TierOutputs:
        """Return outputs for one frame (uint8 image in ``color_order``)."""
        # the preprocessor guarantees shape and dtype: skip run()'s checks on this hot path
        model_input = self.preprocessor.one(frame, color_order)
        start = time.perf_counter()
        outputs = self.session.run(self._output_names, {self.input_name: model_input})
        latency = time.perf_counter() - start
        return TierOutputs(
            outputs[0],
            outputs[1] if self._has_embedding else None,
            outputs[-1] if self._has_uncertainty else None,
            latency,
        )

    def infer_batch(self, frames: np.ndarray, color_order: str = "RGB", batch_size: int = 256) -> TierOutputs:
        """Return outputs for many frames, run in batches of ``batch_size``."""
        probs, embeddings, uncertainties, total = [], [], [], 0.0
        for start in range(0, len(frames), batch_size):
            out = self.run(self.preprocessor.batch(frames[start : start + batch_size], color_order))
            probs.append(out.probs)
            total += out.latency_s
            if out.embedding is not None:
                embeddings.append(out.embedding)
            if out.uncertainty is not None:
                uncertainties.append(out.uncertainty)
        return TierOutputs(
            np.concatenate(probs),
            np.concatenate(embeddings) if embeddings else None,
            np.concatenate(uncertainties) if uncertainties else None,
            total,
        )
