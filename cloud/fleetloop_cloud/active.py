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


STRATEGIES: dict[str, Strategy] = {
    "random": random_pick,
    "uncertainty": uncertainty_pick,
    "diversity": diversity_pick,
    "uncertainty-diversity": uncertainty_diversity_pick,
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
