"""The review page's box view (``/boxes``): humans check the detection loop's box tasks.

One frame at a time, drawn on a canvas with the fused T1/T2 suggestion: ``Enter`` accepts the
suggested boxes as they are; dragging a box moves it, dragging a handle resizes it; dragging on
empty image draws a missing box; ``Delete`` removes the selected box; number keys change the
selected box's class (and the class new boxes get); ``Tab`` selects the next box; ``S`` skips. The
answer is the frame's full box list with the seconds the page measured; the cost model prices it
per box action (``fleetloop_cloud.box_annotators.record_box_answer``) and the loop's next review
step collects it.

Tasks are leased to one session at a time (``BoxPool.lease``); an answer to a task whose lease
expired or that someone else holds is refused (409) and the page moves on.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Literal, Optional

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.manifest import load_manifest

from fleetloop_cloud.box_annotators import record_box_answer
from fleetloop_cloud.box_consensus import BoxSet
from fleetloop_cloud.box_pool import BoxPool, BoxTask
from fleetloop_cloud.review.errors import Conflict, NotFound, ReviewError

BOX_PURPOSES = ("calibration", "review", "audit")
BACKEND = "review-page"


class BoxAnswerBody(BaseModel):
    """One answer from the box view: the frame's boxes (``accept``: the suggestion as it is)."""

    model_config = ConfigDict(extra="forbid")

    task_id: int = Field(ge=1)
    action: Literal["accept", "submit"]
    boxes: list[list[float]] = Field(default_factory=list, max_length=200)  # [x0, y0, x1, y1, class] in pixels
    seconds: float = Field(ge=0, le=86400)


class BoxSkipBody(BaseModel):
    """A task to give back."""

    model_config = ConfigDict(extra="forbid")

    task_id: int = Field(ge=1)


def detection_classes(models_dir: str | Path) -> Optional[list[str]]:
    """Return the class names of the detection loop's T2 package, or None when the models are not detectors."""
    try:
        manifest = load_manifest(Path(models_dir) / "T2")
    except FleetLoopError:
        return None
    return list(manifest.labels) if manifest.task == "detection" else None


def describe(task: BoxTask, row, classes: list[str]) -> dict:
    """Return what the page needs to show one box task."""
    suggestion = task.suggestion if task.shown else None
    return {
        "task_id": task.id,
        "frame_id": task.frame_id,
        "purpose": task.purpose,
        "frame_url": f"/frame/{task.frame_id}.png",
        "width": row["width"],
        "height": row["height"],
        "robot_id": row["robot_id"],
        "site": row["site"],
        "classes": classes,
        "suggestion": suggestion.rows(with_scores=False) if suggestion is not None else None,
        "status": task.status,
        "answer": task.answer.rows(with_scores=False) if task.answer is not None else None,
        "edits": task.edits,
        "seconds": task.seconds,
    }


def install(app, state, templates, user: Callable, writer: Callable, page: Callable, db: Callable) -> None:
    """Add the box view's page and API to the review app (``state``: the app's state, for paths and settings)."""
    local = threading.local()

    def boxes() -> BoxPool:
        pool = getattr(local, "boxes", None)
        if pool is None:
            pool = local.boxes = BoxPool(state.pool_path)
        return pool

    def classes() -> list[str]:
        found = detection_classes(state.config.models)
        if found is None:
            raise ReviewError(
                f"{state.config.models}: the models are not detectors; the box view serves the "
                f"detection loop (fleetloop models build --profile detection-default)"
            )
        return found

    def costs():
        if state.cost_model.boxes is None:
            raise ReviewError("config/cost_model.yaml: boxes: missing (box answers are priced from it)")
        return state.cost_model.boxes

    def item(task: Optional[BoxTask], names: list[str]) -> Optional[dict]:
        if task is None:
            return None
        return describe(task, db().pool.frame(task.frame_id), names)

    def counts() -> dict:
        waiting = boxes().tasks(status=("open", "submitted"))
        return {"waiting": len(waiting), "by_purpose": {p: sum(t.purpose == p for t in waiting) for p in BOX_PURPOSES}}

    def next_item(session) -> Optional[dict]:
        names = classes()
        return item(boxes().lease(session.key, BOX_PURPOSES, state.clock(), state.settings.lease_s), names)

    @app.get("/boxes")
    def boxes_page(request: Request):
        session = user(request)
        names = detection_classes(state.config.models)
        return page(request, "boxes.html", session, box_classes=names or [], detectors=names is not None)

    @app.post("/api/boxes/next")
    def api_boxes_next(request: Request):
        session = writer(request)
        return {"item": next_item(session), "counts": counts()}

    @app.post("/api/boxes/answer")
    def api_boxes_answer(request: Request, body: BoxAnswerBody):
        session = writer(request)
        names = classes()
        pool = boxes()
        try:
            task = pool.task(body.task_id)
        except FleetLoopError as exc:
            raise NotFound(str(exc)) from None
        if task.status not in ("open", "submitted"):
            raise Conflict(f"box task {task.id} is already {task.status}")
        if not pool.holds(session.key, task.id, state.clock()):
            raise Conflict(f"box task {task.id}: your lease expired or another annotator holds it; take the next frame")
        if body.action == "accept":
            if task.suggestion is None or not task.shown:
                raise ReviewError(f"box task {task.id} shows no suggestion to accept: draw the boxes")
            answer = task.suggestion
        else:
            if any(len(row) != 5 for row in body.boxes):
                raise ReviewError("boxes: each box is [x0, y0, x1, y1, class]")
            row = db().pool.frame(task.frame_id)
            clipped = [
                [
                    min(max(x0, 0.0), row["width"]),
                    min(max(y0, 0.0), row["height"]),
                    min(max(x1, 0.0), row["width"]),
                    min(max(y1, 0.0), row["height"]),
                    cls,
                ]
                for x0, y0, x1, y1, cls in body.boxes
            ]
            if any(float(c) != int(c) for *_, c in clipped):
                raise ReviewError("boxes: a class must be a whole number")
            answer = BoxSet.from_rows(clipped, with_scores=False)
        seconds = min(body.seconds, state.settings.max_answer_s)
        try:
            done = record_box_answer(pool, costs(), task.id, answer, session.annotator, names, seconds=seconds)
        except FleetLoopError as exc:
            raise ReviewError(str(exc)) from None
        return {"done": item(done, names), "item": next_item(session), "counts": counts()}

    @app.post("/api/boxes/skip")
    def api_boxes_skip(request: Request, body: BoxSkipBody):
        session = writer(request)
        boxes().release(session.key, body.task_id, skipped=True)
        return {"item": next_item(session), "counts": counts()}

    del templates  # the page renders through ``page`` (base template, session, CSRF)
