"""Live parameters with real rclpy: another node re-tunes the robot through the parameter services.

The selector's budget is lowered while frames stream and the kept rate follows; out-of-range,
unknown and read-only values are rejected with a reason and the old value stays. The pure part
(core config model -> parameter descriptors) is checked without a graph.
"""

from __future__ import annotations

import math

import pytest
from rcl_interfaces.msg import ParameterType

# every frame is a candidate (threshold 0, no dedup); the budget alone decides what is kept
BUDGETED = {
    "/**/selector": {
        "selection.policy.name": "threshold",
        "selection.policy.params": {"threshold": 0.0},
        "selection.dedup.enabled": False,
        "selection.random_fraction": 0.0,
        "selection.budget.frames_per_hour": 36000.0,
        "selection.budget.burst_seconds": 1.0,
        "selection.budget.bytes_per_hour": 1.0e12,
    },
    "/**/perception": {"image_qos": "reliable", "cascade.latency_budget_ms": 1000.0},
}


@pytest.fixture(scope="module")
def frames():
    from fleetloop_ros.camera_frames import sim_frames

    return sim_frames(20, 128, 128)


def _kept_per_s(decisions, stamps: list[int]) -> float:
    """Kept frames per second of stamp time among the decisions for ``stamps``."""
    wanted = set(stamps)
    kept = sum(1 for d in decisions if d.keep and d.header.stamp.sec * 1_000_000_000 + d.header.stamp.nanosec in wanted)
    return kept / ((stamps[-1] - stamps[0]) / 1e9)


def test_budget_set_from_another_node_changes_the_kept_rate(ros, robot, frames):
    from fleetloop_interfaces.msg import FrameDecision, FrameResult
    from sensor_msgs.msg import Image

    robot(ros.namespace, BUDGETED)
    decisions = ros.collect(FrameDecision, "frame_decisions")
    results = ros.collect(FrameResult, "frame_results")
    camera = ros.publisher(Image, "camera/image_raw")
    ros.wait_for_publishers(["frame_decisions"])
    ros.wait_for_subscribers(camera)

    # 10 frames/s of budget (burst 1 s) against a 20 Hz stream: about half is kept
    before = ros.stream(camera, frames, 20.0, 60, answers=results)
    ros.spin_until(lambda: len(decisions) >= 60, 30, "decisions of the first phase")
    high = _kept_per_s(decisions, before[10:])  # after the initial burst

    (result,) = ros.set_parameters("selector", {"selection.budget.frames_per_hour": 3600.0})
    assert result.successful, result.reason
    after = ros.stream(camera, frames, 20.0, 60, answers=results)
    ros.spin_until(lambda: len(decisions) >= 120, 30, "decisions of the second phase")
    low = _kept_per_s(decisions, after[5:])
    assert len(results) == 120  # every frame answered, before and after
    assert 5.0 <= high <= 13.0, high  # ~10 kept per second (budget, or the stream if slower)
    assert low <= 2.0 and low < high / 3, (low, high)  # ~1 kept per second once the budget is 3600/h
    assert ros.get_parameters("selector", ["selection.budget.frames_per_hour"]) == [3600.0]

    # bad values are refused with a reason, and the value in force stays
    refused = {
        "selection.budget.frames_per_hour": (-5.0, "out of range"),  # descriptor range
        "selection.policy.name": ("nope", "unknown selection policy 'nope' (known:"),  # core registry
        "selection.policy.params.threshold": (1.5, "out of range"),
        "queue.directory": ("/elsewhere", "read-only"),  # needs a restart
    }
    for name, (value, reason) in refused.items():
        (result,) = ros.set_parameters("selector", {name: value})
        assert not result.successful and reason in result.reason, (name, result.reason)
    (result,) = ros.set_parameters("selector", {"selection.budget.frames_per_hour": 0.0})
    assert not result.successful and "frames_per_hour: Input should be greater than 0" in result.reason
    assert ros.get_parameters("selector", ["selection.budget.frames_per_hour", "selection.policy.name"]) == [
        3600.0,
        "threshold",
    ]

    # a policy switch applies with its parameters; the perception thresholds are live too
    (result,) = ros.set_parameters("selector", {"selection.policy.name": "random"})
    assert result.successful, result.reason
    (result,) = ros.set_parameters("perception", {"cascade.escalate_above": 1.5})
    assert not result.successful and "out of range" in result.reason
    (result,) = ros.set_parameters("perception", {"cascade.escalation_signal": "loudness"})
    assert not result.successful and "escalation_signal" in result.reason
    # the detectors' block is a parameter too, but these models are classifiers: refused, not silently ignored
    (result,) = ros.set_parameters("perception", {"detection.escalate_above": 0.0})
    assert not result.successful and "set cascade.* instead" in result.reason, result.reason
    (result,) = ros.set_parameters("perception", {"cascade.escalate_above": 0.0})
    assert result.successful, result.reason
    escalating = ros.stream(camera, frames, 20.0, 10, answers=results)
    ros.spin_until(lambda: len(results) >= 130, 30, "results after escalate_above=0")
    late = [r for r in results if r.header.stamp.sec * 1_000_000_000 + r.header.stamp.nanosec in set(escalating)]
    assert all(r.escalated and r.tier_used == "T3" for r in late)


def test_parameter_descriptors_come_from_the_core_models():
    from fleetloop_core.cascade import CascadeConfig
    from fleetloop_ros.parameters import parameter_specs, to_nested
    from fleetloop_ros.selector import keep_active_policy_params, policy_param_specs
    from fleetloop_ros.settings import PERCEPTION_READ_ONLY, PerceptionSettings

    specs = {s.name: s for s in parameter_specs(PerceptionSettings(), PERCEPTION_READ_ONLY)}
    escalate = specs["cascade.escalate_above"].descriptor()
    assert escalate.type == ParameterType.PARAMETER_DOUBLE and not escalate.read_only
    assert (escalate.floating_point_range[0].from_value, escalate.floating_point_range[0].to_value) == (0.0, 1.0)
    budget = specs["cascade.latency_budget_ms"].descriptor().floating_point_range[0]
    assert budget.from_value == 0.0 and math.isinf(budget.to_value)
    signal = specs["cascade.escalation_signal"].descriptor()
    assert "entropy, margin, least_confidence" in signal.additional_constraints
    assert specs["models_dir"].descriptor().read_only and specs["cascade.novelty_memory"].descriptor().read_only
    assert specs["image_topics"].type == ParameterType.PARAMETER_STRING_ARRAY
    assert set(CascadeConfig.model_fields) == {n.split(".", 1)[1] for n in specs if n.startswith("cascade.")}
    nested = to_nested({s.name: s.value for s in specs.values()}, specs)
    assert PerceptionSettings.model_validate(nested) == PerceptionSettings()

    # every key any selection policy takes is one parameter; only the active policy's reach the selector
    policy = {s.name.rsplit(".", 1)[1]: s for s in policy_param_specs("threshold")}
    assert {"threshold", "window", "fraction", "max_share"} <= set(policy)
    assert policy["threshold"].value == 0.5 and policy["window"].type == ParameterType.PARAMETER_INTEGER
    reduced = keep_active_policy_params(
        {"selection": {"policy": {"name": "random", "params": {"fraction": 0.1, "window": 3}}}}
    )
    assert reduced["selection"]["policy"]["params"] == {"fraction": 0.1}
