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
from typing import Callable, Iterable, Iterator, Sequence

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


def write_frames(directory: str | Path, items: Iterable[tuple], record: Callable[..., dict]) -> Path:
    """Write a channel: each item's frame as ``images/<frame id>.png`` and one manifest line per item.

    ``items``: (frame id, encoded bytes or RGB array, *rest); ``record(name, frame id, bytes, RGB
    array or None, *rest)`` returns the item's manifest line (``name``: the image's relative path).
    Returns the directory.
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for frame_id, data, *rest in items:
        image = data if isinstance(data, np.ndarray) else None
        if image is not None:
            data = encode_png(image)
        name = f"images/{frame_id}.png"
        if not (directory / name).exists():
            write_atomic(directory / name, data)
        lines.append(json.dumps(record(name, frame_id, data, image, *rest), sort_keys=True))
    write_atomic(directory / MANIFEST, ("\n".join(lines) + ("\n" if lines else "")).encode())
    return directory


def channel_lines(
    name: str, directory: str | Path | None, required: bool, error: type[FleetLoopError]
) -> Iterator[tuple[str, Path, dict]]:
    """Yield (where, channel directory, record) per manifest line of channel ``name``.

    Missing (or, when ``required``, empty) channels raise ``error`` naming the channel and path;
    ``where`` names the manifest line; a line that is not JSON raises ``error`` there.
    """
    if directory is None or not Path(directory).is_dir():
        if required:
            raise error(
                f"channel '{name}': directory {directory} does not exist (set SM_CHANNEL_{name.upper()} or --{name})"
            )
        return
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise error(f"channel '{name}': {manifest} is missing")
    count = 0
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"channel '{name}': {manifest} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: {type(exc).__name__}: {exc}") from None
        count += 1
        yield where, directory, record
    if required and not count:
        raise error(f"channel '{name}': {manifest} lists no frames (the channel is empty)")


def _class_record(name: str, frame_id: str, data: bytes, image: np.ndarray | None, label: int, site: str) -> dict:
    return {"source-ref": name, "label": int(label), "frame": frame_id, "site": site}


def write_channel(directory: str | Path, items: Sequence[tuple[str, bytes | np.ndarray, int, str]]) -> Path:
    """Write a channel of (frame id, encoded bytes or RGB array, label or -1, site); return the directory."""
    return write_frames(directory, items, _class_record)


def read_channel(name: str, directory: str | Path | None, required: bool = True) -> ChannelData:
    """Return a channel's frames; ChannelError if it is required and missing or empty."""
    images, labels, ids = [], [], []
    for where, root, record in channel_lines(name, directory, required, ChannelError):
        try:
            path = root / record["source-ref"]
            images.append(decode_image(path.read_bytes(), str(path)))
            labels.append(int(record.get("label", -1)))
            ids.append(str(record.get("frame", path.stem)))
        except (KeyError, OSError, ValueError) as exc:
            raise ChannelError(f"{where}: {exc}") from None
    return ChannelData(images, np.asarray(labels, np.int64), ids)
