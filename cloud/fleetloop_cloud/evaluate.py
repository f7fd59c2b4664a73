"""The classification gate: candidate vs production on a held-out field test set, per site and per class.

Test sets are registered by name (``evaluation_sets``): ``simulated-field`` draws
``fleetloop_sim.sim.field_test_set`` per simulated site (its ``validation`` split), ``holdout`` takes the human-labeled
frames training never sees.

The gate (``promotion_gate.decide``) promotes a candidate only if its overall accuracy beats
production by ``min_gain`` and no site (accuracy) or class (F1) with at least ``min_support``
test frames loses more than its regression limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from fleetloop_sim import sim
from fleetloop_sim.dataset import LABELS
from fleetloop_core.inference import TierModel

from fleetloop_cloud.config import CloudConfig, EvaluationConfig
from fleetloop_cloud.evaluation_sets import held_out, pick_test_set, simulated_sites
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.pool import Pool
from fleetloop_cloud.promotion_gate import GateDecision, GateFigures, GateWording, decide


@dataclass
class TestSet:
    """Frames (list of RGB uint8), labels (N,) and the site of each frame."""

    __test__ = False  # not a pytest test class

    name: str
    images: list[np.ndarray]
    labels: np.ndarray
    sites: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@lru_cache(maxsize=16)
def _field_set(site_index: int, seed: int, count: int, height: int, width: int) -> sim.LabelledSet:
    site = sim.make_site(site_index, seed)
    return sim.field_test_set(site, count, seed=seed, height=height, width=width, split="validation")


def simulated_field_test_set(pool: Pool, cache: FrameCache, config: CloudConfig) -> TestSet:
    """Return the held-out field validation set of every simulated site the pool has frames from.

    The gate selects on the ``validation`` split of the held-out field items; the demo reports its
    headline accuracies on the ``test`` split (other items), so no figure is measured on the frames
    a model was selected on.
    """
    images, labels, names = [], [], []
    count = config.evaluation.frames_per_site
    for site, index, height, width in simulated_sites(pool):
        data = _field_set(index, config.world_seed, count, height, width)
        images += list(data.images)
        labels.append(data.labels)
        names += [site] * len(data.labels)
    return TestSet("simulated-field", images, np.concatenate(labels), np.asarray(names))


def holdout_test_set(pool: Pool, cache: FrameCache, config: CloudConfig) -> TestSet:
    """Return the human-labeled frames held out of training."""
    rows, labels = held_out(pool, pool, "human-labeled")
    return TestSet(
        "holdout",
        cache.images(rows),
        np.asarray([labels[r["id"]].label for r in rows]),
        np.asarray([r["site"] for r in rows]),
    )


TEST_SETS: dict[str, Callable[[Pool, FrameCache, CloudConfig], TestSet]] = {
    "simulated-field": simulated_field_test_set,
    "holdout": holdout_test_set,
}


def make_test_set(name: str, pool: Pool, cache: FrameCache, config: CloudConfig) -> TestSet:
    """Return test set ``name``; ConfigError naming the known test sets if unknown."""
    return pick_test_set(TEST_SETS, name)(pool, cache, config)


@dataclass
class Scores:
    """Accuracy overall, per site and per class, with the number of test frames behind each."""

    overall: float
    frames: int
    per_site: dict[str, tuple[float, int]] = field(default_factory=dict)
    per_class: dict[str, tuple[float, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "overall": round(self.overall, 4),
            "frames": self.frames,
            "per_site": {k: {"accuracy": round(a, 4), "frames": n} for k, (a, n) in self.per_site.items()},
            "per_class": {k: {"accuracy": round(a, 4), "frames": n} for k, (a, n) in self.per_class.items()},
        }


def predict(model: TierModel, images: Sequence[np.ndarray], batch_size: int = 128) -> np.ndarray:
    """Return class predictions (N,) of a model over frames of any sizes."""
    out = np.zeros(len(images), np.int64)
    shapes: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        shapes.setdefault(image.shape, []).append(i)
    for indices in shapes.values():
        probs = model.infer_batch(np.stack([images[i] for i in indices]), batch_size=batch_size).probs
        out[indices] = probs.argmax(axis=1)
    return out


def score(predictions: np.ndarray, test: TestSet, labels: Sequence[str] = LABELS) -> Scores:
    """Return accuracy overall and per site, and F1 per class (support: the class's test frames)."""
    correct = predictions == test.labels
    result = Scores(overall=float(correct.mean()) if len(correct) else 0.0, frames=len(correct))
    for site in sorted(set(test.sites.tolist())):
        mask = test.sites == site
        result.per_site[site] = (float(correct[mask].mean()), int(mask.sum()))
    for index in sorted(set(test.labels.tolist())):
        # per class: F1, not recall. A model that calls everything "pullover" has perfect pullover
        # recall; judged on recall, any model that stops doing that would "regress" on pullover.
        truth, said = test.labels == index, predictions == index
        hits = int((truth & said).sum())
        f1 = 2.0 * hits / (int(truth.sum()) + int(said.sum())) if hits else 0.0
        result.per_class[labels[index]] = (f1, int(truth.sum()))
    return result


ACCURACY_WORDING = GateWording(overall="overall accuracy", site_figure="", class_figure="", class_support="frames")


def gate(production: Scores, candidate: Scores, config: EvaluationConfig) -> GateDecision:
    """Return the promotion decision of ``candidate`` over ``production`` (pure)."""
    gain = candidate.overall - production.overall
    return decide(
        GateFigures(production.overall, production.per_site, production.per_class),
        GateFigures(candidate.overall, candidate.per_site, candidate.per_class),
        config,
        ACCURACY_WORDING,
        f"overall {production.overall:.4f} -> {candidate.overall:.4f} ({gain:+.4f})",
    )
