"""The detection gate: candidate vs production detectors on held-out frames, mAP@0.5 and mAP@0.5:0.95
(pycocotools, ``fleetloop_core.detection_metrics``) overall, per class and per site.

Test sets are registered by name, as for classification (``evaluation.test_set``):

* ``simulated-field``: per site in the pool, ``fleetloop_core.sim.field_test_set`` (task ``detection``)
  (field-test items, never streamed, so never uploaded or trained on);
* ``holdout``: frames humans boxed that training never sees (a hash-chosen fraction of the random
  calibration sample).

A candidate is promoted only if its overall mAP@0.5 beats production by ``evaluation.min_gain`` and
no site (mAP@0.5) or class (AP@0.5, classes with at least ``min_support`` boxes) loses more than its
regression limit; mAP@0.5:0.95 is reported beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from fleetloop_core import sim, sim_tasks
from fleetloop_core.detection import DetectorModel
from fleetloop_core.detection_metrics import MapScores, evaluate_map
from fleetloop_core.errors import ConfigError

from fleetloop_cloud.box_pool import BoxPool
from fleetloop_cloud.config import CloudConfig, EvaluationConfig
from fleetloop_cloud.evaluate import GateDecision
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.pool import Pool


@dataclass
class BoxTestSet:
    """Frames (list of RGB uint8) with their true boxes (x0y0x1y1, classes) and the site of each."""

    __test__ = False

    name: str
    images: list[np.ndarray]
    boxes: list[np.ndarray]
    classes: list[np.ndarray]
    sites: list[str]

    def __len__(self) -> int:
        return len(self.images)


@lru_cache(maxsize=16)
def _field_set(site_index: int, seed: int, count: int, height: int, width: int) -> sim_tasks.DetectionSet:
    return sim.field_test_set(
        sim.make_site(site_index, seed), count, seed=seed, height=height, width=width, task="detection"
    )


def simulated_field_box_set(pool: Pool, boxes: BoxPool, cache: FrameCache, config: CloudConfig) -> BoxTestSet:
    """Return the held-out detection field test set of every simulated site the pool has frames from."""
    rows = pool.frames()
    sites = sorted({r["site"] for r in rows})
    unknown = [s for s in sites if not re.fullmatch(r"site-\d+", s)]
    if unknown:
        raise ConfigError(
            f"evaluation.test_set: simulated-field knows sites named site-<n>, the pool has {unknown}; "
            f"use test_set: holdout for a real fleet"
        )
    if not sites:
        raise ConfigError("evaluation.test_set: the pool has no frames, so no site to test on")
    out = BoxTestSet("simulated-field", [], [], [], [])
    for site in sites:
        sizes = [(r["height"], r["width"]) for r in rows if r["site"] == site]
        height, width = max(set(sizes), key=sizes.count)
        data = _field_set(int(site.split("-")[1]), config.world_seed, config.evaluation.frames_per_site, height, width)
        out.images += list(data.images)
        out.boxes += [t.boxes for t in data.truths]
        out.classes += [t.classes for t in data.truths]
        out.sites += [site] * len(data)
    return out


def holdout_box_set(pool: Pool, boxes: BoxPool, cache: FrameCache, config: CloudConfig) -> BoxTestSet:
    """Return the human-boxed frames held out of training."""
    rows = [r for r in pool.frames() if r["holdout"]]
    labels = boxes.labels([r["id"] for r in rows], source="human")
    rows = [r for r in rows if r["id"] in labels]
    if not rows:
        raise ConfigError(
            "evaluation.test_set: holdout: no human-boxed held-out frames yet "
            "(they come from the random calibration sample; run review first)"
        )
    return BoxTestSet(
        "holdout",
        cache.images(rows),
        [labels[r["id"]].boxes.boxes for r in rows],
        [labels[r["id"]].boxes.classes for r in rows],
        [r["site"] for r in rows],
    )


BOX_TEST_SETS: dict[str, Callable[[Pool, BoxPool, FrameCache, CloudConfig], BoxTestSet]] = {
    "simulated-field": simulated_field_box_set,
    "holdout": holdout_box_set,
}


def make_box_test_set(name: str, pool: Pool, boxes: BoxPool, cache: FrameCache, config: CloudConfig) -> BoxTestSet:
    """Return test set ``name``; ConfigError naming the known test sets if unknown."""
    if name not in BOX_TEST_SETS:
        raise ConfigError(
            f"config/cloud.yaml: evaluation.test_set: unknown test set {name!r} (known: {', '.join(BOX_TEST_SETS)})"
        )
    return BOX_TEST_SETS[name](pool, boxes, cache, config)


def score_detector(model: DetectorModel, test: BoxTestSet, score_floor: float = 0.05) -> MapScores:
    """Return the mAP figures of ``model`` on ``test`` (boxes decoded down to ``score_floor`` for the PR curve)."""
    outputs = model.detect_batch(test.images, score_floor=score_floor)
    predictions = [(o.detections.boxes, o.detections.scores, o.detections.classes) for o in outputs]
    return evaluate_map(predictions, list(zip(test.boxes, test.classes)), model.labels, sites=test.sites)


def box_gate(production: MapScores, candidate: MapScores, config: EvaluationConfig) -> GateDecision:
    """Return the promotion decision of a detector (pure): mAP@0.5 gain, per-site and per-class limits."""
    gain = candidate.map50 - production.map50
    reasons, regressions = [], {}
    if gain < config.min_gain:
        reasons.append(
            f"mAP@0.5 {candidate.map50:.4f} vs production {production.map50:.4f}: gain {gain:+.4f} "
            f"< required {config.min_gain:+.4f}"
        )
    for site, (old, _, images) in production.per_site.items():
        if images < config.min_support or site not in candidate.per_site:
            continue
        drop = old - candidate.per_site[site][0]
        if drop > config.max_site_regression:
            regressions[f"site:{site}"] = drop
            reasons.append(
                f"site {site} mAP@0.5 regresses {old:.3f} -> {candidate.per_site[site][0]:.3f} "
                f"(-{drop:.3f} > limit {config.max_site_regression:.3f}, {images} frames)"
            )
    for name, (old, _, boxes) in production.per_class.items():
        if boxes < config.min_support or name not in candidate.per_class:
            continue
        drop = old - candidate.per_class[name][0]
        if drop > config.max_class_regression:
            regressions[f"class:{name}"] = drop
            reasons.append(
                f"class {name} AP@0.5 regresses {old:.3f} -> {candidate.per_class[name][0]:.3f} "
                f"(-{drop:.3f} > limit {config.max_class_regression:.3f}, {boxes} boxes)"
            )
    promote = not reasons
    if promote:
        reasons.append(
            f"mAP@0.5 {production.map50:.4f} -> {candidate.map50:.4f} ({gain:+.4f}), mAP@0.5:0.95 "
            f"{production.map:.4f} -> {candidate.map:.4f}; no site or class regresses beyond its limit"
        )
    return GateDecision(promote=promote, gain=gain, reasons=reasons, regressions=regressions)
