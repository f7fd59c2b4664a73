"""Local control plane (job directory), the IoT Jobs documents, the control-plane registry and the deploy agent."""

from __future__ import annotations

import json
import time

import pytest

from fleetloop_core.contracts import iot_jobs
from fleetloop_core.control_plane import (
    ControlPlaneConfig,
    ControlPlaneError,
    Job,
    LocalControlPlane,
    load_control_plane_config,
    open_control_plane,
    write_json_atomic,
)
from fleetloop_core.mqtt_control_plane import MqttControlPlane
from fleetloop_core.deploy_agent import DeployAgent
from fleetloop_core.errors import ConfigError


def _queue(directory, thing, job_id, document, queued_at):
    write_json_atomic(
        directory / thing / "queued" / f"{job_id}.json",
        {"jobId": job_id, "jobDocument": document, "queuedAt": queued_at, "status": "QUEUED"},
    )


def test_local_plane_claims_in_progress_first_then_oldest_queued(tmp_path):
    plane = LocalControlPlane(tmp_path, "robot-0", poll_s=0.01)
    _queue(tmp_path, "robot-0", "late", {"n": 2}, 200)
    _queue(tmp_path, "robot-0", "early", {"n": 1}, 100)
    first = plane.next_job(0.1)
    assert first.job_id == "early" and first.document == {"n": 1}
    assert plane.next_job(0.1).job_id == "early"  # still IN_PROGRESS: comes back (as IoT start-next)
    plane.update(first, "SUCCEEDED", {"serving_version": "v2", "agreement": 0.97})
    status = json.loads((tmp_path / "robot-0" / "status" / "early.json").read_text())
    assert status["status"] == "SUCCEEDED" and status["statusDetails"] == {"serving_version": "v2", "agreement": "0.97"}
    assert (tmp_path / "robot-0" / "done" / "early.json").exists()
    assert plane.next_job(0.1).job_id == "late"
    with pytest.raises(ControlPlaneError, match="already SUCCEEDED, cannot become FAILED"):
        plane.update(first, "FAILED", {})
    plane.update(Job("late", {}), "REJECTED", {"reason": "bad document"})
    assert plane.next_job(0.05) is None


def test_other_robots_jobs_are_invisible(tmp_path):
    _queue(tmp_path, "robot-1", "theirs", {}, 1)
    assert LocalControlPlane(tmp_path, "robot-0", poll_s=0.01).next_job(0.05) is None


def test_iot_jobs_documents_follow_the_aws_shapes():
    assert iot_jobs.notify_next_topic("robot-0") == "$aws/things/robot-0/jobs/notify-next"
    assert iot_jobs.update_topic("robot-0", "j1", "fleetloop") == "fleetloop/things/robot-0/jobs/j1/update"
    assert iot_jobs.parse_jobs_topic("$aws/things/robot-0/jobs/j1/update/accepted") == (
        "robot-0",
        ["j1", "update", "accepted"],
    )
    request = iot_jobs.update_request(
        "FAILED", "tok", {"reason": "x" * 5000, "agreement": 0.5, "none": None}, execution_number=2
    )
    assert request["status"] == "FAILED" and request["executionNumber"] == 2 and request["clientToken"] == "tok"
    assert len(request["statusDetails"]["reason"]) == 1024 and request["statusDetails"]["agreement"] == "0.5"
    assert "none" not in request["statusDetails"]
    with pytest.raises(ValueError, match="not one a device may set"):
        iot_jobs.update_request("CANCELED", "tok")
    with pytest.raises(ValueError, match="invalid thing name"):
        iot_jobs.jobs_topic("robot/+", "get")


def test_registry_picks_by_scheme_and_names_the_known_ones(tmp_path):
    local = open_control_plane(ControlPlaneConfig(uri=f"file://{tmp_path}", thing_name="r"))
    assert isinstance(local, LocalControlPlane)
    mqtt = open_control_plane(ControlPlaneConfig(uri="mqtts://127.0.0.1:8883", thing_name="r"))
    assert isinstance(mqtt, MqttControlPlane) and mqtt.port == 8883 and mqtt.prefix == "$aws"
    with pytest.raises(ConfigError, match="unknown scheme 'amqp' \\(known: file, mqtts\\)"):
        open_control_plane(ControlPlaneConfig(uri="amqp://x", thing_name="r"), "robot.yaml: control_plane")
    with pytest.raises(ConfigError, match="control_plane.mqtt.ca_file: /etc/fleetloop/tls/ca.pem does not exist"):
        mqtt.start()  # the default certificate paths do not exist here


def test_config_section_loads(repo_root):
    config = load_control_plane_config(str(repo_root / "config" / "model_manager.yaml"))
    assert config.mqtt.topic_prefix == "$aws"


def test_agent_reports_progress_and_final_status_and_a_redelivered_job_is_applied_once(
    tmp_path, test_models, signing_keys
):
    from fleetloop_sim import sim
    from fixtures.model_packages import Robot

    frames = [f.image for f in sim.CameraStream(sim.make_site(0, 0), "robot-0", seed=2).frames(8)]
    robot = Robot(tmp_path, test_models, signing_keys, frames)
    plane = LocalControlPlane(tmp_path / "jobs", "robot-0", poll_s=0.01)
    agent = DeployAgent(plane, robot.manager, poll_s=0.05)
    _queue(tmp_path / "jobs", "robot-0", "j1", robot.job(robot.package("v2")), 1)
    with robot:
        assert agent.run_once(0.5).status == "SUCCEEDED"
        status = json.loads((tmp_path / "jobs" / "robot-0" / "status" / "j1.json").read_text())
        assert status["status"] == "SUCCEEDED" and status["statusDetails"]["serving_version"] == "v2"
        # the robot crashed before its report reached the cloud: the job is IN_PROGRESS again
        (tmp_path / "jobs" / "robot-0" / "done" / "j1.json").rename(
            tmp_path / "jobs" / "robot-0" / "in_progress" / "j1.json"
        )
        (tmp_path / "jobs" / "robot-0" / "status" / "j1.json").unlink()
        assert agent.run_once(0.5).status == "SUCCEEDED"
        assert agent.run_once(0.05) is None
    assert robot.kinds().count("swapped") == 1 and robot.kinds()[-1] == "duplicate_job"  # applied once


def test_stopping_the_agent_ends_a_watch_still_waiting_for_frames(tmp_path, test_models, signing_keys):
    # the robot shuts down right after a swap, its camera already stopped: the watch would wait up to its 60 s
    # for frames; stop() ends it (unjudged) so the job finishes, instead of waiting it out or leaving the thread
    from fleetloop_sim import sim
    from fixtures.model_packages import Robot, manager_config
    from fleetloop_core.model_checks import WatchdogConfig

    frames = [f.image for f in sim.CameraStream(sim.make_site(0, 0), "robot-0", seed=2).frames(12)]
    config = manager_config(watchdog=WatchdogConfig(window_frames=50, min_frames=5, window_s=1.0, unjudged_after_s=60))
    robot = Robot(tmp_path, test_models, signing_keys, frames, config)
    robot.serve(12)  # the shadow check's frames; then the camera stops
    agent = DeployAgent(LocalControlPlane(tmp_path / "jobs", "robot-0", poll_s=0.01), robot.manager, poll_s=0.05)
    _queue(tmp_path / "jobs", "robot-0", "j1", robot.job(robot.package("v2")), 1)
    agent.start()
    try:
        while robot.manager.status().watching is None:
            time.sleep(0.01)
    finally:
        started = time.monotonic()
        agent.stop()
        stopped_s = time.monotonic() - started
        robot.manager.close()
    assert not agent._thread.is_alive() and stopped_s < 20.0  # the agent waits at most 30 s for a job
    (outcome,) = agent.outcomes
    assert outcome.status == "SUCCEEDED" and outcome.details["watch_judged"] == "false", outcome
    assert "with 0 frames" in outcome.reason


def test_job_dataclass_defaults():
    job = Job("j", {})
    assert job.version_number is None and job.execution_number is None
