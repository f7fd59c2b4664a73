"""Human box annotators behind one interface (``annotator_api``), registered by name (the detection
loop's ``annotators.py``).

A box task shows a frame and, when suggestions are shown, the fused auto-label; the answer is the
frame's full box list. Costs are box-level (``cost_model.yaml: boxes``, :func:`box_task_cost`):
the frame is looked at once, then every suggested box is verified, adjusted or deleted, every
missing box drawn and every wrong class changed, so a human who accepts a good suggestion pays a
few seconds while one who boxes a busy frame from scratch pays the full drawing time.

* ``simulated`` (embedded default): the frame's simulated ground-truth boxes (sidecar
  ``simulation.boxes``), each edge jittered by ``box_jitter_px`` (people are not pixel-exact), a
  box missed with ``miss_rate`` and a class mistaken with ``error_rate`` (seeded per task). Where
  the task shows a suggestion, a suggested box that covers an object at IoU >= ``accept_iou`` is
  left where it is (a person verifies a good box, they do not redraw it; its class is still the
  person's), so a good suggestion costs a verification and a poor one a redraw.
* ``review-page`` (``annotator_api.ReviewPageAnnotator``): tasks wait in the box tables; the review
  page's box view answers them (:func:`record_box_answer`) with the seconds it measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from fleetloop_core.errors import ConfigError
from fleetloop_core.uncertainty_detection import match_boxes

from fleetloop_cloud.annotator_api import (
    Annotator,
    AnnotatorError,
    Answer,
    ReviewPageAnnotator,
    mistaken_class,
    pick_annotator,
)
from fleetloop_cloud.box_consensus import BoxSet, Edits, edits as compute_edits
from fleetloop_cloud.box_pool import BoxPool, BoxTask
from fleetloop_cloud.config import BoxCosts, CostModel
from fleetloop_cloud.pool import Pool


class BoxAnswer(Answer):
    """A human's boxes for a task (``label``: the box list), or an error."""

    @property
    def boxes(self) -> Optional[BoxSet]:
        """Return the answered boxes (None with an error)."""
        return self.label


@dataclass
class BoxAnnotatorContext:
    """What a backend may use: the pools, class names, round and its settings."""

    pool: Pool
    boxes: BoxPool
    classes: Sequence[str]
    round: int
    error_rate: float = 0.01
    miss_rate: float = 0.01
    box_jitter_px: float = 1.0
    accept_iou: float = 0.7
    seed: int = 0


def box_task_cost(
    costs: BoxCosts, suggestion: BoxSet | None, answer: BoxSet, shown: bool
) -> tuple[float, float, Edits]:
    """Return (seconds, dollars, edits) of one box task under the cost model."""
    change = compute_edits(suggestion if shown else None, answer)
    seconds = (
        costs.seconds_per_frame
        + change.kept * costs.seconds_per_box_verify
        + change.adjusted * costs.seconds_per_box_adjust
        + change.drawn * costs.seconds_per_box_draw
        + change.deleted * costs.seconds_per_box_delete
        + change.reclassed * costs.seconds_per_reclass
    )
    return seconds, costs.task_price(seconds), change


def require_box_costs(cost_model: CostModel, source: str = "config/cost_model.yaml") -> BoxCosts:
    """Return the box-level costs; ConfigError if the cost model has none."""
    if cost_model.boxes is None:
        raise ConfigError(f"{source}: boxes: missing (the detection loop prices human box work from it)")
    return cost_model.boxes


def record_box_answer(
    boxes_pool: BoxPool,
    costs: BoxCosts,
    task_id: int,
    answer: BoxSet,
    annotator: str,
    classes: Sequence[str],
    seconds: float | None = None,
) -> BoxTask:
    """Record a human's boxes for a task with edits and cost (what the review page calls); AnnotatorError if invalid."""
    task = boxes_pool.task(task_id)
    bad = [int(c) for c in answer.classes if not 0 <= int(c) < len(classes)]
    if bad:
        raise AnnotatorError(f"box task {task_id}: class index {bad[0]} is not a known class (0..{len(classes) - 1})")
    if len(answer) and (
        np.any(answer.boxes[:, 2] <= answer.boxes[:, 0]) or np.any(answer.boxes[:, 3] <= answer.boxes[:, 1])
    ):
        raise AnnotatorError(f"box task {task_id}: every box needs x1 > x0 and y1 > y0")
    modelled, dollars, change = box_task_cost(costs, task.suggestion, answer, task.shown)
    spent = modelled if seconds is None else float(seconds)
    if seconds is not None:
        dollars = costs.task_price(spent)
    boxes_pool.answer_task(
        task_id, answer, {**change.to_dict(), "modelled_seconds": round(modelled, 3)}, annotator, spent, dollars
    )
    return boxes_pool.task(task_id)


class SimulatedBoxAnnotator:
    """Simulated ground-truth boxes, jittered, with misses and class errors (seeded per task)."""

    name = "simulated"

    def __init__(self, context: BoxAnnotatorContext):
        self.context = context

    def submit(self, tasks: Sequence[BoxTask]) -> list[Optional[str]]:
        return [None] * len(tasks)

    def collect(self, tasks: Sequence[BoxTask]) -> list[Answer]:
        c = self.context
        answers = []
        for task in tasks:
            row = c.pool.frame(task.frame_id)
            simulation = json.loads(row["sidecar"]).get("simulation") or {}
            truth = simulation.get("boxes")
            if truth is None:
                answers.append(
                    BoxAnswer(
                        task.id,
                        None,
                        self.name,
                        error=f"frame {task.frame_id} has no simulated "
                        f"boxes; the simulated annotator only boxes frames of the detection world",
                    )
                )
                continue
            rng = np.random.default_rng([c.seed, task.id, 7])
            accepted = self.accepted_boxes(task, truth)
            rows = []
            for k, (x0, y0, x1, y1, cls, _track) in enumerate(truth):
                if rng.random() < c.miss_rate:
                    continue
                jitter = rng.normal(0.0, c.box_jitter_px, size=4) if c.box_jitter_px > 0 else np.zeros(4)
                box = accepted[k] if k in accepted else np.asarray([x0, y0, x1, y1], float) + jitter
                box[0::2] = np.clip(box[0::2], 0, row["width"])
                box[1::2] = np.clip(box[1::2], 0, row["height"])
                if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                    continue
                label = int(cls)
                if rng.random() < c.error_rate:
                    label = mistaken_class(rng, label, len(c.classes))
                rows.append([*box.tolist(), label])
            answers.append(BoxAnswer(task.id, BoxSet.from_rows(rows, with_scores=False), self.name))
        return answers

    def accepted_boxes(self, task: BoxTask, truth: list) -> dict[int, np.ndarray]:
        """Return {object index: the shown suggested box a person leaves as it is (IoU >= accept_iou)}."""
        if not task.shown or task.suggestion is None or not len(task.suggestion) or not truth:
            return {}
        objects = np.asarray([row[:4] for row in truth], np.float32)
        matching = match_boxes(task.suggestion.boxes, objects, self.context.accept_iou)
        return {int(j): task.suggestion.boxes[i].astype(float) for i, j in matching.pairs}


BOX_ANNOTATORS: dict[str, Callable[[BoxAnnotatorContext], Annotator]] = {
    "simulated": SimulatedBoxAnnotator,
    "review-page": ReviewPageAnnotator,
}


def make_box_annotator(name: str, context: BoxAnnotatorContext, source: str = "config/cloud.yaml") -> Annotator:
    """Return box annotator ``name``; ConfigError naming the known ones if unknown."""
    return pick_annotator(BOX_ANNOTATORS, name, f"{source}: detection.annotator", "box annotator")(context)
