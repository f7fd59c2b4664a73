"""Frame pixels for the cloud steps: a local cache of the encoded frames, decoded on demand.

Ingest copies each accepted frame's bytes into ``<work_dir>/frames/<sha256>.<ext>`` so later
steps (auto-label, review pages, training channels) never download a frame twice; a missing cache
entry is fetched from the store again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.store import ObjectStore


class FrameError(FleetLoopError):
    """A frame cannot be read or decoded (message names the frame and the key)."""


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Return the RGB uint8 image (H, W, 3) encoded in ``data`` (PNG or JPEG)."""
    array = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_COLOR) if len(array) else None
    if image is None:
        raise FrameError(f"{where}: cannot decode the image ({len(data)} bytes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_png(image: np.ndarray) -> bytes:
    """Return PNG bytes of an RGB uint8 image."""
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FrameError("cannot encode a PNG")
    return buffer.tobytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class FrameCache:
    """Encoded frames by sha256 under one directory, backed by the object store."""

    def __init__(self, directory: str | Path, store: ObjectStore | None = None):
        self.directory = Path(directory)
        self.store = store

    def path(self, frame_id: str, frame_key: str) -> Path:
        """Return where the cached bytes of a frame live."""
        return self.directory / f"{frame_id}{Path(frame_key).suffix or '.png'}"

    def put(self, frame_id: str, frame_key: str, data: bytes) -> Path:
        """Cache a frame's encoded bytes; return the path."""
        path = self.path(frame_id, frame_key)
        if not path.exists():
            write_atomic(path, data)
        return path

    def get_bytes(self, frame_id: str, frame_key: str) -> bytes:
        """Return a frame's encoded bytes (from the cache, else from the store)."""
        path = self.path(frame_id, frame_key)
        if path.is_file():
            return path.read_bytes()
        if self.store is None:
            raise FrameError(f"{path}: frame {frame_id} is not cached and no store is configured")
        data = self.store.get_bytes(frame_key)
        self.put(frame_id, frame_key, data)
        return data

    def image(self, frame_id: str, frame_key: str) -> np.ndarray:
        """Return a frame's RGB pixels."""
        return decode_image(self.get_bytes(frame_id, frame_key), frame_key)

    def images(self, rows: Sequence) -> list[np.ndarray]:
        """Return RGB pixels of pool rows (each with ``id`` and ``frame_key``)."""
        return [self.image(row["id"], row["frame_key"]) for row in rows]


def stack_resized(images: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Return (N, height, width, 3) uint8: frames of any size resized (area) to one size."""
    out = np.empty((len(images), height, width, 3), np.uint8)
    for i, image in enumerate(images):
        if image.shape[0] != height or image.shape[1] != width:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        out[i] = image
    return out
