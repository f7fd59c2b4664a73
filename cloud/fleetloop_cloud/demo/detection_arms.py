"""The detection demo's robots and baselines: what differs from the classification demo's for detectors.

* :class:`DetectionRobot`: one robot in-process on the detection world (camera stream -> model manager
  with the detection cascade -> selector -> upload queue -> uploader), its frames' sidecars carrying
  the true boxes;
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
from fleetloop_core.selection import Selector
from fleetloop_core.store import open_store
from fleetloop_core.upload_queue import UploadQueue
from fleetloop_core.uploader import Uploader

from fleetloop_cloud.box_evaluate import BoxTestSet, score_detector
from fleetloop_cloud.demo.config import DetectionDemoConfig
from fleetloop_cloud.demo.fleet import FleetSettings, demo_selection, serving_stack

STREAM = "front"


def robot_start_ns(index: int) -> int:
    """Return the simulated time (ns) robot ``index``'s camera starts at (robots 1000 s apart)."""
    return sim.SIM_EPOCH_NS + index * 10**12


class DetectionRobot:
    """One robot in-process: camera stream -> model manager (detection cascade) -> selector -> upload queue.

    Deploy jobs arrive through the control plane (``settings.jobs_uri``); the deploy agent applies them on
    the model manager's thread while the robot streams. ``selection_override`` is merged over
    ``settings.selection`` (the random arm's keep-everything selector).
    """

    def __init__(
        self,
        robot_id: str,
        site: sim.Site,
        index: int,
        settings: FleetSettings,
        seed: int,
        selection_override: dict | None = None,
    ):
        self.robot_id, self.site = robot_id, site
        self.camera = sim.CameraStream(site, robot_id, seed=seed, start_ns=robot_start_ns(index), task="detection")
        root = settings.root / robot_id
        stack = serving_stack(
            robot_id, root, settings.packages, settings.keys_dir, settings.jobs_uri, settings.manager_overrides
        )
        self.cascade, self.manager, self.agent = stack.cascade, stack.manager, stack.agent
        selection = demo_selection(settings.selection, selection_override, "detection demo selection")
        self.selector = Selector(selection, robot_id, self.cascade.frame_labels)
        self.queue = UploadQueue(root / "queue", synchronous="normal")
        self.uploader = Uploader(self.queue, open_store(settings.store_uri))
        self.agent.start()

    def stream(self, frames: int, offer_only: set[int] | None = None) -> dict:
        """Run ``frames`` camera frames through the stack (only ``offer_only`` reach the selector); return counts."""
        kept = 0
        for index, frame in enumerate(self.camera.frames(frames)):
            result = self.manager.infer(frame.image, stream=STREAM)
            if offer_only is not None and index not in offer_only:
                continue
            truth = frame.truth
            simulation = {
                "label": truth.label,
                "track_id": truth.track_id,
                "site": self.site.name,
                "boxes": truth.rows(),
            }
            decision = self.selector.offer(
                frame.image, result, frame.stamp_ns, stream=STREAM, site=self.site.name, simulation=simulation
            )
            if decision.keep:
                self.queue.put(decision.record)
                kept += 1
        report = self.uploader.drain()
        return {
            "robot": self.robot_id,
            "frames": frames,
            "kept": kept,
            "uploaded": report.uploaded,
            "serving": self.cascade.model_versions(),
        }

    def close(self) -> None:
        self.agent.stop()
        self.manager.close()
        self.queue.close()


def field_test_set(sites: Sequence[sim.Site], frames_per_site: int, seed: int) -> BoxTestSet:
    """Return the held-out field detection test set of the demo's sites (the gate's, fixed for every arm)."""
    out = BoxTestSet("simulated-field", [], [], [], [])
    for site in sites:
        data = sim.field_test_set(site, frames_per_site, seed=seed, task="detection")
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

    def __init__(self, robots: Sequence[tuple[str, sim.Site]], models: Path, settings: DetectionDemoConfig):
        self.streams = [
            sim.CameraStream(site, robot, seed=settings.seed, start_ns=robot_start_ns(i), task="detection")
            for i, (robot, site) in enumerate(robots)
        ]
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
