#!/usr/bin/env python3
"""A fleet on one machine: N in-process robots (each its own model manager, upload queue, uploader, deploy
agent and client certificate) on one mosquitto with mutual TLS, uploading into one store; the cloud
ingests what they uploaded; a canary -> fleet rollout while they stream, then one aborted at the canary.
With ``--ros`` every robot is a ``fleetloop robot`` process (rclpy, all four nodes, its model manager on
the same broker with its own certificate) fed by a ``fleetloop camera`` process per stream, as the demo's
ROS fleet runs them (``fleetloop_cloud.demo.ros_fleet``).

Measured in one run (per-unit figures, so they extrapolate; docs/scaling.md):

  memory      the process's resident memory after the robots started, per robot (--ros: each robot
              process's unique memory (USS) after the first stream, and its resident memory)
  streaming   camera frames answered per second (all robots, one after another: the rate this machine
              allows; robots are not paced at 10 Hz), frames dropped, uploads
  broker      client connections (robots + the job service)
  ingest      frames ingested per second into the pool and pool rows written per second
  rollout     a new T4 version canary -> all robots while they stream: seconds until every robot
              serves it, frames dropped meanwhile; then a version whose model file was corrupted after
              signing: the canary refuses it, the rollout aborts, no other robot is touched
  outage      (--outage-s) the store goes away (a TCP proxy in front of the S3 server drops every
              connection) while the robots stream; then it comes back: seconds until every upload
              queue is empty, and whether every frame a selector kept is in the store once
  stored      frames kept by the selectors, over every phase, against frame objects in the store
  live ingest the cloud ingesting every second while all this happens (its own pool): frames ingested,
              store errors during the outage, and at the end every stored frame in that pool

Usage: python benchmarks/fleet_sim.py [--robots 50] [--frames 40] [--store file|s3] [--outage-s S]
                                      [--ros] [--models DIR] [--pool URI] [--json PATH]
  --quick: 4 robots, 40 frames, the S3 server, a 10 s outage (what the test runs).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # fixtures.s3: the S3 server and proxy

import psutil  # noqa: E402

from _common import ROOT, machine, print_table, process_memory_mb, write_json  # noqa: E402


def _models(models: str | None) -> Path:
    """The robots' reference models: ``--models``, else the demo-quick profile (built and cached when missing)."""
    if models:
        return Path(models)
    from fleetloop_models.modelbuild import build_reference_models

    target = ROOT / ".cache" / "models-demo-quick"
    if not (target / "T4" / "manifest.json").exists():
        print(f"building the demo-quick reference models into {target}", file=sys.stderr)
    return build_reference_models(target, profile_name="demo-quick", progress=True)["T4"].parent


def _new_version(package: Path, out: Path, version: str, private_pem: bytes) -> Path:
    """Return a signed copy of ``package`` as ``version``."""
    from fleetloop_core.signing import sign_package

    target = out / version
    shutil.copytree(package, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    manifest.pop("signature", None)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    sign_package(target, private_pem)
    return target


_PUBLISH = re.compile(r"Received PUBLISH from \S+ \([^']*'([^']*)'")


def _publishes(broker) -> Counter:
    """Return the PUBLISH packets the broker has received so far (its log: ``log_type all``), by what
    they are: the jobs topic's operation (``start-next``, ``update``, ``notify-next``, their
    ``accepted`` answers, ...), a job's id left out; other topics by their last level."""
    kinds: Counter = Counter()
    for topic in _PUBLISH.findall(broker.log()):
        levels = topic.split("/")
        if "jobs" in levels:
            rest = levels[levels.index("jobs") + 1 :]
            operation = rest if rest[:1] in (["start-next"], ["notify-next"], ["get"], ["notify"]) else rest[1:]
            kinds["/".join(operation) or "describe"] += 1
        else:
            kinds[levels[-1]] += 1
    return kinds


def _rollout(
    jobs, store_uri: str, robots: list[str], package: Path, fleet, frames: int, corrupt: bool = False, broker=None
) -> dict:
    """Roll ``package`` out canary -> fleet while every robot streams ``frames`` more frames (``corrupt``: its
    model file in the store is damaged after publishing, as a bad upload or a bit flip would)."""
    from fleetloop_core.contracts.manifest import load_manifest
    from fleetloop_core.model_store import package_prefix, publish_package

    from fleetloop_cloud.demo.provision import DEMO_ROLLOUT
    from fleetloop_cloud.fleet_jobs import deploy_document
    from fleetloop_cloud.rollout import rollout

    manifest = load_manifest(package)
    prefix = publish_package(package, store_uri)
    if corrupt:
        with open(Path(store_uri[len("file://") :]) / prefix / "model.onnx", "r+b") as handle:
            handle.seek(64)
            handle.write(b"\0" * 64)
    document = deploy_document(
        manifest, store_uri, package_prefix(manifest.name, manifest.version), (package / "manifest.json").read_bytes()
    )
    rounds: list = []
    done = threading.Event()

    # in-process robots stream in short chunks; a ROS stream starts a camera process per robot, so it
    # streams ``frames`` at a time (short ones would leave the robots idle while cameras start)
    chunk = frames if getattr(fleet, "processes", None) else min(frames, 10)

    def stream() -> None:  # the robots keep streaming until the rollout ends (at least ``frames`` each)
        while not done.is_set() or sum(r.frames for r in rounds) < frames * len(robots):
            rounds.extend(fleet.stream(chunk))

    streaming = threading.Thread(target=stream, name="fleet-stream")
    streaming.start()
    published = _publishes(broker) if broker is not None else Counter()
    started = time.perf_counter()
    try:
        report = rollout(jobs, robots, document, f"bench-{manifest.version}", DEMO_ROLLOUT)
        seconds = time.perf_counter() - started
        # counted when the rollout ends: the streams go on until every robot answered ``frames`` (a ROS
        # camera streams them all at once), and the robots' job polls meanwhile are not the rollout's
        during = (_publishes(broker) - published) if broker is not None else None
    finally:
        done.set()
        streaming.join()
    streamed = sum((_publishes(broker) - published).values()) if broker is not None else None
    streamed_s = time.perf_counter() - started
    serving = fleet.serving()
    return {
        "version": manifest.version,
        "succeeded": report.succeeded,
        "aborted": report.aborted,
        "reason": report.reason,
        "seconds": round(seconds, 2),
        "canary_seconds": round(report.canary.seconds, 2) if report.canary else None,
        "fleet_seconds": round(report.fleet.seconds, 2) if report.fleet else None,
        "failed": {
            thing: str(result.get("details", {}).get("reason") or result.get("status"))[:300]
            for phase in (report.canary, report.fleet)
            if phase is not None
            for thing, result in phase.results.items()
            if result.get("status") != "SUCCEEDED"
        },
        "robots_serving": sum(1 for s in serving.values() if s.get("T4") == manifest.version),
        "frames_dropped": sum(r.dropped for r in rounds),
        "frames": sum(r.frames for r in rounds),
        "uploaded": sum(r.uploaded for r in rounds),
        "kept": sum(r.kept for r in rounds),
        "broker_publishes": sum(during.values()) if during is not None else None,
        "broker_publishes_by_kind": dict(during.most_common()) if during is not None else None,
        # what the count was before 2026-12-05 (to the end of the streams: polls while the cameras finish)
        "broker_publishes_until_streams_end": streamed,
        "seconds_until_streams_end": round(streamed_s, 2),
    }


def _cloud_config(store_uri: str, models: Path, work: Path, pool: str | None):
    from fleetloop_cloud.config import cloud_config_from_dict

    config = {
        "store": store_uri,
        "work_dir": str(work),
        "models": str(models),
        "registry": {"backend": "local", "uri": str(work / "registry")},
    }
    if pool:
        config["pool"] = pool
    return cloud_config_from_dict(config)


class LiveIngest(threading.Thread):
    """The cloud ingesting continuously (every ``period_s``) while the robots upload, into its own pool."""

    def __init__(self, config, period_s: float = 1.0):
        super().__init__(name="live-ingest", daemon=True)
        self.config, self.period_s = config, period_s
        self.done = threading.Event()
        self.figures = {"calls": 0, "ingested": 0, "busy_s": 0.0, "store_errors": 0}

    def run(self) -> None:
        from fleetloop_core.errors import FleetLoopError

        from fleetloop_cloud.ingest import ingest
        from fleetloop_cloud.loop import CloudLoop

        with CloudLoop(self.config, progress=False) as loop:  # its SQLite connection belongs to this thread
            while True:
                last = self.done.is_set()  # one more call after the robots stopped: the last uploads
                try:
                    report = ingest(
                        loop.store, loop.pool, loop.cache, 1, loop.config.ingest, loop.task.frame_labels, progress=False
                    )
                    self.figures["ingested"] += report.ingested
                    self.figures["busy_s"] += report.seconds
                except FleetLoopError:  # the store is away (the outage): the cloud sees it too
                    self.figures["store_errors"] += 1
                self.figures["calls"] += 1
                if last:
                    break
                self.done.wait(self.period_s)
            self.figures["pool_frames"] = len(loop.pool.frames(include_duplicates=True))

    def result(self) -> dict:
        self.done.set()
        self.join()
        busy = self.figures["busy_s"]
        return {
            **self.figures,
            "busy_s": round(busy, 2),
            "frames_per_busy_s": round(self.figures["ingested"] / busy, 1) if busy else None,
        }


def _ingest(store_uri: str, models: Path, work: Path, pool: str | None) -> dict:
    """Ingest what the fleet uploaded into a fresh pool; frames/s and pool rows/s."""
    from fleetloop_cloud.loop import CloudLoop

    with CloudLoop(_cloud_config(store_uri, models, work, pool), progress=False) as loop:
        started = time.perf_counter()
        info = loop.ingest()
        seconds = time.perf_counter() - started
        frames = len(loop.pool.frames(include_duplicates=True))
        rows = len(loop.pool.known_sidecar_keys())  # a row per frame and per sighting of it
    return {
        "frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 1) if seconds else None,
        "pool_rows_per_s": round(rows / seconds, 1) if seconds else None,
        "status": info.get("status"),
    }


def _outage(fleet, proxy, outage_s: float, frames: int) -> dict:
    """Take the store away for ``outage_s`` while every robot streams ``frames`` (each robot's uploader in its
    own thread, as on a robot); then time the queues' drain once the store is back."""
    for robot in fleet.robots:
        robot.uploader.start()
    try:
        proxy.down()
        started, rounds = time.perf_counter(), []
        while time.perf_counter() - started < outage_s:  # the robots keep streaming all through the outage
            rounds += fleet.stream(frames, drain=False)
        queued = sum(len(robot.queue) for robot in fleet.robots)
        proxy.up()
        back = time.perf_counter()
        deadline = back + 900.0  # far beyond the uploaders' back-off cap (config/upload_queue.yaml: backoff.max_s)
        while sum(len(robot.queue) for robot in fleet.robots) and time.perf_counter() < deadline:
            time.sleep(0.2)
        drained = time.perf_counter()
    finally:
        for robot in fleet.robots:
            robot.uploader.stop()
    return {
        "outage_s": round(back - started, 1),
        "queued_at_return": queued,
        "drain_s": round(drained - back, 1),
        "left_in_queues": sum(len(robot.queue) for robot in fleet.robots),
        "frames": sum(r.frames for r in rounds),
        "frames_dropped": sum(r.dropped for r in rounds),
        "kept": sum(r.kept for r in rounds),
    }


def _stored_frames(store_uri: str) -> dict:
    """Count the frame objects (not sidecars) in the store, and keys seen more than once."""
    from fleetloop_core.store import open_store

    keys = [o.key for o in open_store(store_uri).list("frames/") if not o.key.endswith(".json")]
    return {"frames": len(keys), "duplicate_keys": len(keys) - len(set(keys))}


def _s3_store(work: Path):
    """Start the S3 server (moto) with a bucket and a proxy in front; return (server, proxy, store URI)."""
    import os

    from fixtures.s3 import CREDENTIALS, MotoServer, TcpProxy

    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    server = MotoServer(work / "moto.log")
    bucket = server.make_bucket()
    proxy = TcpProxy(server.port)
    return server, proxy, f"s3://{bucket}/fleet?endpoint_url={proxy.endpoint_url}&region=us-east-1"


def _process_memory(fleet) -> dict | None:
    """Return the ROS robot processes' unique (USS) and resident memory, per robot (MB); None in-process."""
    processes = getattr(fleet, "processes", None)
    if not processes:
        return None
    # the ROS bootstrap re-execs in place: the process we started is the robot
    rss, uss = zip(*(process_memory_mb(process.pid) for process in processes.values()))
    return {"uss_mb": round(sum(uss) / len(uss), 1), "rss_mb": round(sum(rss) / len(rss), 1), "robots": len(uss)}


def _wait_queues(fleet, timeout_s: float = 120.0) -> int:
    """Wait until the in-process robots' upload queues are empty (ROS robots' streams end drained); return the
    frames still queued then (the report says so: the store's count below would be short by them)."""
    deadline = time.perf_counter() + timeout_s
    robots = getattr(fleet, "robots", [])
    while (left := sum(len(robot.queue) for robot in robots)) and time.perf_counter() < deadline:
        time.sleep(0.2)  # the last uploads land before the store is counted
    if left:
        print(f"fleet_sim: {left} frames still queued on the robots after {timeout_s:.0f} s", file=sys.stderr)
    return left


def run(
    robots: int,
    frames: int,
    models: str | None,
    pool: str | None,
    work: Path,
    store: str = "file",
    outage_s: float = 0.0,
    ros: bool = False,
) -> dict:
    from fleetloop_core.config import default_config_path, read_yaml

    from fleetloop_cloud.demo.broker import start_broker
    from fleetloop_cloud.demo.config import RobotOverrides
    from fleetloop_cloud.demo.fleet import FleetSettings, InProcessFleet, robot_specs
    from fleetloop_cloud.demo.provision import sign_round0_packages, signing_keys
    from fleetloop_cloud.job_service_mqtt import MqttJobService

    reference = _models(models)
    private, trusted = signing_keys(work)
    packages = sign_round0_packages(reference, work / "round0", private.read_bytes())
    specs = robot_specs(robots, world_seed=0)
    ids = [s.robot_id for s in specs]
    broker, mqtt = start_broker(work / "broker", ids)
    process = psutil.Process()
    fleet = jobs = server = proxy = live = None
    outage = None
    try:
        if store == "s3":
            server, proxy, store_uri = _s3_store(work)
        else:
            store_uri = f"file://{work / 'store'}"
        models_store = f"file://{work / 'model-store'}"  # packages the robots install (rollouts)
        settings = FleetSettings(
            root=work / "robots",
            store_uri=store_uri,
            jobs_uri=mqtt["endpoint"],
            packages=packages,
            keys_dir=trusted,
            selection=read_yaml(default_config_path("selection.yaml")),
            manager_overrides=RobotOverrides().manager_overrides(),
            mqtt=mqtt["robot"],
        )
        rss_before = process.memory_info().rss
        if ros:
            from fleetloop_cloud.demo.ros_fleet import RosFleet

            fleet = RosFleet(specs, settings, log_dir=work / "logs", domain_per_robot=True)  # as on own machines
        else:
            fleet = InProcessFleet(specs, settings)
        started = time.perf_counter()
        fleet.start()
        start_s = time.perf_counter() - started
        memory_mb = (process.memory_info().rss - rss_before) / 2**20
        jobs = MqttJobService.from_uri(mqtt["endpoint"], **mqtt["service"])
        live = LiveIngest(_cloud_config(store_uri, reference, work / "cloud-live", None))
        live.start()
        started = time.perf_counter()
        rounds = fleet.stream(frames)  # ROS robots: the cameras wait until their robot subscribes
        stream_s = time.perf_counter() - started
        process_memory = _process_memory(fleet)
        good = _rollout(
            jobs,
            models_store,
            ids,
            _new_version(packages["T4"], work / "v", "r1-bench", private.read_bytes()),
            fleet,
            frames,
            broker=broker,
        )
        bad_package = _new_version(packages["T4"], work / "v", "r2-corrupt", private.read_bytes())
        bad = _rollout(jobs, models_store, ids, bad_package, fleet, max(1, frames // 4), corrupt=True)
        queued_left = 0
        if outage_s > 0 and proxy is not None:
            outage = _outage(fleet, proxy, outage_s, frames)
        else:
            queued_left = _wait_queues(fleet)
        stored = _stored_frames(store_uri)
        live_ingest = live.result()
        live = None
        ingest = _ingest(store_uri, reference, work / "cloud", pool)
    finally:
        if live is not None:
            live.result()
        if jobs is not None:
            jobs.close()
        if fleet is not None:
            fleet.stop()
        broker.stop()
        if proxy is not None:
            proxy.down()
        if server is not None:
            server.stop()
    answered = sum(r.answered for r in rounds)
    return {
        "machine": machine(),
        "robots": robots,
        "frames_per_robot": frames,
        "ros": ros,
        "start_s": round(start_s, 2),  # in-process: robots built; ROS: until every robot process is up
        "memory_mb_per_robot": process_memory["uss_mb"] if process_memory else round(memory_mb / robots, 1),
        "robot_process_memory": process_memory,
        "streaming": {
            "frames": sum(r.frames for r in rounds),
            "answered": answered,
            "dropped": sum(r.dropped for r in rounds),
            "uploaded": sum(r.uploaded for r in rounds),
            "seconds": round(stream_s, 2),
            "frames_per_s": round(answered / stream_s, 1) if stream_s else None,
        },
        "broker": {"connections": robots + 1},
        "store": store,
        "outage": outage,
        "stored": {
            **stored,
            "kept": sum(r.kept for r in rounds) + good["kept"] + bad["kept"] + (outage["kept"] if outage else 0),
            "still_queued": queued_left,  # on the robots when the store was counted (0: every kept frame had landed)
        },
        "rollout": good,
        "aborted_rollout": bad,
        "ingest": ingest,
        "live_ingest": live_ingest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=50)
    parser.add_argument("--frames", type=int, default=40, help="camera frames per robot per phase")
    parser.add_argument("--quick", action="store_true", help="4 robots, 40 frames, the S3 server, a 10 s outage")
    parser.add_argument("--store", choices=("file", "s3"), default="file", help="file://, or the S3 server (moto)")
    parser.add_argument("--outage-s", type=float, default=0.0, help="the store away this long (needs --store s3)")
    parser.add_argument("--ros", action="store_true", help="every robot a `fleetloop robot` process (rclpy)")
    parser.add_argument("--models", help="reference models (default: the demo-quick profile, built when missing)")
    parser.add_argument("--pool", help="the cloud's pool URI (default: a SQLite file in the work directory)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    robots, frames = (4, 40) if args.quick else (args.robots, args.frames)
    store, outage_s = ("s3", 10.0) if args.quick else (args.store, args.outage_s)
    if outage_s > 0 and store != "s3":
        parser.error("--outage-s needs --store s3 (the outage is a proxy in front of the S3 server)")
    if args.ros and (outage_s > 0 or args.quick):
        parser.error("--ros runs without --outage-s and --quick (the outage phase drives in-process uploaders)")
    work = Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    try:
        result = run(robots, frames, args.models, args.pool, work, store, outage_s, args.ros)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s, r, b, i = result["streaming"], result["rollout"], result["aborted_rollout"], result["ingest"]
    k, o, li = result["stored"], result["outage"], result["live_ingest"]
    print_table(
        f"fleet of {robots} robots on one machine ({result['machine']['cpu_count']} CPUs)",
        [
            (
                "memory per robot (MB)" + (", unique to its process (resident)" if result["ros"] else ""),
                f"{result['memory_mb_per_robot']}"
                + (f" ({result['robot_process_memory']['rss_mb']})" if result["ros"] else ""),
            ),
            ("frames answered per second, all robots", f"{s['frames_per_s']}"),
            ("frames dropped / uploaded", f"{s['dropped']} / {s['uploaded']}"),
            ("broker connections", f"{result['broker']['connections']}"),
            (
                "broker PUBLISH received during the rollout (per s)",
                f"{r['broker_publishes']} ({r['broker_publishes'] / max(r['seconds'], 1e-9):.1f})",
            ),
            (
                "  by kind (jobs topic operation)",
                ", ".join(f"{kind} {count}" for kind, count in (r["broker_publishes_by_kind"] or {}).items()),
            ),
            ("rollout canary -> all serving (s)", f"{r['seconds']} ({r['robots_serving']}/{robots})"),
            ("  canary phase / fleet phase (s)", f"{r['canary_seconds']} / {r['fleet_seconds']}"),
            ("frames dropped during the rollout", f"{r['frames_dropped']} of {r['frames']}"),
            ("corrupt version: aborted at the canary", f"{b['aborted']} ({b['robots_serving']} serving it)"),
            ("ingest frames/s (pool rows/s)", f"{i['frames_per_s']} ({i['pool_rows_per_s']})"),
            (
                "ingest while the robots upload: frames (calls, store errors)",
                f"{li['ingested']} ({li['calls']}, {li['store_errors']}), {li['frames_per_busy_s']} frames/s busy",
            ),
            ("frames kept / stored (keys twice)", f"{k['kept']} / {k['frames']} ({k['duplicate_keys']})"),
            *(
                [
                    ("store outage (s), queued when it came back", f"{o['outage_s']}, {o['queued_at_return']}"),
                    ("queues drained after (s), left", f"{o['drain_s']}, {o['left_in_queues']}"),
                ]
                if o
                else []
            ),
        ],
    )
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
