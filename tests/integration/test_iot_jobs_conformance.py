"""IoT Jobs conformance, both directions, over mosquitto with mutual TLS.

* A reference device written only with AWS's own client (``awsiot.iotjobs.IotJobsClientV2`` over
  an awscrt MQTT 5 client) against our job service (``fleetloop_cloud.job_service_mqtt.MqttJobService``):
  StartNextPendingJobExecution, UpdateJobExecution with ``expectedVersion`` (VersionMismatch with
  the execution state), DescribeJobExecution with and without the document and ``$next``,
  notify-next, InvalidStateTransition after a terminal status, TerminalStateReached on describe.
* Requests AWS would refuse, published raw (the SDK validates before sending): ``statusDetails``
  with a non-string value or a bad key, an unknown status.
* Our robot (``DeployAgent`` + ``ModelManager`` + ``MqttControlPlane``) against an AWS-shaped job
  endpoint whose documents carry keys we do not know: outside our fields it deploys, inside them it
  rejects naming the key.

Expected answers follow the AWS IoT Jobs device MQTT API reference (and the SDK's own models).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future

import pytest

from fixtures.mqtt import job_service, wait_until

THING = "reference-device"


class ReferenceDevice:
    """A device that speaks IoT Jobs only through awsiot.iotjobs.IotJobsClientV2."""

    def __init__(self, broker, thing: str = THING):
        from awscrt import mqtt5, mqtt_request_response
        from awsiot import iotjobs, mqtt5_client_builder

        identity = broker.client(thing)
        self.thing = thing
        connected = threading.Event()
        self.stopped = threading.Event()
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=broker.host,
            port=broker.port,
            cert_filepath=str(identity.cert),
            pri_key_filepath=str(identity.key),
            ca_filepath=str(identity.ca),
            client_id=thing,
            session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
            on_lifecycle_connection_success=lambda _e: connected.set(),
            on_lifecycle_stopped=lambda _e: self.stopped.set(),
        )
        self.client.start()
        assert connected.wait(10), "reference device did not connect"
        self.jobs = iotjobs.IotJobsClientV2(
            self.client,
            mqtt_request_response.ClientOptions(
                max_request_response_subscriptions=4, max_streaming_subscriptions=2, operation_timeout_in_seconds=10
            ),
        )
        self.iotjobs = iotjobs
        self.notifications: list = []
        self.stream = None

    def watch_next(self) -> None:
        import awsiot

        subscribed = threading.Event()
        self.stream = self.jobs.create_next_job_execution_changed_stream(
            self.iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=self.thing),
            awsiot.ServiceStreamOptions(
                incoming_event_listener=self.notifications.append,
                subscription_status_listener=lambda e: subscribed.set(),
            ),
        )
        self.stream.open()
        assert subscribed.wait(10)

    def start_next(self):
        return self.jobs.start_next_pending_job_execution(
            self.iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.thing)
        ).result(15)

    def update(self, job_id: str, status: str, expected_version=None, details=None, **extra):
        return self.jobs.update_job_execution(
            self.iotjobs.UpdateJobExecutionRequest(
                thing_name=self.thing,
                job_id=job_id,
                status=status,
                expected_version=expected_version,
                status_details=details,
                **extra,
            )
        ).result(15)

    def describe(self, job_id: str, include_job_document=None):
        return self.jobs.describe_job_execution(
            self.iotjobs.DescribeJobExecutionRequest(
                thing_name=self.thing, job_id=job_id, include_job_document=include_job_document
            )
        ).result(15)

    def close(self) -> None:
        """Stop the client and wait until awscrt says it stopped, and only then release the stream and
        the request-response client: released while the client still ran, awscrt's event-loop thread
        called into freed objects (a segfault of the test process, seen on a loaded machine)."""
        self.client.stop()
        assert self.stopped.wait(10), "reference device's MQTT client did not stop"
        self.stream = None
        self.jobs = None


def _error(call) -> object:
    """Run ``call``; return the modeled IoT Jobs error it failed with (V2ErrorResponse)."""
    from awsiot import V2ServiceException

    with pytest.raises(V2ServiceException) as caught:
        call()
    assert caught.value.modeled_error is not None, caught.value.message
    return caught.value.modeled_error


@pytest.fixture(scope="module")
def frames():
    from fleetloop_sim import sim

    return [f.image for f in sim.CameraStream(sim.make_site(0, 0), "robot-0", seed=3).frames(16)]


DOCUMENT = {"operation": "fleetloop.rollback_model", "model": {"name": "m", "version": "previous", "tier": "T4"}}


def test_reference_device_against_our_job_service(mqtt_broker):
    service = job_service(mqtt_broker)
    device = ReferenceDevice(mqtt_broker)
    try:
        device.watch_next()
        # nothing queued: start-next is accepted without an execution
        assert device.start_next().execution is None
        service.create_job("job-a", [THING], DOCUMENT)
        service.create_job("job-b", [THING], {**DOCUMENT, "model": {**DOCUMENT["model"], "version": "3"}})
        assert wait_until(lambda: any(n.execution and n.execution.job_id == "job-a" for n in device.notifications))

        # DescribeJobExecution of $next: the oldest QUEUED one, with its document by default
        described = device.describe("$next").execution
        assert described.job_id == "job-a" and described.status == "QUEUED" and described.job_document == DOCUMENT
        assert device.describe("job-b", include_job_document=False).execution.job_document is None

        started = device.start_next().execution
        assert started.job_id == "job-a" and started.status == "IN_PROGRESS" and started.job_document == DOCUMENT
        version = started.version_number

        # UpdateJobExecution on the right version, with the state and document asked for
        accepted = device.update(
            "job-a",
            "IN_PROGRESS",
            version,
            {"step": "downloading"},
            include_job_execution_state=True,
            include_job_document=True,
        )
        assert accepted.execution_state.version_number == version + 1 and accepted.job_document == DOCUMENT
        assert accepted.execution_state.status_details == {"step": "downloading"}
        # a stale expectedVersion: VersionMismatch, carrying the execution's state
        error = _error(lambda: device.update("job-a", "SUCCEEDED", version, {"result": "ok"}))
        assert error.code == "VersionMismatch" and error.execution_state.version_number == version + 1
        assert error.execution_state.status == "IN_PROGRESS"
        # without includeJobExecutionState the accepted answer carries no state (the default is false)
        done = device.update("job-a", "SUCCEEDED", version + 1, {"result": "ok"})
        assert done.execution_state is None
        assert service.executions("job-a")[THING].status == "SUCCEEDED"

        # a finished execution: another update is InvalidStateTransition, a describe TerminalStateReached
        error = _error(lambda: device.update("job-a", "IN_PROGRESS"))
        assert error.code == "InvalidStateTransition" and error.execution_state.status == "SUCCEEDED"
        assert _error(lambda: device.describe("job-a")).code == "TerminalStateReached"
        assert _error(lambda: device.describe("job-zzz")).code == "ResourceNotFound"

        # after the terminal update the service tells the device about the next one
        assert wait_until(lambda: any(n.execution and n.execution.job_id == "job-b" for n in device.notifications))
        assert device.start_next().execution.job_id == "job-b"
    finally:
        device.close()
        service.close()


def test_a_staged_release_is_announced_to_its_device_without_a_poll(mqtt_broker):
    """``maximumPerMinute`` releases the second thing's execution 2 s after the first: the service
    tells that device (notify-next) when it is released, not at the device's next start-next."""
    from fleetloop_cloud.fleet_jobs import RolloutConfig

    service = job_service(mqtt_broker)
    second = ReferenceDevice(mqtt_broker, "staged-1")  # the device of the thing released second
    try:
        second.watch_next()
        service.create_job("staged", ["staged-0", "staged-1"], DOCUMENT, RolloutConfig(maximum_per_minute=30))
        assert service.store.next_pending("staged-1") is None  # not released yet
        assert wait_until(lambda: any(n.execution and n.execution.job_id == "staged" for n in second.notifications))
        assert second.start_next().execution.job_id == "staged"  # the announced execution is startable
        assert service.requests == [("staged-1", "start-next")]  # the device asked only after the notice
    finally:
        second.close()
        service.close()


def _raw_request(broker, thing: str, topic_suffix: str, payload: dict) -> tuple[str, dict]:
    """Publish ``payload`` on a jobs topic with a plain MQTT 5 client; return (answer topic, answer)."""
    from awscrt import mqtt5
    from awsiot import mqtt5_client_builder

    identity = broker.client(thing)
    answer: Future = Future()
    connected = threading.Event()

    def received(data) -> None:
        if not answer.done():
            answer.set_result((data.publish_packet.topic, json.loads(bytes(data.publish_packet.payload))))

    client = mqtt5_client_builder.mtls_from_path(
        endpoint=broker.host,
        port=broker.port,
        cert_filepath=str(identity.cert),
        pri_key_filepath=str(identity.key),
        ca_filepath=str(identity.ca),
        client_id=f"{thing}-raw",
        on_publish_received=received,
        on_lifecycle_connection_success=lambda _e: connected.set(),
    )
    client.start()
    try:
        assert connected.wait(10)
        base = f"$aws/things/{thing}/jobs/{topic_suffix}"
        client.subscribe(mqtt5.SubscribePacket([mqtt5.Subscription(f"{base}/+", mqtt5.QoS.AT_LEAST_ONCE)])).result(10)
        client.publish(
            mqtt5.PublishPacket(topic=base, payload=json.dumps(payload).encode(), qos=mqtt5.QoS.AT_LEAST_ONCE)
        ).result(10)
        return answer.result(10)
    finally:
        client.stop()


@pytest.mark.parametrize(
    "details, complaint",
    [
        ({"progress": 50}, "statusDetails.progress must be a string (got int 50)"),
        ({"ok": True}, "statusDetails.ok must be a string"),
        ({"bad key": "x"}, "statusDetails key 'bad key'"),
        ({"reason": "line one\nline two"}, "statusDetails.reason contains control characters"),
        ({"reason": ""}, "statusDetails.reason must be 1-1024 characters"),
        ("not an object", "statusDetails must be an object"),
    ],
)
def test_the_service_rejects_status_details_aws_would_reject(mqtt_broker, details, complaint):
    service = job_service(mqtt_broker)
    try:
        service.create_job("job-c", [THING], DOCUMENT)
        topic, answer = _raw_request(mqtt_broker, THING, "start-next", {"clientToken": "t0"})
        assert topic.endswith("start-next/accepted") and answer["execution"]["jobId"] == "job-c"
        topic, answer = _raw_request(
            mqtt_broker, THING, "job-c/update", {"status": "IN_PROGRESS", "statusDetails": details, "clientToken": "t1"}
        )
        assert topic.endswith("job-c/update/rejected"), answer
        assert answer["code"] == "InvalidRequest" and complaint in answer["message"] and answer["clientToken"] == "t1"
        assert service.executions("job-c")[THING].details == {}  # nothing stored
        topic, answer = _raw_request(mqtt_broker, THING, "job-c/update", {"status": "DONE", "clientToken": "t2"})
        assert answer["code"] == "InvalidRequest" and "DONE" in answer["message"]
    finally:
        service.close()


class AwsShapedEndpoint:
    """An IoT Jobs endpoint that sends documents as a job template or another tool would: with
    top-level keys FleetLoop does not know. Answers only the device API, like AWS IoT Core."""

    def __init__(self, broker):
        self.service = job_service(broker)

    def queue(self, job_id: str, thing: str, document: dict) -> None:
        self.service.create_job(job_id, [thing], document)

    def close(self) -> None:
        self.service.close()


def test_our_robot_against_documents_with_fields_we_do_not_know(
    mqtt_broker, tmp_path, test_models, signing_keys, frames
):
    from fixtures.model_packages import Robot

    from fleetloop_core.control_plane import MqttConfig
    from fleetloop_core.mqtt_control_plane import MqttControlPlane
    from fleetloop_core.deploy_agent import DeployAgent
    from fleetloop_core.model_store import publish_package

    robot = Robot(tmp_path, test_models, signing_keys, frames)
    identity = mqtt_broker.client("robot-0")
    plane = MqttControlPlane(
        mqtt_broker.host,
        mqtt_broker.port,
        "robot-0",
        MqttConfig(
            ca_file=str(identity.ca),
            cert_file=str(identity.cert),
            key_file=str(identity.key),
            reconnect_min_s=0.1,
            reconnect_max_s=1.0,
            request_timeout_s=5.0,
        ),
        poll_s=0.5,
    )
    endpoint = AwsShapedEndpoint(mqtt_broker)
    agent = DeployAgent(plane, robot.manager, poll_s=0.5, retry_min_s=0.1, retry_max_s=1.0)
    bucket = f"file://{tmp_path / 'bucket'}"
    prefix = publish_package(robot.package("v7"), bucket)
    model = {"name": robot.name, "version": "v7", "tier": "T4"}
    with robot:
        agent.start()
        try:
            endpoint.queue(
                "job-extra-outside",
                "robot-0",
                {
                    "operation": "fleetloop.deploy_model",
                    "model": model,
                    "package": {"store": bucket, "prefix": prefix},
                    "jobIndex": 3,
                    "templateArn": "arn:aws:iot:us-east-1:123456789012:jobtemplate/fleet-deploy",
                },
            )
            endpoint.queue(
                "job-extra-inside",
                "robot-0",
                {
                    "operation": "fleetloop.deploy_model",
                    "model": {**model, "revision": "2"},
                    "package": {"store": bucket, "prefix": prefix},
                },
            )
            executions = endpoint.service.executions
            assert wait_until(
                lambda: (
                    executions("job-extra-inside").get("robot-0") is not None
                    and executions("job-extra-inside")["robot-0"].terminal
                ),
                60,
            )
            outside = executions("job-extra-outside")["robot-0"]
            assert outside.status == "SUCCEEDED", outside.details
            assert outside.details["serving_version"] == "v7"
            inside = executions("job-extra-inside")["robot-0"]
            assert inside.status == "REJECTED" and "jobDocument.model.revision" in inside.details["reason"]
            updates = [p for t, p in endpoint.service.received if t.endswith("/update")]
            assert updates and all(isinstance(p.get("expectedVersion"), int) for p in updates)
        finally:
            agent.stop()
            endpoint.close()


def _serve(broker, store, spawn):
    """Start ``fleetloop-cloud jobs serve`` on ``store``; return the process once it is up."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from fixtures.mqtt import CLOUD_IDENTITY

    cloud = broker.client(CLOUD_IDENTITY)
    command = shutil.which("fleetloop-cloud") or str(Path(sys.executable).parent / "fleetloop-cloud")
    process = spawn(
        [
            command,
            "jobs",
            "serve",
            "--store",
            str(store),
            "--broker",
            f"mqtts://{broker.host}:{broker.port}?ca_file={cloud.ca}&cert_file={cloud.cert}&key_file={cloud.key}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = process.stdout.readline()
    assert line.startswith("job service up"), line + process.stdout.read()
    return process


def test_the_standing_job_service_keeps_executions_across_restarts(mqtt_broker, tmp_path, spawn):
    """`fleetloop-cloud jobs serve` answers a device before any rollout, announces jobs a rollout writes
    into the shared store (`--backend jobs://PATH`), and after a restart still has them."""
    import signal

    from fleetloop_cloud.deploy import open_fleet_jobs

    store = tmp_path / "jobs.sqlite"
    service = _serve(mqtt_broker, store, spawn)
    device = ReferenceDevice(mqtt_broker)
    try:
        device.watch_next()
        assert device.start_next().execution is None  # asked before any rollout: an answer, not a timeout
        rollout = open_fleet_jobs(f"jobs://{store}")
        rollout.create_job("job-s1", [THING], DOCUMENT)
        rollout.create_job("job-s2", [THING], {**DOCUMENT, "model": {**DOCUMENT["model"], "version": "4"}})
        assert wait_until(lambda: any(n.execution and n.execution.job_id == "job-s1" for n in device.notifications))
        started = device.start_next().execution
        assert started.job_id == "job-s1" and started.status == "IN_PROGRESS"
        assert rollout.executions("job-s1")[THING].status == "IN_PROGRESS"

        service.send_signal(signal.SIGINT)  # the service goes away and comes back
        assert service.wait(10) == 0
        service = _serve(mqtt_broker, store, spawn)
        again = device.start_next().execution  # IN_PROGRESS first, as before the restart
        assert (again.job_id, again.status, again.version_number) == ("job-s1", "IN_PROGRESS", started.version_number)
        device.update("job-s1", "SUCCEEDED", again.version_number, {"result": "ok"})
        assert rollout.executions("job-s1")[THING].status == "SUCCEEDED"
        assert rollout.executions("job-s1")[THING].details == {"result": "ok"}
        rollout.cancel_job("job-s2", "superseded")
        assert rollout.executions("job-s2")[THING].status == "CANCELED"
        assert device.start_next().execution is None
        rollout.close()
    finally:
        device.close()
