"""The evaluation gate: candidate vs production on a held-out field test set, per site and per class.

Test sets are registered by name:

* ``simulated-field``: for every site in the pool, ``fleetloop_core.sim.field_test_set`` (items
  never streamed, so never uploaded: accuracy is never measured on training data);
* ``holdout``: frames humans labeled that training never sees (a fixed hash-chosen fraction of
  the random calibration sample), for fleets outside the simulated world.

A candidate is promoted only if its overall accuracy beats production by ``min_gain`` and no
site (accuracy) or class (F1) with at least ``min_support`` test frames loses more than its
regression limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from fleetloop_core import sim
from fleetloop_core.dataset import LABELS
from fleetloop_core.errors import ConfigError
from fleetloop_core.inference import TierModel

from fleetloop_cloud.config import CloudConfig, EvaluationConfig
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.pool import Pool


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
    return sim.field_test_set(sim.make_site(site_index, seed), count, seed=seed, height=height, width=width)


def _frame_size(pool: Pool, site: str) -> tuple[int, int]:
    sizes = [(r["height"], r["width"]) for r in pool.frames() if r["site"] == site]
    return max(set(sizes), key=sizes.count) if sizes else (128, 128)


def simulated_field_test_set(pool: Pool, cache: FrameCache, config: CloudConfig) -> TestSet:
    """Return the held-out field test set of every simulated site the pool has frames from."""
    sites = sorted({r["site"] for r in pool.frames()})
    unknown = [s for s in sites if not re.fullmatch(r"site-\d+", s)]
    if unknown:
        raise ConfigError(
            f"evaluation.test_set: simulated-field knows sites named site-<n>, the pool has {unknown}; "
            f"use test_set: holdout for a real fleet"
        )
    if not sites:
        raise ConfigError("evaluation.test_set: the pool has no frames, so no site to test on")
    images, labels, names = [], [], []
    count = config.evaluation.frames_per_site
    for site in sites:
        height, width = _frame_size(pool, site)
        data = _field_set(int(site.split("-")[1]), config.world_seed, count, height, width)
        images += list(data.images)
        labels.append(data.labels)
        names += [site] * len(data.labels)
    return TestSet("simulated-field", images, np.concatenate(labels), np.asarray(names))


def holdout_test_set(pool: Pool, cache: FrameCache, config: CloudConfig) -> TestSet:
    """Return the human-labeled frames held out of training."""
    rows = [r for r in pool.frames() if r["holdout"]]
    labels = pool.labels([r["id"] for r in rows], source="human")
    rows = [r for r in rows if r["id"] in labels]
    if not rows:
        raise ConfigError(
            "evaluation.test_set: holdout: no human-labeled held-out frames yet "
            "(they come from the random calibration sample; run review first)"
        )
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
    if name not in TEST_SETS:
        raise ConfigError(
            f"config/cloud.yaml: evaluation.test_set: unknown test set {name!r} (known: {', '.join(TEST_SETS)})"
        )
    return TEST_SETS[name](pool, cache, config)


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


@dataclass
class GateDecision:
    """Whether a candidate replaces production, and why."""

    promote: bool
    gain: float
    reasons: list[str]
    regressions: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "promote": self.promote,
            "gain": round(self.gain, 4),
            "reasons": list(self.reasons),
            "regressions": {k: round(v, 4) for k, v in self.regressions.items()},
        }


def gate(production: Scores, candidate: Scores, config: EvaluationConfig) -> GateDecision:
    """Return the promotion decision of ``candidate`` over ``production`` (pure)."""
    gain = candidate.overall - production.overall
    reasons, regressions = [], {}
    if gain < config.min_gain:
        reasons.append(
            f"overall accuracy {candidate.overall:.4f} vs production {production.overall:.4f}: "
            f"gain {gain:+.4f} < required {config.min_gain:+.4f}"
        )
    for kind, limit, old, new in (
        ("site", config.max_site_regression, production.per_site, candidate.per_site),
        ("class", config.max_class_regression, production.per_class, candidate.per_class),
    ):
        for key, (accuracy, frames) in old.items():
            if frames < config.min_support or key not in new:
                continue
            drop = accuracy - new[key][0]
            if drop > limit:
                regressions[f"{kind}:{key}"] = drop
                reasons.append(
                    f"{kind} {key} regresses {accuracy:.3f} -> {new[key][0]:.3f} "
                    f"(-{drop:.3f} > limit {limit:.3f}, {frames} frames)"
                )
    promote = not reasons
    if promote:
        reasons.append(
            f"overall {production.overall:.4f} -> {candidate.overall:.4f} ({gain:+.4f}); "
            f"no site or class regresses beyond its limit"
        )
    return GateDecision(promote=promote, gain=gain, reasons=reasons, regressions=regressions)
