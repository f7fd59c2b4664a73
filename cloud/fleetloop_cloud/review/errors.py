"""Errors of the review page; ``status`` is the HTTP status the page answers with (message says why)."""

from __future__ import annotations

from fleetloop_core.errors import FleetLoopError


class ReviewError(FleetLoopError):
    """A request the review page refuses: bad input (400)."""

    status = 400


class Invalid(ReviewError):
    """A well-formed request with a value out of range for this page's data (a class index past the classes)."""

    status = 422


class Unauthorized(ReviewError):
    """No valid session or token."""

    status = 401


class Forbidden(ReviewError):
    """A cross-site request, a bad CSRF token, or a Host header the page does not serve."""

    status = 403


class NotFound(ReviewError):
    """The task, frame or sweep does not exist (or is not the review page's)."""

    status = 404


class Conflict(ReviewError):
    """The task is held by someone else, already answered, or already collected by the loop."""

    status = 409
