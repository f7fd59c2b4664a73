"""Sign-in, sign-out and the health check of the review page."""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from fleetloop_cloud.review import leases, security, web
from fleetloop_cloud.review.errors import Forbidden, ReviewError, Unauthorized

router = APIRouter()


def _login_page(request: Request, session: security.Session, next: str, error: str, status: int):
    st = web.state(request)
    return st.templates.TemplateResponse(
        request,
        "login.html",
        {
            "session": session,
            "next": web.safe_next(next),
            "token_required": st.token is not None,
            "error": error,
            "active": "login",
        },
        status_code=status,
    )


@router.get("/healthz")
def healthz() -> dict:
    return {"ok": True}


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/label", token: Optional[str] = None, error: str = ""):
    st = web.state(request)
    session = web.session_of(request)
    fresh = session is None
    if session is None:
        session = security.new_session(
            web.db(request).pool, st.clock(), st.settings.session_hours, authenticated=st.token is None
        )
    if token is not None and st.token is not None:
        # a printed link carries the token once; the session remembers it, the URL drops it
        if security.token_matches(st.token, token):
            session = security.authenticate(web.db(request).pool, session)
            target = "/login?" + (f"next={quote(next)}" if next else "")
            response = RedirectResponse(target, status_code=303)
        else:
            response = _login_page(request, session, next, "wrong token", 401)
    else:
        status = 401 if st.token is not None and not session.authenticated else 200
        response = _login_page(request, session, next, error, status)
    if fresh:
        response.set_cookie(
            security.SESSION_COOKIE,
            session.cookie,
            httponly=True,
            samesite="strict",
            max_age=int(st.settings.session_hours * 3600),
            path="/",
        )
    return response


@router.post("/login")
def login(
    request: Request,
    annotator: str = Form(...),
    csrf: str = Form(...),
    token: str = Form(""),
    next: str = Form("/label"),
):
    st = web.state(request)
    session = web.session_of(request)
    if session is None:
        raise Forbidden("no session: load the sign-in page first (cookies must be enabled)")
    security.check_same_origin(request.headers)
    security.check_csrf(session, csrf)
    authenticated = session.authenticated or st.token is None or security.token_matches(st.token, token)
    try:
        if not authenticated:
            raise Unauthorized("wrong token")
        security.sign_in(web.db(request).pool, session, annotator.strip(), True)
    except ReviewError as exc:
        return _login_page(request, session, next, str(exc), exc.status)
    return RedirectResponse(web.safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request, csrf: str = Form(...)):
    session = web.writer(request, csrf)
    leases.release_session(web.db(request).pool, session.key)
    security.end_session(web.db(request).pool, session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path="/")
    return response


@router.get("/")
def root(request: Request):
    web.user(request)
    return RedirectResponse("/label", status_code=303)
