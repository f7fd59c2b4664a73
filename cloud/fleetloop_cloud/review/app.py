"""The review page as a FastAPI app: ``create_app(pool_path, config, token=None)``.

Server-rendered pages (Jinja2) with one small vanilla script (static/review.js); no front-end
build, no script or style from anywhere else (the Content-Security-Policy says so). Every GET
reads; every state change is a POST with the session's CSRF token from this very origin.

Pages: ``/label`` (one frame at a time), ``/audit`` (grid of auto-labels to confirm or correct),
``/confirm`` (grid of review suggestions, one class to a page), ``/tuning/routing`` (risk-coverage,
target accuracy -> threshold, save), ``/tuning/robots``
(replay sweeps, per-robot uploads). JSON under ``/api/``; images by frame id under ``/frame/``;
plots under ``/plots/``.

The routes are FastAPI routers, one per concern: ``auth_routes`` (sign-in), ``label_routes``
(labeling, audit, confirm, frames), ``tuning_routes`` (routing and robots), ``boxes`` (the detection loop's
box tasks); ``web`` holds the state and the per-request helpers they share. This module builds the
state, the security headers and the error pages, and includes the routers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from fleetloop_core.contracts.manifest import load_manifest
from fleetloop_core.errors import FleetLoopError

from fleetloop_cloud.config import CloudConfig, CostModel, load_cost_model
from fleetloop_cloud.review import auth_routes, boxes, items, label_routes, overrides, security, tuning_routes, web
from fleetloop_cloud.review.db import PerThread, prepare
from fleetloop_cloud.review.errors import Forbidden, ReviewError, Unauthorized
from fleetloop_cloud.review.settings import ReviewPageConfig

log = logging.getLogger("fleetloop_cloud.review")

HERE = Path(__file__).resolve().parent
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


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
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    labels = class_labels(config.models)
    templates.env.globals.update(labels=labels, keys=items.KEYS)
    state = web.ReviewState(
        pool_path=pool_path,
        config=config,
        settings=settings,
        cost_model=cost_model or load_cost_model(config.cost_model),
        token=token,
        overrides_path=overrides.local_path(config_path),
        uploads=config.work_path / "review" / "sweeps",
        dbs=PerThread(pool_path),
        clock=clock,
        templates=templates,
        labels=labels,
    )
    state.store_bytes.ttl_s = settings.store_stats_ttl_s
    app = FastAPI(title="FleetLoop review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = state
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    _guard(app, state)
    _error_pages(app)
    for router in (auth_routes.router, label_routes.router, tuning_routes.router, boxes.router):
        app.include_router(router)
    return app


def class_labels(models_dir: str | Path) -> list[str]:
    """Return the class names humans pick from: the teachers' (T2's manifest) when they classify, else none.

    The pool's labels index into the teachers' classes, so the page takes them from the same package;
    with detectors the class view has nothing to offer (the box view reads its classes itself).
    """
    try:
        manifest = load_manifest(Path(models_dir) / "T2")
    except FleetLoopError:
        return []
    return list(manifest.labels) if manifest.task == "classification" else []


def _guard(app: FastAPI, state: web.ReviewState) -> None:
    """Refuse requests for other hosts and set the security headers on every response."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            security.check_host(request.headers.get("host"), token_required=state.token is not None)
        except Forbidden as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/plots/", "/frame/"))


def _error_pages(app: FastAPI) -> None:
    """Answer errors as JSON for the API and plots, as a page or a sign-in redirect for pages."""

    @app.exception_handler(ReviewError)
    async def review_error(request: Request, exc: ReviewError):
        if isinstance(exc, Unauthorized) and not _wants_json(request) and request.method == "GET":
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        if _wants_json(request) or request.method != "GET":
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return HTMLResponse(
            f"<!doctype html><title>{exc.status}</title><p>{web.escape(str(exc))}</p>", status_code=exc.status
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
