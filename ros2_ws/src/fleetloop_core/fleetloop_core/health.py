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
    return Check(name, level, message, {key: _format(value) for key, value in values.items()})


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
    return Check("models", level, message, {key: _format(value) for key, value in values.items()})


def control_plane_check(uri: str, connected: bool, problem: str | None) -> Check:
    """Return the graded check of the deploy-job source: ERROR with the reason while it cannot be
    reached (a refused certificate, an unknown CA, an unreachable endpoint), OK when connected or
    when none is configured (jobs then come only through the ROS services)."""
    if not uri:
        return Check("control_plane", OK, "none configured: jobs only through the ROS services", {"uri": ""})
    if connected:
        return Check("control_plane", OK, "connected", {"uri": uri})
    return Check("control_plane", ERROR, problem or "not connected", {"uri": uri})


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


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


# ------------------------------------------------------------------------------ input streams
class StampGaps:
    """Frames a camera stamped but that never arrived, estimated from gaps in the header stamps; thread-safe.

    The camera's frame period is not announced by DDS, so it is estimated from the stamps: the 10th
    percentile of the intervals between consecutive stamps in the window (robust while at least one
    interval in ten is a single period, i.e. down to ~10 % delivery). An interval of ``k`` periods
    means ``k - 1`` frames lost; an interval longer than ``gap_as_loss_s`` is a pause of the camera
    (counted in ``pauses``, not as loss), and a stamp at or before the previous one (a camera restart,
    a clock jump) starts the count afresh. Stamps of 0 (cameras that do not stamp) are not judged.
    """

    MIN_INTERVALS = 8

    def __init__(self, window_s: float, gap_as_loss_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = float(window_s)
        self.gap_as_loss_s = float(gap_as_loss_s)
        self._clock = clock
        self._intervals: deque[tuple[float, int]] = deque()  # (arrival s, stamp interval ns)
        self._arrivals: deque[float] = deque()  # arrival s of every frame
        self._last_stamp: int | None = None
        self._lock = threading.Lock()
        self.pauses = 0
        self.restarts = 0
        self.unstamped = 0

    def add(self, stamp_ns: int) -> None:
        """Record the header stamp (ns) of a frame that arrived now."""
        now = self._clock()
        with self._lock:
            self._arrivals.append(now)
            self._trim(now)
            if stamp_ns <= 0:
                self.unstamped += 1
                return
            last, self._last_stamp = self._last_stamp, stamp_ns
            if last is not None:
                interval = stamp_ns - last
                if interval <= 0:
                    self.restarts += 1
                elif interval > self.gap_as_loss_s * 1e9:
                    self.pauses += 1
                else:
                    self._intervals.append((now, interval))
            self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._intervals and self._intervals[0][0] < horizon:
            self._intervals.popleft()
        while self._arrivals and self._arrivals[0] < horizon:
            self._arrivals.popleft()

    def period_ns(self) -> float | None:
        """Return the estimated camera frame period (ns), None with too few intervals in the window."""
        with self._lock:
            self._trim(self._clock())
            intervals = [interval for _, interval in self._intervals]
        if len(intervals) < self.MIN_INTERVALS:
            return None
        return float(np.percentile(np.asarray(intervals, dtype=np.float64), 10))

    def counts(self) -> tuple[int, int]:
        """Return (frames received, frames lost) in the window (lost 0 while the period is unknown)."""
        period = self.period_ns()
        with self._lock:
            self._trim(self._clock())
            intervals = [interval for _, interval in self._intervals]
            received = len(self._arrivals)
        if period is None or period <= 0:
            return received, 0
        lost = sum(max(0, round(interval / period) - 1) for interval in intervals)
        return received, int(lost)

    def lost_fraction(self) -> float | None:
        """Return lost / (received + lost) in the window; None while it cannot be judged."""
        if self.period_ns() is None:
            return None
        received, lost = self.counts()
        return lost / (received + lost) if received + lost else 0.0


class Liveness:
    """Whether a process still turns: when its frame-path executor last finished a turn; thread-safe.

    The runner calls :meth:`beat` after every turn of the executor (a wait, or one callback). While a
    callback runs (a frame in the cascade), no beat comes: :meth:`stalled_s` is how long the process
    has not answered. A process that waits for work beats every 0.1 s, so waiting is not stalling.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._last = clock()
        self.longest_s = 0.0

    def beat(self) -> None:
        now = self._clock()
        self.longest_s = max(self.longest_s, now - self._last)
        self._last = now

    def stalled_s(self) -> float:
        """Return seconds since the executor last finished a turn."""
        return max(0.0, self._clock() - self._last)


def liveness_check(stalled_s: float, health: HealthConfig, values: dict[str, object]) -> Check:
    """Return the frame path's liveness: ERROR while it has not turned for the frame deadline or longer."""
    if stalled_s >= health.frame_deadline_s:
        exits = f"; the process exits at {health.frozen_exit_s:g} s" if health.frozen_exit_s else ""
        return Check(
            "liveness",
            ERROR,
            f"frozen: the frame path has not answered for {stalled_s:.1f} s "
            f"(deadline {health.frame_deadline_s:g} s{exits})",
            {key: _format(value) for key, value in values.items()},
        )
    return Check("liveness", OK, "answering", {key: _format(value) for key, value in values.items()})


class RepeatedSample:
    """Tells when the same undeliverable sample comes back again and again (a DDS reader that cannot drop it).

    Measured with Fast DDS 3.2.3: after a Cyclone DDS writer went away while the reader's history
    was full, every take returned the same empty sample (docs/ros_robustness.md). A different bad
    sample resets the count: a camera that sends distinct garbage is counted as malformed, no more.
    """

    def __init__(self, limit: int = 5):
        self.limit = int(limit)
        self._last: bytes | None = None
        self._count = 0

    def bad(self, payload: bytes) -> bool:
        """Record an undeserialisable payload; return True when it is the ``limit``-th identical one in a row."""
        key = payload[:64] + len(payload).to_bytes(8, "little")
        if key == self._last:
            self._count += 1
        else:
            self._last, self._count = key, 1
        if self._count >= self.limit:
            self._last, self._count = None, 0
            return True
        return False

    def good(self) -> None:
        """Record a sample that deserialised: the run of repeats is over."""
        self._last, self._count = None, 0


@dataclass(frozen=True)
class PublisherFacts:
    """One publisher the ROS graph shows on an input topic (from discovery, matched or not)."""

    node: str  # "namespace/name", or "" for a DDS writer without ROS (another vendor's camera)
    type_name: str  # e.g. sensor_msgs/msg/Image
    reliable: bool


@dataclass(frozen=True)
class StreamFacts:
    """What a node knows about one input topic, as the input check grades it."""

    topic: str
    type_name: str  # what this node subscribes
    reliable: bool  # what this node requests
    matched: int  # publishers DDS matched with our reader
    publishers: tuple[PublisherFacts, ...]
    received: int  # frames in the window
    lost: int  # frames lost in transport in the window (stamp gaps)
    lost_fraction: float | None  # None while it cannot be judged
    incompatible_policy: str = ""  # last QoS policy DDS reported incompatible ("" none)
    undeliverable: int = 0  # samples DDS handed over that did not deserialise, in the window
    unmatched_s: float = 0.0  # how long publishers have been seen without a match
    lost_by_dds: int = 0  # samples DDS itself reported lost (message_lost events, since start)


UNMATCHED_GRACE_S = 3.0  # discovery sees a publisher a moment before the reader matches it


def input_check(
    streams: Iterable[StreamFacts], health: HealthConfig, window_s: float, transport: str = "large_data"
) -> Check:
    """Return the graded check of a node's input topics: publishers, QoS, matching, frames and losses.

    WARN names the topic and the cause: no publisher; a publisher whose QoS or type cannot match
    (the policy, what it offers, what we request); publishers seen but not matched (another DDS
    vendor refusing Fast DDS's type information: ``dds.type_propagation: false``); a matched
    publisher and no frames. The fraction of frames lost in transport is graded against
    ``health.lost_fraction``. With the ``large_data`` transport another vendor's camera is not even
    discovered (measured), so "no publisher" says so.
    """
    levels, problems = [], []
    values: dict[str, object] = {}
    for stream in streams:
        topic = stream.topic
        values[f"{topic}.matched_publishers"] = stream.matched
        values[f"{topic}.frames_in_window"] = stream.received
        values[f"{topic}.lost_in_window"] = stream.lost
        if stream.lost_fraction is not None:
            values[f"{topic}.lost_fraction"] = stream.lost_fraction
        values[f"{topic}.lost_by_dds_total"] = stream.lost_by_dds
        wrong_type = [p for p in stream.publishers if p.type_name and p.type_name != stream.type_name]
        wrong_reliability = [p for p in stream.publishers if stream.reliable and not p.reliable]
        if stream.incompatible_policy:
            offered = "best effort" if wrong_reliability else "an incompatible value"
            problems.append(
                f"{topic}: publisher with incompatible QoS ({stream.incompatible_policy}): it offers "
                f"{offered}, this node requests {'reliable' if stream.reliable else 'best effort'} "
                "(image_qos)"
            )
            levels.append(WARN)
        elif wrong_reliability and not stream.matched:
            problems.append(
                f"{topic}: publisher {wrong_reliability[0].node or '(non-ROS)'} offers best effort, "
                "this node requests reliable (image_qos): incompatible QoS (RELIABILITY)"
            )
            levels.append(WARN)
        if wrong_type:
            problems.append(
                f"{topic}: publisher {wrong_type[0].node or '(non-ROS)'} publishes "
                f"{wrong_type[0].type_name}, this node subscribes {stream.type_name}"
            )
            levels.append(WARN)
        if not stream.publishers and not stream.matched:
            hint = (
                (
                    " (a camera of another DDS vendor is not discovered with dds.transport large_data: "
                    "use udp and type_propagation: false)"
                )
                if transport == "large_data"
                else ""
            )
            problems.append(f"{topic}: no publisher{hint}")
            levels.append(WARN)
        elif (
            not stream.matched
            and not wrong_type
            and not wrong_reliability
            and not stream.incompatible_policy
            and stream.unmatched_s >= UNMATCHED_GRACE_S
        ):
            problems.append(
                f"{topic}: {len(stream.publishers)} publisher(s) seen for {stream.unmatched_s:.0f} s but "
                "none matched (a camera of another DDS vendor refusing Fast DDS type information? "
                "dds.type_propagation: false)"
            )
            levels.append(WARN)
        if stream.matched and not stream.received:
            foreign = any(not p.node for p in stream.publishers)
            hint = (
                (
                    " (a publisher without ROS, another DDS vendor's camera, refuses Fast DDS type information: "
                    "dds.type_propagation: false)"
                )
                if foreign
                else ""
            )
            problems.append(f"{topic}: publisher matched but no frames in the {window_s:g} s window{hint}")
            levels.append(WARN)
        if stream.undeliverable:
            problems.append(f"{topic}: {stream.undeliverable} sample(s) DDS handed over did not deserialise")
            levels.append(WARN)
        if stream.lost_fraction is not None:
            level = grade(stream.lost_fraction, health.lost_fraction)
            if level in (WARN, ERROR):
                limit = health.lost_fraction.error if level == ERROR else health.lost_fraction.warn
                problems.append(
                    f"{topic}: {stream.lost} of {stream.received + stream.lost} frames lost in transport "
                    f"({stream.lost_fraction:.3f} >= {limit:g}, {LEVEL_NAMES[level]})"
                )
            levels.append(level)
    level = worst(levels) if levels else OK
    if level == STALE:
        level = OK
    message = "; ".join(problems) if problems else "receiving"
    return Check("input", level, message, {key: _format(value) for key, value in values.items()})
