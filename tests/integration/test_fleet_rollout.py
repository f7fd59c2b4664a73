"""Five simulated robots (separate processes) take model jobs through mosquitto with mutual TLS.

Rollout 1: a good package goes to 2 canaries, then to the other 3; all 5 end up serving it.
Rollout 2: a broken package (constant output) goes to the same 2 canaries. robot-0's shadow check
catches it (FAILED); robot-1 runs with its shadow check switched off, so it takes the model and
reports SUCCEEDED. One failed canary is one too many: the rollout aborts, robot-1 gets a rollback
job back to the good version, and the broken model never reaches robots 2-4.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from fixtures.model_packages import make_version
from fixtures.mqtt import CLOUD_IDENTITY
from fleetloop_cloud.fleet_jobs import RolloutConfig, deploy_document
from fleetloop_cloud.job_service_mqtt import MqttJobService
from fleetloop_cloud.rollout import rollout
from fleetloop_core.contracts.manifest import MANIFEST_NAME, load_manifest
from fleetloop_core.model_store import publish_package
from fleetloop_core.cli import command_line

FLEET = [f"robot-{i}" for i in range(5)]


def _robot_config(tmp_path: Path, broker, thing: str, trusted_dir: Path, shadow: bool) -> Path:
    identity = broker.client(thing)
    config = {
        "model_manager": {
            "store": {"root": str(tmp_path / thing / "models"), "keep_versions": 3, "trusted_keys": str(trusted_dir)},
            "ring_buffer_frames": 12,
            "providers": ["cpu"],
            "warmup_runs": 1,
            "shadow": {"enabled": shadow, "min_frames": 6, "frame_wait_s": 10.0},
            "watchdog": {"window_frames": 15, "min_frames": 5, "window_s": 10.0},
        },
        "control_plane": {
            "uri": f"mqtts://{broker.host}:{broker.port}",
            "thing_name": thing,
            "poll_s": 2.0,
            "mqtt": {
                "ca_file": str(identity.ca),
                "cert_file": str(identity.cert),
                "key_file": str(identity.key),
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 2.0,
                "request_timeout_s": 5.0,
                "connect_timeout_s": 5.0,
            },
        },
    }
    path = tmp_path / f"{thing}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _status(tmp_path: Path, thing: str) -> dict:
    try:
        return json.loads((tmp_path / f"{thing}.status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_five_robot_canary_rollout_and_abort(tmp_path, mqtt_broker, test_models, signing_keys):
    fleet_key = signing_keys["keys"]["fleet"][0]
    v1 = make_version(test_models["T4"], tmp_path / "pkg" / "v1", "v1", fleet_key)
    v2 = make_version(test_models["T4"], tmp_path / "pkg" / "v2", "v2", fleet_key)
    bad = make_version(test_models["T4"], tmp_path / "pkg" / "v3-bad", "v3-bad", fleet_key, fault="constant")
    bucket = f"file://{tmp_path / 'bucket'}"
    documents = {}
    for package in (v2, bad):
        manifest = load_manifest(package)
        documents[manifest.version] = deploy_document(
            manifest, bucket, publish_package(package, bucket), (package / MANIFEST_NAME).read_bytes()
        )

    processes = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    service = None
    try:
        for index, thing in enumerate(FLEET):
            config = _robot_config(tmp_path, mqtt_broker, thing, signing_keys["trusted_dir"], shadow=thing != "robot-1")
            log = open(tmp_path / f"{thing}.log", "wb")
            processes[thing] = (
                subprocess.Popen(
                    command_line(
                        "robot-sim",
                        "--config",
                        str(config),
                        "--initial-model",
                        str(v1),
                        "--site",
                        str(index),
                        "--rate-hz",
                        "20",
                        "--status",
                        str(tmp_path / f"{thing}.status.json"),
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                ),
                log,
            )
        _wait(
            lambda: all(
                _status(tmp_path, t).get("connected") and _status(tmp_path, t).get("frames_served", 0) > 10
                for t in FLEET
            ),
            90,
            "five robots connected and serving",
        )
        assert {_status(tmp_path, t)["serving"]["edge"] for t in FLEET} == {"v1"}

        cloud = mqtt_broker.client(CLOUD_IDENTITY)
        service = MqttJobService(mqtt_broker.host, mqtt_broker.port, str(cloud.ca), str(cloud.cert), str(cloud.key))
        config = RolloutConfig(
            canary_count=2, canary_timeout_s=60, fleet_timeout_s=90, poll_s=0.5, abort_min_executed=3
        )

        good = rollout(service, FLEET, documents["v2"], "deploy-v2", config)
        assert good.succeeded, good.to_dict()
        assert good.canary.things == ["robot-0", "robot-1"] and good.fleet.things == ["robot-2", "robot-3", "robot-4"]
        canary_details = good.canary.results["robot-0"]["details"]
        assert canary_details["serving_version"] == "v2" and float(canary_details["shadow_agreement"]) == 1.0
        _wait(lambda: all(_status(tmp_path, t)["serving"]["edge"] == "v2" for t in FLEET), 10, "all serving v2")

        aborted = rollout(service, FLEET, documents["v3-bad"], "deploy-v3", config, previous_version="v2")
        assert aborted.aborted and aborted.fleet is None, aborted.to_dict()
        robot0 = aborted.canary.results["robot-0"]
        assert robot0["status"] == "FAILED" and "shadow check failed: constant output" in robot0["details"]["reason"]
        assert aborted.canary.results["robot-1"]["status"] == "SUCCEEDED"  # no shadow check there
        assert aborted.rollback.things == ["robot-1"]
        assert aborted.rollback.results["robot-1"]["status"] == "SUCCEEDED"
        assert aborted.rollback.results["robot-1"]["details"]["serving_version"] == "v2"
        assert "robot-0: FAILED shadow check failed" in aborted.reason
        assert service.executions("deploy-v3-fleet") == {}
        _wait(lambda: all(_status(tmp_path, t)["serving"]["edge"] == "v2" for t in FLEET), 10, "all back on v2")
    finally:
        if service is not None:
            service.close()
        for process, _ in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()

    final = {t: _status(tmp_path, t) for t in FLEET}
    for thing in FLEET:
        assert final[thing]["final"] and final[thing]["errors"] == 0, (thing, final[thing])
    for thing in ("robot-2", "robot-3", "robot-4"):
        assert "v3-bad" not in final[thing]["versions_served"]  # never served ...
        assert not any("deploy-v3" in (e["job_id"] or "") for e in final[thing]["events"])  # ... never even sent
        assert [o["job_id"] for o in final[thing]["outcomes"]] == ["deploy-v2-fleet"]
    assert "v3-bad" not in final["robot-0"]["versions_served"]  # stopped by its shadow check
    assert final["robot-1"]["versions_served"].get("v3-bad", 0) > 0  # served until rolled back
    kinds = [e["kind"] for e in final["robot-1"]["events"] if e["job_id"] == "deploy-v3-rollback"]
    assert "rolled_back" in kinds
