"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzipped IDX files).

No download ever: if the files are absent the error names the apt package to install.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fleetloop_core.errors import DatasetError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
APT_PACKAGE = "dataset-fashion-mnist"
ITEM_LABELS = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
NONE_LABEL = "none"
LABELS = (*ITEM_LABELS, NONE_LABEL)  # model outputs: 10 items + background
NONE_INDEX = len(ITEM_LABELS)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class Split:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split."""

    images: np.ndarray
    labels: np.ndarray


def dataset_root() -> Path:
    """Return where the IDX files are read from (``FLEETLOOP_FASHION_MNIST`` overrides)."""
    return Path(os.environ.get("FLEETLOOP_FASHION_MNIST", DEFAULT_ROOT))


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: Fashion-MNIST file not found; install it with "
            f"'apt-get install {APT_PACKAGE}' (or set FLEETLOOP_FASHION_MNIST)"
        ) from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read gzipped IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (bad magic {raw[:4]!r})")
    dims = raw[3]
    if dims != expected_dims:
        raise DatasetError(f"{path}: expected {expected_dims} dimensions, file has {dims}")
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw) - header} of {count} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@lru_cache(maxsize=4)
def load_split(split: str, root: str | None = None) -> Split:
    """Return one split ('train': 60,000 or 'test': 10,000 images)."""
    if split not in _FILES:
        raise DatasetError(f"unknown Fashion-MNIST split {split!r} (known: {', '.join(_FILES)})")
    base = Path(root) if root else dataset_root()
    image_file, label_file = _FILES[split]
    images = _read_idx(base / image_file, 3)
    labels = _read_idx(base / label_file, 1).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"{base}: {split} has {len(images)} images but {len(labels)} labels")
    return Split(images=images, labels=labels)


def fingerprint(root: str | None = None) -> str:
    """Return a sha256 over the data files (part of every model build's cache key)."""
    base = Path(root) if root else dataset_root()
    digest = hashlib.sha256()
    for split in sorted(_FILES):
        for name in _FILES[split]:
            path = base / name
            try:
                digest.update(path.read_bytes())
            except FileNotFoundError:
                raise DatasetError(
                    f"{path}: Fashion-MNIST file not found; install it with 'apt-get install {APT_PACKAGE}'"
                ) from None
    return digest.hexdigest()
