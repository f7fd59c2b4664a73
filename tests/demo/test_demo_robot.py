"""The demos' in-process robot: one class for both tasks, what differs per task coming from its RobotSpec."""

import pytest
import yaml

from fleetloop_core.cascade import CascadeConfig
from fleetloop_core.config import validate
from fleetloop_core.contracts.sidecar import Sidecar

from fixtures.demo_fleet import fleet_settings

from fleetloop_cloud.demo.arms import RandomUploadFleet
from fleetloop_cloud.demo.config import RobotOverrides
from fleetloop_cloud.demo.fleet import InProcessRobot, robot_specs
from fleetloop_cloud.demo.ros_fleet import RosFleet


@pytest.mark.parametrize("task, models", [("classification", "test_models"), ("detection", "detection_models")])
def test_a_robot_of_either_task_uploads_the_offered_frames_with_their_truth(tmp_path, request, task, models):
    settings, _ = fleet_settings(tmp_path, request.getfixturevalue(models)["T4"].parent)
    spec = robot_specs(2, world_seed=3, task=task)[1]
    robot = InProcessRobot(spec, settings, selection_override=RandomUploadFleet.KEEP_ALL)
    robot.start()
    offered = {0, 5, 17, 30}
    try:
        done = robot.stream(40, offer_only=offered)
    finally:
        robot.stop()
    frames = list(spec.camera().frames(40, render=False))  # the same stream, truth only
    assert frames[0].stamp_ns == spec.start_ns
    sidecars = sorted(
        (Sidecar.model_validate_json(p.read_text()) for p in (tmp_path / "store").rglob("*.json")),
        key=lambda s: s.stamp_ns,
    )
    assert (done.frames, done.answered, done.kept, done.uploaded) == (40, 40, 4, 4)
    assert [s.stamp_ns for s in sidecars] == [frames[i].stamp_ns for i in sorted(offered)]
    for sidecar, index in zip(sidecars, sorted(offered)):
        truth = frames[index].truth
        assert (sidecar.robot_id, sidecar.stream, sidecar.site) == ("robot-1", spec.stream, "site-1")
        simulation = sidecar.simulation
        assert simulation is not None and (simulation.label, simulation.track_id) == (truth.label, truth.track_id)
        if task == "detection":  # the true boxes; a frame of several items has no one item
            assert simulation.boxes == truth.rows() and simulation.item == -1
        else:
            assert simulation.boxes is None and simulation.item == truth.item
    assert any(s.simulation.boxes for s in sidecars) == (task == "detection")


@pytest.mark.parametrize("task, models", [("classification", "test_models"), ("detection", "detection_models")])
def test_the_demo_robots_escalate_within_the_demo_latency_budget_not_the_robot_default(tmp_path, request, task, models):
    # robots sharing 2 cores with each other and the cloud: a frame preempted past robot.yaml's 20 ms for
    # T4 + T3 skipped T3 by the machine's load (two ROS runs of one seed uploaded different frames)
    robot = RobotOverrides(cascade_latency_budget_ms=750.0)
    settings, _ = fleet_settings(tmp_path, request.getfixturevalue(models)["T4"].parent, robot)
    spec = robot_specs(1, world_seed=3, task=task)[0]
    in_process = InProcessRobot(spec, settings)
    try:
        config = in_process.cascade.config
    finally:
        in_process.stop()  # its queue and model manager are open from construction
    default = type(config)()
    assert default.latency_budget_ms < 750.0  # 20 ms for classifiers, 40 for detectors
    assert config.latency_budget_ms == 750.0
    assert config.model_dump(exclude={"latency_budget_ms"}) == default.model_dump(exclude={"latency_budget_ms"})
    if task == "classification":  # the ROS robots' parameter file (the ROS demo's robots are classifiers)
        written = yaml.safe_load(RosFleet([spec], settings)._robot_yaml(spec).read_text())
        block = written["/**/perception"]["ros__parameters"]["cascade"]
        config = validate(CascadeConfig, block, source="the demo's robot.yaml")
        assert config.latency_budget_ms == 750.0 and config.escalate_above == CascadeConfig().escalate_above
