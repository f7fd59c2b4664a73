"""The IoT Jobs protocol over a real mosquitto with mutual TLS: refusals, round trip, prefix, broker outage."""

from __future__ import annotations

import threading
import time

import pytest

from fixtures.mqtt import CLOUD_IDENTITY
from fleetloop_core.control_plane import ControlPlaneError, MqttConfig, MqttControlPlane
from fleetloop_core.deploy_agent import DeployAgent
from fleetloop_cloud.deploy import MqttJobService


def _plane(broker, thing, identity=None, prefix="$aws", connect_timeout_s=10.0):
    identity = identity or broker.client(thing)
    config = MqttConfig(topic_prefix=prefix, ca_file=str(broker.ca.ca_file), cert_file=str(identity.cert),
                        key_file=str(identity.key), reconnect_min_s=0.1, reconnect_max_s=1.0,
                        request_timeout_s=5.0, connect_timeout_s=connect_timeout_s)
    return MqttControlPlane(broker.host, broker.port, thing, config, poll_s=1.0)


def _service(broker, prefix="$aws"):
    cloud = broker.client(CLOUD_IDENTITY)
    return MqttJobService(broker.host, broker.port, str(cloud.ca), str(cloud.cert), str(cloud.key), prefix)


def _wait(predicate, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_clients_without_a_certificate_or_from_another_ca_are_refused(mqtt_broker, mqtt_pki):
    from awscrt import io, mqtt5

    stranger = _plane(mqtt_broker, "robot-9", identity=mqtt_pki["other"].issue("robot-9"), connect_timeout_s=1.5)
    stranger.start()
    try:
        assert not stranger.connected and stranger.connections == 0
    finally:
        stranger.close()
    options = io.TlsContextOptions()                          # server-authenticated TLS only: no client cert
    options.override_default_trust_store_from_path(None, str(mqtt_broker.ca.ca_file))
    connected, failed = threading.Event(), threading.Event()
    client = mqtt5.Client(mqtt5.ClientOptions(
        host_name=mqtt_broker.host, port=mqtt_broker.port, tls_ctx=io.ClientTlsContext(options),
        connect_options=mqtt5.ConnectPacket(client_id="no-cert"),
        on_lifecycle_event_connection_success_fn=lambda _e: connected.set(),
        on_lifecycle_event_connection_failure_fn=lambda _e: failed.set()))
    client.start()
    try:
        assert failed.wait(10) and not connected.is_set()
    finally:
        client.stop()
    assert _wait(lambda: "peer did not return a certificate" in mqtt_broker.log(), 5)
    assert "certificate verify failed" in mqtt_broker.log()


@pytest.mark.parametrize("prefix", ["$aws", "fleetloop"])
def test_job_round_trip_over_the_iot_jobs_topics(mqtt_broker, prefix):
    service = _service(mqtt_broker, prefix)
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
        assert other.next_job(0.5) is None                     # robot-1 never sees robot-0's job
        robot.update(job, "IN_PROGRESS", {"step": "downloading"})
        robot.update(job, "SUCCEEDED", {"serving_version": "2", "shadow_agreement": 0.98})
        state = service.executions("job-1")["robot-0"]
        assert state.status == "SUCCEEDED"
        assert state.details == {"serving_version": "2", "shadow_agreement": "0.98"}
        assert ("robot-0", "update:IN_PROGRESS") in service.requests
        with pytest.raises(ControlPlaneError, match="TerminalStateReached"):
            robot.update(job, "FAILED", {"reason": "late"})
        assert robot.next_job(0.5) is None
    finally:
        robot.close()
        other.close()
        service.close()


def test_broker_outage_robot_keeps_serving_reconnects_and_takes_the_job(mqtt_broker, tmp_path, test_models,
                                                                       signing_keys, frames):
    from fixtures.model_packages import Robot

    robot = Robot(tmp_path, test_models, signing_keys, frames)
    plane = _plane(mqtt_broker, "robot-0")
    service = _service(mqtt_broker)
    agent = DeployAgent(plane, robot.manager, poll_s=0.5, retry_min_s=0.1, retry_max_s=1.0)
    with robot:
        agent.start()
        try:
            assert plane.connected
            mqtt_broker.stop()
            assert _wait(lambda: not plane.connected, 10)
            served = len(robot.results)
            time.sleep(1.0)
            assert len(robot.results) > served + 20 and robot.errors == []   # serving never paused
            mqtt_broker.start()
            assert _wait(lambda: plane.connected, 20), "robot did not reconnect"
            assert plane.connections >= 2
            assert _wait(lambda: service._subscribed.is_set(), 20)
            service.create_job("job-after-outage", ["robot-0"], robot.job(robot.package("v2")))
            assert _wait(lambda: service.executions("job-after-outage")["robot-0"].status == "SUCCEEDED", 60), \
                service.executions("job-after-outage")
        finally:
            agent.stop()
            service.close()
    assert robot.cascade.edge.version == "v2" and robot.errors == []


@pytest.fixture(scope="module")
def frames():
    from fleetloop_core import sim
    return [f.image for f in sim.CameraStream(sim.make_site(0, 0), "robot-0", seed=3).frames(16)]
