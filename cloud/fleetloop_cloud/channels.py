"""Training channels in the SageMaker layout, written by the cloud and read by the entry point.

A channel is a directory (``/opt/ml/input/data/<channel>/`` in a SageMaker container, or any
local directory) holding ``manifest.jsonl`` and the frames it lists::

    {"source-ref": "images/<sha256>.png", "label": 3, "frame": "<sha256>", "site": "site-1"}

``label`` is a class index, or -1 for an unlabeled frame (used by distillation only). The
``models`` channel holds the production packages (``T2/``, ``T3/``, ``T4/``) the new tiers
start from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fleetloop_core.errors import FleetLoopError

from fleetloop_cloud.frames import decode_image, encode_png, stack_resized, write_atomic

MANIFEST = "manifest.jsonl"
CHANNELS = ("train", "replay", "unlabeled", "calibration", "models")


class ChannelError(FleetLoopError):
    """A training channel is missing, empty or malformed (message names the channel and path)."""


@dataclass
class ChannelData:
    """Frames of one channel: RGB uint8 images (list, sizes may differ), labels (N,), frame ids."""

    images: list[np.ndarray]
    labels: np.ndarray
    frame_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def resized(self, size: int) -> np.ndarray:
        """Return the frames as (N, size, size, 3) uint8."""
        return stack_resized(self.images, size, size)


def write_channel(directory: str | Path, items: Sequence[tuple[str, bytes | np.ndarray, int, str]]) -> Path:
    """Write a channel of (frame id, encoded bytes or RGB array, label or -1, site); return the directory."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for frame_id, data, label, site in items:
        if isinstance(data, np.ndarray):
            data = encode_png(data)
        name = f"images/{frame_id}.png"
        path = directory / name
        if not path.exists():
            write_atomic(path, data)
        lines.append(
            json.dumps({"source-ref": name, "label": int(label), "frame": frame_id, "site": site}, sort_keys=True)
        )
    write_atomic(directory / MANIFEST, ("\n".join(lines) + ("\n" if lines else "")).encode())
    return directory


def read_channel(name: str, directory: str | Path | None, required: bool = True) -> ChannelData:
    """Return a channel's frames; ChannelError if it is required and missing or empty."""
    if directory is None or not Path(directory).is_dir():
        if required:
            raise ChannelError(
                f"channel '{name}': directory {directory} does not exist (set SM_CHANNEL_{name.upper()} or --{name})"
            )
        return ChannelData([], np.zeros(0, np.int64), [])
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise ChannelError(f"channel '{name}': {manifest} is missing")
    images, labels, ids = [], [], []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            path = directory / record["source-ref"]
            images.append(decode_image(path.read_bytes(), str(path)))
            labels.append(int(record.get("label", -1)))
            ids.append(str(record.get("frame", path.stem)))
        except (json.JSONDecodeError, KeyError, OSError, ValueError) as exc:
            raise ChannelError(f"channel '{name}': {manifest} line {number}: {exc}") from None
    if required and not images:
        raise ChannelError(f"channel '{name}': {manifest} lists no frames (the channel is empty)")
    return ChannelData(images, np.asarray(labels, np.int64), ids)
