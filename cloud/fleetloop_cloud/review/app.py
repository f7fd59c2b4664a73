"""The review page as a FastAPI app: ``create_app(pool_path, config, token=None)``.

Server-rendered pages (Jinja2) with one small vanilla script (static/review.js); no front-end
build, no script or style from anywhere else (the Content-Security-Policy says so). Every GET
reads; every state change is a POST with the session's CSRF token from this very origin.

Pages: ``/label`` (one frame at a time), ``/audit`` (grid of auto-labels to confirm or correct),
``/tuning/routing`` (risk-coverage, target accuracy -> threshold, save), ``/tuning/robots``
(replay sweeps, per-robot uploads). JSON under ``/api/``; images by frame id under ``/frame/``;
plots under ``/plots/``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from fleetloop_core.dataset import LABELS
from fleetloop_core.errors import FleetLoopError
from fleetloop_core.store import StoreError, open_store

from fleetloop_cloud.config import CloudConfig, CostModel, load_cost_model
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.review import answers, counters, items, leases, overrides, plots, security, tuning
from fleetloop_cloud.review.db import PerThread, ReviewDB, prepare
from fleetloop_cloud.review.errors import Forbidden, NotFound, ReviewError, Unauthorized
from fleetloop_cloud.review.settings import ReviewPageConfig

log = logging.getLogger("fleetloop_cloud.review")

HERE = Path(__file__).resolve().parent
FRAME_ID = re.compile(r"^[0-9a-f]{64}$")
PUBLIC_PATHS = ("/login", "/healthz", "/static/")


# ------------------------------------------------------------------------------------ request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnswerBody(_Body):
    """One answer from the labeling view."""

    task_id: int = Field(ge=1)
    action: Literal["label", "accept", "unusable"]
    label: Optional[int] = Field(default=None, ge=0, le=len(LABELS) - 1)
    seconds: float = Field(ge=0, le=86400)


class TaskBody(_Body):
    """A task id (skip, undo one task)."""

    task_id: Optional[int] = Field(default=None, ge=1)


class GridAnswer(_Body):
    """One cell of an audit grid: the class index, or None for unusable."""

    task_id: int = Field(ge=1)
    label: Optional[int] = Field(default=None, ge=0, le=len(LABELS) - 1)


class GridBody(_Body):
    """A submitted audit grid: every cell and the seconds the page took."""

    answers: list[GridAnswer] = Field(min_length=1, max_length=200)
    seconds: float = Field(ge=0, le=86400)


# ------------------------------------------------------------------------------------ app state
@dataclass
class _Cached:
    """A value recomputed at most every ``ttl_s`` seconds."""

    ttl_s: float
    value: object = None
    stamp: float = -1e18
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, compute: Callable[[], object], now: float):
        with self.lock:
            if now - self.stamp > self.ttl_s:
                self.value, self.stamp = compute(), now
            return self.value


@dataclass
class _State:
    pool_path: Path
    config: CloudConfig
    settings: ReviewPageConfig
    cost_model: CostModel
    token: Optional[str]
    overrides_path: Path
    uploads: Path
    dbs: PerThread
    clock: Callable[[], float]
    teachers: _Cached = field(default_factory=lambda: _Cached(10.0))
    routing: _Cached = field(default_factory=lambda: _Cached(10.0))
    store_bytes: _Cached = field(default_factory=lambda: _Cached(60.0))
    _cache: Optional[FrameCache] = None

    def frame_cache(self) -> FrameCache:
        if self._cache is None:
            try:
                store = open_store(self.config.store)
            except StoreError as exc:
                log.warning("store %s unavailable for frames not cached locally: %s", self.config.store, exc)
                store = None
            self._cache = FrameCache(self.config.work_path / "frames", store)
        return self._cache


def create_app(
    pool_path: str | Path,
    config: CloudConfig,
    token: Optional[str] = None,
    *,
    settings: ReviewPageConfig | None = None,
    cost_model: CostModel | None = None,
    config_path: str | Path | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Return the review page over the pool at ``pool_path``; with ``token`` every request must show it once.

    ``config`` is the cloud loop's config (suggestions, routing, audit, store); ``settings`` the
    page's own (config/review_page.yaml); the routing view saves into the local override of
    ``config_path`` (default config/cloud.yaml -> config/cloud.local.yaml).
    """
    settings = settings or ReviewPageConfig()
    prepare(pool_path)
    state = _State(
        pool_path=Path(pool_path),
        config=config,
        settings=settings,
        cost_model=cost_model or load_cost_model(config.cost_model),
        token=token,
        overrides_path=overrides.local_path(config_path),
        uploads=config.work_path / "review" / "sweeps",
        dbs=PerThread(pool_path),
        clock=clock,
    )
    state.store_bytes.ttl_s = settings.store_stats_ttl_s
    app = FastAPI(title="FleetLoop review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = state
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(labels=LABELS, keys=items.KEYS)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -------------------------------------------------------------------------------- plumbing
    def db() -> ReviewDB:
        return state.dbs.get()

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/plots/", "/frame/"))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            security.check_host(request.headers.get("host"), token_required=state.token is not None)
        except Forbidden as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(ReviewError)
    async def review_error(request: Request, exc: ReviewError):
        if isinstance(exc, Unauthorized) and not wants_json(request) and request.method == "GET":
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        if wants_json(request) or request.method != "GET":
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return HTMLResponse(
            f"<!doctype html><title>{exc.status}</title><p>{_escape(str(exc))}</p>", status_code=exc.status
        )

    @app.exception_handler(FleetLoopError)
    async def loop_error(request: Request, exc: FleetLoopError):
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if p != "body")
            problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    def session_of(request: Request) -> Optional[security.Session]:
        return security.load_session(db().query, request.cookies.get(security.SESSION_COOKIE), state.clock())

    def user(request: Request) -> security.Session:
        session = session_of(request)
        if session is None or not session.authenticated or not session.annotator:
            raise security_error(state.token)
        return session

    def writer(request: Request, csrf: Optional[str] = None) -> security.Session:
        session = user(request)
        security.check_same_origin(request.headers)
        security.check_csrf(session, csrf if csrf is not None else request.headers.get("x-csrf-token"))
        return session

    def teachers() -> items.Teachers:
        return state.teachers.get(lambda: items.teachers(db().pool, state.config), state.clock())

    def describe(task) -> dict:
        return items.describe(db().pool, state.config, LABELS, task, teachers())

    def page(request: Request, name: str, session: security.Session, **context) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            name,
            {"session": session, "active": name.split(".")[0], "token_required": state.token is not None, **context},
        )

    # -------------------------------------------------------------------------------- sign-in
    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/label", token: Optional[str] = None, error: str = ""):
        session = session_of(request)
        fresh = session is None
        if fresh:
            session = security.new_session(
                db().pool, state.clock(), state.settings.session_hours, authenticated=state.token is None
            )
        if token is not None and state.token is not None:
            # a printed link carries the token once; the session remembers it, the URL drops it
            if security.token_matches(state.token, token):
                session = security.authenticate(db().pool, session)
                target = "/login?" + (f"next={quote(next)}" if next else "")
                response = RedirectResponse(target, status_code=303)
            else:
                response = templates.TemplateResponse(
                    request,
                    "login.html",
                    {
                        "session": session,
                        "next": _safe_next(next),
                        "token_required": True,
                        "error": "wrong token",
                        "active": "login",
                    },
                    status_code=401,
                )
        else:
            status = 401 if state.token is not None and not session.authenticated else 200
            response = templates.TemplateResponse(
                request,
                "login.html",
                {
                    "session": session,
                    "next": _safe_next(next),
                    "token_required": state.token is not None,
                    "error": error,
                    "active": "login",
                },
                status_code=status,
            )
        if fresh:
            response.set_cookie(
                security.SESSION_COOKIE,
                session.cookie,
                httponly=True,
                samesite="strict",
                max_age=int(state.settings.session_hours * 3600),
                path="/",
            )
        return response

    @app.post("/login")
    def login(
        request: Request,
        annotator: str = Form(...),
        csrf: str = Form(...),
        token: str = Form(""),
        next: str = Form("/label"),
    ):
        session = session_of(request)
        if session is None:
            raise Forbidden("no session: load the sign-in page first (cookies must be enabled)")
        security.check_same_origin(request.headers)
        security.check_csrf(session, csrf)
        authenticated = session.authenticated or state.token is None or security.token_matches(state.token, token)
        try:
            if not authenticated:
                raise Unauthorized("wrong token")
            security.sign_in(db().pool, session, annotator.strip(), True)
        except ReviewError as exc:
            return templates.TemplateResponse(
                request,
                "login.html",
                {
                    "session": session,
                    "next": _safe_next(next),
                    "token_required": state.token is not None,
                    "error": str(exc),
                    "active": "login",
                },
                status_code=exc.status,
            )
        return RedirectResponse(_safe_next(next), status_code=303)

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form(...)):
        session = writer(request, csrf)
        leases.release_session(db().pool, session.key)
        security.end_session(db().pool, session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(security.SESSION_COOKIE, path="/")
        return response

    # -------------------------------------------------------------------------------- pages
    @app.get("/")
    def root(request: Request):
        user(request)
        return RedirectResponse("/label", status_code=303)

    @app.get("/label", response_class=HTMLResponse)
    def label_page(request: Request):
        return page(request, "label.html", user(request))

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request):
        return page(request, "audit.html", user(request), grid_size=state.settings.grid_size)

    @app.get("/tuning/routing", response_class=HTMLResponse)
    def routing_page(request: Request, target: Optional[str] = None, saved: int = 0):
        session = user(request)
        value = tuning.parse_target(target, state.config.routing.target_accuracy)
        choice, sample, loop = _routing(value)
        saved_target = overrides.read_overrides(state.overrides_path).get("routing", {}).get("target_accuracy")
        return page(
            request,
            "routing.html",
            session,
            target=value,
            choice=choice.to_dict(),
            sample=sample,
            loop=loop,
            teachers=teachers(),
            saved=bool(saved),
            saved_target=saved_target,
            overrides_path=_shown_path(state.overrides_path),
            config_target=state.config.routing.target_accuracy,
            min_validation=state.config.routing.min_validation,
            presets=(0.9, 0.95, 0.97, 0.98, 0.99, 0.995),
        )

    @app.post("/tuning/routing")
    def routing_save(request: Request, target: str = Form(...), csrf: str = Form(...)):
        session = writer(request, csrf)
        value = tuning.parse_target(target, state.config.routing.target_accuracy)
        choice, _, _ = _routing(value)
        implied = {
            "threshold": choice.threshold.to_dict()["value"],
            "validation coverage": round(choice.validation_coverage, 4),
            "pool auto-accept fraction": None if choice.pool_fraction is None else round(choice.pool_fraction, 4),
        }
        overrides.save_target_accuracy(state.overrides_path, state.config, value, session.annotator, implied)
        log.info("%s saved routing.target_accuracy=%s to %s", session.annotator, value, state.overrides_path)
        return RedirectResponse(f"/tuning/routing?target={value}&saved=1", status_code=303)

    def _routing_data():
        # the sample and the pool's confidences do not depend on the target: computed once per ttl
        pool = db().pool
        state_teachers = teachers()
        sample = tuning.routing_sample(pool, state_teachers)
        confidence, agree = tuning.pool_confidences(pool, state_teachers)
        loop = None
        if state_teachers.round is not None:
            _, info = pool.step(state_teachers.round, "review")
            loop = info.get("threshold")
        return sample, confidence, agree, float(pool.get("threshold_floor", 0.0)), loop

    def _routing(target: float):
        sample, confidence, agree, floor, loop = state.routing.get(_routing_data, state.clock())
        choice = tuning.choose(sample, state.config, target, floor, confidence, agree)
        return (
            choice,
            {
                "frames": len(sample.frame_ids),
                "agree": int(sample.agree.sum()),
                "accuracy": round(float(sample.correct.mean()), 4) if len(sample.correct) else None,
            },
            loop,
        )

    @app.get("/plots/risk_coverage.png")
    def risk_coverage_png(request: Request, target: Optional[str] = None):
        user(request)
        value = tuning.parse_target(target, state.config.routing.target_accuracy)
        choice, _, loop = _routing(value)
        sample = state.routing.get(_routing_data, state.clock())[0]
        curve = tuning.risk_coverage(sample.confidence, sample.correct, sample.agree, state.config.routing.bound_z)
        loop_value = (loop or {}).get("value")
        return Response(
            plots.risk_coverage_png(curve, choice, loop_value, state.config.routing.min_validation),
            media_type="image/png",
            headers={"Cache-Control": "no-store"},
        )

    def _sweeps() -> list[tuning.SweepFile]:
        return tuning.find_sweeps([*state.settings.replay_dirs, state.uploads])

    def _store_bytes():
        return state.store_bytes.get(
            lambda: (
                tuning.safe_store_bytes(state.frame_cache().store, state.config.ingest.prefix)
                if state.frame_cache().store is not None
                else (None, "no store configured")
            ),
            state.clock(),
        )

    @app.get("/tuning/robots", response_class=HTMLResponse)
    def robots_page(request: Request, sweep: Optional[str] = None):
        session = user(request)
        files = _sweeps()
        chosen, parsed, problem = None, None, None
        if sweep is not None and not re.fullmatch(r"[0-9a-f]{12}", sweep):
            raise ReviewError(f"sweep: expected a 12-character id (got {sweep!r})")
        if files:
            try:
                chosen, parsed = tuning.read_sweep(files, sweep or files[0].id)
            except NotFound:
                raise
            except ReviewError as exc:
                problem = str(exc)
        store_bytes, store_problem = _store_bytes()
        stats = tuning.robot_stats(db().pool, store_bytes)
        return page(
            request,
            "robots.html",
            session,
            files=files,
            chosen=chosen,
            sweep=parsed,
            problem=problem,
            stats=stats,
            store_problem=store_problem,
            replay_dirs=state.settings.replay_dirs,
        )

    @app.post("/tuning/robots/upload")
    async def robots_upload(request: Request, csrf: str = Form(...), file: UploadFile = File(...)):
        writer(request, csrf)
        data = await file.read(state.settings.max_upload_bytes + 1)
        entry = tuning.store_upload(state.uploads, data, state.settings.max_upload_bytes)
        return RedirectResponse(f"/tuning/robots?sweep={entry.id}", status_code=303)

    @app.get("/plots/sweep/{sweep}.png")
    def sweep_png(request: Request, sweep: str):
        user(request)
        if not re.fullmatch(r"[0-9a-f]{12}", sweep):
            raise NotFound(f"no replay sweep {sweep!r}")
        _, parsed = tuning.read_sweep(_sweeps(), sweep)
        return Response(plots.sweep_png(parsed), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/plots/robots.png")
    def robots_png(request: Request):
        user(request)
        store_bytes, _ = _store_bytes()
        return Response(
            plots.robots_png(tuning.robot_stats(db().pool, store_bytes)),
            media_type="image/png",
            headers={"Cache-Control": "no-store"},
        )

    # -------------------------------------------------------------------------------- frames
    @app.get("/frame/{name}")
    def frame(request: Request, name: str):
        user(request)
        frame_id, _, extension = name.partition(".")
        if not FRAME_ID.match(frame_id) or extension not in ("png", "jpg"):
            raise NotFound(f"frame {name!r}: frames are served by sha256 id only (/frame/<64 hex>.png)")
        if not db().pool.has_frame(frame_id):
            raise NotFound(f"no frame {frame_id} in the pool")
        row = db().pool.frame(frame_id)
        try:
            data = state.frame_cache().get_bytes(frame_id, row["frame_key"])
        except StoreError as exc:
            return JSONResponse({"error": f"frame {frame_id}: store unavailable ({exc})"}, status_code=503)
        media = "image/jpeg" if row["frame_key"].endswith(".jpg") else "image/png"
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400"})

    # -------------------------------------------------------------------------------- labeling API
    def _next(session: security.Session, purposes) -> Optional[dict]:
        granted = leases.claim(
            db().pool, session.annotator, session.key, purposes, 1, state.clock(), state.settings.lease_s
        )
        return describe(answers.review_task(db().pool, granted[0].task_id)) if granted else None

    def _counters() -> dict:
        return counters.counters(db(), state.config, state.clock())

    @app.post("/api/next")
    def api_next(request: Request):
        session = writer(request)
        return {"item": _next(session, leases.LABEL_PURPOSES), "counters": _counters()}

    @app.post("/api/answer")
    def api_answer(request: Request, body: AnswerBody):
        session = writer(request)
        task = answers.review_task(db().pool, body.task_id)
        if body.action == "accept":
            if not items.suggestion_shown(task, state.config):
                raise ReviewError(f"task {task.id} shows no suggestion to accept: pick a class")
            label = task.suggestion
        elif body.action == "label":
            if body.label is None:
                raise ReviewError("label: required for action 'label'")
            label = body.label
        else:
            label = None
        answers.submit(
            db().pool,
            state.cost_model.human,
            len(LABELS),
            session.annotator,
            session.key,
            [answers.Submission(task.id, label, body.seconds)],
            state.clock(),
            state.settings.max_answer_s,
        )
        done = describe(db().pool.task(task.id))
        return {"done": done, "item": _next(session, leases.LABEL_PURPOSES), "counters": _counters()}

    @app.post("/api/skip")
    def api_skip(request: Request, body: TaskBody):
        session = writer(request)
        if body.task_id is None:
            raise ReviewError("task_id: required")
        leases.skip(db().pool, session.key, body.task_id, state.clock())
        return {"item": _next(session, leases.LABEL_PURPOSES), "counters": _counters()}

    @app.post("/api/undo")
    def api_undo(request: Request, body: TaskBody):
        session = writer(request)
        reopened = answers.undo(
            db().pool,
            session.annotator,
            session.key,
            state.clock(),
            state.settings.lease_s,
            body.task_id,
            leases.LABEL_PURPOSES,
        )
        return {"reopened": [describe(db().pool.task(t)) for t in reopened], "counters": _counters()}

    @app.get("/api/history")
    def api_history(request: Request, limit: int = 50):
        session = user(request)
        if not 1 <= limit <= 500:
            raise ReviewError(f"limit: must be 1..500 (got {limit})")
        rows = answers.history(db(), session.annotator, limit)
        return {"history": [describe(db().pool.task(int(r["task_id"]))) for r in rows]}

    @app.get("/api/counters")
    def api_counters(request: Request):
        user(request)
        return _counters()

    # -------------------------------------------------------------------------------- audit grid API
    @app.post("/api/audit/batch")
    def api_audit_batch(request: Request):
        session = writer(request)
        granted = leases.claim(
            db().pool,
            session.annotator,
            session.key,
            leases.GRID_PURPOSES,
            state.settings.grid_size,
            state.clock(),
            state.settings.lease_s,
        )
        granted.sort(key=lambda lease: lease.task_id)
        return {
            "items": [describe(answers.review_task(db().pool, g.task_id)) for g in granted],
            "counters": _counters(),
        }

    @app.post("/api/audit/submit")
    def api_audit_submit(request: Request, body: GridBody):
        session = writer(request)
        per_item = body.seconds / len(body.answers)
        batch = [answers.Submission(a.task_id, a.label, per_item) for a in body.answers]
        for a in body.answers:
            task = answers.review_task(db().pool, a.task_id)
            if task.purpose not in leases.GRID_PURPOSES:
                raise ReviewError(f"task {task.id} is a {task.purpose} task, not an audit: label it on /label")
        answers.submit(
            db().pool,
            state.cost_model.human,
            len(LABELS),
            session.annotator,
            session.key,
            batch,
            state.clock(),
            state.settings.max_answer_s,
        )
        return {"submitted": [a.task_id for a in body.answers], "counters": _counters()}

    @app.post("/api/audit/undo")
    def api_audit_undo(request: Request):
        session = writer(request)
        reopened = answers.undo(
            db().pool,
            session.annotator,
            session.key,
            state.clock(),
            state.settings.lease_s,
            purposes=leases.GRID_PURPOSES,
        )
        return {"reopened": reopened, "counters": _counters()}

    # the detection loop's box tasks: /boxes and /api/boxes/* (review/boxes.py)
    from fleetloop_cloud.review import boxes as box_view

    box_view.install(app, state, templates, user=user, writer=writer, page=page, db=db)

    return app


def security_error(token: Optional[str]) -> Unauthorized:
    """Return the error for a request without a signed-in session."""
    if token is not None:
        return Unauthorized("sign in with the review page's token first (/login)")
    return Unauthorized("sign in first (/login)")


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _safe_next(value: str) -> str:
    # only local paths: an open redirect would let another site bounce users through the page
    return value if re.fullmatch(r"/(?!/)[A-Za-z0-9_/\-]*", value or "") else "/label"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
