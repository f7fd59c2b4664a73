"""Robot health: rolling figures (rates, latency percentiles) and OK/WARN/ERROR grading.

The ROS nodes publish these as ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics``; the
levels are decided here, from thresholds in config (``health`` section of the robot YAML), so
the same grading serves any other front end. Levels use the diagnostic_msgs byte values.

Every threshold pair is "higher is worse": a value at or above ``warn`` is WARN, at or above
``error`` is ERROR.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from pydantic import Field, model_validator

from fleetloop_core.config import ConfigModel

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


class Thresholds(ConfigModel):
    """A WARN and an ERROR limit for one figure (higher is worse; ``warn <= error``)."""

    warn: float = Field(ge=0.0)
    error: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> "Thresholds":
        if self.warn > self.error:
            raise ValueError(f"warn ({self.warn}) must be <= error ({self.error})")
        return self


class HealthConfig(ConfigModel):
    """Diagnostics period, the window figures are computed over, and the grading thresholds."""

    period_s: float = Field(default=1.0, gt=0.0)  # how often diagnostics are published
    window_s: float = Field(default=30.0, gt=0.0)  # rates and percentiles look back this far
    latency_p99_ms: Thresholds = Thresholds(warn=50.0, error=200.0)  # cascade time per frame
    dropped_fraction: Thresholds = Thresholds(warn=0.01, error=0.10)  # malformed / received, in window
    queue_depth: Thresholds = Thresholds(warn=2000, error=10000)  # records waiting
    queue_fill: Thresholds = Thresholds(warn=0.80, error=0.95)  # queued bytes / disk cap
    kept_over_budget: Thresholds = Thresholds(warn=1.25, error=2.0)  # kept per hour / budget per hour
    store_unreachable_s: Thresholds = Thresholds(warn=30.0, error=300.0)  # since the store last answered
    # frames the camera stamped but this node never got (gaps in header stamps), over frames expected
    lost_fraction: Thresholds = Thresholds(warn=0.02, error=0.20)
    frame_deadline_s: float = Field(default=2.0, gt=0.0)  # a frame unanswered this long: frozen (ERROR)
    frozen_exit_s: float = Field(default=10.0, ge=0.0)  # frozen this long: the process exits non-zero (0: never)
    gap_as_loss_s: float = Field(default=1.0, gt=0.0)  # a longer silence is a pause of the camera, not loss

    @model_validator(mode="after")
    def _exit_after_deadline(self) -> "HealthConfig":
        if self.frozen_exit_s and self.frozen_exit_s < self.frame_deadline_s:
            raise ValueError(
                f"frozen_exit_s ({self.frozen_exit_s}) must be 0 or >= frame_deadline_s ({self.frame_deadline_s})"
            )
        return self


def grade(value: float | None, limits: Thresholds) -> int:
    """Return OK, WARN or ERROR for ``value`` against ``limits``; STALE when there is no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return STALE
    if value >= limits.error:
        return ERROR
    if value >= limits.warn:
        return WARN
    return OK


def worst(levels: Iterable[int]) -> int:
    """Return the most severe of ``levels`` (ERROR > WARN > OK; STALE only when nothing else)."""
    levels = list(levels)
    real = [level for level in levels if level != STALE]
    if real:
        return max(real)
    return STALE if levels else OK


@dataclass(frozen=True)
class Check:
    """One graded aspect of a node: what it is, how bad, why, and the figures behind it."""

    name: str
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)

    @property
    def level_name(self) -> str:
        return LEVEL_NAMES[self.level]


def check(
    name: str, figures: dict[str, tuple[float | None, Thresholds]], values: dict[str, object], ok_message: str = "ok"
) -> Check:
    """Return a Check graded by the worst of ``figures`` (name -> (value, limits)).

    The message names every figure that is not OK, with its value and the limit it crossed.
    """
    levels, problems = [], []
    for figure, (value, limits) in figures.items():
        level = grade(value, limits)
        levels.append(level)
        if level in (WARN, ERROR):
            limit = limits.error if level == ERROR else limits.warn
            problems.append(f"{figure} {value:.4g} >= {limit:g} ({LEVEL_NAMES[level]})")
        elif level == STALE:
            problems.append(f"{figure}: no data yet")
    level = worst(levels) if figures else OK
    message = "; ".join(problems) if problems else ok_message
    return Check(name, level, message, {key: format_value(value) for key, value in values.items()})


FAILED_MODEL_EVENTS = ("rejected", "shadow_failed", "rolled_back", "failed")


def models_check(
    providers: dict[str, str],
    values: dict[str, object],
    last_event: str | None,
    last_detail: str = "",
    use_gpu: bool = False,
) -> Check:
    """Return the graded check of the serving models.

    ``providers`` maps tier -> execution provider in use; ``last_event`` is the kind of the model
    manager's last transition. WARN when that transition failed or rolled back, and when a GPU
    was asked for but every tier runs on the CPU provider.
    """
    level, message = OK, "serving"
    if last_event in FAILED_MODEL_EVENTS:
        level, message = WARN, f"last transition: {last_event}: {last_detail}"
    if use_gpu and providers and all(p == "CPUExecutionProvider" for p in providers.values()):
        level, message = WARN, "use_gpu is set but every tier runs on CPUExecutionProvider"
    return Check("models", level, message, {key: format_value(value) for key, value in values.items()})


def control_plane_check(uri: str, connected: bool, problem: str | None) -> Check:
    """Return the graded check of the deploy-job source: ERROR with the reason while it cannot be
    reached (a refused certificate, an unknown CA, an unreachable endpoint), OK when connected or
    when none is configured (jobs then come only through the ROS services)."""
    if not uri:
        return Check("control_plane", OK, "none configured: jobs only through the ROS services", {"uri": ""})
    if connected:
        return Check("control_plane", OK, "connected", {"uri": uri})
    return Check("control_plane", ERROR, problem or "not connected", {"uri": uri})


def format_value(value: object) -> str:
    """Return a diagnostic value as text (floats to 6 significant digits)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class LevelChanges:
    """Tells which checks changed level since the previous call, so a robot's log says what its diagnostics say.

    The first call reports every check that is not OK; later calls each check whose level differs
    from its previous one (a recovery to OK included). STALE (no data yet) is not a change worth a line.
    """

    def __init__(self, quiet: Iterable[str] = ()):
        self._quiet = frozenset(quiet)  # checks whose changes another part logs (the runner's freeze watchdog)
        self._levels: dict[str, int] = {}

    def changed(self, checks: Iterable[Check]) -> list[tuple[Check, int]]:
        """Return (check, previous level) for each check whose level changed (previous OK when first seen)."""
        found = []
        for item in checks:
            if item.level == STALE or item.name in self._quiet:
                continue
            previous = self._levels.get(item.name, OK)
            self._levels[item.name] = item.level
            if item.level != previous:
                found.append((item, previous))
        return found


# ------------------------------------------------------------------------------ rolling figures
class RollingEvents:
    """Counts of events (and their summed size, e.g. bytes) within a sliding window; thread-safe."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.window_s = float(window_s)
        self._clock = clock
        self._events: deque[tuple[float, int, float]] = deque()  # (time s, count, size)
        self._lock = threading.Lock()
        self.total = 0
        self.total_size = 0.0
        self._started = clock()

    def add(self, size: float = 0.0, count: int = 1) -> None:
        """Record ``count`` events now, of ``size`` in total."""
        now = self._clock()
        with self._lock:
            self._events.append((now, int(count), float(size)))
            self.total += int(count)
            self.total_size += float(size)
            self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()

    def count(self) -> int:
        """Return the number of events in the window."""
        with self._lock:
            self._trim(self._clock())
            return sum(count for _, count, _ in self._events)

    def size(self) -> float:
        """Return the summed size of the events in the window."""
        with self._lock:
            self._trim(self._clock())
            return float(sum(size for _, _, size in self._events))

    def span_s(self) -> float:
        """Return the seconds the window really covers (shorter while younger than the window)."""
        return max(1e-9, min(self.window_s, self._clock() - self._started))

    def per_second(self) -> float:
        """Return events per second over the window."""
        return self.count() / self.span_s()


class LatencyWindow:
    """The last ``capacity`` durations (seconds) and their percentiles in milliseconds; thread-safe."""

    def __init__(self, capacity: int = 1000):
        self._values: deque[float] = deque(maxlen=int(capacity))
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(float(seconds))

    def __len__(self) -> int:
        return len(self._values)

    def percentile_ms(self, q: float) -> float | None:
        """Return the q-th percentile (0..100) in milliseconds, or None when empty."""
        with self._lock:
            if not self._values:
                return None
            values = np.fromiter(self._values, dtype=np.float64)
        return float(np.percentile(values, q) * 1000.0)
