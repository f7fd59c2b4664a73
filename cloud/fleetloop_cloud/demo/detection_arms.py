"""The detection demo's baselines and measures: what differs from the classification demo's for detectors.

The robots are the classification demo's :class:`~fleetloop_cloud.demo.fleet.InProcessRobot` (with
detection robot specs); here:

* :class:`DetectionUploadAll`: every frame with its true boxes, T4 retrained each round on all of them
  (the upper bound);
* :func:`field_test_set` and :func:`map_scores`: the held-out field detection test set and mAP on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fleetloop_sim import sim
from fleetloop_core.detection import DetectorModel

from fleetloop_cloud.box_evaluate import BoxTestSet, score_detector
from fleetloop_cloud.demo.config import DetectionDemoConfig
from fleetloop_cloud.demo.fleet import RobotSpec


def field_test_set(sites: Sequence[sim.Site], frames_per_site: int, seed: int) -> BoxTestSet:
    """Return the held-out field detection test set of the demo's sites (the gate's, fixed for every arm)."""
    out = BoxTestSet("simulated-field", [], [], [], [])
    for site in sites:
        data = sim.field_test_set(site, frames_per_site, seed=seed, task="detection", split="test")
        out.images += list(data.images)
        out.boxes += [t.boxes for t in data.truths]
        out.classes += [t.classes for t in data.truths]
        out.sites += [site.name] * len(data)
    return out


def map_scores(model_dir: Path, test: BoxTestSet) -> dict:
    """Return the detector's mAP@0.5 (``map50``), mAP@0.5:0.95 (``map``) and per-site mAP@0.5 on ``test``."""
    scores = score_detector(DetectorModel.load(model_dir, providers=("cpu",), warmup=0), test)
    return {
        "map50": round(scores.map50, 4),
        "map": round(scores.map, 4),
        "per_site": {k: round(v[0], 4) for k, v in scores.per_site.items()},
    }


class DetectionUploadAll:
    """Every frame with its true boxes: T4 retrained each round on all frames so far (the upper bound)."""

    def __init__(self, specs: Sequence[RobotSpec], models: Path, settings: DetectionDemoConfig):
        self.streams = [spec.camera() for spec in specs]
        self.models, self.settings = models, settings
        self.images: list[np.ndarray] = []
        self.truths: list = []

    def add_round(self, frames: int) -> int:
        """Take every robot's next ``frames`` frames (the same the robots saw); return the total so far."""
        for stream in self.streams:
            for frame in stream.frames(frames):
                self.images.append(frame.image)
                self.truths.append(frame.truth)
        return len(self.images)

    def train(self, out: Path, round_number: int, progress: bool) -> Path:
        """Train T4 on all frames so far (+ lab replay) from the reference detector; return its package dir."""
        from fleetloop_core.contracts.manifest import load_manifest
        from fleetloop_models import zoo
        from fleetloop_models.trainers import detection as td
        from fleetloop_models.trainers.detection import fit_into, write_detector_package

        from fleetloop_cloud.box_train import export_layout, load_detector_base

        base = load_manifest(self.models / "T4")
        _, model, _ = load_detector_base(self.models, "T4")
        lab = sim.render_set(
            sim.LAB_SITE,
            sim.item_pool().lab_train,
            self.settings.lab_replay_frames,
            seed=("upload-all-replay", self.settings.seed),
            sites=sim.lab_sites(16, self.settings.seed),
            task="detection",
        )
        images, boxes, classes = fit_into(
            np.concatenate([np.stack(self.images), lab.images]), [*self.truths, *lab.truths], model.height
        )
        report = td.fit_detector(
            model,
            images,
            td.assign(boxes, classes, model.height, model.width),
            progress=progress,
            config=td.DetectorFitConfig(
                epochs=self.settings.upload_all_epochs, batch_size=32, lr=4e-3, seed=self.settings.seed
            ),
            desc=f"upload-all T4 round {round_number}",
        )
        directory = out / f"round-{round_number}" / "T4"
        write_detector_package(
            model,
            directory,
            base.name,
            f"upload-all-r{round_number}",
            "T4",
            base.architecture,
            export_layout(base),
            base.labels,
            {"frames": len(self.images), "seconds": round(report.seconds, 1)},
            zoo.parameter_count(model.net),
        )
        return directory
