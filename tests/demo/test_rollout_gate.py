"""The demos' rollout gate: a round's new models swap in before the same frame of each robot's stream every run."""

from __future__ import annotations

import threading

import pytest

from fleetloop_core.contracts.manifest import MANIFEST_NAME, load_manifest
from fleetloop_core.contracts.sidecar import Sidecar
from fleetloop_core.model_store import publish_package

from fixtures.demo_fleet import fleet_settings
from fixtures.model_packages import make_version
from fleetloop_cloud.demo.arms import RandomUploadFleet
from fleetloop_cloud.demo.config import RobotOverrides
from fleetloop_cloud.demo.fleet import InProcessRobot, robot_specs
from fleetloop_cloud.demo.rollout_gate import RolloutGate, roll_out_in_background
from fleetloop_cloud.demo.watch_feed import watch_frames
from fleetloop_cloud.fleet_jobs import RolloutConfig, deploy_document
from fleetloop_cloud.job_service_local import LocalDirJobs
from fleetloop_cloud.rollout import rollout

T4_NEW = [{"variant": "T4", "version": "r1-new", "status": "Approved"}]


def test_a_robot_is_held_until_every_rollout_it_waits_for_has_ended():
    gate = RolloutGate()
    gate.expect(T4_NEW + [{"variant": "T3", "version": "r1-new", "status": "Approved", "task": "classification"}])
    held = threading.Thread(target=gate.hold)
    held.start()
    try:
        gate.ended("T4")
        held.join(0.2)
        assert held.is_alive()  # T3's rollout has not ended
        gate.ended("T3")
        held.join(30.0)
        assert not held.is_alive()
    finally:
        gate.end_all()
        held.join()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the failure raised on purpose
def test_nothing_is_held_for_a_tier_not_approved_or_once_the_rollouts_failed():
    gate = RolloutGate()
    gate.expect([{"variant": "T3", "version": "r1-new", "status": "Rejected"}])
    gate.hold()  # returns: nothing expected
    records: list[list[dict]] = []

    def failing(on_record):
        raise RuntimeError("the job service went away")

    thread = roll_out_in_background(gate, failing, T4_NEW, records.append, "deploy-test")
    thread.join()
    gate.hold()  # returns: the thread ended, however it ended
    assert records == []


def test_an_in_process_robot_swaps_in_a_rollout_before_its_rounds_first_frame(tmp_path, test_models):
    # a window the test would wait out: the watch must end on its frames, which the watch feed serves
    settings, private = fleet_settings(tmp_path, test_models["T4"].parent, RobotOverrides(watchdog_window_s=60.0))
    packages = settings.packages
    old = load_manifest(packages["T4"]).version
    new = make_version(packages["T4"], tmp_path / "r1", "r1-new", private.read_bytes())
    bucket = f"file://{tmp_path / 'bucket'}"
    document = deploy_document(
        load_manifest(new), bucket, publish_package(new, bucket), (new / MANIFEST_NAME).read_bytes()
    )
    frames = 40
    gate = RolloutGate()
    spec = robot_specs(1, world_seed=3)[0]
    robot = InProcessRobot(spec, settings, selection_override=RandomUploadFleet.KEEP_ALL, gate=gate)
    robot.start()
    config = RolloutConfig(canary_count=1, canary_timeout_s=60, fleet_timeout_s=60, poll_s=0.05)
    reports: list = []

    def run(on_record):
        report = rollout(LocalDirJobs(tmp_path / "jobs"), [spec.robot_id], document, "r1-T4", config)
        on_record({"tier": "T4"})
        return [report]

    try:
        robot.stream(100)  # round 1: frames for the shadow check's ring (one of every 10 kept)
        deploy = roll_out_in_background(gate, run, T4_NEW, reports.extend, "deploy-test")
        robot.stream(frames)
        deploy.join()
    finally:
        robot.stop()
    assert reports and reports[0].succeeded, reports
    sidecars = sorted(
        (Sidecar.model_validate_json(p.read_text()) for p in (tmp_path / "store").rglob("*.json")),
        key=lambda s: s.stamp_ns,
    )
    served = [s.model_versions.get("T4") for s in sidecars[100:]]
    assert len(sidecars) == 100 + frames and {s.model_versions.get("T4") for s in sidecars[:100]} == {old}
    assert served == ["r1-new"] * frames  # the whole round; without the gate, the frames streamed before the job came
    # the watch judged the feed's frames while the robot waited for its round, none of the round's
    passed = [e for e in robot.manager.events() if e.kind == "watch_passed"]
    assert [e.detail for e in passed] == ["300 frames without crossing a limit"], passed
    assert robot.watch_feed is not None and robot.watch_feed.frames == 300


def test_every_watch_of_a_role_on_a_robot_judges_the_same_frames_in_every_arm():
    robot_0, robot_1 = robot_specs(2, world_seed=3)

    def first(spec, role, count=3):
        frames = watch_frames(spec, role)
        return [next(frames).image for _ in range(count)]

    same = first(robot_0, "escalation")
    assert all((a == b).all() for a, b in zip(same, first(robot_0, "escalation")))  # another watch, another arm
    assert not all((a == b).all() for a, b in zip(same, first(robot_0, "edge")))
    assert not all((a == b).all() for a, b in zip(same, first(robot_1, "escalation")))
