"""What every route of the review page shares: the app's state and the per-request helpers.

The state lives on ``app.state.review`` (one :class:`ReviewState` per app); routes reach it and the
session, database and templates through the request, so each group of routes is a plain FastAPI
router (``auth_routes``, ``label_routes``, ``tuning_routes``, ``boxes``) that ``app.create_app``
includes.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from fleetloop_core.store import StoreError, open_store

from fleetloop_cloud.config import CloudConfig, CostModel
from fleetloop_cloud.frames import FrameCache
from fleetloop_cloud.review import items, security
from fleetloop_cloud.review.db import PerThread, ReviewDB
from fleetloop_cloud.review.errors import Unauthorized
from fleetloop_cloud.review.settings import ReviewPageConfig

log = logging.getLogger("fleetloop_cloud.review")

POOL_VIEWS_CACHE_S = 10.0  # teachers and the routing data, read from the pool at most this often


@dataclass
class Cached:
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
class ReviewState:
    """One review app's configuration, caches and per-thread database handles."""

    pool_path: str | Path  # the pool file or its PostgreSQL URI
    config: CloudConfig
    settings: ReviewPageConfig
    cost_model: CostModel
    token: Optional[str]
    overrides_path: Path
    uploads: Path
    dbs: PerThread
    clock: Callable[[], float]
    templates: Jinja2Templates
    labels: list[str]
    teachers: Cached = field(default_factory=lambda: Cached(POOL_VIEWS_CACHE_S))
    routing: Cached = field(default_factory=lambda: Cached(POOL_VIEWS_CACHE_S))
    store_bytes: Cached = field(default_factory=lambda: Cached(60.0))
    boxes: threading.local = field(default_factory=threading.local)
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


def state(request: Request) -> ReviewState:
    """Return the state of the app serving ``request``."""
    return request.app.state.review


def db(request: Request) -> ReviewDB:
    """Return this thread's database handle."""
    return state(request).dbs.get()


def session_of(request: Request) -> Optional[security.Session]:
    """Return the request's session (None without a valid cookie)."""
    return security.load_session(
        db(request).query, request.cookies.get(security.SESSION_COOKIE), state(request).clock()
    )


def user(request: Request) -> security.Session:
    """Return the signed-in session; Unauthorized otherwise."""
    session = session_of(request)
    if session is None or not session.authenticated or not session.annotator:
        raise security_error(state(request).token)
    return session


def writer(request: Request, csrf: Optional[str] = None) -> security.Session:
    """Return the signed-in session of a state change from this origin carrying its CSRF token."""
    session = user(request)
    security.check_same_origin(request.headers)
    security.check_csrf(session, csrf if csrf is not None else request.headers.get("x-csrf-token"))
    return session


def teachers(request: Request) -> items.Teachers:
    """Return the loop's teachers (cached for a few seconds)."""
    st = state(request)
    return st.teachers.get(lambda: items.teachers(db(request).pool, st.config), st.clock())


def describe(request: Request, task) -> dict:
    """Return what the page shows of one review task."""
    st = state(request)
    return items.describe(db(request).pool, st.config, st.labels, task, teachers(request))


def page(request: Request, name: str, session: security.Session, **context) -> HTMLResponse:
    """Return a page rendered with the session, the active tab and ``context``."""
    st = state(request)
    return st.templates.TemplateResponse(
        request,
        name,
        {"session": session, "active": name.split(".")[0], "token_required": st.token is not None, **context},
    )


def security_error(token: Optional[str]) -> Unauthorized:
    """Return the error for a request without a signed-in session."""
    if token is not None:
        return Unauthorized("sign in with the review page's token first (/login)")
    return Unauthorized("sign in first (/login)")


def shown_path(path: Path) -> str:
    """Return ``path`` relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def safe_next(value: str) -> str:
    """Return ``value`` when it is a local path, else /label (an open redirect would bounce users elsewhere)."""
    return value if re.fullmatch(r"/(?!/)[A-Za-z0-9_/\-]*", value or "") else "/label"


def escape(text: str) -> str:
    """Return ``text`` safe inside HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
