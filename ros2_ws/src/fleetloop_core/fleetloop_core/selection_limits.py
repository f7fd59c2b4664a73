"""What bounds the selector: token buckets for the upload budget and the memory of kept frames for dedup."""

from __future__ import annotations

import time
from typing import Callable

import cv2
import numpy as np

from fleetloop_core.selection_config import DedupConfig

NS_PER_HOUR = 3_600_000_000_000


class TokenBucket:
    """Tokens refilled at ``rate_per_hour`` of stamp time up to ``capacity``; may go into debt."""

    __slots__ = ("rate_per_ns", "capacity", "tokens", "last_ns")

    def __init__(self, rate_per_hour: float, capacity: float, tokens: float | None = None):
        self.rate_per_ns = rate_per_hour / NS_PER_HOUR
        self.capacity = capacity
        self.tokens = capacity if tokens is None else min(tokens, capacity)
        self.last_ns: int | None = None

    def refill(self, stamp_ns: int) -> None:
        """Add the tokens earned since the last stamp (stamps going backwards earn nothing)."""
        last = self.last_ns
        if last is None or stamp_ns > last:
            if last is not None:
                tokens = self.tokens + (stamp_ns - last) * self.rate_per_ns
                self.tokens = tokens if tokens < self.capacity else self.capacity
            self.last_ns = stamp_ns


class _StreamTime:
    __slots__ = ("stamp_ns", "arrival_ns", "time_ns")

    def __init__(self, stamp_ns: int, arrival_ns: int, time_ns: int):
        self.stamp_ns, self.arrival_ns, self.time_ns = stamp_ns, arrival_ns, time_ns


class SelectionTime:
    """The selector's time: the cameras' header stamps, made to advance whatever the cameras' clocks do.

    Budgets refill and frame rates are measured on it. While a stream's stamps advance, it advances as
    they do (a bag replayed faster than real time spends the bag's budget, not the wall clock's). A frame
    whose stamp does not advance past its stream's previous one — a camera that does not stamp (0), a
    stuck clock, a camera restart or clock reset that sends stamps back — advances it by the time since
    that stream's previous frame arrived, so such a camera cannot stall the budget (a reset of a camera
    that had run 10 h would otherwise earn nothing for 10 h). A stream's first frame is placed at the
    current time (the first frame of all at its stamp), so streams whose clocks differ share one budget
    at its rate. ``clock``: the arrival clock (ns, monotonic)."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns):
        self._clock = clock
        self._streams: dict[str, _StreamTime] = {}
        self.now_ns: int | None = None
        self.not_advancing = 0  # frames placed by their arrival (unstamped, stuck or reset clocks)

    def place(self, stream: str, stamp_ns: int) -> int:
        """Return the selection time (ns) of a frame of ``stream`` stamped ``stamp_ns`` that arrived now."""
        arrival = self._clock()
        last = self._streams.get(stream)
        if last is None:
            placed = stamp_ns if self.now_ns is None else self.now_ns
        elif stamp_ns > last.stamp_ns:
            placed = last.time_ns + (stamp_ns - last.stamp_ns)
        else:
            placed = last.time_ns + max(0, arrival - last.arrival_ns)
            self.not_advancing += 1
        self._streams[stream] = _StreamTime(stamp_ns, arrival, placed)
        if self.now_ns is None or placed > self.now_ns:
            self.now_ns = placed
        return self.now_ns


def _hamming(hashes: np.ndarray, value: np.uint64) -> np.ndarray:
    x = np.bitwise_xor(hashes, value)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)  # numpy < 2


# opencv-contrib's img_hash module is missing from the stubs cv2 ships
_HASHERS = {"phash": cv2.img_hash.PHash_create, "average": cv2.img_hash.AverageHash_create}  # type: ignore[attr-defined]


class DedupMemory:
    """Perceptual hashes and unit embeddings of the last ``capacity`` kept frames."""

    def __init__(self, config: DedupConfig):
        self.config = config
        self._hasher = _HASHERS[config.hash]()
        self._hashes = np.zeros(config.memory, np.uint64)
        self._embeddings: np.ndarray | None = None
        self._count = 0
        self._next = 0

    def __len__(self) -> int:
        return self._count

    def image_hash(self, image: np.ndarray) -> np.uint64:
        """Return the 64-bit perceptual hash of a uint8 frame."""
        return np.frombuffer(self._hasher.compute(image).tobytes(), np.uint64)[0]

    def match(self, image_hash: np.uint64 | None, embedding: np.ndarray | None) -> tuple[int, float]:
        """Return (smallest Hamming distance, smallest cosine distance) to the memory (64 / 2 if empty)."""
        count = self._count
        if count == 0:
            return 64, 2.0
        hamming = int(_hamming(self._hashes[:count], image_hash).min()) if image_hash is not None else 64
        distance = 2.0
        if embedding is not None and self._embeddings is not None and embedding.shape[0] == self._embeddings.shape[1]:
            norm = float(np.linalg.norm(embedding))
            if norm > 0.0:
                distance = 1.0 - float((self._embeddings[:count] @ embedding).max()) / norm
        return hamming, distance

    def is_duplicate(self, hamming: int, distance: float) -> bool:
        """Return True when either signal is within its configured distance."""
        config = self.config
        return (config.hash_max_distance >= 0 and hamming <= config.hash_max_distance) or (
            config.embedding_max_distance >= 0 and distance <= config.embedding_max_distance
        )

    def remember(self, image_hash: np.uint64 | None, embedding: np.ndarray | None) -> None:
        """Store one kept frame's hash and embedding (the oldest is forgotten when full)."""
        slot = self._next
        self._hashes[slot] = image_hash if image_hash is not None else np.uint64(0)
        if embedding is not None:
            if self._embeddings is None or self._embeddings.shape[1] != embedding.shape[0]:
                self._embeddings = np.zeros((self.config.memory, embedding.shape[0]), np.float32)
            norm = float(np.linalg.norm(embedding))
            self._embeddings[slot] = embedding / norm if norm > 0 else 0.0
        self._next = (slot + 1) % self.config.memory
        self._count = min(self._count + 1, self.config.memory)
