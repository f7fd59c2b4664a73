"""fleetloop_core.health: grading against thresholds, rolling rates and latency percentiles."""

from __future__ import annotations

import math

import pytest

from fleetloop_core.config import validate
from fleetloop_core.errors import ConfigError
from fleetloop_core.health import (ERROR, OK, STALE, WARN, HealthConfig, LatencyWindow, RollingEvents, Thresholds,
                                   check, grade, worst)


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


def test_rolling_events_count_rate_and_size_within_the_window():
    now = [100.0]
    events = RollingEvents(10.0, clock=lambda: now[0])
    for _ in range(5):
        now[0] += 1.0
        events.add(size=100, count=2)
    assert events.count() == 10 and events.size() == 500 and events.total == 10
    assert events.per_second() == pytest.approx(10 / 5.0)      # younger than the window: its real span
    now[0] += 8.5                                              # the first three additions fall out
    assert events.count() == 4 and events.size() == 200 and events.total == 10
    assert events.per_second() == pytest.approx(4 / 10.0)


def test_latency_window_percentiles_in_ms():
    window = LatencyWindow(capacity=100)
    assert window.percentile_ms(50) is None
    for ms in range(1, 201):                                    # only the last 100 stay: 101..200 ms
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
