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

from pathlib import Path
from typing import Literal, Optional

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.contracts.manifest import load_manifest

from fleetloop_cloud.box_annotators import record_box_answer
from fleetloop_cloud.box_consensus import BoxSet
from fleetloop_cloud.box_pool import BoxPool, BoxTask
from fleetloop_cloud.review import web
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


router = APIRouter()


def _boxes(request: Request) -> BoxPool:
    st = web.state(request)
    pool = getattr(st.boxes, "pool", None)
    if pool is None:
        pool = st.boxes.pool = BoxPool(st.pool_path)  # one connection per thread
    return pool


def _classes(request: Request) -> list[str]:
    models = web.state(request).config.models
    found = detection_classes(models)
    if found is None:
        raise ReviewError(
            f"{models}: the models are not detectors; the box view serves the "
            f"detection loop (fleetloop models build --profile detection-default)"
        )
    return found


def _costs(request: Request):
    st = web.state(request)
    if st.cost_model.boxes is None:
        raise ReviewError("config/cost_model.yaml: boxes: missing (box answers are priced from it)")
    return st.cost_model.boxes


def _item(request: Request, task: Optional[BoxTask], names: list[str]) -> Optional[dict]:
    if task is None:
        return None
    return describe(task, web.db(request).pool.frame(task.frame_id), names)


def _counts(request: Request) -> dict:
    waiting = _boxes(request).tasks(status=("open", "submitted"))
    return {"waiting": len(waiting), "by_purpose": {p: sum(t.purpose == p for t in waiting) for p in BOX_PURPOSES}}


def _next_item(request: Request, session) -> Optional[dict]:
    st = web.state(request)
    names = _classes(request)
    return _item(request, _boxes(request).lease(session.key, BOX_PURPOSES, st.clock(), st.settings.lease_s), names)


@router.get("/boxes")
def boxes_page(request: Request):
    session = web.user(request)
    names = detection_classes(web.state(request).config.models)
    return web.page(request, "boxes.html", session, box_classes=names or [], detectors=names is not None)


@router.post("/api/boxes/next")
def api_boxes_next(request: Request):
    session = web.writer(request)
    return {"item": _next_item(request, session), "counts": _counts(request)}


@router.post("/api/boxes/answer")
def api_boxes_answer(request: Request, body: BoxAnswerBody):
    session = web.writer(request)
    st = web.state(request)
    names = _classes(request)
    pool = _boxes(request)
    try:
        task = pool.task(body.task_id)
    except FleetLoopError as exc:
        raise NotFound(str(exc)) from None
    if task.status not in ("open", "submitted"):
        raise Conflict(f"box task {task.id} is already {task.status}")
    if not pool.holds(session.key, task.id, st.clock()):
        raise Conflict(f"box task {task.id}: your lease expired or another annotator holds it; take the next frame")
    if body.action == "accept":
        if task.suggestion is None or not task.shown:
            raise ReviewError(f"box task {task.id} shows no suggestion to accept: draw the boxes")
        answer = task.suggestion
    else:
        if any(len(row) != 5 for row in body.boxes):
            raise ReviewError("boxes: each box is [x0, y0, x1, y1, class]")
        row = web.db(request).pool.frame(task.frame_id)
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
    seconds = min(body.seconds, st.settings.max_answer_s)
    try:
        done = record_box_answer(pool, _costs(request), task.id, answer, session.annotator, names, seconds=seconds)
    except FleetLoopError as exc:
        raise ReviewError(str(exc)) from None
    return {"done": _item(request, done, names), "item": _next_item(request, session), "counts": _counts(request)}


@router.post("/api/boxes/skip")
def api_boxes_skip(request: Request, body: BoxSkipBody):
    session = web.writer(request)
    _boxes(request).release(session.key, body.task_id, skipped=True)
    return {"item": _next_item(request, session), "counts": _counts(request)}
