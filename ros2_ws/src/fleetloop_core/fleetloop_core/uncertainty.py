"""Uncertainty scores: pure, vectorised functions over a batch, each in [0, 1].

Every function takes arrays with the batch on axis 0 and returns one float32 score per row;
1 means "as uncertain / novel / unstable as it gets", 0 means "certain / familiar / stable".

The stateful helpers at the bottom (:class:`FlickerWindow`, :class:`EmbeddingMemory`) keep the
bounded history the temporal and novelty scores need on a robot.
"""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-12


def _as_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 1:
        probs = probs[None, :]
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (batch, classes>=2), got {probs.shape}")
    return probs


def entropy(probs: np.ndarray) -> np.ndarray:
    """Return Shannon entropy normalised by log(classes): 0 for one-hot, 1 for uniform."""
    p = _as_probs(probs)
    h = -np.sum(p * np.log(np.clip(p, _EPS, 1.0)), axis=1)
    return np.clip(h / math.log(p.shape[1]), 0.0, 1.0).astype(np.float32)


def margin(probs: np.ndarray) -> np.ndarray:
    """Return 1 - (top1 - top2): 0 when the winner has all the mass, 1 when the top two tie."""
    p = _as_probs(probs)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0).astype(np.float32)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """Return (1 - top1) scaled by C/(C-1): 0 for one-hot, 1 for uniform."""
    p = _as_probs(probs)
    classes = p.shape[1]
    return np.clip((1.0 - p.max(axis=1)) * classes / (classes - 1), 0.0, 1.0).astype(np.float32)


def disagreement(probs_a: np.ndarray, probs_b: np.ndarray) -> np.ndarray:
    """Return the Jensen-Shannon divergence (base 2) between two tiers' outputs: 0 same, 1 disjoint."""
    a, b = _as_probs(probs_a), _as_probs(probs_b)
    if a.shape != b.shape:
        raise ValueError(f"tier outputs differ in shape: {a.shape} vs {b.shape}")
    m = 0.5 * (a + b)

    def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        p_safe = np.clip(p, _EPS, 1.0)
        return np.sum(np.where(p > 0, p * (np.log2(p_safe) - np.log2(np.clip(q, _EPS, 1.0))), 0.0), axis=1)

    return np.clip(0.5 * _kl(a, m) + 0.5 * _kl(b, m), 0.0, 1.0).astype(np.float32)


def flicker(label_windows: np.ndarray) -> np.ndarray:
    """Return the fraction of frame-to-frame label changes in each window (batch, window).

    A window of w labels has w-1 transitions; 0 means the label never changed, 1 that it changed
    at every frame. Windows shorter than 2 score 0.
    """
    windows = np.asarray(label_windows)
    if windows.ndim == 1:
        windows = windows[None, :]
    if windows.shape[1] < 2:
        return np.zeros(windows.shape[0], np.float32)
    changes = windows[:, 1:] != windows[:, :-1]
    return changes.mean(axis=1).astype(np.float32)


def novelty(embeddings: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """Return 1 - max cosine similarity to the memory, mapped to [0, 1].

    Cosine similarity in [-1, 1] maps to novelty (1 - cos) / 2; an empty memory scores 1
    (everything is new). Zero-length vectors count as maximally novel.
    """
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim == 1:
        emb = emb[None, :]
    mem = np.asarray(memory, np.float32)
    if mem.size == 0:
        return np.ones(emb.shape[0], np.float32)
    if mem.ndim != 2 or mem.shape[1] != emb.shape[1]:
        raise ValueError(f"memory shape {mem.shape} does not match embedding dim {emb.shape[1]}")
    emb_n = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), _EPS)
    mem_n = mem / np.maximum(np.linalg.norm(mem, axis=1, keepdims=True), _EPS)
    best = (emb_n @ mem_n.T).max(axis=1)
    best = np.where(np.linalg.norm(emb, axis=1) > _EPS, best, -1.0)
    return np.clip((1.0 - best) / 2.0, 0.0, 1.0).astype(np.float32)


SCORES = ("entropy", "margin", "least_confidence", "disagreement", "flicker", "novelty")


# --------------------------------------------------------------------------- state on a robot


class FlickerWindow:
    """Last ``size`` top-1 labels of one stream; :meth:`push` returns the current flicker."""

    def __init__(self, size: int = 8):
        if size < 2:
            raise ValueError(f"flicker window must hold >= 2 labels (got {size})")
        self.size = size
        self._labels: list[int] = []
        self._changes = 0

    def push(self, label: int) -> float:
        """Add one frame's top-1 label; return flicker over the window in [0, 1]."""
        labels = self._labels
        if labels and labels[-1] != label:
            self._changes += 1
        labels.append(label)
        if len(labels) > self.size:
            if labels[0] != labels[1]:
                self._changes -= 1
            del labels[0]
        return self._changes / (len(labels) - 1) if len(labels) > 1 else 0.0

    def reset(self) -> None:
        """Forget the history (e.g. after a model swap changes the label semantics)."""
        self._labels.clear()
        self._changes = 0


class EmbeddingMemory:
    """Bounded ring of unit-normalised embeddings; scores novelty and remembers in one call.

    With ``unit_inputs=True`` the caller promises unit-length embeddings (our exported graphs
    normalise in the graph), which saves the norm on every frame.
    """

    def __init__(self, dim: int, capacity: int = 256, unit_inputs: bool = False):
        if capacity < 1:
            raise ValueError(f"memory capacity must be >= 1 (got {capacity})")
        self.dim, self.capacity = dim, capacity
        self.unit_inputs = unit_inputs
        self._rows = np.zeros((capacity, dim), np.float32)
        self._count = 0
        self._next = 0
        # cosine to the most recently remembered embedding, as of the last score(): the frame-to-
        # frame continuity a tracker needs, free because score() computes every similarity anyway
        self.last_similarity: float | None = None

    def __len__(self) -> int:
        return self._count

    def score(self, embedding: np.ndarray, remember: bool = True) -> float:
        """Return the novelty of one embedding (see :func:`novelty`), then optionally store it."""
        vector = (
            embedding
            if type(embedding) is np.ndarray and embedding.dtype == np.float32
            else np.asarray(embedding, np.float32)
        )
        if vector.ndim != 1:
            vector = vector.reshape(-1)
        if vector.shape[0] != self.dim:
            raise ValueError(f"embedding has dim {vector.shape[0]}, memory expects {self.dim}")
        norm = 1.0 if self.unit_inputs else math.sqrt(float(np.dot(vector, vector)))
        if norm <= _EPS:
            return 1.0
        count, slot = self._count, self._next  # read once: a second caller may move them meanwhile
        if count:
            # rows are unit vectors: max cosine = max(rows . v) / |v|
            rows = self._rows if count == self.capacity else self._rows[:count]
            similarities = np.dot(rows, vector)
            best = float(similarities[similarities.argmax()]) / norm  # argmax+index beats .max() here
            value = min(max((1.0 - best) * 0.5, 0.0), 1.0)
            self.last_similarity = float(similarities[(slot - 1) % similarities.shape[0]]) / norm
        else:
            value = 1.0
            self.last_similarity = None
        if remember:
            if self.unit_inputs:
                self._rows[slot] = vector
            else:
                np.multiply(vector, 1.0 / norm, out=self._rows[slot])
            self._next = (slot + 1) % self.capacity
            if count < self.capacity:
                self._count = count + 1
        return value


class TrackChain:
    """The robot's own tracker: consecutive frames of one stream whose embeddings are similar share a track.

    A frame opens a new track when its embedding's similarity to the previous frame's is below
    ``threshold`` (or unknown); ids are ``<prefix>-<n>``, so ``prefix`` must be unique per stream and
    session (the cascade uses ``<stream>@<session start>``). This is what a sidecar's ``track_hint``
    holds; the simulated world's truth never enters it.
    """

    __slots__ = ("prefix", "threshold", "count")

    def __init__(self, prefix: str, threshold: float = 0.9):
        self.prefix = prefix
        self.threshold = float(threshold)
        self.count = 0

    def next(self, similarity: float | None) -> str:
        """Return the track id of the stream's next frame given its similarity to the previous one."""
        if similarity is None or similarity < self.threshold:
            self.count += 1
        return f"{self.prefix}-{self.count}"
