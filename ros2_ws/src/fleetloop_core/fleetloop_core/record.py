"""The record a selector hands to the upload queue: a kept frame, its sidecar fields, a priority.

Encoding (PNG or JPEG through OpenCV) is deferred to :meth:`UploadRecord.encode`, which the
queue calls when it persists the record: a PNG of a noisy 128x128 frame costs ~1-2 ms here,
far more than the whole per-frame selection budget, so the selector's hot path never encodes.
The encoded form (:class:`EncodedRecord`) carries the content sha256 that names both objects
(``fleetloop_core.contracts.sidecar.frame_key`` / ``sidecar_key``), which makes every upload idempotent.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from fleetloop_core.errors import InputError
from fleetloop_core.contracts.sidecar import Sidecar, frame_key, sidecar_key

if TYPE_CHECKING:
    import numpy as np

Encoding = Literal["png", "jpeg"]


def encode_image(
    image: np.ndarray, encoding: Encoding = "png", jpeg_quality: int = 90, png_compression: int = 1
) -> bytes:
    """Return the uint8 RGB (or grey) ``image`` encoded as PNG (lossless) or JPEG bytes."""
    import cv2  # imported here: processes that only move encoded records never load OpenCV
    import numpy as np

    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise InputError(f"cannot encode a {image.shape} {image.dtype} frame (need uint8 HxW or HxWx3)")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if encoding == "png":
        ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)])
    elif encoding == "jpeg":
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise InputError(f"unknown frame encoding {encoding!r} (known: png, jpeg)")
    if not ok:
        raise InputError(f"OpenCV could not encode a {image.shape} frame as {encoding}")
    return buffer.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """Return the uint8 RGB frame of PNG/JPEG ``data`` (what :func:`encode_image` wrote)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot decode {len(data)} bytes as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class EncodedRecord:
    """A record ready to persist: encoded frame, validated sidecar, priority (higher uploads first)."""

    frame: bytes
    sidecar: Sidecar
    priority: float = 0.0

    @property
    def frame_key(self) -> str:
        return frame_key(self.sidecar)

    @property
    def sidecar_key(self) -> str:
        return sidecar_key(self.sidecar)

    @property
    def sidecar_json(self) -> bytes:
        return self.sidecar.to_json().encode()

    @property
    def size_bytes(self) -> int:
        """Return frame plus sidecar size in bytes (what the record costs on disk and on the link)."""
        return len(self.frame) + len(self.sidecar_json)

    @classmethod
    def from_image(
        cls,
        image: np.ndarray,
        fields: dict[str, Any],
        priority: float = 0.0,
        encoding: Encoding = "png",
        jpeg_quality: int = 90,
    ) -> "EncodedRecord":
        """Return the record of ``image`` with sidecar ``fields`` (hash, size and encoding filled in)."""
        data = encode_image(image, encoding, jpeg_quality)
        sidecar = Sidecar(
            **{
                **fields,
                "frame_sha256": hashlib.sha256(data).hexdigest(),
                "encoding": encoding,
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
            }
        )
        return cls(frame=data, sidecar=sidecar, priority=float(priority))


@dataclass
class UploadRecord:
    """A kept frame before encoding; :meth:`encode` runs once and reports the size to ``on_encoded``.

    The sidecar fields are either given (``fields``) or built on first use by ``make_fields``:
    the selector defers that work (rounding probabilities, validating the decision) to the
    queue's thread, off the per-frame path.
    """

    image: np.ndarray  # uint8 RGB, owned by the record
    fields: dict[str, Any] | None = None  # Sidecar fields except hash, encoding and size
    priority: float = 0.0
    encoding: Encoding = "png"
    jpeg_quality: int = 90
    on_encoded: Callable[[int], None] | None = field(default=None, repr=False)
    make_fields: Callable[[], dict[str, Any]] | None = field(default=None, repr=False)
    _encoded: EncodedRecord | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def sidecar_fields(self) -> dict[str, Any]:
        """Return the sidecar fields (built by ``make_fields`` on first use)."""
        if self.fields is None:
            if self.make_fields is None:
                raise InputError("an UploadRecord needs fields or make_fields")
            self.fields = self.make_fields()
            self.make_fields = None
        return self.fields

    def encode(self) -> EncodedRecord:
        """Return the encoded record (computed on first call; later calls return the same one)."""
        with self._lock:
            if self._encoded is None:
                self._encoded = EncodedRecord.from_image(
                    self.image, self.sidecar_fields, self.priority, self.encoding, self.jpeg_quality
                )
                if self.on_encoded is not None:
                    self.on_encoded(self._encoded.size_bytes)
            return self._encoded
