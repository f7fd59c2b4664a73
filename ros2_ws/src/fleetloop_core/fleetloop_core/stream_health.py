"""Health of a node's input streams: stamp gaps (frames lost in transport), liveness, DDS matching and QoS.

:func:`input_check` grades what the perception node knows about each camera topic (publishers, QoS,
matching, frames received and lost) and names the cause of a problem in words; the grading rules
(thresholds, levels) are :mod:`fleetloop_core.health`'s.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np


from fleetloop_core.health import Check, ERROR, HealthConfig, LEVEL_NAMES, OK, STALE, WARN, format_value, grade, worst


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
        self._unstamped: deque[float] = deque()  # arrival s of every frame stamped 0
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
                self._unstamped.append(now)
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
        while self._unstamped and self._unstamped[0] < horizon:
            self._unstamped.popleft()

    def unstamped_in_window(self) -> int:
        """Return how many frames in the window carried no header stamp (0)."""
        with self._lock:
            self._trim(self._clock())
            return len(self._unstamped)

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
            {key: format_value(value) for key, value in values.items()},
        )
    return Check("liveness", OK, "answering", {key: format_value(value) for key, value in values.items()})


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
    unstamped: int = 0  # frames in the window whose header stamp is 0


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
    levels: list[int] = []
    problems: list[str] = []
    values: dict[str, object] = {}
    for stream in streams:
        values.update(_stream_values(stream))
        for level, problem in _stream_problems(stream, health, window_s, transport):
            levels.append(level)
            if problem:
                problems.append(problem)
    level = worst(levels) if levels else OK
    if level == STALE:
        level = OK
    message = "; ".join(problems) if problems else "receiving"
    return Check("input", level, message, {key: format_value(value) for key, value in values.items()})


def _stream_values(stream: StreamFacts) -> dict[str, object]:
    """Return the diagnostic values of one input topic, keyed ``<topic>.<figure>``."""
    topic = stream.topic
    values: dict[str, object] = {
        f"{topic}.matched_publishers": stream.matched,
        f"{topic}.frames_in_window": stream.received,
        f"{topic}.lost_in_window": stream.lost,
    }
    if stream.lost_fraction is not None:
        values[f"{topic}.lost_fraction"] = stream.lost_fraction
    values[f"{topic}.lost_by_dds_total"] = stream.lost_by_dds
    values[f"{topic}.unstamped_in_window"] = stream.unstamped
    return values


def _stream_problems(
    stream: StreamFacts, health: HealthConfig, window_s: float, transport: str
) -> list[tuple[int, str]]:
    """Return (level, problem) pairs of one input topic: its publishers, QoS, matching, frames and losses."""
    topic = stream.topic
    found = _publisher_problems(stream, transport)
    if stream.matched and not stream.received:
        foreign = any(not p.node for p in stream.publishers)
        hint = (
            " (a publisher without ROS, another DDS vendor's camera, refuses Fast DDS type information: "
            "dds.type_propagation: false)"
            if foreign
            else ""
        )
        found.append((WARN, f"{topic}: publisher matched but no frames in the {window_s:g} s window{hint}"))
    if stream.undeliverable:
        found.append((WARN, f"{topic}: {stream.undeliverable} sample(s) DDS handed over did not deserialise"))
    if stream.unstamped:
        found.append(
            (
                WARN,
                f"{topic}: {stream.unstamped} of {stream.received} frames in the window carry no header stamp "
                "(transport loss cannot be measured; the selector budgets them by arrival, and one in its own "
                "process cannot pair them with their results)",
            )
        )
    if stream.lost_fraction is not None:
        level = grade(stream.lost_fraction, health.lost_fraction)
        problem = ""
        if level in (WARN, ERROR):
            limit = health.lost_fraction.error if level == ERROR else health.lost_fraction.warn
            problem = (
                f"{topic}: {stream.lost} of {stream.received + stream.lost} frames lost in transport "
                f"({stream.lost_fraction:.3f} >= {limit:g}, {LEVEL_NAMES[level]})"
            )
        found.append((level, problem))
    return found


def _publisher_problems(stream: StreamFacts, transport: str) -> list[tuple[int, str]]:
    """Return the WARN problems of one topic's publishers: QoS, type, none at all, seen but never matched."""
    topic = stream.topic
    found: list[tuple[int, str]] = []
    wrong_type = [p for p in stream.publishers if p.type_name and p.type_name != stream.type_name]
    wrong_reliability = [p for p in stream.publishers if stream.reliable and not p.reliable]
    if stream.incompatible_policy:
        offered = "best effort" if wrong_reliability else "an incompatible value"
        found.append(
            (
                WARN,
                f"{topic}: publisher with incompatible QoS ({stream.incompatible_policy}): it offers "
                f"{offered}, this node requests {'reliable' if stream.reliable else 'best effort'} (image_qos)",
            )
        )
    elif wrong_reliability and not stream.matched:
        found.append(
            (
                WARN,
                f"{topic}: publisher {wrong_reliability[0].node or '(non-ROS)'} offers best effort, "
                "this node requests reliable (image_qos): incompatible QoS (RELIABILITY)",
            )
        )
    if wrong_type:
        found.append(
            (
                WARN,
                f"{topic}: publisher {wrong_type[0].node or '(non-ROS)'} publishes "
                f"{wrong_type[0].type_name}, this node subscribes {stream.type_name}",
            )
        )
    if not stream.publishers and not stream.matched:
        hint = (
            " (a camera of another DDS vendor is not discovered with dds.transport large_data: "
            "use udp and type_propagation: false)"
            if transport == "large_data"
            else ""
        )
        found.append((WARN, f"{topic}: no publisher{hint}"))
    elif (
        not stream.matched
        and not wrong_type
        and not wrong_reliability
        and not stream.incompatible_policy
        and stream.unmatched_s >= UNMATCHED_GRACE_S
    ):
        found.append(
            (
                WARN,
                f"{topic}: {len(stream.publishers)} publisher(s) seen for {stream.unmatched_s:.0f} s but "
                "none matched (a camera of another DDS vendor refusing Fast DDS type information? "
                "dds.type_propagation: false)",
            )
        )
    return found
