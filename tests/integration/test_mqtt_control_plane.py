"""The IoT Jobs protocol over a real mosquitto with mutual TLS: refusals, round trip, prefix, broker outage."""

from __future__ import annotations

import threading
import time

import pytest

from fixtures.mqtt import job_service, wait_until
from fixtures.processes import alive, owned_process
from fleetloop_core.control_plane import ControlPlaneError, MqttConfig
from fleetloop_core.mqtt_control_plane import MqttControlPlane
from fleetloop_core.deploy_agent import DeployAgent


def _plane(broker, thing, identity=None, prefix="$aws", connect_timeout_s=10.0):
    identity = identity or broker.client(thing)
    config = MqttConfig(
        topic_prefix=prefix,
        ca_file=str(broker.ca.ca_file),
        cert_file=str(identity.cert),
        key_file=str(identity.key),
        reconnect_min_s=0.1,
        reconnect_max_s=1.0,
        request_timeout_s=5.0,
        connect_timeout_s=connect_timeout_s,
    )
    return MqttControlPlane(broker.host, broker.port, thing, config, poll_s=1.0)


def test_clients_without_a_certificate_or_from_another_ca_are_refused(mqtt_broker, mqtt_pki):
    from awscrt import io, mqtt5

    stranger = _plane(mqtt_broker, "robot-9", identity=mqtt_pki["other"].issue("robot-9"), connect_timeout_s=1.5)
    stranger.start()
    try:
        assert not stranger.connected and stranger.connections == 0
        assert "refused our client certificate" in stranger.problem  # loud: the reason, not a DEBUG line
    finally:
        stranger.close()
    options = io.TlsContextOptions()  # server-authenticated TLS only: no client cert
    options.override_default_trust_store_from_path(None, str(mqtt_broker.ca.ca_file))
    connected, failed = threading.Event(), threading.Event()
    client = mqtt5.Client(
        mqtt5.ClientOptions(
            host_name=mqtt_broker.host,
            port=mqtt_broker.port,
            tls_ctx=io.ClientTlsContext(options),
            connect_options=mqtt5.ConnectPacket(client_id="no-cert"),
            on_lifecycle_event_connection_success_fn=lambda _e: connected.set(),
            on_lifecycle_event_connection_failure_fn=lambda _e: failed.set(),
        )
    )
    client.start()
    try:
        assert failed.wait(10) and not connected.is_set()
    finally:
        client.stop()
    assert wait_until(lambda: "peer did not return a certificate" in mqtt_broker.log(), 5)
    assert "certificate verify failed" in mqtt_broker.log()


def test_connection_failures_are_errors_with_the_reason_within_the_connect_timeout(mqtt_broker, mqtt_pki, caplog):
    """A refused client certificate, a broker certificate from a CA we do not trust, an endpoint where
    nothing listens: each is an ERROR log naming the reason and ``problem`` says it, within
    connect_timeout_s; repeated retries do not repeat the ERROR."""
    from fixtures.s3 import free_port

    refused = _plane(mqtt_broker, "robot-7", identity=mqtt_pki["other"].issue("robot-7"), connect_timeout_s=2.0)
    wrong_ca = _plane(mqtt_broker, "robot-8", connect_timeout_s=2.0)
    other_ca = mqtt_pki["other"].issue("robot-8")
    wrong_ca.config = wrong_ca.config.model_copy(update={"ca_file": str(other_ca.ca)})
    nowhere = MqttControlPlane("127.0.0.1", free_port(), "robot-6", refused.config.model_copy(), poll_s=1.0)
    cases = [
        (refused, "refused our client certificate"),
        (wrong_ca, "the broker's certificate is not trusted"),
        (nowhere, "connection refused"),
    ]
    for plane, reason in cases:
        with caplog.at_level("ERROR", logger="fleetloop_core.control_plane"):
            caplog.clear()
            started = time.monotonic()
            plane.start()
            try:
                assert time.monotonic() - started < plane.config.connect_timeout_s + 1.0
                assert not plane.connected and reason in plane.problem, plane.problem
                assert f"{plane.thing_name}: no control plane: cannot connect to 127.0.0.1:{plane.port}" in caplog.text
                time.sleep(0.6)  # back-off retries meanwhile: the ERROR is said once
                assert caplog.text.count("no control plane") == 1
            finally:
                plane.close()


@pytest.mark.parametrize("prefix", ["$aws", "fleetloop"])
def test_job_round_trip_over_the_iot_jobs_topics(mqtt_broker, prefix):
    service = job_service(mqtt_broker, prefix)
    robot, other = _plane(mqtt_broker, "robot-0", prefix=prefix), _plane(mqtt_broker, "robot-1", prefix=prefix)
    try:
        robot.start()
        other.start()
        assert robot.connected and other.connected
        document = {"operation": "fleetloop.deploy_model", "model": {"name": "m", "version": "2", "tier": "T4"}}
        service.create_job("job-1", ["robot-0"], document)
        job = robot.next_job(5.0)
        assert job is not None and job.job_id == "job-1" and job.document == document
        assert job.execution_number == 1 and job.version_number == 2
        assert service.executions("job-1")["robot-0"].status == "IN_PROGRESS"
        assert other.next_job(0.5) is None  # robot-1 never sees robot-0's job
        robot.update(job, "IN_PROGRESS", {"step": "downloading"})
        robot.update(job, "SUCCEEDED", {"serving_version": "2", "shadow_agreement": 0.98})
        state = service.executions("job-1")["robot-0"]
        assert state.status == "SUCCEEDED"
        assert state.details == {"serving_version": "2", "shadow_agreement": "0.98"}
        assert ("robot-0", "update:IN_PROGRESS") in service.requests
        with pytest.raises(ControlPlaneError, match="InvalidStateTransition"):  # as the Jobs API answers
            robot.update(job, "FAILED", {"reason": "late"})
        updates = [payload for topic, payload in service.received if topic.endswith("/job-1/update")]
        assert len(updates) == 3 and [u["expectedVersion"] for u in updates] == [2, 3, 4]
        assert robot.next_job(0.5) is None
    finally:
        robot.close()
        other.close()
        service.close()


def test_a_concurrent_update_is_detected_reread_and_continued(mqtt_broker, caplog):
    """Another writer changes the execution between two of the robot's updates: the robot's
    expectedVersion is stale, the service answers VersionMismatch, the robot describes the execution
    (DescribeJobExecution) and, as it is still IN_PROGRESS, updates on the current version."""
    service = job_service(mqtt_broker)
    robot = _plane(mqtt_broker, "robot-0")
    other = _plane(mqtt_broker, "robot-0", identity=mqtt_broker.client("robot-0"))
    other.config = other.config.model_copy(update={"client_id": "robot-0-console"})
    try:
        robot.start()
        other.start()
        service.create_job(
            "job-2",
            ["robot-0"],
            {"operation": "fleetloop.rollback_model", "model": {"name": "m", "version": "previous", "tier": "T4"}},
        )
        job = robot.next_job(5.0)
        robot.update(job, "IN_PROGRESS", {"step": "loading"})  # version 2 -> 3
        other.update(job, "IN_PROGRESS", {"step": "operator note"})  # the other writer: 3 -> 4
        with caplog.at_level("WARNING", logger="fleetloop_core.control_plane"):
            robot.update(job, "SUCCEEDED", {"serving_version": "1"})
        assert "VersionMismatch (expected version 3, now 4, IN_PROGRESS)" in caplog.text
        assert service.executions("job-2")["robot-0"].status == "SUCCEEDED"
        codes = [p.get("expectedVersion") for t, p in service.received if t.endswith("/job-2/update")]
        assert codes == [2, 2, 3, 3, 4]  # robot, other (stale), other again, robot (stale), robot again
        assert any(t.endswith("/job-2/get") and p["includeJobDocument"] is True for t, p in service.received)
        # the execution is finished now: a describe is answered TerminalStateReached, with its state
        assert robot.describe("job-2")["status"] == "SUCCEEDED"
    finally:
        robot.close()
        other.close()
        service.close()


def test_broker_outage_robot_keeps_serving_reconnects_and_takes_the_job(
    mqtt_broker, tmp_path, test_models, signing_keys, frames
):
    from fixtures.model_packages import Robot

    robot = Robot(tmp_path, test_models, signing_keys, frames)
    plane = _plane(mqtt_broker, "robot-0")
    service = job_service(mqtt_broker)
    agent = DeployAgent(plane, robot.manager, poll_s=0.5, retry_min_s=0.1, retry_max_s=1.0)
    with robot:
        agent.start()
        try:
            assert plane.connected
            mqtt_broker.stop()
            assert wait_until(lambda: not plane.connected, 10)
            served = len(robot.results)
            time.sleep(1.0)
            assert len(robot.results) > served + 20 and robot.errors == []  # serving never paused
            mqtt_broker.start()
            assert wait_until(lambda: plane.connected, 20), "robot did not reconnect"
            assert plane.connections >= 2
            assert wait_until(lambda: service._subscribed.is_set(), 20)
            service.create_job("job-after-outage", ["robot-0"], robot.job(robot.package("v2")))
            assert wait_until(lambda: service.executions("job-after-outage")["robot-0"].status == "SUCCEEDED", 60), (
                service.executions("job-after-outage")
            )
        finally:
            agent.stop()
            service.close()
    assert robot.cascade.edge.version == "v2" and robot.errors == []


@pytest.fixture(scope="module")
def frames():
    from fleetloop_sim import sim

    return [f.image for f in sim.CameraStream(sim.make_site(0, 0), "robot-0", seed=3).frames(16)]


def test_closing_the_plane_says_no_reconnect_an_outage_does(mqtt_broker, caplog):
    plane = _plane(mqtt_broker, "robot-9")
    plane.start()
    try:
        assert wait_until(lambda: plane.connected, 10)
        with caplog.at_level("WARNING", logger="fleetloop_core.mqtt_control_plane"):
            mqtt_broker.stop()
            assert wait_until(lambda: not plane.connected, 10)
            assert "robot-9: disconnected from" in caplog.text and "reconnecting with back-off" in caplog.text
            mqtt_broker.start()
            assert wait_until(lambda: plane.connected, 20)
            caplog.clear()
            with caplog.at_level("DEBUG", logger="fleetloop_core.mqtt_control_plane"):
                plane.close()
            assert "disconnected from" in caplog.text and "on close" in caplog.text  # said, at debug level
            assert not [r for r in caplog.records if r.levelname == "WARNING"]
    finally:
        plane.close()


def test_the_broker_ends_with_the_process_that_started_it_even_killed_without_clean_up(tmp_path):
    # a test run or demo stopped by kill -9 (or a SIGTERM pytest does not clean up after) runs no stop()
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fleetloop_cloud.broker import CertificateAuthority, MosquittoBroker\n"
        f"directory = Path({str(tmp_path)!r})\n"
        "broker = MosquittoBroker(directory, CertificateAuthority(directory / 'pki'))\n"
        "broker.start()\n"
        "print(broker._process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    with owned_process(script) as broker:
        assert alive(broker.pid)
        broker.kill_owner()
        assert wait_until(lambda: not alive(broker.pid), 10.0)
