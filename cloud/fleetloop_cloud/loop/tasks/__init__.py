"""Cloud-side task parts: what the loop does differently for a classifier and a detector, by task name.

The models' manifest names the ``task``; :data:`CLOUD_TASKS` maps it to the part the loop uses
(like ``fleetloop_core.tasks`` on the robot). The steps are written once against
:class:`CloudTask`; a part supplies:

* the label store (``answers``: class labels in the pool, boxes in a box pool) and the teachers;
* the annotators (dispatch of open tasks, collection of answers with their cost);
* the review evidence: suggestions, routing (``review_phases``), active-learning inputs, the
  audit measure, tightening and withdrawal;
* the training channels and hyperparameters, the evaluation metric and gate;
* the summary sections that differ (labels, routing, audit targets, human costs, figures, models).

A third task is one module with such a class plus one line in :data:`CLOUD_TASKS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from fleetloop_core.errors import ConfigError

if TYPE_CHECKING:
    from fleetloop_core.contracts.manifest import Manifest

    from fleetloop_cloud.loop.core import CloudLoop
    from fleetloop_cloud.loop.summary import RoundFacts


class CloudTask(Protocol):
    """What a task supplies to the cloud loop (see the module docstring)."""

    name: str
    tiers_hint: str  # what models the task needs, for the error when they are not
    frame_labels: list[str]  # the labels robots' sidecars index into
    answers: Any  # the label store: tasks, labels, set_label, remove_label, unapplied, mark_applied
    rng_prefix: str  # of the review's random draws (kept per task: rounds repeat exactly)
    automatic_sources: tuple[str, ...]  # label sources the audit samples
    label_noun: str
    job_prefix: str
    review_phases: dict[str, Callable[["CloudLoop", int, dict], dict]]

    def close(self) -> None: ...

    def pool_key(self, name: str) -> str: ...

    def run_teachers(self, packages: dict[str, Path], frame_ids: Sequence[str]) -> dict: ...

    def annotator(self, round_number: int) -> Any: ...

    def dispatch(self, round_number: int, annotator: Any) -> None: ...

    def add_tasks(self, round_number: int, purpose: str, items: list[tuple[str, Any]]) -> list[int]: ...

    def suggestions(self, round_number: int, ids: Sequence[str]) -> list[Any]: ...

    def calibration_probe(self) -> int:
        """Return how many calibration frames people answer before the rest is suggested (0: all at once)."""
        ...

    def sampling_units(self, round_number: int, ids: Sequence[str]) -> list[str]: ...

    def label_value(self, label: Any) -> Any: ...

    def fingerprint_value(self, label: Any) -> Any: ...

    def review_order_inputs(self, round_number: int, rows: list, info: dict) -> tuple[Any, Any, list[Any]]: ...

    def second_opinions(self, round_number: int, done: list) -> int: ...

    def measure_audit(self, record: dict, tasks: list, done: list, standing: list[tuple]) -> bool: ...

    def audit_can_pass(self, standing: list[tuple], more: int) -> bool: ...

    def tighten(self, info: dict, record: dict, number: int) -> dict[str, float]: ...

    def below_floors(
        self, round_number: int, info: dict, population: list[str], floors: dict[str, float], number: int
    ) -> list[tuple[str, str]]: ...

    def write_channels(self, root: Path, rows: list, labels: dict, round_number: int) -> dict[str, Path]: ...

    def write_channel(self, root: Path, items: list[tuple]) -> Path: ...

    def hyperparameters(self) -> dict: ...

    def evaluate(self, candidates: dict[str, Path]) -> dict: ...

    def round_facts(self, round_number: int) -> "RoundFacts": ...

    def purpose_counts(self, task: Any) -> dict[str, int]: ...

    def summary_head(self) -> dict: ...

    def labels_section(self, facts: "RoundFacts", review: dict) -> dict: ...

    def routing_section(self, review: dict) -> dict: ...

    def audit_targets(self) -> dict: ...

    def human_costs(self, facts: "RoundFacts") -> dict: ...

    def figures(self, facts: "RoundFacts", human_seconds: float, human_dollars: float, compute: float) -> dict: ...

    def models_section(self, info: dict[str, dict]) -> dict: ...

    def summary_table(self, summary: Any) -> Any: ...


def _classification(loop: "CloudLoop", manifest: "Manifest") -> CloudTask:
    from fleetloop_cloud.loop.tasks.classification import ClassificationPart

    return ClassificationPart(loop, manifest)


def _detection(loop: "CloudLoop", manifest: "Manifest") -> CloudTask:
    from fleetloop_cloud.loop.tasks.detection import DetectionPart

    return DetectionPart(loop, manifest)


# task name -> (what its models are, how to open the part)
CLOUD_TASKS: dict[str, tuple[str, Callable[["CloudLoop", "Manifest"], CloudTask]]] = {
    "classification": ("classifier tiers (fleetloop models build)", _classification),
    "detection": ("detector tiers (fleetloop models build --profile detection-default)", _detection),
}


def cloud_task_named(name: str) -> tuple[str, Callable[["CloudLoop", "Manifest"], CloudTask]]:
    """Return (the models it needs, the opener) of task ``name``; ConfigError naming the known tasks if unknown."""
    if name not in CLOUD_TASKS:
        raise ConfigError(f"unknown task {name!r} for the cloud loop (known: {', '.join(sorted(CLOUD_TASKS))})")
    return CLOUD_TASKS[name]
