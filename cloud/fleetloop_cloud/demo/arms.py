"""The baselines measured beside the loop, on the same frames and budgets (DEMO_WORLD.md).

* random upload: the same robots (same streams, same models delivered the same way) upload a
  random sample of each round's frames, exactly as many per robot as the loop's robot kept; the
  cloud loop then runs on them unchanged;
* upload all: every frame of every robot, with its ground-truth label (the data upper bound); the
  edge tier (T4) is trained on all of them with the same recipe budget as the loop's distillation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fleetloop_sim import sim
from fleetloop_core.contracts.manifest import load_manifest

from fleetloop_cloud.demo.fleet import InProcessFleet, InProcessRobot, RobotRound, RobotSpec


class RandomUploadFleet(InProcessFleet):
    """In-process robots whose selector is replaced by a random sample of a given size."""

    # every offered frame is kept: the sample, not a score, decides
    KEEP_ALL = {
        "policy": {"name": "threshold", "params": {"threshold": 0.0}},
        "dedup": {"enabled": False},
        "random_fraction": 0.0,
        "budget": {"frames_per_hour": 1.0e9, "bytes_per_hour": 1.0e15},
    }

    def __init__(self, specs, settings, seed: int):
        super().__init__(specs, settings)
        self._rng = np.random.default_rng(seed)

    def start(self) -> None:
        self.robots = [
            InProcessRobot(spec, self.settings, selection_override=self.KEEP_ALL, gate=self.gate) for spec in self.specs
        ]
        for robot in self.robots:
            robot.start()

    def stream_counts(
        self, frames_per_robot: int, counts: Mapping[str, int], extra: Mapping[str, int] | None = None
    ) -> list[RobotRound]:
        """Stream a round (each robot ``frames_per_robot`` frames and ``extra[r]`` more, as the loop's robots
        did); robot r uploads ``counts[r]`` of its frames chosen uniformly at random."""
        reports = []
        for robot in self.robots:
            frames = frames_per_robot + int((extra or {}).get(robot.spec.robot_id, 0))
            k = min(int(counts.get(robot.spec.robot_id, 0)), frames)
            chosen = set(self._rng.choice(frames, size=k, replace=False).tolist()) if k else set()
            reports.append(robot.stream(frames, offer_only=chosen))
        return reports


@dataclass
class UploadAllArm:
    """Every frame, ground-truth labels: trains T4 each round on everything seen so far."""

    specs: Sequence[RobotSpec]
    models: Path
    epochs: int
    lab_replay_frames: int
    finetune_lr: float = 5e-4
    seed: int = 0
    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    _streams: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._streams = {spec.robot_id: spec.camera() for spec in self.specs}

    def add_round(self, frames_per_robot: int, extra: Mapping[str, int] | None = None) -> int:
        """Take every robot's next ``frames_per_robot`` frames and ``extra[robot id]`` more (the same the robots
        saw); return the total."""
        for spec in self.specs:
            count = frames_per_robot + int((extra or {}).get(spec.robot_id, 0))
            frames = list(self._streams[spec.robot_id].frames(count))
            self.images.append(np.stack([f.image for f in frames]))
            self.labels.append(np.array([f.truth.label for f in frames], np.int64))
        return sum(len(x) for x in self.labels)

    def train(self, out_dir: Path, round_number: int, progress: bool = True) -> tuple[Path, dict]:
        """Train T4 on all frames so far (+ lab replay) from the reference weights; return its package dir."""
        # ~65 lines: data, fit and package of the baseline in one place (it should share the trainers' path: noted)
        from fleetloop_models import zoo
        from fleetloop_models.trainers import classification
        from fleetloop_core.contracts.manifest import file_entry, write_manifest

        base = load_manifest(self.models / "T4")
        net = zoo.build(base.architecture, num_classes=len(base.labels))
        model = classification.Deployable(net, mean=base.input.mean, std=base.input.std)
        weights = self.models / "T4" / "weights.pt"
        warm = weights.is_file()
        if warm:
            import torch

            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        images = np.concatenate(self.images)
        labels = np.concatenate(self.labels)
        if self.lab_replay_frames:
            pool = sim.item_pool()
            lab = sim.render_set(
                sim.LAB_SITE,
                pool.lab_train,
                self.lab_replay_frames,
                seed=("replay", self.seed),
                height=images.shape[1],
                width=images.shape[2],
                pool=pool,
                sites=sim.lab_sites(seed=self.seed),
            )
            images = np.concatenate([images, lab.images])
            labels = np.concatenate([labels, lab.labels])
        started = time.perf_counter()
        # the same fine-tuning rate the cloud loop uses when it warm-starts (config/cloud.yaml)
        lr = self.finetune_lr if warm else classification.FitConfig().lr
        report = classification.fit(
            model,
            images,
            labels,
            config=classification.FitConfig(epochs=self.epochs, seed=self.seed, lr=lr),
            desc=f"upload-all T4 round {round_number}",
            progress=progress,
        )
        directory = out_dir / f"round-{round_number}" / "T4"
        directory.mkdir(parents=True, exist_ok=True)
        onnx_path = classification.export_onnx(model, directory / "model.onnx", base.input.height, base.input.width)
        manifest = base.model_copy(
            update={
                "version": f"upload-all-r{round_number}",
                "files": [file_entry(onnx_path, directory)],
                "training": {
                    "frames": int(len(labels)),
                    "epochs": self.epochs,
                    "warm_start": warm,
                    "seconds": round(report.seconds, 1),
                },
                "metrics": {},
                "signature": None,
            }
        )
        write_manifest(manifest, directory)
        return directory, {
            "frames": int(len(labels)),
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(report.seconds, 1),
        }
