"""Tasks: what differs between a classifier and a detector on the robot, behind one registry.

A model package's manifest names its ``task``; :data:`TASKS` maps that name to a :class:`Task`
that knows how to load such a model and how to put two of them side by side. The model manager,
the restore-after-restart path and the loaders are written once against this protocol, so a
detector is installed, shadow-checked, swapped, watched and rolled back exactly as a classifier is.

What a task supplies:

* ``model_class``: the class that loads a verified, warm model (``TierModel`` or ``DetectorModel``);
* ``run(model, frame)``: one frame's answer as a :class:`ModelRun`: the task's own answer (a class
  index, a set of boxes), a frame-level score vector (finite/constant checks and confidence) and
  the latency;
* ``agree(current, candidate)``: whether two answers on the same frame agree (top-1 class for
  classification; every box matched at IoU >= 0.5 with the same class for detection);
* ``served_confidence(result, tier)``: the confidence of one tier in a cascade result, in the same
  terms as ``ModelRun.confidence`` (the watchdog compares the two);
* ``cascade(edge, escalation, config)``: the cascade that serves two such models.
* ``score_parts`` and ``weights_model``: the names of the per-frame scores the selector weighs
  (``result.scores``; classification: entropy, margin, least confidence, disagreement, flicker,
  novelty; detection: score band, box entropy mean and max, disagreement, count flicker, novelty) and
  the config model of their weights, with defaults (``selection.weights.<task>`` in
  ``config/selection.yaml``; the selector weighs a frame's parts by its result's ``task``).

Each task is a module of this package (``classification``, ``detection``). A third task
(segmentation, keypoints) is one more module with a class implementing these four methods (and
``config_key``, ``model_class``, ``score_parts``, ``weights_model``) plus one line,
``register_task(SegmentationTask())``; the manifest's ``task`` literal names it
(``fleetloop_core.contracts.manifest``), and its weights get one field in
``fleetloop_core.selection_config.ScoreWeights`` (a test keeps that model and the registry in step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from fleetloop_core.config import ConfigModel
from fleetloop_core.errors import ModelError
from fleetloop_core.inference import DEFAULT_PROVIDERS, TierModel
from fleetloop_core.contracts.manifest import MANIFEST_NAME, load_manifest


@dataclass(frozen=True, slots=True)
class ModelRun:
    """One model's answer on one frame.

    ``answer``: the task's own answer (classification: class index; detection: ``Detections``);
    ``scores``: the frame-level score vector (classification: probabilities (C,); detection: per
    class the best box score, then 1 - the best score (C + 1,)); ``latency_s``: seconds, batch 1.
    """

    answer: Any
    scores: np.ndarray
    latency_s: float

    @property
    def confidence(self) -> float:
        """Return how sure the model is of the frame's answer, in [0, 1] (NaN for non-finite outputs)."""
        return float(self.scores.max())


class Task(Protocol):
    """What a task supplies (see the module docstring)."""

    name: str
    config_key: str  # the settings block that configures this task's cascade (robot.yaml, ROS parameters)
    model_class: type[TierModel]  # loads, verifies and warms one model of this task (``.load(path, ...)``)
    score_parts: tuple[str, ...]  # what the selector weighs in ``result.scores``, each in [0, 1]
    weights_model: type[ConfigModel]  # the weights of those parts (``selection.weights.<name>``), defaults

    def run(self, model: TierModel, frame: np.ndarray) -> ModelRun: ...

    def agree(self, current: ModelRun, candidate: ModelRun) -> bool: ...

    def served_confidence(self, result: Any, tier: str) -> float | None: ...

    def cascade(self, edge: TierModel, escalation: TierModel | None = None, config: Any = None) -> Any: ...


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> None:
    """Make ``task`` available under ``task.name`` (the manifest's ``task``)."""
    TASKS[task.name] = task


from fleetloop_core.tasks.classification import ClassificationTask  # noqa: E402 (the plugins need the protocol above)
from fleetloop_core.tasks.detection import DetectionTask  # noqa: E402

register_task(ClassificationTask())
register_task(DetectionTask())


def task_named(name: str) -> Task:
    """Return the task called ``name``; ModelError naming the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ModelError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})") from None


def task_of(model: TierModel) -> Task:
    """Return the task of a loaded model (from its manifest)."""
    return task_named(model.manifest.task)


def model_task(path: str | Path) -> str:
    """Return the ``task`` of the model package at ``path`` (a directory or its manifest.json)."""
    path = Path(path)
    return load_manifest(path / MANIFEST_NAME if path.is_dir() else path).task


def load_model(
    path: str | Path, providers: Sequence[str] = DEFAULT_PROVIDERS, intra_op_threads: int = 1, warmup: int = 3
) -> TierModel:
    """Return the model at ``path`` loaded by its manifest's task (verified, warm)."""
    return task_named(model_task(path)).model_class.load(
        path, providers=providers, intra_op_threads=intra_op_threads, warmup=warmup
    )


def cascade_for(edge: TierModel, escalation: TierModel | None = None, config: Any = None) -> Any:
    """Return the cascade of the edge model's task serving ``edge`` (and ``escalation``)."""
    return task_of(edge).cascade(edge, escalation, config)


def load_cascade(
    models_dir: str | Path,
    edge_tier: str = "T4",
    escalation_tier: str | None = "T3",
    config: Any = None,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    intra_op_threads: int = 1,
) -> Any:
    """Return the cascade of ``models_dir/<edge_tier>`` (and ``<escalation_tier>``; None or "" for none) by their task.

    Both models are verified and warm; ``config`` is the task's cascade config (None: its defaults).
    """
    root = Path(models_dir)
    edge = load_model(root / edge_tier, providers, intra_op_threads)
    escalation = load_model(root / escalation_tier, providers, intra_op_threads) if escalation_tier else None
    return cascade_for(edge, escalation, config)


__all__ = [
    "ClassificationTask",
    "DetectionTask",
    "ModelRun",
    "TASKS",
    "Task",
    "cascade_for",
    "load_cascade",
    "load_model",
    "model_task",
    "register_task",
    "task_named",
    "task_of",
]
