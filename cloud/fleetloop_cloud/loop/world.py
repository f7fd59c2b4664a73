"""Where the loop's world-only inputs come from: lab frames to replay in training, truth to check labels by.

The loop's steps never import the simulation: they ask ``loop.world`` (one of :data:`WORLDS`,
by name). The simulated world renders lab frames from the simulated item pool and reads the
truth the simulated robots wrote into their sidecars; the truth check is reported as
``simulation_only`` and never steers the loop.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Protocol

import numpy as np

from fleetloop_core.errors import ConfigError

from fleetloop_cloud.box_consensus import BoxSet, aggregate, compare
from fleetloop_cloud.config import CloudConfig
from fleetloop_cloud.pool import Pool


class World(Protocol):
    """Lab frames and truth for a task (classification, detection)."""

    def lab_frames(self, task: str, count: int, seed: int, height: int, width: int) -> list[tuple]:
        """Return ``count`` labeled lab frames as (frame id, image, the task's label, site)."""
        ...

    def truth_check(self, task: str, pool: Pool, labels: dict[str, Any], config: CloudConfig) -> dict:
        """Return per label source how the round's labels compare with the truth (empty without truth)."""
        ...


def _lab_render(task: str, count: int, seed: int, height: int, width: int):
    from fleetloop_sim import sim

    return sim.render_set(
        sim.LAB_SITE,
        sim.item_pool().lab_train,
        count,
        seed=("replay" if task == "classification" else "box-replay", seed),  # the world's own seed names
        height=height,
        width=width,
        sites=sim.lab_sites(16, seed),
        task=task,
    )


def _lab_classes(count: int, seed: int, height: int, width: int) -> list[tuple]:
    data = _lab_render("classification", count, seed, height, width)
    return [(f"lab-{i:06d}", data.images[i], int(data.labels[i]), "lab") for i in range(count)]


def _lab_boxes(count: int, seed: int, height: int, width: int) -> list[tuple]:
    data = _lab_render("detection", count, seed, height, width)
    return [
        (f"lab-{i:06d}", data.images[i], BoxSet(t.boxes, np.ones(len(t.boxes), np.float32), t.classes), "lab")
        for i, t in enumerate(data.truths)
    ]


def _class_truth(pool: Pool, labels: dict[str, Any], config: CloudConfig) -> dict:
    """Accuracy of the labels per source against the simulated class of each frame."""
    rows = {r["id"]: r["sim_label"] for r in pool.frames(ids=labels)}
    out = {}
    for source in ("auto", "propagated", "human"):
        pairs = [
            (label.label, rows.get(f))
            for f, label in labels.items()
            if label.source == source and rows.get(f) is not None
        ]
        if pairs:
            out[source] = {"frames": len(pairs), "accuracy": round(sum(a == b for a, b in pairs) / len(pairs), 4)}
    return out


def _box_truth(pool: Pool, labels: dict[str, Any], config: CloudConfig) -> dict:
    """Mean IoU and class accuracy of the box labels per source against the simulated boxes of each frame."""
    rows = {r["id"]: r for r in pool.frames(ids=labels)}
    out = {}
    for source in ("auto", "human"):
        comparisons = []
        for frame_id, label in labels.items():
            if label.source != source or frame_id not in rows:
                continue
            truth = (json.loads(rows[frame_id]["sidecar"]).get("simulation") or {}).get("boxes")
            if truth is None:
                continue
            expected = BoxSet.from_rows([t[:5] for t in truth], with_scores=False)
            comparisons.append(compare(label.boxes, expected, config.detection.match_iou))
        if comparisons:
            out[source] = aggregate(comparisons).to_dict()
    return out


class SimulatedWorld:
    """The simulated world of DEMO_WORLD.md: rendered lab frames, the sidecars' simulated truth."""

    LAB_FRAMES: dict[str, Callable[[int, int, int, int], list[tuple]]] = {
        "classification": _lab_classes,
        "detection": _lab_boxes,
    }
    TRUTH: dict[str, Callable[[Pool, dict, CloudConfig], dict]] = {
        "classification": _class_truth,
        "detection": _box_truth,
    }

    def lab_frames(self, task: str, count: int, seed: int, height: int, width: int) -> list[tuple]:
        return self.LAB_FRAMES[task](count, seed, height, width) if count > 0 else []

    def truth_check(self, task: str, pool: Pool, labels: dict[str, Any], config: CloudConfig) -> dict:
        return self.TRUTH[task](pool, labels, config)


WORLDS: dict[str, Callable[[], World]] = {"simulated": SimulatedWorld}


def open_world(name: str) -> World:
    """Return world ``name``; ConfigError naming the known worlds if unknown."""
    if name not in WORLDS:
        raise ConfigError(f"unknown world {name!r} (known: {', '.join(sorted(WORLDS))})")
    return WORLDS[name]()
