"""Labeling, auditing and confirming: the /label, /audit and /confirm pages, frames by id, their API under /api/."""

from __future__ import annotations

import re
from typing import Literal, Optional

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from fleetloop_core.store import StoreError

from fleetloop_cloud.review import answers, counters, items, leases, security, web
from fleetloop_cloud.review.errors import NotFound, ReviewError

router = APIRouter()
FRAME_ID = re.compile(r"^[0-9a-f]{64}$")


# ------------------------------------------------------------------------------------ request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnswerBody(_Body):
    """One answer from the labeling view."""

    task_id: int = Field(ge=1)
    action: Literal["label", "accept", "unusable"]
    label: Optional[int] = Field(default=None, ge=0)  # < the number of classes: checked on submit
    seconds: float = Field(ge=0, le=86400)


class TaskBody(_Body):
    """A task id (skip, undo one task)."""

    task_id: Optional[int] = Field(default=None, ge=1)


class GridAnswer(_Body):
    """One cell of an audit grid: the class index, or None for unusable."""

    task_id: int = Field(ge=1)
    label: Optional[int] = Field(default=None, ge=0)  # < the number of classes: checked on submit


class GridBody(_Body):
    """A submitted audit grid: every cell and the seconds the page took."""

    answers: list[GridAnswer] = Field(min_length=1, max_length=200)
    seconds: float = Field(ge=0, le=86400)


# ------------------------------------------------------------------------------------ pages and frames
@router.get("/label", response_class=HTMLResponse)
def label_page(request: Request):
    return web.page(request, "label.html", web.user(request))


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request):
    return web.page(request, "audit.html", web.user(request), grid_size=web.state(request).settings.grid_size)


@router.get("/confirm", response_class=HTMLResponse)
def confirm_page(request: Request):
    return web.page(request, "confirm.html", web.user(request), grid_size=web.state(request).settings.grid_size)


@router.get("/frame/{name}")
def frame(request: Request, name: str):
    web.user(request)
    frame_id, _, extension = name.partition(".")
    if not FRAME_ID.match(frame_id) or extension not in ("png", "jpg"):
        raise NotFound(f"frame {name!r}: frames are served by sha256 id only (/frame/<64 hex>.png)")
    pool = web.db(request).pool
    if not pool.has_frame(frame_id):
        raise NotFound(f"no frame {frame_id} in the pool")
    row = pool.frame(frame_id)
    try:
        data = web.state(request).frame_cache().get_bytes(frame_id, row["frame_key"])
    except StoreError as exc:
        return JSONResponse({"error": f"frame {frame_id}: store unavailable ({exc})"}, status_code=503)
    media = "image/jpeg" if row["frame_key"].endswith(".jpg") else "image/png"
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})


# ------------------------------------------------------------------------------------ labeling API
def _next(request: Request, session: security.Session, purposes) -> Optional[dict]:
    st = web.state(request)
    pool = web.db(request).pool
    granted = leases.claim(pool, session.annotator, session.key, purposes, 1, st.clock(), st.settings.lease_s)
    return web.describe(request, answers.review_task(pool, granted[0].task_id)) if granted else None


def _counters(request: Request) -> dict:
    st = web.state(request)
    return counters.counters(web.db(request), st.config, st.clock())


def _submit(request: Request, session: security.Session, batch: list[answers.Submission]) -> None:
    st = web.state(request)
    answers.submit(
        web.db(request).pool,
        st.cost_model.human,
        len(st.labels),
        session.annotator,
        session.key,
        batch,
        st.clock(),
        st.settings.max_answer_s,
    )


@router.post("/api/next")
def api_next(request: Request):
    session = web.writer(request)
    return {"item": _next(request, session, leases.LABEL_PURPOSES), "counters": _counters(request)}


@router.post("/api/answer")
def api_answer(request: Request, body: AnswerBody):
    session = web.writer(request)
    pool = web.db(request).pool
    task = answers.review_task(pool, body.task_id)
    if body.action == "accept":
        if not items.suggestion_shown(task, web.state(request).config):
            raise ReviewError(f"task {task.id} shows no suggestion to accept: pick a class")
        label = task.suggestion
    elif body.action == "label":
        if body.label is None:
            raise ReviewError("label: required for action 'label'")
        label = body.label
    else:
        label = None
    _submit(request, session, [answers.Submission(task.id, label, body.seconds)])
    done = web.describe(request, pool.task(task.id))
    return {"done": done, "item": _next(request, session, leases.LABEL_PURPOSES), "counters": _counters(request)}


@router.post("/api/skip")
def api_skip(request: Request, body: TaskBody):
    session = web.writer(request)
    if body.task_id is None:
        raise ReviewError("task_id: required")
    leases.skip(web.db(request).pool, session.key, body.task_id, web.state(request).clock())
    return {"item": _next(request, session, leases.LABEL_PURPOSES), "counters": _counters(request)}


@router.post("/api/undo")
def api_undo(request: Request, body: TaskBody):
    session = web.writer(request)
    st = web.state(request)
    pool = web.db(request).pool
    reopened = answers.undo(
        pool, session.annotator, session.key, st.clock(), st.settings.lease_s, body.task_id, leases.LABEL_PURPOSES
    )
    return {"reopened": [web.describe(request, pool.task(t)) for t in reopened], "counters": _counters(request)}


@router.get("/api/history")
def api_history(request: Request, limit: int = 50):
    session = web.user(request)
    if not 1 <= limit <= 500:
        raise ReviewError(f"limit: must be 1..500 (got {limit})")
    rows = answers.history(web.db(request), session.annotator, limit)
    pool = web.db(request).pool
    return {"history": [web.describe(request, pool.task(int(r["task_id"]))) for r in rows]}


@router.get("/api/counters")
def api_counters(request: Request):
    web.user(request)
    return _counters(request)


# ------------------------------------------------------------------------------------ grids
# Two grids share their API: the audit grid (audit tasks: auto-labels to confirm or correct) and the
# confirm grid (track representatives and review frames whose suggestion is shown, one suggested class
# to a page, the class most waiting tasks suggest). Each cell is one answer to its task; the page's
# measured seconds are shared over its cells.
_GRIDS = {"audit": (leases.GRID_PURPOSES, "an audit"), "confirm": (leases.CONFIRM_PURPOSES, "a track or review task")}


def _grid_batch(request: Request, grid: str) -> dict:
    session = web.writer(request)
    st = web.state(request)
    pool = web.db(request).pool
    purposes, _ = _GRIDS[grid]
    now, suggested = st.clock(), None
    if grid == "confirm":
        if not st.config.review.show_suggestions:
            raise ReviewError("review.show_suggestions is off: no suggestion to confirm, label the frames on /label")
        suggested = leases.largest_suggested_class(web.db(request), purposes, now)
    granted = leases.claim(
        pool,
        session.annotator,
        session.key,
        purposes,
        st.settings.grid_size,
        now,
        st.settings.lease_s,
        suggestion=suggested,
    )
    granted.sort(key=lambda lease: lease.task_id)
    items = [web.describe(request, answers.review_task(pool, g.task_id)) for g in granted]
    shown = {item["suggestion"]["name"] if item["suggestion"] else None for item in items}
    return {
        "items": items,
        # the page's one suggested class (a page of the session's own leases from before may mix classes)
        "class": shown.pop() if len(shown) == 1 else None,
        "counters": _counters(request),
    }


def _grid_submit(request: Request, body: GridBody, grid: str) -> dict:
    session = web.writer(request)
    purposes, noun = _GRIDS[grid]
    per_item = body.seconds / len(body.answers)
    batch = [answers.Submission(a.task_id, a.label, per_item) for a in body.answers]
    for a in body.answers:
        task = answers.review_task(web.db(request).pool, a.task_id)
        if task.purpose not in purposes:
            raise ReviewError(f"task {task.id} is a {task.purpose} task, not {noun}: answer it on its own page")
    _submit(request, session, batch)
    return {"submitted": [a.task_id for a in body.answers], "counters": _counters(request)}


def _grid_undo(request: Request, grid: str) -> dict:
    session = web.writer(request)
    st = web.state(request)
    reopened = answers.undo(
        web.db(request).pool,
        session.annotator,
        session.key,
        st.clock(),
        st.settings.lease_s,
        purposes=_GRIDS[grid][0],
    )
    return {"reopened": reopened, "counters": _counters(request)}


def _grid_routes(grid: str) -> None:
    """Add ``/api/<grid>/batch``, ``/submit`` and ``/undo`` for one grid."""

    @router.post(f"/api/{grid}/batch", name=f"api_{grid}_batch")
    def batch(request: Request):
        return _grid_batch(request, grid)

    @router.post(f"/api/{grid}/submit", name=f"api_{grid}_submit")
    def submit(request: Request, body: GridBody):
        return _grid_submit(request, body, grid)

    @router.post(f"/api/{grid}/undo", name=f"api_{grid}_undo")
    def undo(request: Request):
        return _grid_undo(request, grid)


for _grid in _GRIDS:
    _grid_routes(_grid)
