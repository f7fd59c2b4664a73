"""Fleet rollout: local job directory with in-process robots, the abort rule, AWS IoT create_job on moto's server."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from fixtures.model_packages import Robot, manager_config, make_version
from fleetloop_cloud.deploy import open_fleet_jobs
from fleetloop_cloud.fleet_jobs import DeployError, RolloutConfig, deploy_document, rollback_document
from fleetloop_cloud.job_service_aws import AwsIotJobs
from fleetloop_cloud.job_service_local import LocalDirJobs
from fleetloop_cloud.rollout import rollout, wait_for_reports
from fleetloop_core.control_plane import LocalControlPlane
from fleetloop_core.deploy_agent import DeployAgent
from fleetloop_core.errors import ConfigError
from fleetloop_core.contracts.manifest import MANIFEST_NAME, load_manifest
from fleetloop_core.model_checks import ShadowConfig, WatchdogConfig
from fleetloop_core.model_store import publish_package


@pytest.fixture(scope="module")
def frames():
    from fleetloop_sim import sim

    return [f.image for f in sim.CameraStream(sim.make_site(1, 0), "robot-x", seed=1).frames(12)]


class Fleet:
    """Robots in threads, each with a deploy agent on the local job directory."""

    def __init__(self, tmp_path, test_models, signing_keys, frames, things, configs=None):
        self.jobs_dir = tmp_path / "jobs"
        self.robots, self.agents = {}, {}
        for thing in things:
            config = (configs or {}).get(thing, manager_config(watchdog=WatchdogConfig(window_frames=8, min_frames=3)))
            robot = Robot(tmp_path / thing, test_models, signing_keys, frames, config, period_s=0.01)
            self.robots[thing] = robot
            self.agents[thing] = DeployAgent(
                LocalControlPlane(self.jobs_dir, thing, poll_s=0.02), robot.manager, poll_s=0.1
            )

    def __enter__(self):
        for thing, robot in self.robots.items():
            robot.__enter__()
            self.agents[thing].start()
        return self

    def __exit__(self, *exc):
        for thing, robot in self.robots.items():
            self.agents[thing].stop()
            robot.__exit__(*exc)


def _document(robot, version, fault=None, bucket=None):
    package = robot.package(version, fault=fault)
    prefix = publish_package(package, bucket)
    return deploy_document(load_manifest(package), bucket, prefix, (package / MANIFEST_NAME).read_bytes())


def test_local_rollout_canary_then_fleet(tmp_path, test_models, signing_keys, frames):
    things = ["robot-a", "robot-b", "robot-c"]
    with Fleet(tmp_path, test_models, signing_keys, frames, things) as fleet:
        bucket = f"file://{tmp_path / 'bucket'}"
        document = _document(fleet.robots["robot-a"], "v2", bucket=bucket)
        report = rollout(
            LocalDirJobs(fleet.jobs_dir),
            things,
            document,
            "r1",
            RolloutConfig(canary_count=1, canary_timeout_s=60, fleet_timeout_s=60, poll_s=0.05),
        )
    assert report.succeeded, report.to_dict()
    assert report.canary.things == ["robot-a"] and report.fleet.things == ["robot-b", "robot-c"]
    assert {r.cascade.edge.version for r in fleet.robots.values()} == {"v2"}
    assert report.canary.results["robot-a"]["details"]["serving_version"] == "v2"
    assert report.canary.unjudged() == [] and report.canary.results["robot-a"]["details"]["watch_judged"] == "true"


def _canary_rollout(tmp_path, robot):
    """Roll v2 out to ``robot`` alone, as robot-a with its deploy agent on the local job directory; return
    the report (the agent stopped and the manager closed)."""
    agent = DeployAgent(LocalControlPlane(tmp_path / "jobs", "robot-a", poll_s=0.02), robot.manager, poll_s=0.1)
    agent.start()
    try:
        document = _document(robot, "v2", bucket=f"file://{tmp_path / 'bucket'}")
        config = RolloutConfig(canary_count=1, canary_timeout_s=60, poll_s=0.05)
        return rollout(LocalDirJobs(tmp_path / "jobs"), ["robot-a"], document, "r1", config)
    finally:
        agent.stop()
        robot.manager.close()


def test_a_canary_whose_camera_stopped_after_the_swap_succeeds_unjudged(
    tmp_path, test_models, signing_keys, frames, caplog
):
    # its watch waits for frames past its window, up to unjudged_after_s, and ends with none seen: the
    # rollout says so instead of "succeeded" alone
    config = manager_config(watchdog=WatchdogConfig(window_frames=8, min_frames=3, window_s=0.5, unjudged_after_s=1.5))
    robot = Robot(tmp_path / "robot-a", test_models, signing_keys, frames, config)
    robot.serve(12)  # the shadow check's frames; then the camera stops
    with caplog.at_level("INFO", logger="fleetloop_cloud.rollout"):
        report = _canary_rollout(tmp_path, robot)
    details = report.canary.results["robot-a"]["details"]
    assert report.canary.succeeded() == ["robot-a"] and robot.cascade.edge.version == "v2"
    assert details["watch_frames"] == "0" and details["watch_judged"] == "false"
    waited = re.search(
        r"watch unjudged: it ended ([0-9.]+) s after the swap with 0 frames, fewer than the 3 ", details["reason"]
    )
    assert waited and float(waited.group(1)) >= 1.5, details["reason"]  # not at its 0.5 s window: it waited
    assert report.canary.unjudged() == ["robot-a"]
    assert "unjudged (their watch saw too few frames): robot-a" in caplog.text
    assert robot.manager.events()[-1].detail.startswith("unjudged: ")


def test_with_unjudged_canaries_abort_a_canary_that_judged_nothing_stops_the_rollout(tmp_path):
    # the team's choice (config/deploy.yaml rollout.unjudged_canaries): no evidence for the model, no fleet phase
    jobs = LocalDirJobs(tmp_path)
    things = ["t0", "t1"]
    answered: list[tuple[str, str]] = []

    def robot(thing):
        plane = LocalControlPlane(tmp_path, thing, poll_s=0.01)
        while (job := plane.next_job(3.0)) is not None:
            answered.append((thing, job.job_id))
            judged = "true" if job.job_id.endswith("-rollback") else "false"
            plane.update(job, "SUCCEEDED", {"reason": "serving", "watch_judged": judged, "watch_frames": "0"})

    threads = [threading.Thread(target=robot, args=(t,), daemon=True) for t in things]
    for thread in threads:
        thread.start()
    document = {"model": {"name": "m", "tier": "T4", "version": "v2"}}
    config = RolloutConfig(canary_count=1, poll_s=0.02, unjudged_canaries="abort")
    report = rollout(jobs, things, document, "r1", config.model_copy(update={"canary_timeout_s": 30}))
    for thread in threads:
        thread.join(timeout=10)
    assert report.aborted and report.reason.startswith("canaries passed unjudged"), report.reason
    assert report.fleet is None and report.rollback.things == ["t0"]
    assert answered == [("t0", "r1-canary"), ("t0", "r1-rollback")]  # t1 never got the model
    assert RolloutConfig().unjudged_canaries == "proceed"  # the default: the fleet phase follows


def test_a_canary_whose_camera_resumes_after_its_window_is_judged_on_the_frames_it_waited_for(
    tmp_path, test_models, signing_keys, frames
):
    # the robot parked after the swap and drove on after the watch's window had passed: the watch waited for
    # its min_frames (instead of passing on none at window_s), judged them, and only then the job succeeded
    config = manager_config(watchdog=WatchdogConfig(window_frames=50, min_frames=5, window_s=0.5, unjudged_after_s=60))
    robot = Robot(tmp_path / "robot-a", test_models, signing_keys, frames, config)
    robot.serve(12)  # the shadow check's frames; then the camera stops
    swapped_at: list[float] = []

    def camera_resumes():
        while robot.cascade.edge.version != "v2":
            time.sleep(0.01)
        swapped_at.append(time.monotonic())
        time.sleep(1.0)  # twice the watch's window
        robot.serve(5)

    camera = threading.Thread(target=camera_resumes, daemon=True)
    camera.start()
    try:
        report = _canary_rollout(tmp_path, robot)
        ended_at = time.monotonic()
    finally:
        camera.join(timeout=30)
    details = report.canary.results["robot-a"]["details"]
    assert report.canary.succeeded() == ["robot-a"] and report.canary.unjudged() == []
    assert details["watch_judged"] == "true" and details["watch_frames"] == "5", details
    assert ended_at - swapped_at[0] >= 1.0  # the job did not end at the window, before the frames came
    assert robot.manager.events()[-1].detail == "5 frames without crossing a limit"


def _constant_model_rollout(tmp_path, test_models, signing_keys, frames, job_id, config, **options):
    """Roll a constant-output model out to robot-a, -b and -c, where only robot-b's checks are off (it
    takes the model, the others refuse it); return (the fleet, its jobs, the report)."""
    things = ["robot-a", "robot-b", "robot-c"]
    lax = manager_config(shadow=ShadowConfig(enabled=False), watchdog=WatchdogConfig(enabled=False))
    with Fleet(tmp_path, test_models, signing_keys, frames, things, {"robot-b": lax}) as fleet:
        bucket = f"file://{tmp_path / 'bucket'}"
        document = _document(fleet.robots["robot-a"], "v-const", fault="constant", bucket=bucket)
        jobs = LocalDirJobs(fleet.jobs_dir)
        report = rollout(jobs, things, document, job_id, config, previous_version="v1", **options)
    return fleet, jobs, report


def test_local_abort_rolls_back_the_canary_that_took_a_bad_model(tmp_path, test_models, signing_keys, frames):
    config = RolloutConfig(canary_count=2, canary_timeout_s=60, poll_s=0.05)
    fleet, jobs, report = _constant_model_rollout(tmp_path, test_models, signing_keys, frames, "r2", config)
    assert report.aborted and report.fleet is None
    assert report.canary.results["robot-a"]["status"] == "FAILED"
    assert report.rollback.things == ["robot-b"] and report.rollback.results["robot-b"]["status"] == "SUCCEEDED"
    assert {r.cascade.edge.version for r in fleet.robots.values()} == {"v1"}
    assert "v-const" not in fleet.robots["robot-c"].versions()
    assert jobs.executions("r2-fleet") == {}


def test_fleet_phase_aborts_on_the_failure_rate_and_cancels_the_queue(tmp_path):
    jobs = LocalDirJobs(tmp_path)
    things = [f"t{i}" for i in range(6)]
    jobs.create_job("j", things, {"operation": "fleetloop.deploy_model"})
    for thing, status in (("t0", "FAILED"), ("t1", "REJECTED"), ("t2", "SUCCEEDED")):
        plane = LocalControlPlane(tmp_path, thing, poll_s=0.01)
        job = plane.next_job(0.1)
        plane.update(job, status, {"reason": f"{thing} says {status}"})
    config = RolloutConfig(abort_failure_percent=50, abort_min_executed=3)
    states, reason = wait_for_reports(jobs, "j", things, timeout_s=5, poll_s=0.01, abort=config)
    assert "2 of 3 finished executions failed (67 % >= 50.0 %)" in reason
    assert {t: s.status for t, s in states.items()} == {
        "t0": "FAILED",
        "t1": "REJECTED",
        "t2": "SUCCEEDED",
        "t3": "CANCELED",
        "t4": "CANCELED",
        "t5": "CANCELED",
    }
    assert LocalControlPlane(tmp_path, "t3", poll_s=0.01).next_job(0.05) is None
    with pytest.raises(DeployError, match="exists already"):
        jobs.create_job("j", ["t0"], {})


def test_a_fleet_robot_that_finishes_its_job_after_the_abort_is_rolled_back_with_the_others(tmp_path):
    # t3 was swapping (its watch waiting for frames) when the fleet job was canceled; IoT Jobs lets it finish.
    # It took the model after the abort: the rollback goes to it too, so the fleet ends on one version.
    jobs = LocalDirJobs(tmp_path)
    things = ["t0", "t1", "t2", "t3", "t4"]  # t0 the canary; t4 is offline (its fleet job stays queued)
    rollbacks: list[str] = []

    def robot(thing):
        plane = LocalControlPlane(tmp_path, thing, poll_s=0.01)
        while True:
            job = plane.next_job(5.0)
            if job is None:
                return
            if job.job_id.endswith("-rollback"):
                rollbacks.append(thing)
                plane.update(job, "SUCCEEDED", {"reason": "serving v1"})
                return
            if thing in ("t1", "t2"):
                plane.update(job, "FAILED", {"reason": "shadow check failed"})
                return
            if thing == "t3" and job.job_id.endswith("-fleet"):
                plane.update(job, "IN_PROGRESS", {"step": "watching"})
                while jobs.executions(job.job_id)["t4"].status != "CANCELED":  # the abort
                    time.sleep(0.01)
            plane.update(job, "SUCCEEDED", {"reason": "serving v2", "watch_judged": "true"})

    threads = [threading.Thread(target=robot, args=(t,), daemon=True) for t in things[:4]]
    for thread in threads:
        thread.start()
    config = RolloutConfig(canary_count=1, abort_failure_percent=50, abort_min_executed=2, poll_s=0.02)
    config = config.model_copy(update={"canary_timeout_s": 30, "fleet_timeout_s": 30})
    report = rollout(jobs, things, {"model": {"name": "m", "tier": "T4", "version": "v2"}}, "r1", config)
    for thread in threads:
        thread.join(timeout=10)
    assert report.aborted and "2 of 2 finished executions failed" in report.reason, report.reason
    assert report.fleet.results["t3"]["status"] == "SUCCEEDED" and report.fleet.results["t3"]["after_abort"]
    assert report.fleet.results["t4"]["status"] == "CANCELED"  # it never started: nothing to roll back
    assert sorted(report.rollback.things) == ["t0", "t3"] and sorted(rollbacks) == ["t0", "t3"]


def test_a_canary_that_finishes_its_job_after_a_timeout_abort_is_rolled_back(tmp_path):
    # c0 is slow (a download on a thin link, a watch waiting for frames) and c1 is offline: the canary phase
    # times out and aborts; IoT Jobs lets c0 finish after the cancel, so it takes the model then and must go back
    jobs = LocalDirJobs(tmp_path)
    rollbacks: list[str] = []

    def slow_canary():
        plane = LocalControlPlane(tmp_path, "c0", poll_s=0.01)
        job = plane.next_job(5.0)
        plane.update(job, "IN_PROGRESS", {"step": "downloading"})
        while jobs.executions(job.job_id)["c1"].status != "CANCELED":  # the abort
            time.sleep(0.01)
        plane.update(job, "SUCCEEDED", {"reason": "serving v2", "watch_judged": "true"})
        back = plane.next_job(10.0)
        rollbacks.append(back.job_id)
        plane.update(back, "SUCCEEDED", {"reason": "serving v1"})

    thread = threading.Thread(target=slow_canary, daemon=True)
    thread.start()
    config = RolloutConfig(canary_count=2, poll_s=0.02).model_copy(update={"canary_timeout_s": 3})
    report = rollout(jobs, ["c0", "c1", "f0"], {"model": {"name": "m", "tier": "T4", "version": "v2"}}, "r1", config)
    thread.join(timeout=10)
    assert report.aborted and "did not report" in report.reason, report.reason
    assert report.canary.results["c0"]["status"] == "SUCCEEDED" and report.canary.results["c0"]["after_abort"]
    assert report.canary.results["c1"]["status"] == "TIMED_OUT" and report.fleet is None
    assert report.rollback.things == ["c0"] and rollbacks == ["r1-rollback"]


def test_a_phase_report_tells_robots_cut_off_by_an_abort_from_robots_that_timed_out():
    from fleetloop_cloud.fleet_jobs import ExecutionState
    from fleetloop_cloud.rollout import _results

    states = {"a": ExecutionState("a", "FAILED"), "b": ExecutionState("b", "IN_PROGRESS")}
    aborted = _results(states, ["a", "b", "c"], aborted=True)
    # b was swapping when the job was canceled (it may still finish, as IoT Jobs allows); c never started
    assert [aborted[t]["status"] for t in "abc"] == ["FAILED", "IN_PROGRESS at the abort", "QUEUED at the abort"]
    waited = _results(states, ["a", "b", "c"], aborted=False)
    assert [waited[t]["status"] for t in "abc"] == ["FAILED", "TIMED_OUT", "TIMED_OUT"]


def test_documents_and_backend_registry(tmp_path, test_models):
    manifest = load_manifest(test_models["T4"])
    document = deploy_document(manifest, "s3://bucket/fleet", "models/x/1", b"{}")
    assert document["package"]["manifest_sha256"] == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert document["model"] == {"name": manifest.name, "version": manifest.version, "tier": "T4"}
    assert rollback_document("m", "T4")["model"]["version"] == "previous"
    assert isinstance(open_fleet_jobs(f"file://{tmp_path}"), LocalDirJobs)
    with pytest.raises(ConfigError, match="unknown scheme 'kafka' \\(known: file, iot, jobs, mqtts\\)"):
        open_fleet_jobs("kafka://x")
    with pytest.raises(ConfigError, match="needs ca_file, cert_file, key_file"):
        open_fleet_jobs("mqtts://127.0.0.1:1")


# ------------------------------------------------------------------ AWS IoT Jobs (moto server)
@pytest.fixture
def iot(s3_server):
    import boto3

    return boto3.client(
        "iot",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_aws_create_job_targets_a_thing_group_with_rollout_abort_and_timeout(iot):
    iot.create_thing_group(thingGroupName="fleet-a")
    for i in range(3):
        iot.create_thing(thingName=f"a-{i}")
        iot.add_thing_to_thing_group(thingGroupName="fleet-a", thingName=f"a-{i}")
    jobs = AwsIotJobs(client=iot)
    document = rollback_document("m", "T4", "v1")
    config = RolloutConfig(
        abort_failure_percent=20, abort_min_executed=4, maximum_per_minute=30, in_progress_timeout_min=15
    )
    jobs.create_job("group-job", [], document, config, thing_group="fleet-a")
    job = iot.describe_job(jobId="group-job")["job"]
    assert job["targets"][0].endswith(":thinggroup/fleet-a") and job["targetSelection"] == "SNAPSHOT"
    assert job["abortConfig"] == {
        "criteriaList": [
            {"failureType": "ALL", "action": "CANCEL", "thresholdPercentage": 20.0, "minNumberOfExecutedThings": 4}
        ]
    }
    assert job["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 30}
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 15}
    assert json.loads(iot.get_job_document(jobId="group-job")["document"]) == document
    with pytest.raises(DeployError, match="describe_thing_group for job j2 failed.*ResourceNotFound"):
        jobs.create_job("j2", [], document, config, thing_group="no-such-group")
    with pytest.raises(DeployError, match="(?s)create_job for job  failed.*Invalid length for parameter jobId"):
        jobs.create_job("", [], document, config, thing_group="fleet-a")  # botocore's validation


def test_aws_canaries_that_never_report_abort_the_rollout(iot):
    things = [f"b-{i}" for i in range(3)]
    for thing in things:
        iot.create_thing(thingName=thing)
    jobs = AwsIotJobs(client=iot)
    document = rollback_document("m", "T4", "v1")
    report = rollout(jobs, things, document, "aws-r1", RolloutConfig(canary_count=1, canary_timeout_s=0.5, poll_s=0.1))
    assert report.aborted and "did not report within" in report.reason
    assert report.canary.results == {"b-0": {"status": "TIMED_OUT", "details": {}, "reported": "QUEUED"}}
    assert iot.describe_job(jobId="aws-r1-canary")["job"]["status"] == "CANCELED"
    assert "aws-r1-fleet" not in [j["jobId"] for j in iot.list_jobs()["jobs"]]
    assert report.rollback is None  # no canary took the model


def test_cli_publish_and_rollout_on_the_local_backend(tmp_path, test_models, signing_keys, frames, caplog):
    from fleetloop_cloud.cli import main

    things = ["robot-a", "robot-b"]
    config = tmp_path / "deploy.yaml"
    config.write_text(
        f"backend: file://{tmp_path / 'jobs'}\nrollout:\n  canary_count: 1\n  poll_s: 0.05\n"
        "  canary_timeout_s: 60\n  fleet_timeout_s: 60\n"
    )
    with Fleet(tmp_path, test_models, signing_keys, frames, things) as fleet:
        package = fleet.robots["robot-a"].package("v5")
        bucket = f"file://{tmp_path / 'bucket'}"
        assert (
            main(["deploy", "publish", str(package), "--store", bucket, "--trusted", str(signing_keys["trusted_dir"])])
            == 0
        )
        assert (
            main(
                [
                    "deploy",
                    "rollout",
                    str(package),
                    "--store",
                    bucket,
                    "--things",
                    ",".join(things),
                    "--config",
                    str(config),
                    "--job-id",
                    "cli",
                    "--report",
                    str(tmp_path / "report.json"),
                ]
            )
            == 0
        )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["succeeded"] and report["fleet"]["results"]["robot-b"]["status"] == "SUCCEEDED"
    assert {r.cascade.edge.version for r in fleet.robots.values()} == {"v5"}
    unsigned = make_version(test_models["T4"], tmp_path / "unsigned", "v6", None)
    assert (
        main(["deploy", "rollout", str(unsigned), "--store", bucket, "--things", "robot-a", "--config", str(config)])
        == 1
    )
    assert (
        main(["deploy", "publish", str(unsigned), "--store", bucket, "--trusted", str(signing_keys["trusted_dir"])])
        == 1
    )
    assert "package is unsigned; run fleetloop models sign first" in caplog.text
    assert "v6: unsigned (no signature field)" in caplog.text


def test_a_fleet_phase_abort_rolls_back_the_canary_too(tmp_path, test_models, signing_keys, frames):
    """Measured in a 2-robot demo: the canary took a model its fleet robot refused, and kept it."""
    config = RolloutConfig(canary_count=1, canary_timeout_s=60, fleet_timeout_s=60, poll_s=0.05)
    # robot-b, the canary, has its shadow check off: it takes the model the fleet robots refuse
    fleet, _, report = _constant_model_rollout(
        tmp_path, test_models, signing_keys, frames, "r3", config, canaries=["robot-b"]
    )
    assert report.aborted and report.canary.succeeded() == ["robot-b"]
    assert report.fleet.failed() and "finished executions failed" in report.reason
    assert report.rollback.things == ["robot-b"] and report.rollback.results["robot-b"]["status"] == "SUCCEEDED"
    assert {r.cascade.edge.version for r in fleet.robots.values()} == {"v1"}  # one version, the one before
