"""Human annotators of classification tasks behind one interface (``annotator_api``), registered by name.

* ``simulated`` (embedded default): the frame's simulated ground truth with a configurable error
  rate. Only frames of the simulated world carry ground truth.
* ``review-page``: the local web page lists the pool's submitted tasks
  (``pool.tasks(status="submitted", backend="review-page")``) and posts each answer with
  :func:`record_answer`; ``collect`` has nothing to fetch.
* ``sagemaker-groundtruth`` and ``a2i``: SageMaker Ground Truth labeling jobs and Augmented AI
  human loops (``annotators_aws``).

Time and dollars per answer come from the cost model (``costs.task_cost``), the same for every
backend. An answer naming an unknown class fails the task with the reason; its frame goes back
to review.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from fleetloop_cloud.annotator_api import (
    Annotator,
    AnnotatorContext,
    AnnotatorError,
    Answer,
    ReviewPageAnnotator,
    TaskRequest,
    label_index,
    mistaken_class,
    pick_annotator,
)
from fleetloop_cloud.annotators_aws import A2IAnnotator, GroundTruthAnnotator
from fleetloop_cloud.config import CostModel
from fleetloop_cloud.costs import task_cost
from fleetloop_cloud.pool import Pool, Task


def record_answer(
    pool: Pool,
    cost_model: CostModel,
    task_id: int,
    label: int | str,
    annotator: str,
    labels: Sequence[str],
    suggestions_shown: bool = True,
) -> None:
    """Record one human answer with its cost (what the review page calls); AnnotatorError if the class is unknown."""
    task = pool.task(task_id)
    if isinstance(label, str):
        index = label_index(label, labels, f"task {task_id}")
    else:
        index = int(label)
        if not 0 <= index < len(labels):
            raise AnnotatorError(f"task {task_id}: class index {index} is not a known class (0..{len(labels) - 1})")
    seconds, dollars = task_cost(
        cost_model.human, task.suggestion, index, suggestions_shown, task.purpose, task.alternative
    )
    pool.answer_task(task_id, index, annotator, seconds, dollars)


# ------------------------------------------------------------------------------------ simulated
class SimulatedAnnotator:
    """Ground truth of the simulated world, wrong with probability ``error_rate`` (seeded per task)."""

    name = "simulated"
    shows_alternative = True  # it stands for a person on our review page (``task_cost``)

    def __init__(self, context: AnnotatorContext):
        self.pool = context.pool
        self.labels = list(context.labels)
        self.settings = context.config.annotators.simulated

    def submit(self, tasks: Sequence[TaskRequest]) -> list[Optional[str]]:
        return [None] * len(tasks)

    def collect(self, tasks: Sequence[Task]) -> list[Answer]:
        answers = []
        for task in tasks:
            truth = self.pool.frame(task.frame_id)["sim_label"]
            if truth is None:
                answers.append(
                    Answer(
                        task.id,
                        None,
                        self.name,
                        error=f"frame {task.frame_id} has no simulated ground truth; the simulated "
                        f"annotator only labels frames of the simulated world",
                    )
                )
                continue
            rng = np.random.default_rng([self.settings.seed, task.id])
            label = int(truth)
            if rng.random() < self.settings.error_rate:
                label = mistaken_class(rng, label, len(self.labels))
            answers.append(Answer(task.id, label, self.name))
        return answers


ANNOTATORS: dict[str, Callable[[AnnotatorContext], Annotator]] = {
    "simulated": SimulatedAnnotator,
    "review-page": ReviewPageAnnotator,
    "sagemaker-groundtruth": GroundTruthAnnotator,
    "a2i": A2IAnnotator,
}


def make_annotator(name: str, context: AnnotatorContext) -> Annotator:
    """Return annotator ``name``; ConfigError naming the known annotators if unknown."""
    return pick_annotator(ANNOTATORS, name, "config/cloud.yaml: review.annotator")(context)
