"""Who may use the review page, and protection of its writes.

* **Bind policy**: 127.0.0.1 (or ::1, localhost) by default; any other bind address requires a
  token, from config, from ``FLEETLOOP_REVIEW_TOKEN``, or generated and printed once.
* **Host check**: without a token the page answers only requests whose ``Host`` is a loopback
  name, so a web site cannot reach it through DNS rebinding.
* **Sessions**: a random id in an ``HttpOnly; SameSite=Strict`` cookie; only its sha256 is
  stored (``review_sessions`` in the pool file). A session names its annotator, and is
  authenticated once the token was shown (or when no token is required).
* **Writes** (every POST): the session's CSRF token in ``X-CSRF-Token`` or the form field
  ``csrf``, compared in constant time, and an ``Origin`` (or ``Referer``) of this very host; a
  browser's ``Sec-Fetch-Site: cross-site`` is refused outright.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from typing import Mapping, Optional
from urllib.parse import urlsplit

from fleetloop_cloud.pool import Pool
from fleetloop_cloud.review.errors import Forbidden, ReviewError
from fleetloop_cloud.review.settings import LOOPBACK_HOSTS

SESSION_COOKIE = "fleetloop_review"
TOKEN_ENV = "FLEETLOOP_REVIEW_TOKEN"
ANNOTATOR_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,39}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_sessions (
    id_sha256 TEXT PRIMARY KEY, annotator TEXT, csrf TEXT NOT NULL, authenticated INTEGER NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL);
"""


def ensure_schema(pool: Pool) -> None:
    """Create the session table in the pool file if absent (idempotent)."""
    with pool.transaction() as db:
        db.execute(_SCHEMA)


# ------------------------------------------------------------------------------------ bind policy
def requires_token(host: str) -> bool:
    """Return whether binding to ``host`` requires a token (anything but 127.0.0.1, ::1, localhost)."""
    return host.strip("[]") not in LOOPBACK_HOSTS


def resolve_token(
    host: str, configured: Optional[str] = None, environ: Mapping[str, str] = os.environ
) -> tuple[Optional[str], bool]:
    """Return (token or None, whether it was generated now) for a bind address.

    A configured token (config or ``FLEETLOOP_REVIEW_TOKEN``) is always used; otherwise a
    non-loopback bind gets a fresh random one (32 bytes, URL-safe) that the caller prints once.
    """
    token = configured or environ.get(TOKEN_ENV) or None
    if token is not None:
        if len(token) < 16:
            raise ReviewError(f"the review page token must have at least 16 characters (got {len(token)})")
        return token, False
    if requires_token(host):
        return secrets.token_urlsafe(32), True
    return None, False


def token_matches(expected: str, supplied: Optional[str]) -> bool:
    """Return whether ``supplied`` equals the token (constant time)."""
    return supplied is not None and hmac.compare_digest(expected.encode(), supplied.encode())


def host_name(host_header: str) -> str:
    """Return the host name of a Host header value (no port; IPv6 without brackets)."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def check_host(host_header: Optional[str], token_required: bool) -> None:
    """Refuse (Forbidden) a request whose Host is not a loopback name when no token protects the page."""
    if token_required:
        return
    if not host_header or host_name(host_header) not in LOOPBACK_HOSTS:
        raise Forbidden(
            f"Host {host_header!r} is not served: without a token the page answers loopback "
            f"names only ({', '.join(LOOPBACK_HOSTS)})"
        )


# ------------------------------------------------------------------------------------ sessions
@dataclass(frozen=True)
class Session:
    """A browser session: its cookie value, annotator name (None until given), CSRF token."""

    cookie: str
    annotator: Optional[str]
    csrf: str
    authenticated: bool
    expires: float

    @property
    def key(self) -> str:
        """Return the stored key of the session (sha256 of the cookie; leases name it)."""
        return _digest(self.cookie)


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def new_session(pool: Pool, now: float, hours: float, authenticated: bool) -> Session:
    """Create a session (annotator unknown yet) and purge expired ones; return it."""
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with pool.transaction() as db:
        db.execute("DELETE FROM review_sessions WHERE expires <= ?", (now,))
        db.execute(
            "INSERT INTO review_sessions (id_sha256, annotator, csrf, authenticated, created, expires) "
            "VALUES (?,?,?,?,?,?)",
            (_digest(cookie), None, csrf, int(authenticated), now, now + hours * 3600),
        )
    return Session(cookie, None, csrf, authenticated, now + hours * 3600)


def load_session(query, cookie: Optional[str], now: float) -> Optional[Session]:
    """Return the live session of a cookie value, or None (``query``: a read function over the pool file)."""
    if not cookie or len(cookie) > 128:
        return None
    rows = query(
        "SELECT annotator, csrf, authenticated, expires FROM review_sessions WHERE id_sha256=?", (_digest(cookie),)
    )
    if not rows or rows[0]["expires"] <= now:
        return None
    row = rows[0]
    return Session(cookie, row["annotator"], row["csrf"], bool(row["authenticated"]), float(row["expires"]))


def sign_in(pool: Pool, session: Session, annotator: str, authenticated: bool) -> Session:
    """Name the session's annotator (validated) and record whether it showed the token; return it."""
    if not ANNOTATOR_PATTERN.match(annotator or ""):
        raise ReviewError(f"annotator name {annotator!r}: use 1-40 letters, digits, '.', '_', '@' or '-'")
    with pool.transaction() as db:
        db.execute(
            "UPDATE review_sessions SET annotator=?, authenticated=? WHERE id_sha256=?",
            (annotator, int(authenticated), session.key),
        )
    return Session(session.cookie, annotator, session.csrf, authenticated, session.expires)


def authenticate(pool: Pool, session: Session) -> Session:
    """Record that the session showed the token; return it."""
    with pool.transaction() as db:
        db.execute("UPDATE review_sessions SET authenticated=1 WHERE id_sha256=?", (session.key,))
    return Session(session.cookie, session.annotator, session.csrf, True, session.expires)


def end_session(pool: Pool, session: Session) -> None:
    """Delete a session (sign out)."""
    with pool.transaction() as db:
        db.execute("DELETE FROM review_sessions WHERE id_sha256=?", (session.key,))


# ------------------------------------------------------------------------------------ cross-site writes
def check_same_origin(headers: Mapping[str, str]) -> None:
    """Refuse (Forbidden) a write whose Origin/Referer is another site, or that a browser marks cross-site."""
    host = headers.get("host", "")
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    origin = headers.get("origin")
    source = origin if origin and origin != "null" else headers.get("referer")
    if origin == "null":
        raise Forbidden("cross-site request refused (Origin: null)")
    if source is None:
        return  # not a browser (curl, tests): the CSRF token still has to match
    netloc = urlsplit(source).netloc.lower()
    if netloc != host.lower():
        raise Forbidden(f"cross-site request refused (Origin {source!r} is not this page's host {host!r})")


def check_csrf(session: Session, supplied: Optional[str]) -> None:
    """Refuse (Forbidden) a write without the session's CSRF token."""
    if not supplied or not hmac.compare_digest(session.csrf.encode(), supplied.encode()):
        raise Forbidden("missing or wrong CSRF token (reload the page)")
