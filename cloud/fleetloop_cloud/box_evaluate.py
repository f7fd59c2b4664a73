"""The detection gate: candidate vs production detectors on held-out frames, mAP@0.5 and mAP@0.5:0.95
(pycocotools, ``fleetloop_models.detection_metrics``) overall, per class and per site.

Test sets are registered by name, as for classification (``evaluation.test_set``, the machinery in
``evaluation_sets``): ``simulated-field`` draws ``fleetloop_sim.sim.field_test_set`` (task
``detection``) per simulated site, ``holdout`` takes the human-boxed frames training never sees.

The gate (``promotion_gate.decide``) promotes a candidate only if its overall mAP@0.5 beats
production by ``evaluation.min_gain`` and no site (mAP@0.5) or class (AP@0.5, classes with at least
``min_support`` boxes) loses more than its regression limit; mAP@0.5:0.95 is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from fleetloop_sim import sim, sim_tasks
from fleetloop_core.detection import DetectorModel
from fleetloop_models.detection_metrics import MapScores, evaluate_map

from fleetloop_cloud.box_pool import BoxPool
from fleetloop_cloud.config import CloudConfig, EvaluationConfig
from fleetloop_cloud.evaluation_sets import held_out, pick_test_set, simulated_sites
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.pool import Pool
from fleetloop_cloud.promotion_gate import GateDecision, GateFigures, GateWording, decide


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
        sim.make_site(site_index, seed),
        count,
        seed=seed,
        height=height,
        width=width,
        task="detection",
        split="validation",  # the gate selects on it; the demo reports on the disjoint ``test`` split
    )


def simulated_field_box_set(pool: Pool, boxes: BoxPool, cache: FrameCache, config: CloudConfig) -> BoxTestSet:
    """Return the held-out detection field validation set of every simulated site the pool has frames from."""
    out = BoxTestSet("simulated-field", [], [], [], [])
    for site, index, height, width in simulated_sites(pool):
        data = _field_set(index, config.world_seed, config.evaluation.frames_per_site, height, width)
        out.images += list(data.images)
        out.boxes += [t.boxes for t in data.truths]
        out.classes += [t.classes for t in data.truths]
        out.sites += [site] * len(data)
    return out


def holdout_box_set(pool: Pool, boxes: BoxPool, cache: FrameCache, config: CloudConfig) -> BoxTestSet:
    """Return the human-boxed frames held out of training."""
    rows, labels = held_out(pool, boxes, "human-boxed")
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
    return pick_test_set(BOX_TEST_SETS, name)(pool, boxes, cache, config)


def score_detector(model: DetectorModel, test: BoxTestSet, score_floor: float = 0.05) -> MapScores:
    """Return the mAP figures of ``model`` on ``test`` (boxes decoded down to ``score_floor`` for the PR curve)."""
    outputs = model.detect_batch(test.images, score_floor=score_floor)
    predictions = [(o.detections.boxes, o.detections.scores, o.detections.classes) for o in outputs]
    return evaluate_map(predictions, list(zip(test.boxes, test.classes)), model.labels, sites=test.sites)


MAP_WORDING = GateWording(overall="mAP@0.5", site_figure=" mAP@0.5", class_figure=" AP@0.5", class_support="boxes")


def _figures(scores: MapScores) -> GateFigures:
    return GateFigures(
        scores.map50,
        {site: (map50, images) for site, (map50, _, images) in scores.per_site.items()},
        {name: (ap50, boxes) for name, (ap50, _, boxes) in scores.per_class.items()},
    )


def box_gate(production: MapScores, candidate: MapScores, config: EvaluationConfig) -> GateDecision:
    """Return the promotion decision of a detector (pure): mAP@0.5 gain, per-site and per-class limits."""
    gain = candidate.map50 - production.map50
    promoted = (
        f"mAP@0.5 {production.map50:.4f} -> {candidate.map50:.4f} ({gain:+.4f}), mAP@0.5:0.95 "
        f"{production.map:.4f} -> {candidate.map:.4f}"
    )
    return decide(_figures(production), _figures(candidate), config, MAP_WORDING, promoted)
