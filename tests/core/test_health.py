"""fleetloop_core.health: grading against thresholds, rolling rates and latency percentiles."""

from __future__ import annotations

import math

import pytest

from fleetloop_core.config import validate
from fleetloop_core.errors import ConfigError
from fleetloop_core.health import (
    ERROR,
    Check,
    HealthConfig,
    LatencyWindow,
    LevelChanges,
    OK,
    RollingEvents,
    STALE,
    Thresholds,
    WARN,
    check,
    grade,
    worst,
)


def test_grade_is_ok_below_warn_then_warn_then_error():
    limits = Thresholds(warn=1.0, error=2.0)
    assert [grade(v, limits) for v in (0.0, 0.999, 1.0, 1.5, 2.0, 9.0)] == [OK, OK, WARN, WARN, ERROR, ERROR]
    assert grade(None, limits) == STALE and grade(math.nan, limits) == STALE


def test_worst_prefers_real_levels_over_stale():
    assert worst([OK, WARN, OK]) == WARN and worst([STALE, OK]) == OK and worst([STALE]) == STALE
    assert worst([ERROR, STALE, WARN]) == ERROR and worst([]) == OK


def test_thresholds_are_validated_with_file_and_key():
    with pytest.raises(ConfigError, match=r"robot.yaml: latency_p99_ms: Value error, warn \(9.0\) must be <= error"):
        validate(HealthConfig, {"latency_p99_ms": {"warn": 9.0, "error": 1.0}}, source="robot.yaml")
    with pytest.raises(ConfigError, match="period_s: Input should be greater than 0"):
        validate(HealthConfig, {"period_s": 0}, source="robot.yaml")


def test_check_names_the_figures_that_crossed_their_limit():
    limits = Thresholds(warn=10.0, error=100.0)
    result = check("inference", {"latency_p99_ms": (150.0, limits), "other": (1.0, limits)}, {"p50": 0.5, "n": 3})
    assert result.level == ERROR and result.level_name == "ERROR"
    assert result.message == "latency_p99_ms 150 >= 100 (ERROR)"
    assert result.values == {"p50": "0.5", "n": "3"}
    assert check("inference", {"latency_p99_ms": (1.0, limits)}, {}).message == "ok"
    waiting = check("inference", {"latency_p99_ms": (None, limits)}, {})
    assert waiting.level == STALE and "no data yet" in waiting.message


def test_level_changes_report_each_change_once_and_recoveries_and_skip_quiet_and_stale_checks():
    changes = LevelChanges(quiet=("liveness",))

    def checks(input_level, frames_level=OK, liveness_level=ERROR):
        return [
            Check("input", input_level, "m"),
            Check("frames", frames_level, "f"),
            Check("liveness", liveness_level, "l"),
        ]

    first = changes.changed(checks(WARN, STALE))
    assert [(c.name, previous) for c, previous in first] == [("input", OK)]  # OK and STALE are no news
    assert changes.changed(checks(WARN, STALE)) == []  # unchanged: not again
    assert [(c.name, c.level, previous) for c, previous in changes.changed(checks(OK))] == [("input", OK, WARN)]
    assert [(c.name, c.level) for c, _ in changes.changed(checks(OK, ERROR))] == [("frames", ERROR)]


def test_rolling_events_count_rate_and_size_within_the_window():
    now = [100.0]
    events = RollingEvents(10.0, clock=lambda: now[0])
    for _ in range(5):
        now[0] += 1.0
        events.add(size=100, count=2)
    assert events.count() == 10 and events.size() == 500 and events.total == 10
    assert events.per_second() == pytest.approx(10 / 5.0)  # younger than the window: its real span
    now[0] += 8.5  # the first three additions fall out
    assert events.count() == 4 and events.size() == 200 and events.total == 10
    assert events.per_second() == pytest.approx(4 / 10.0)


def test_latency_window_percentiles_in_ms():
    window = LatencyWindow(capacity=100)
    assert window.percentile_ms(50) is None
    for ms in range(1, 201):  # only the last 100 stay: 101..200 ms
        window.add(ms / 1000.0)
    assert len(window) == 100
    assert window.percentile_ms(0) == pytest.approx(101.0) and window.percentile_ms(100) == pytest.approx(200.0)
    assert window.percentile_ms(50) == pytest.approx(150.5)


def test_models_check_warns_after_a_failed_transition_or_a_gpu_not_in_use():
    from fleetloop_core.health import models_check

    cpu = {"T4": "CPUExecutionProvider", "T3": "CPUExecutionProvider"}
    assert models_check(cpu, {"T4_version": "edge 1.0"}, "swapped").level == OK
    rolled = models_check(cpu, {}, "rolled_back", "confidence collapsed")
    assert rolled.level == WARN and rolled.message == "last transition: rolled_back: confidence collapsed"
    assert models_check(cpu, {}, None, use_gpu=True).level == WARN
    assert models_check({"T4": "CUDAExecutionProvider"}, {}, None, use_gpu=True).level == OK


# ------------------------------------------------------------------------------ input streams
class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _feed(gaps, clock, stamps_ms):
    for stamp in stamps_ms:
        clock.now += 0.001
        gaps.add(int(stamp * 1_000_000))


def test_stamp_gaps_count_the_frames_a_30_hz_camera_stamped_and_we_never_got():
    from fleetloop_core.stream_health import StampGaps

    clock = _Clock()
    gaps = StampGaps(window_s=30.0, clock=clock)
    period = 1000.0 / 30
    every = [1000 + i * period for i in range(300)]
    _feed(gaps, clock, [s for i, s in enumerate(every) if i % 3 != 1])  # one frame in three lost
    received, lost = gaps.counts()
    assert received == 200 and lost == 100
    assert gaps.lost_fraction() == pytest.approx(1 / 3)
    assert gaps.period_ns() == pytest.approx(period * 1e6, rel=0.01)


def test_stamp_gaps_cannot_tell_a_uniform_loss_from_a_slower_camera():
    # every other frame lost looks exactly like a camera at half the rate: the estimate is the camera's
    # period only while at least one interval in ten is a single period (docs/ros_robustness.md)
    from fleetloop_core.stream_health import StampGaps

    clock = _Clock()
    gaps = StampGaps(window_s=30.0, clock=clock)
    _feed(gaps, clock, [i * 100 for i in range(0, 40, 2)])
    assert gaps.counts() == (20, 0)


def test_stamp_gaps_judge_nothing_until_enough_intervals_and_skip_pauses_restarts_and_unstamped():
    from fleetloop_core.stream_health import StampGaps

    clock = _Clock()
    gaps = StampGaps(window_s=30.0, gap_as_loss_s=1.0, clock=clock)
    _feed(gaps, clock, [1000 + i * 100 for i in range(5)])
    assert gaps.lost_fraction() is None and gaps.counts() == (5, 0)
    _feed(gaps, clock, [1400 + 5000 + i * 100 for i in range(20)])  # a 5 s pause: not loss
    _feed(gaps, clock, [50 + i * 100 for i in range(5)])  # a restart (stamps go back)
    gaps.add(0)  # a camera that does not stamp
    assert gaps.pauses == 1 and gaps.restarts == 1 and gaps.unstamped == 1
    assert gaps.counts() == (31, 0) and gaps.lost_fraction() == 0.0
    assert gaps.unstamped_in_window() == 1
    clock.now += 31.0
    assert gaps.unstamped_in_window() == 0 and gaps.unstamped == 1  # the window forgets, the total stays


def test_stamp_gaps_forget_what_left_the_window():
    from fleetloop_core.stream_health import StampGaps

    clock = _Clock()
    gaps = StampGaps(window_s=10.0, clock=clock)
    _feed(gaps, clock, [i * 100 for i in range(40) if i % 4 != 3])  # one in four lost (the last one unseen)
    assert gaps.counts() == (30, 9)
    clock.now += 11.0
    _feed(gaps, clock, [10_000 + i * 100 for i in range(20)])
    assert gaps.counts() == (20, 0)


def test_liveness_measures_the_time_since_the_last_turn():
    from fleetloop_core.stream_health import Liveness, liveness_check

    clock = _Clock()
    liveness = Liveness(clock)
    clock.now += 0.1
    liveness.beat()
    clock.now += 2.5
    assert liveness.stalled_s() == pytest.approx(2.5)
    health = HealthConfig()
    frozen = liveness_check(liveness.stalled_s(), health, {})
    assert (
        frozen.level == ERROR and "has not answered for 2.5 s" in frozen.message and "exits at 10 s" in frozen.message
    )
    liveness.beat()
    assert liveness.longest_s == pytest.approx(2.5) and liveness_check(liveness.stalled_s(), health, {}).level == OK


def test_frozen_exit_cannot_come_before_the_deadline():
    with pytest.raises(ConfigError, match=r"frozen_exit_s \(1.0\) must be 0 or >= frame_deadline_s \(2.0\)"):
        validate(HealthConfig, {"frozen_exit_s": 1.0}, source="robot.yaml")
    assert validate(HealthConfig, {"frozen_exit_s": 0}, source="robot.yaml").frozen_exit_s == 0


def test_repeated_sample_fires_on_the_same_bad_bytes_only():
    from fleetloop_core.stream_health import RepeatedSample

    repeats = RepeatedSample(limit=3)
    assert [repeats.bad(b"") for _ in range(3)] == [False, False, True]
    assert not any(repeats.bad(bytes([i]) * 100) for i in range(10))  # distinct garbage: counted, no reset
    repeats.bad(b"x")
    repeats.good()
    assert [repeats.bad(b"x") for _ in range(2)] == [False, False]


def _stream(**values):
    from fleetloop_core.stream_health import StreamFacts

    base = dict(
        topic="/r/camera/image_raw",
        type_name="sensor_msgs/msg/Image",
        reliable=True,
        matched=1,
        publishers=(),
        received=300,
        lost=0,
        lost_fraction=0.0,
    )
    base.update(values)
    return StreamFacts(**base)


def test_input_check_names_topic_and_cause():
    from fleetloop_core.stream_health import PublisherFacts, input_check

    health = HealthConfig()
    camera = PublisherFacts(node="/camera_driver", type_name="sensor_msgs/msg/Image", reliable=True)
    best_effort = PublisherFacts(node="/usb_cam", type_name="sensor_msgs/msg/Image", reliable=False)
    assert input_check([_stream(publishers=(camera,))], health, 30).level == OK

    none = input_check([_stream(matched=0, received=0, lost_fraction=None)], health, 30, transport="udp")
    assert none.level == WARN and none.message == "/r/camera/image_raw: no publisher"
    hinted = input_check([_stream(matched=0, received=0, lost_fraction=None)], health, 30, transport="large_data")
    assert "another DDS vendor is not discovered with dds.transport large_data" in hinted.message

    qos = input_check([_stream(matched=0, received=0, lost_fraction=None, publishers=(best_effort,))], health, 30)
    assert (
        qos.level == WARN
        and "/usb_cam offers best effort, this node requests reliable" in qos.message
        and "RELIABILITY" in qos.message
    )
    event = input_check(
        [_stream(matched=0, received=0, publishers=(best_effort,), incompatible_policy="RELIABILITY")], health, 30
    )
    assert "incompatible QoS (RELIABILITY): it offers best effort" in event.message

    foreign = PublisherFacts(node="", type_name="sensor_msgs/msg/Image", reliable=True)
    waiting = input_check([_stream(matched=0, received=0, publishers=(foreign,), unmatched_s=1.0)], health, 30)
    assert waiting.level == OK  # discovery comes a moment before the match
    refused = input_check([_stream(matched=0, received=0, publishers=(foreign,), unmatched_s=5.0)], health, 30)
    assert (
        refused.level == WARN and "none matched" in refused.message and "dds.type_propagation: false" in refused.message
    )

    silent = input_check([_stream(received=0, lost_fraction=None, publishers=(camera,))], health, 30)
    assert silent.level == WARN and silent.message.endswith("publisher matched but no frames in the 30 s window")
    refusing = input_check([_stream(received=0, lost_fraction=None, publishers=(foreign,))], health, 30)
    assert "publisher without ROS" in refusing.message and "dds.type_propagation: false" in refusing.message

    wrong = PublisherFacts(node="/cam", type_name="sensor_msgs/msg/CompressedImage", reliable=True)
    assert (
        "publishes sensor_msgs/msg/CompressedImage, this node subscribes sensor_msgs/msg/Image"
        in input_check([_stream(matched=0, received=0, publishers=(wrong,))], health, 30).message
    )


def test_input_check_grades_frames_lost_in_transport():
    from fleetloop_core.stream_health import input_check

    health = HealthConfig()
    assert input_check([_stream(received=290, lost=4, lost_fraction=4 / 294)], health, 30).level == OK
    lossy = input_check([_stream(received=100, lost=50, lost_fraction=50 / 150)], health, 30)
    assert lossy.level == ERROR and "50 of 150 frames lost in transport (0.333 >= 0.2, ERROR)" in lossy.message
    assert lossy.values["/r/camera/image_raw.lost_in_window"] == "50"
    assert input_check([_stream(undeliverable=3)], health, 30).level == WARN
    unstamped = input_check([_stream(received=300, unstamped=300, lost_fraction=None)], health, 30)
    assert unstamped.level == WARN and "300 of 300 frames in the window carry no header stamp" in unstamped.message
    assert unstamped.values["/r/camera/image_raw.unstamped_in_window"] == "300"
