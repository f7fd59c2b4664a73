"""What every human annotator backend shares, whatever the task: the interface, the answer, the
review-page backend and the registry lookup.

An annotator receives tasks with :meth:`Annotator.submit` and hands answers back with
:meth:`Annotator.collect`; answers may take hours, so the review step stops and resumes where it
was (the pool holds every task's state). An answer carries the task's label payload: a class index
(classification, ``annotators``) or a box list (detection, ``box_annotators``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol, Sequence, TypeVar

import numpy as np

from fleetloop_core.errors import ConfigError, FleetLoopError
from fleetloop_core.store import ObjectStore

from fleetloop_cloud.config import CloudConfig
from fleetloop_cloud.pool import Pool

Factory = TypeVar("Factory")


class AnnotatorError(FleetLoopError):
    """An annotator backend refused or failed (message names the backend, job or task and why)."""


@dataclass(frozen=True)
class TaskRequest:
    """What a human is asked: the frame (store key and URL) and the suggestion, if shown."""

    task_id: int
    frame_id: str
    frame_key: str
    frame_url: str
    suggestion: Optional[int]
    purpose: str


@dataclass(frozen=True)
class Answer:
    """A human's answer to a task: the label (class index or box list), or an error (unknown class, failed job)."""

    task_id: int
    label: Any  # None with an error
    annotator: str
    error: Optional[str] = None
    seconds: Optional[float] = None  # measured by the backend (review page); None: the cost model's


class Annotator(Protocol):
    """What every annotator backend offers."""

    name: str
    shows_alternative: bool  # whether people see the class beside the suggestion (it prices taking it)

    def submit(self, tasks: Sequence[Any]) -> list[Optional[str]]:
        """Send tasks to humans; return one external id (job / loop name) or None per task."""
        ...

    def collect(self, tasks: Sequence[Any]) -> list[Answer]:
        """Return the answers available now for submitted ``tasks`` (others stay pending)."""
        ...


@dataclass
class AnnotatorContext:
    """What a backend may use: the pool, the store, the config, the class names, the round."""

    pool: Pool
    store: ObjectStore
    config: CloudConfig
    labels: Sequence[str]
    round: int
    client: object = None  # an injected boto3 client (tests: botocore Stubber)


class ReviewPageAnnotator:
    """Tasks wait in the pool for the local review page, which records each answer itself."""

    name = "review-page"
    shows_alternative = True  # the class beside the suggestion, one key away (``review.items``)

    def __init__(self, context: object):
        del context  # the page reads and answers the pool's tasks itself

    def submit(self, tasks: Sequence[Any]) -> list[Optional[str]]:
        return [None] * len(tasks)

    def collect(self, tasks: Sequence[Any]) -> list[Answer]:
        return []  # the page writes answers into the pool itself


def label_index(name: str, labels: Sequence[str], where: str) -> int:
    """Return the index of class ``name``; AnnotatorError naming the known classes if unknown."""
    if name not in labels:
        raise AnnotatorError(f"{where}: unknown class {name!r} (known: {', '.join(labels)})")
    return labels.index(name)


def mistaken_class(rng: np.random.Generator, label: int, classes: int) -> int:
    """Return a class other than ``label``, drawn uniformly (a simulated human's mistake)."""
    others = [c for c in range(classes) if c != label]
    return int(others[rng.integers(len(others))])


def pick_annotator(registry: Mapping[str, Factory], name: str, key: str, what: str = "annotator") -> Factory:
    """Return the factory of annotator ``name``; ConfigError naming ``key`` and the known ones if unknown."""
    if name not in registry:
        raise ConfigError(f"{key}: unknown {what} {name!r} (known: {', '.join(registry)})")
    return registry[name]
