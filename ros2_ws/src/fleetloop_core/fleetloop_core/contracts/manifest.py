"""Model manifests: what a model is, what it expects, and the hashes that prove its files.

A model directory holds ``manifest.json`` plus the files it lists. Loading validates every key
(an error names the key and the file); :func:`verify_files` checks sizes and sha256 before any
runtime touches a model file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetloop_core.errors import ModelError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
Tier = Literal["T1", "T2", "T3", "T4"]
TaskName = Literal["classification", "detection"]
Placement = Literal["cloud", "robot"]
Resize = Literal["area", "linear"]  # the resampling a model's input expects
TIER_PLACEMENT: dict[Tier, Placement] = {"T1": "cloud", "T2": "cloud", "T3": "robot", "T4": "robot"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The tensor a model takes. ``shape`` uses -1 for the dynamic batch axis."""

    name: str = "image"
    shape: list[int]
    dtype: Literal["uint8", "float32"]
    layout: Literal["NHWC", "NCHW"]
    color_order: Literal["RGB", "BGR", "GRAY"]
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])  # on 0..1 pixel values
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    normalisation_in_graph: bool = False  # True: feed raw uint8 pixels, the graph normalises
    resize: Resize = "area"

    @model_validator(mode="after")
    def _check(self) -> "InputSpec":
        if len(self.shape) != 4:
            raise ValueError(f"shape must have 4 axes (batch + image), got {self.shape}")
        if any(v <= 0 for v in self.shape[1:]):
            raise ValueError(f"non-batch axes must be > 0, got {self.shape}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        return self

    @property
    def height(self) -> int:
        return self.shape[1] if self.layout == "NHWC" else self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[2] if self.layout == "NHWC" else self.shape[3]

    @property
    def channels(self) -> int:
        return self.shape[3] if self.layout == "NHWC" else self.shape[1]


class OutputSpec(_Strict):
    """Names of the model's outputs. ``uncertainty`` is optional: (entropy, margin, least_confidence)."""

    probs: str = "probs"
    embedding: Optional[str] = "embedding"
    embedding_normalised: bool = False  # True: the graph already outputs unit-length embeddings
    uncertainty: Optional[str] = None


class DetectionSpec(_Strict):
    """How a detector's outputs are laid out and decoded (``task: detection`` manifests only).

    ``layout``: ``yolo`` = one output (N, 4 + C, A) of centre-x, centre-y, width, height and C
    class scores per anchor, no objectness (the common YOLOv8 export); ``boxes_scores`` = ``boxes``
    (N, A, 4) plus ``scores`` (N, A, C) per class, or (N, A) of the best class with a ``labels``
    output (N, A) of class ids. Coordinates are in model-input pixels unless ``normalised``.
    ``scores_activated``: the graph already applied the sigmoid. Decoding, letterboxing and
    non-maximum suppression: ``fleetloop_core.detection``.
    """

    layout: Literal["yolo", "boxes_scores"]
    output: str = "output0"  # yolo: the single output
    boxes: str = "boxes"  # boxes_scores: box output
    scores: str = "scores"  # boxes_scores: score output
    labels_output: Optional[str] = None  # boxes_scores with (N, A) scores: class ids
    box_format: Literal["xyxy", "cxcywh"] = "xyxy"  # boxes_scores only; yolo is always cxcywh
    normalised: bool = False  # coordinates in [0, 1] of the input size
    scores_activated: bool = True
    embedding: Optional[str] = None  # unit-length image embedding, if exported
    score_threshold: float = Field(default=0.3, ge=0.0, le=1.0)  # boxes below are dropped
    nms_iou: float = Field(default=0.5, gt=0.0, le=1.0)  # per-class NMS overlap
    max_detections: int = Field(default=100, ge=1)
    letterbox: bool = True  # keep aspect ratio, pad (else stretch)
    pad_value: int = Field(default=114, ge=0, le=255)


class FileEntry(_Strict):
    """One file of the package, relative to the manifest's directory."""

    path: str
    role: Literal["model", "calibration", "extra"] = "model"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)


class Signature(_Strict):
    """Ed25519 signature over the canonical manifest (see ``fleetloop_core.signing``)."""

    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str
    value: str


class Manifest(_Strict):
    """Everything a robot or the cloud needs to know about one model version."""

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    tier: Tier
    task: TaskName = "classification"
    placement: Placement
    input: InputSpec
    outputs: OutputSpec = Field(default_factory=OutputSpec)
    labels: list[str] = Field(min_length=2)
    files: list[FileEntry] = Field(min_length=1)
    parameters: int = Field(ge=0)
    architecture: str = ""
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str = ""
    signature: Optional[Signature] = None
    detection: Optional[DetectionSpec] = None  # task: detection only (output layout and decoding)

    @model_validator(mode="after")
    def _check(self) -> "Manifest":
        models = [f for f in self.files if f.role == "model"]
        if len(models) != 1:
            raise ValueError(f"files must list exactly one role=model entry, found {len(models)}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.task == "detection" and self.detection is None:
            raise ValueError("task 'detection' needs a detection block (output layout)")
        if self.task != "detection" and self.detection is not None:
            raise ValueError(f"a detection block is only valid with task 'detection' (task is {self.task!r})")
        return self

    @property
    def model_file(self) -> FileEntry:
        """Return the ONNX file's entry."""
        return next(f for f in self.files if f.role == "model")

    @property
    def sha256(self) -> str:
        """Return the ONNX file's sha256 (hex)."""
        return self.model_file.sha256

    def unsigned(self) -> "Manifest":
        """Return a copy without the signature (the part that gets signed)."""
        return self.model_copy(update={"signature": None})

    def to_json(self) -> str:
        """Return the manifest as indented JSON (without null signature)."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(
    path: str | Path, base: str | Path, role: Literal["model", "calibration", "extra"] = "model"
) -> FileEntry:
    """Return the FileEntry (relative path, sha256, size) of a file inside ``base``."""
    path = Path(path)
    return FileEntry(
        path=str(path.relative_to(base)), role=role, sha256=sha256_file(path), size_bytes=path.stat().st_size
    )


def _format(exc: ValidationError, where: Path) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "missing":
            parts.append(f"{where}: manifest is missing key '{key}'")
        elif err["type"] == "extra_forbidden":
            parts.append(f"{where}: manifest has unknown key '{key}'")
        else:
            parts.append(f"{where}: manifest key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def parse_manifest(data: Any, where: str | Path = "<manifest>") -> Manifest:
    """Return a Manifest from decoded JSON; ModelError naming the key and ``where``."""
    where = Path(where)
    if not isinstance(data, dict):
        raise ModelError(f"{where}: manifest must be a JSON object (got {type(data).__name__})")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ModelError(_format(exc, where)) from None


def load_manifest(path: str | Path) -> Manifest:
    """Return the manifest at ``path`` (a manifest.json or the directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"{path}: cannot read manifest ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: manifest is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return parse_manifest(data, path)


def verify_files(manifest: Manifest, base: str | Path) -> None:
    """Raise ModelError unless every listed file exists with the listed size and sha256."""
    base = Path(base)
    for entry in manifest.files:
        path = base / entry.path
        if not path.is_file():
            raise ModelError(f"{path}: file listed in the manifest is missing")
        size = path.stat().st_size
        if size != entry.size_bytes:
            raise ModelError(
                f"{path}: size {size} bytes does not match the manifest's {entry.size_bytes} (truncated or replaced)"
            )
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ModelError(f"{path}: sha256 {actual} does not match the manifest's {entry.sha256}")


def intact_package(directory: str | Path) -> Manifest | None:
    """Return the manifest of the package in ``directory`` when it and every file it lists are intact, else None."""
    try:
        manifest = load_manifest(directory)
        verify_files(manifest, directory)
    except ModelError:
        return None
    return manifest


def write_manifest(manifest: Manifest, directory: str | Path) -> Path:
    """Write manifest.json atomically (temp file, fsync, rename) and return its path."""
    directory = Path(directory)
    target = directory / MANIFEST_NAME
    temporary = directory / f".{MANIFEST_NAME}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(manifest.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return target
