"""The demos' in-process robot: one class for both tasks, what differs per task coming from its RobotSpec."""

import pytest

from fleetloop_core.contracts.sidecar import Sidecar

from fixtures.demo_fleet import fleet_settings

from fleetloop_cloud.demo.arms import RandomUploadFleet
from fleetloop_cloud.demo.fleet import InProcessRobot, robot_specs


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
