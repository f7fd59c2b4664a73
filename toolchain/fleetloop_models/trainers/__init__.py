"""Trainers: what differs between training a classifier and a detector, behind one registry.

A build profile (and a model package's manifest) names its ``task``; :func:`trainer_for` returns
the :class:`Trainer` of that task. The reference-model build (``fleetloop_models.modelbuild``), the
training loop, the ONNX export and the package writing are written once against this protocol
(``fleetloop_models.training``); a trainer supplies only its task's parts:

* ``sim_part(profile)``: what the simulated frames hold (``fleetloop_sim.sim_tasks``);
* ``train(...)``: a fresh network of the tier's architecture fitted with the task's loss and
  target encoding (:class:`Trained`);
* ``write(...)``: the package in the task's output layout (``package_writer.write_package`` does the rest);
* ``load(...)`` / ``score(...)``: the exported model on a test set, by the task's metric.

The robot side has the same registry for loading and comparing models (``fleetloop_core.tasks``).
A third task is one module defining ``TRAINER`` plus one entry in :data:`TRAINERS`. The modules
are imported on first use: they import torch, and the build profiles and cache keys must work
without it (a robot reuses cached builds).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from fleetloop_core.contracts.manifest import Manifest, TaskName, Tier
from fleetloop_core.errors import ConfigError

if TYPE_CHECKING:
    from fleetloop_models.modelbuild import BuildProfile, TierBuild
    from fleetloop_sim.sim_tasks import SimTask


@dataclass(frozen=True)
class Registration:
    """Where a task's trainer lives and the code its builds depend on beyond the shared build."""

    module: str  # defines ``TRAINER``
    code: tuple[str, ...]  # modules whose source is part of the build cache key


# task (as a manifest's ``task`` names it) -> its trainer
TRAINERS: dict[str, Registration] = {
    "classification": Registration(
        "fleetloop_models.trainers.classification", ("fleetloop_models.trainers.classification",)
    ),
    "detection": Registration(
        "fleetloop_models.trainers.detection",
        (
            "fleetloop_models.trainers.detection",
            "fleetloop_models.trainers.detection_targets",
            "fleetloop_core.detection",
            "fleetloop_core.box_decoding",
        ),
    ),
}


@dataclass
class Trained:
    """One tier fitted by a trainer: the torch model, its FitReport, and the task's training notes."""

    model: Any
    report: Any
    seed: int
    info: dict[str, Any] = field(default_factory=dict)  # manifest ``training`` entries only this task has


class Trainer(Protocol):
    """What a task supplies to the build (see the module docstring)."""

    task: TaskName
    labels: Sequence[str]
    seed_prefix: str  # of the render seeds: each task's reference builds draw their own frames
    metric: str  # the headline test metric (a key of ``score``)

    def sim_part(self, profile: BuildProfile) -> str | SimTask: ...

    def train(
        self, tier: Tier, spec: TierBuild, data: Any, count: int, profile: BuildProfile, progress: bool
    ) -> Trained: ...

    def write(
        self,
        trained: Trained,
        directory: Path,
        name: str,
        version: str,
        tier: Tier,
        spec: TierBuild,
        info: dict[str, Any],
    ) -> Manifest: ...

    def load(self, directory: Path) -> Any: ...

    def score(self, model: Any, data: Any) -> dict[str, float]: ...


def registration(task: str) -> Registration:
    """Return how ``task`` is registered; a ConfigError names the known tasks."""
    if task not in TRAINERS:
        raise ConfigError(f"no trainer for task {task!r} (known: {', '.join(TRAINERS)})")
    return TRAINERS[task]


def trainer_for(task: str) -> Trainer:
    """Return the trainer of ``task`` (imports its module, and torch); a ConfigError names the known tasks."""
    trainer: Trainer = importlib.import_module(registration(task).module).TRAINER
    return trainer
