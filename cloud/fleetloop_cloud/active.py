"""Cloud active learning: which unlabeled frames humans label first (pure functions).

Strategies are registered by name (as the robot's selection policies); each takes the frames'
teacher embeddings (N, D, unit length), their uncertainty (N,) in [0, 1], how many to pick and a
seeded generator, plus the embeddings of frames already labeled (so diversity counts them), and
returns the indices it picks, best first. ``random`` is the baseline.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from fleetloop_core.errors import ConfigError

Strategy = Callable[[np.ndarray, np.ndarray, int, np.random.Generator, Optional[np.ndarray]], np.ndarray]


def random_pick(
    embeddings: np.ndarray, uncertainty: np.ndarray, k: int, rng: np.random.Generator, labeled: np.ndarray | None = None
) -> np.ndarray:
    """Return ``k`` indices uniformly at random (the baseline)."""
    n = len(uncertainty)
    return rng.permutation(n)[: min(k, n)]


def uncertainty_pick(
    embeddings: np.ndarray, uncertainty: np.ndarray, k: int, rng: np.random.Generator, labeled: np.ndarray | None = None
) -> np.ndarray:
    """Return the ``k`` most uncertain frames (ties broken at random)."""
    n = len(uncertainty)
    jitter = rng.random(n) * 1e-9
    return np.argsort(-(np.asarray(uncertainty, np.float64) + jitter), kind="stable")[: min(k, n)]


def _k_center(
    embeddings: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator, labeled: np.ndarray | None
) -> np.ndarray:
    """Greedy k-center (Sener & Savarese, ICLR 2018) on cosine distance, distances scaled by ``weights``."""
    n = len(embeddings)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, np.int64)
    x = np.asarray(embeddings, np.float32)
    if labeled is not None and len(labeled):
        nearest = np.clip(1.0 - (x @ np.asarray(labeled, np.float32).T).max(axis=1), 0.0, 2.0)
    else:
        nearest = np.full(n, 2.0, np.float32)
    picked: list[int] = []
    chosen = np.zeros(n, bool)
    for _ in range(k):
        score = np.where(chosen, -np.inf, nearest * weights + rng.random(n) * 1e-9)
        index = int(np.argmax(score))
        picked.append(index)
        chosen[index] = True
        nearest = np.minimum(nearest, np.clip(1.0 - x @ x[index], 0.0, 2.0))
    return np.asarray(picked, np.int64)


def diversity_pick(
    embeddings: np.ndarray, uncertainty: np.ndarray, k: int, rng: np.random.Generator, labeled: np.ndarray | None = None
) -> np.ndarray:
    """Return ``k`` frames covering the embedding space (k-center greedy)."""
    return _k_center(embeddings, np.ones(len(uncertainty), np.float32), k, rng, labeled)


def uncertainty_diversity_pick(
    embeddings: np.ndarray, uncertainty: np.ndarray, k: int, rng: np.random.Generator, labeled: np.ndarray | None = None
) -> np.ndarray:
    """Return ``k`` frames by k-center greedy with each distance weighted by the frame's uncertainty."""
    weights = 0.05 + np.asarray(uncertainty, np.float32)
    return _k_center(embeddings, weights, k, rng, labeled)


def _typicality(x: np.ndarray, neighbours: int, chunk: int = 512) -> np.ndarray:
    """Return each row's typicality: 1 / mean cosine distance to its ``neighbours`` nearest other rows."""
    n = len(x)
    k = min(neighbours, n - 1)
    if k <= 0:
        return np.zeros(n, np.float32)
    mean = np.empty(n, np.float32)
    for start in range(0, n, chunk):  # bounded memory for a large cluster: chunk x n distances (100 MB at n = 50,000)
        d = np.clip(1.0 - x[start : start + chunk] @ x.T, 0.0, 2.0)
        nearest = np.partition(d, k, axis=1)[:, 1 : k + 1]  # column 0 is the row itself (distance 0)
        mean[start : start + chunk] = nearest.mean(axis=1)
    return 1.0 / (mean + 1e-6)


def _nearest_centre(x: np.ndarray, centres: np.ndarray, block: int = 8192) -> np.ndarray:
    """Return each row's nearest centre (squared Euclidean), ``block`` rows at a time: the distances of
    100,000 frames to 500 centres at once would take 200 MB, a block of them 16 MB."""
    norms = (centres * centres).sum(axis=1)[None, :]  # + |x|^2, the same for every centre
    out = np.empty(len(x), np.int64)
    for start in range(0, len(x), block):
        out[start : start + block] = (norms - 2 * x[start : start + block] @ centres.T).argmin(axis=1)
    return out


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 10) -> np.ndarray:
    """Return each row's cluster after k-means++ seeding (Arthur & Vassilvitskii, 2007) and Lloyd steps.

    Written here instead of scipy's ``kmeans2`` because its distances are not matrix products:
    400 clusters of 14,400 x 256 embeddings took 136 s there and ~2 s with the products below.
    """
    n = len(x)
    squared = (x * x).sum(axis=1)
    centres = np.empty((k, x.shape[1]), np.float32)
    centres[0] = x[rng.integers(n)]
    nearest = np.maximum(squared - 2 * x @ centres[0] + centres[0] @ centres[0], 0.0)
    for i in range(1, k):
        total = float(nearest.sum())
        pick = int(rng.choice(n, p=nearest / total)) if total > 0 else int(rng.integers(n))
        centres[i] = x[pick]
        nearest = np.minimum(nearest, np.maximum(squared - 2 * x @ centres[i] + centres[i] @ centres[i], 0.0))
    assigned = np.zeros(n, np.int64)
    for _ in range(iterations):
        assigned = _nearest_centre(x, centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, assigned, x)
        counts = np.bincount(assigned, minlength=k)
        filled = counts > 0  # an empty cluster keeps its centre and is never picked from
        centres[filled] = sums[filled] / counts[filled, None]
    return assigned


def typiclust_pick(
    embeddings: np.ndarray,
    uncertainty: np.ndarray,
    k: int,
    rng: np.random.Generator,
    labeled: np.ndarray | None = None,
    neighbours: int = 20,
    max_clusters: int = 500,
    min_cluster: int = 5,
) -> np.ndarray:
    """Return ``k`` typical frames of the clusters labeled frames cover least (TypiClust).

    Hacohen, Dekel, Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High and Low
    Budgets", ICML 2022 (arXiv:2202.02794). The frames and the labeled ones are clustered by k-means
    (k-means++ seeding, ``_kmeans``) into labeled + ``k`` clusters, at most ``max_clusters`` and one
    per ``min_cluster`` frames.
    Each pick takes, among the clusters of at least ``min_cluster`` frames (smaller ones, outlier
    groups, only when those are used up), the one with the fewest labeled and picked frames (the
    largest among equals) and in it the most typical frame: the highest inverse mean cosine distance
    to its ``neighbours`` nearest frames of the cluster. Uncertainty is not used and no labels are
    needed, so it can pick the very first batch: with few labels, a dense region's centre teaches a
    model more than a doubtful frame at its edge (the paper's finding for small budgets; the demo's active-learning
    arm measures it on the fleet's frames, docs/cloud_loop.md#active-learning).
    """
    x = np.asarray(embeddings, np.float32)
    n = len(x)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, np.int64)
    known = np.zeros((0, x.shape[1]), np.float32) if labeled is None else np.asarray(labeled, np.float32)
    everything = np.concatenate([x, known]) if len(known) else x
    # at most one cluster per min_cluster frames: ordering a whole review queue (k = n) would otherwise
    # make every frame a cluster of its own, and the order would be the input's
    clusters = max(1, min(len(known) + k, max_clusters, len(everything) // min_cluster))
    assigned = _kmeans(everything, clusters, rng)
    own = assigned[:n]
    covered = np.bincount(assigned[n:], minlength=clusters).astype(np.int64)
    size = np.bincount(own, minlength=clusters)
    members = [np.flatnonzero(own == c) for c in range(clusters)]
    typical = np.zeros(n, np.float32)
    for index in members:
        if len(index):
            typical[index] = _typicality(x[index], min(neighbours, len(index) // 2))
    left = size.copy()
    taken = np.zeros(n, bool)
    picked: list[int] = []
    for _ in range(k):
        open_ = np.flatnonzero(left > 0)
        grown = open_[size[open_] >= min_cluster]
        open_ = grown if len(grown) else open_
        cluster = int(open_[np.lexsort((-size[open_], covered[open_]))[0]])  # fewest covered, then largest
        candidates = members[cluster][~taken[members[cluster]]]
        index = int(candidates[np.argmax(typical[candidates] + rng.random(len(candidates)) * 1e-9)])
        picked.append(index)
        taken[index] = True
        covered[cluster] += 1
        left[cluster] -= 1
    return np.asarray(picked, np.int64)


STRATEGIES: dict[str, Strategy] = {
    "random": random_pick,
    "uncertainty": uncertainty_pick,
    "diversity": diversity_pick,
    "uncertainty-diversity": uncertainty_diversity_pick,
    "typiclust": typiclust_pick,
}


def select(
    name: str,
    embeddings: np.ndarray,
    uncertainty: np.ndarray,
    k: int,
    rng: np.random.Generator,
    labeled: np.ndarray | None = None,
    source: str = "config/cloud.yaml",
) -> np.ndarray:
    """Return the indices strategy ``name`` picks; ConfigError naming the known strategies if unknown."""
    if name not in STRATEGIES:
        raise ConfigError(f"{source}: review.strategy: unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    if len(embeddings) != len(uncertainty):
        raise ValueError(f"{len(embeddings)} embeddings but {len(uncertainty)} uncertainty scores")
    return STRATEGIES[name](embeddings, uncertainty, k, rng, labeled)


def order(
    name: str,
    embeddings: np.ndarray,
    uncertainty: np.ndarray,
    rng: np.random.Generator,
    labeled: np.ndarray | None = None,
) -> np.ndarray:
    """Return every index, in the order strategy ``name`` would pick them."""
    return select(name, embeddings, uncertainty, len(uncertainty), rng, labeled)
