"""The simulated fleet: robots at sites running the real robot stack, and the world's ground truth.

Two ways to run a robot, one interface (:class:`Fleet`):

* :class:`RosFleet` (the default): every robot is a ``fleetloop robot`` process (the rclpy nodes:
  perception with the model manager, selector, uploader) fed by a ``fleetloop camera`` process
  replaying that robot's simulated camera paced by the robot's answers (the next frame leaves
  while fewer than a window of frames are unanswered, so the fleet runs as fast as the CPU allows;
  a frame unanswered for two seconds is counted lost, never waited for); frames carry their
  simulated capture time, so upload budgets run on camera time. Frames dropped = frames the
  camera published minus frames the robot answered. A camera is reaped from its last output line
  (its counts), not from its teardown; one that makes no progress for ``CAMERA_STALL_S`` is ended
  and the error says what it had done.
* :class:`InProcessFleet` (``--no-ros``): the same core objects (ModelManager around the
  cascade, Selector, UploadQueue + Uploader, DeployAgent on the local control plane) called
  in-process.

Both install the round-0 edge packages (signed) into each robot's model store before it starts,
take deploy jobs from the control plane, and report per round what each robot saw, kept,
uploaded and dropped. :class:`TruthOracle` replays each robot's stream without pixels to give the
ground truth of any (robot, stamp): what the simulated annotators and the evaluation read, never a
model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import yaml

from fleetloop_sim import sim, sim_tasks
from fleetloop_core.stop_signals import end_with_parent_env
from fleetloop_core.errors import FleetLoopError
from fleetloop_core.contracts.sidecar import SimulationTruth

from fleetloop_cloud.demo.config import merge

log = logging.getLogger("fleetloop.demo")

STREAM = "camera"
CAMERA_STALL_S = 60.0  # a camera that prints no progress for this long is ended (it reports every 5 s)
CAMERA_REAP_S = 5.0  # after its final line, a camera gets this long to exit before it is killed


class FleetError(FleetLoopError):
    """A robot of the simulated fleet failed (message names the robot and what happened)."""


@dataclass(frozen=True)
class RobotSpec:
    """One robot: its id and the site it works at (site index = robot index)."""

    robot_id: str
    site_index: int
    world_seed: int

    @property
    def site(self) -> sim.Site:
        return sim.make_site(self.site_index, self.world_seed)

    def camera(self) -> sim.CameraStream:
        """Return this robot's camera stream from its first frame (the same for every consumer)."""
        return sim.CameraStream(self.site, self.robot_id, seed=self.world_seed, start_ns=sim.SIM_EPOCH_NS)


def robot_specs(count: int, world_seed: int) -> list[RobotSpec]:
    """Return ``count`` robots, robot-i at site i."""
    return [RobotSpec(f"robot-{i}", i, world_seed) for i in range(count)]


@dataclass
class RobotRound:
    """What one robot did in one round."""

    robot_id: str
    frames: int = 0  # camera frames sent to the robot
    answered: int = 0  # frames the robot's perception answered
    kept: int = 0  # frames the selector kept
    uploaded: int = 0  # frames that reached the store this round
    uploaded_bytes: int = 0
    seconds: float = 0.0
    serving: dict[str, str] = field(default_factory=dict)  # tier -> version at the end of the round

    @property
    def dropped(self) -> int:
        return self.frames - self.answered

    def to_dict(self) -> dict:
        return {
            "robot_id": self.robot_id,
            "frames": self.frames,
            "answered": self.answered,
            "dropped": self.dropped,
            "kept": self.kept,
            "uploaded": self.uploaded,
            "uploaded_bytes": self.uploaded_bytes,
            "seconds": round(self.seconds, 2),
            "serving": dict(self.serving),
        }


class TruthOracle:
    """Ground truth of every frame a robot's camera produced, by (robot, stamp); no pixels drawn."""

    def __init__(self, specs: Sequence[RobotSpec]):
        self._streams = {spec.robot_id: spec.camera() for spec in specs}
        self._truth: dict[tuple[str, int], sim_tasks.Truth] = {}
        self._produced = {spec.robot_id: 0 for spec in specs}

    def advance(self, robot_id: str, frames: int) -> list[tuple[int, sim_tasks.Truth]]:
        """Let ``robot_id``'s camera run ``frames`` more frames; return their (stamp, truth)."""
        out = []
        for frame in self._streams[robot_id].frames(frames, render=False):
            self._truth[(robot_id, frame.stamp_ns)] = frame.truth
            out.append((frame.stamp_ns, frame.truth))
        self._produced[robot_id] += frames
        return out

    def produced(self, robot_id: str) -> int:
        return self._produced[robot_id]

    def truth(self, robot_id: str, stamp_ns: int) -> sim_tasks.Truth | None:
        """Return the truth of one frame, None for a frame the camera never produced."""
        return self._truth.get((robot_id, int(stamp_ns)))


def simulation_truth(truth: sim_tasks.Truth) -> SimulationTruth:
    """Return the sidecar form of a frame's ground truth."""
    return SimulationTruth(label=truth.label, item=truth.item, track_id=truth.track_id, site=truth.site)


def _store_objects(store_root: Path, robot_id: str) -> tuple[int, int]:
    """Return (frames, bytes) a robot has in a file store (frames only, sidecars not counted)."""
    base = store_root / "frames" / robot_id
    count = size = 0
    if base.is_dir():
        for path in base.rglob("*"):
            if path.is_file() and path.suffix in (".png", ".jpg") and not path.name.startswith("."):
                count += 1
                size += path.stat().st_size
    return count, size


class Fleet(Protocol):
    """What the demo needs from a fleet."""

    specs: list[RobotSpec]

    def start(self) -> None: ...
    def stream(self, frames_per_robot: int) -> list[RobotRound]: ...
    def serving(self) -> dict[str, dict[str, str]]: ...
    def stop(self) -> None: ...


@dataclass
class FleetSettings:
    """Everything robots of one fleet share."""

    root: Path  # robot state lives in root/<robot_id>/
    store_uri: str  # where robots upload (file:///...)
    jobs_uri: str  # local control plane directory (file:///...) or mqtts://...
    packages: dict[str, Path]  # round-0 signed packages per tier (T3, T4)
    keys_dir: Path  # trusted public keys
    selection: dict  # config/selection.yaml content with the demo's budget
    manager_overrides: dict  # model_manager section overrides
    mqtt: dict | None = None  # robot_id -> control_plane.mqtt section (its certificate) for mqtts://
    camera_window: int = 4
    camera_rate_hz: float = 10.0


# ====================================================================================== in-process
@dataclass
class ServingStack:
    """A robot's serving side as core objects: the cascade, its model manager and the deploy agent."""

    cascade: Any
    manager: Any
    agent: Any


def serving_stack(
    robot_id: str,
    root: Path,
    packages: dict[str, Path],
    keys_dir: Path,
    jobs_uri: str,
    manager_overrides: dict,
    mqtt: dict | None = None,
) -> ServingStack:
    """Return a provisioned robot's serving stack (classifiers or detectors, as the packages' task says).

    The model store in ``root/models`` gets the round-0 signed ``packages`` (T4, T3) on first start, installed
    and verified like any later one; after a restart it serves what it served before.
    """
    from fleetloop_core.config import default_config_path, read_yaml, validate
    from fleetloop_core.control_plane import ControlPlaneConfig, open_control_plane
    from fleetloop_core.deploy_agent import DeployAgent
    from fleetloop_core.model_manager import ModelManager, ModelManagerConfig, serving_package_dirs
    from fleetloop_core.model_store import ModelStore, PackageLocation
    from fleetloop_core.tasks import cascade_for, load_model

    manager_data = read_yaml(default_config_path("model_manager.yaml"))["model_manager"]
    manager_data = merge(
        manager_data, {"store": {"root": str(root / "models"), "trusted_keys": str(keys_dir)}, "providers": ["cpu"]}
    )
    manager_data = merge(manager_data, manager_overrides)
    manager_config = validate(ModelManagerConfig, manager_data, source=f"demo {robot_id} model_manager")
    store = ModelStore.from_config(manager_config.store)
    serving = serving_package_dirs(store)
    if "edge" not in serving:
        serving = {
            role: str(store.install(PackageLocation(path=str(packages[tier]))).directory)
            for role, tier in (("edge", "T4"), ("escalation", "T3"))
        }
    cascade = cascade_for(
        load_model(serving["edge"], providers=("cpu",)), load_model(serving["escalation"], providers=("cpu",))
    )
    manager = ModelManager(cascade, store, manager_config)
    plane = ControlPlaneConfig(uri=jobs_uri, thing_name=robot_id, poll_s=0.5, **({"mqtt": mqtt} if mqtt else {}))
    agent = DeployAgent(open_control_plane(plane, f"demo {robot_id}: control_plane"), manager, poll_s=0.5)
    return ServingStack(cascade, manager, agent)


def demo_selection(selection: dict, override: dict | None, source: str):
    """Return a robot's selector config: the fleet's ``selection`` with ``override`` merged over it."""
    from fleetloop_core.selection_config import selection_config

    data = merge(selection, override or {})
    if override and "policy" in override:
        data["policy"] = override["policy"]  # another policy: none of the old params
    return selection_config(data, source)


class InProcessRobot:
    """One robot's stack as core objects in this process."""

    def __init__(self, spec: RobotSpec, settings: FleetSettings, selection_override: dict | None = None):
        from fleetloop_core.selection import Selector
        from fleetloop_core.store import open_store
        from fleetloop_core.upload_queue import QueueConfig, UploadQueue
        from fleetloop_core.uploader import Uploader

        self.spec = spec
        root = settings.root / spec.robot_id
        stack = serving_stack(
            spec.robot_id,
            root,
            settings.packages,
            settings.keys_dir,
            settings.jobs_uri,
            settings.manager_overrides,
            settings.mqtt[spec.robot_id] if settings.mqtt else None,
        )
        self.cascade, self.manager, self.agent = stack.cascade, stack.manager, stack.agent
        self.selector = Selector(
            demo_selection(settings.selection, selection_override, "demo selection"),
            robot_id=spec.robot_id,
            labels=self.cascade.edge.labels,
        )
        queue_config = QueueConfig(directory=str(root / "queue"), store=settings.store_uri)
        self.queue = UploadQueue.from_config(queue_config)
        self.uploader = Uploader(self.queue, open_store(settings.store_uri), queue_config)
        self.store_root = (
            Path(settings.store_uri[len("file://") :]) if settings.store_uri.startswith("file://") else None
        )
        self.camera = spec.camera()

    def start(self) -> None:
        self.agent.start()

    def stream(self, frames: int, offer_only: set[int] | None = None) -> RobotRound:
        """Run ``frames`` camera frames through the stack; ``offer_only``: offer just these frame indices
        to the selector (the random-upload baseline's robots: everything else is the same)."""
        report = RobotRound(self.spec.robot_id)
        before = _store_objects(self.store_root, self.spec.robot_id) if self.store_root else (0, 0)
        started = time.perf_counter()
        site = self.spec.site.name
        for index, frame in enumerate(self.camera.frames(frames)):
            report.frames += 1
            result = self.manager.infer(frame.image, stream=STREAM)
            report.answered += 1
            if offer_only is not None and index not in offer_only:
                continue
            decision = self.selector.offer(
                frame.image,
                result,
                frame.stamp_ns,
                stream=STREAM,
                robot_id=self.spec.robot_id,
                site=site,
                simulation=simulation_truth(frame.truth),
                track_hint=result.track,
            )
            if decision.keep:
                self.queue.put(decision.record)
                report.kept += 1
        self.uploader.drain(stop_on_refusal=True)
        after = _store_objects(self.store_root, self.spec.robot_id) if self.store_root else (0, 0)
        report.uploaded, report.uploaded_bytes = after[0] - before[0], after[1] - before[1]
        report.seconds = time.perf_counter() - started
        report.serving = self.cascade.model_versions()
        return report

    def stop(self) -> None:
        self.agent.stop()
        self.manager.close()
        self.queue.close()


class InProcessFleet:
    """Robots as core objects in this process (``--no-ros``)."""

    def __init__(self, specs: Sequence[RobotSpec], settings: FleetSettings):
        self.specs = list(specs)
        self.settings = settings
        self.robots: list[InProcessRobot] = []

    def start(self) -> None:
        self.robots = [InProcessRobot(spec, self.settings) for spec in self.specs]
        for robot in self.robots:
            robot.start()

    def stream(self, frames_per_robot: int) -> list[RobotRound]:
        return [robot.stream(frames_per_robot) for robot in self.robots]

    def serving(self) -> dict[str, dict[str, str]]:
        return {robot.spec.robot_id: robot.cascade.model_versions() for robot in self.robots}

    def stop(self) -> None:
        for robot in self.robots:
            robot.stop()


# ====================================================================================== ROS 2
class _CameraRun:
    """One ``fleetloop camera`` process of a round: its output read as it comes, its end bounded."""

    def __init__(self, robot_id: str, command: list[str], env: dict[str, str]):
        self.robot_id = robot_id
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, start_new_session=True
        )
        self.progress: dict = {}
        self.final: dict | None = None
        self.last_output = time.monotonic()
        self.stderr: list[str] = []
        self._lines = threading.Thread(target=self._read_stdout, daemon=True)
        self._errors = threading.Thread(target=self._read_stderr, daemon=True)
        self._lines.start()
        self._errors.start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.last_output = time.monotonic()
            if line.startswith("{"):
                message = json.loads(line)
                if "camera" in message:
                    self.final = message["camera"]
                elif "camera_progress" in message:
                    self.progress = message["camera_progress"]

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)
            del self.stderr[:-40]

    def result(self, robot_log: Callable[[], str]) -> dict:
        """Return the camera's final counts; FleetError naming what happened when there are none."""
        while self.final is None and self.process.poll() is None:
            if time.monotonic() - self.last_output > CAMERA_STALL_S:
                self.kill()
                raise FleetError(
                    f"{self.robot_id}: the camera made no progress for {CAMERA_STALL_S:.0f} s "
                    f"(so far {self.progress or 'nothing sent'}); camera stderr:\n"
                    f"{''.join(self.stderr)[-1500:]}\nrobot log tail:\n{robot_log()}"
                )
            time.sleep(0.1)
        self._lines.join(CAMERA_REAP_S)  # the final line, if the process just ended
        try:
            self.process.wait(CAMERA_REAP_S)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s: the camera printed its counts but did not exit within %.0f s: killed", self.robot_id, CAMERA_REAP_S
            )
            self.kill()
        if self.final is None:
            raise FleetError(
                f"{self.robot_id}: the camera exited with {self.process.returncode} before reporting its "
                f"counts (so far {self.progress or 'nothing sent'}); camera stderr:\n"
                f"{''.join(self.stderr)[-1500:]}\nrobot log tail:\n{robot_log()}"
            )
        if self.process.returncode not in (0, None) and self.process.returncode != -signal.SIGKILL:
            raise FleetError(
                f"{self.robot_id}: the camera exited with {self.process.returncode} after {self.final}; "
                f"camera stderr:\n{''.join(self.stderr)[-1500:]}"
            )
        return self.final

    def kill(self) -> None:
        """End the process group now (no-op once it exited)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


class RosFleet:
    """Robots as ``fleetloop robot`` processes (rclpy), each fed by a ``fleetloop camera`` process."""

    def __init__(
        self,
        specs: Sequence[RobotSpec],
        settings: FleetSettings,
        domain_id: int | None = None,
        log_dir: Path | None = None,
    ):
        self.specs = list(specs)
        self.settings = settings
        self.domain_id = domain_id if domain_id is not None else 40 + (os.getpid() % 150)
        self.log_dir = log_dir or settings.root / "logs"
        self.processes: dict[str, subprocess.Popen] = {}
        self._started_frames = {spec.robot_id: 0 for spec in specs}
        self._round = 0

    def _env(self) -> dict[str, str]:
        from fleetloop_core.dds import DdsConfig, dds_environment

        env = dict(os.environ)
        env.update(ROS_DOMAIN_ID=str(self.domain_id), ROS_LOCALHOST_ONLY="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        env.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
        dds_environment(DdsConfig(), env)  # robots and cameras on the robots' default transport
        # robots and cameras run in their own sessions; if the demo is killed -9 they must not run on.
        # Started from the main thread (the guard follows the thread that started them).
        return end_with_parent_env(env)

    def _robot_yaml(self, spec: RobotSpec) -> Path:
        """Write the robot's parameter file: config/robot.yaml with this robot's paths and budget."""
        from fleetloop_core.config import default_config_path, read_yaml

        root = self.settings.root / spec.robot_id
        data = read_yaml(default_config_path("robot.yaml"))
        every = data["/**"]["ros__parameters"]
        every["robot_id"] = spec.robot_id
        every["queue"] = merge(
            every.get("queue", {}), {"directory": str(root / "queue"), "store": self.settings.store_uri}
        )
        perception = data["/**/perception"]["ros__parameters"]
        perception.update(models_dir=str(self.settings.root / "round0"), image_qos="reliable", intra_op_threads=1)
        manager = data["/**/model_manager"]["ros__parameters"]
        manager["manager"] = merge(
            manager["manager"],
            merge(
                {"store": {"root": str(root / "models"), "trusted_keys": str(self.settings.keys_dir)}},
                self.settings.manager_overrides,
            ),
        )
        plane = {"uri": self.settings.jobs_uri, "thing_name": spec.robot_id, "poll_s": 0.5}
        if self.settings.mqtt:
            plane["mqtt"] = self.settings.mqtt[spec.robot_id]
        manager["control_plane"] = merge(manager.get("control_plane", {}), plane)
        selector = data["/**/selector"]["ros__parameters"]
        selector["selection"] = merge(selector["selection"], self.settings.selection)
        selector["site"] = spec.site.name
        path = root / "robot.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start(self) -> None:
        from fleetloop_core.model_store import ModelStore, PackageLocation
        from fleetloop_core.signing import TrustedKeys

        round0 = self.settings.root / "round0"
        if not round0.exists():
            round0.mkdir(parents=True)
            for tier, path in self.settings.packages.items():
                shutil.copytree(path, round0 / tier)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            root = self.settings.root / spec.robot_id
            # provisioning: the robot's store holds its round-0 packages, so it can roll back to them
            store = ModelStore(root / "models", TrustedKeys.load(str(self.settings.keys_dir)))
            for tier in ("T4", "T3"):
                store.install(PackageLocation(path=str(self.settings.packages[tier])))
            config = self._robot_yaml(spec)
            command = [
                sys.executable,
                "-m",
                "fleetloop_core.cli",
                "robot",
                "--config",
                str(config),
                "--namespace",
                f"/{spec.robot_id.replace('-', '_')}",
            ]
            out = open(self.log_dir / f"{spec.robot_id}.log", "ab")
            self.processes[spec.robot_id] = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True
            )
        log.info("ROS fleet: %d robot processes (ROS_DOMAIN_ID %d)", len(self.specs), self.domain_id)

    def _log_tail(self, robot_id: str) -> str:
        path = self.log_dir / f"{robot_id}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def _check_alive(self) -> None:
        for robot_id, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.log_dir / f"{robot_id}.log").read_text(errors="replace")[-2000:]
                raise FleetError(f"{robot_id}: robot process exited with {process.returncode}; log tail:\n{tail}")

    def stream(self, frames_per_robot: int) -> list[RobotRound]:
        self._check_alive()
        reports, cameras = {}, {}
        store_root = (
            Path(self.settings.store_uri[len("file://") :]) if self.settings.store_uri.startswith("file://") else None
        )
        before = {s.robot_id: _store_objects(store_root, s.robot_id) if store_root else (0, 0) for s in self.specs}
        kept_before = {s.robot_id: self._kept(s) for s in self.specs}
        started = time.perf_counter()
        for spec in self.specs:
            namespace = f"/{spec.robot_id.replace('-', '_')}"
            command = [
                sys.executable,
                "-m",
                "fleetloop_core.cli",
                "camera",
                "--source",
                "sim",
                "--namespace",
                namespace,
                "--robot",
                spec.robot_id,
                "--site",
                str(spec.site_index),
                "--seed",
                str(spec.world_seed),
                "--start",
                str(self._started_frames[spec.robot_id]),
                "--count",
                str(frames_per_robot),
                "--sim-stamps",
                "--reliable",
                "--lockstep",
                "frame_results",
                "--window",
                str(self.settings.camera_window),
                "--rate",
                "2000",
                "--wait-subscribers",
                "1",
                "--progress",
                "5",
            ]
            cameras[spec.robot_id] = _CameraRun(spec.robot_id, command, self._env())
        try:
            for spec in self.specs:
                counts = cameras[spec.robot_id].result(lambda robot_id=spec.robot_id: self._log_tail(robot_id))
                reports[spec.robot_id] = RobotRound(
                    spec.robot_id, frames=int(counts["sent"]), answered=int(counts["answered"])
                )
                self._started_frames[spec.robot_id] += frames_per_robot
        finally:
            for camera in cameras.values():
                camera.kill()
        self._wait_drained(store_root)
        for spec in self.specs:
            report = reports[spec.robot_id]
            after = _store_objects(store_root, spec.robot_id) if store_root else (0, 0)
            report.uploaded = after[0] - before[spec.robot_id][0]
            report.uploaded_bytes = after[1] - before[spec.robot_id][1]
            report.kept = self._kept(spec) - kept_before[spec.robot_id]
            report.seconds = time.perf_counter() - started
        serving = self.serving()
        for spec in self.specs:
            reports[spec.robot_id].serving = serving.get(spec.robot_id, {})
        return [reports[spec.robot_id] for spec in self.specs]

    def _queue(self, spec: RobotSpec):
        from fleetloop_core.upload_queue import UploadQueue

        return UploadQueue(self.settings.root / spec.robot_id / "queue")

    def _kept(self, spec: RobotSpec) -> int:
        """Return the frames this robot's queue ever accepted (its selector's keeps)."""
        queue = self._queue(spec)
        try:
            stats = queue.stats()
            return stats.uploaded_total + stats.records + stats.evicted_total
        finally:
            queue.close()

    def _wait_drained(self, store_root: Path | None, timeout_s: float = 120.0) -> None:
        """Wait until every robot's upload queue is empty (its uploader drains continuously)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            pending = 0
            for spec in self.specs:
                queue = self._queue(spec)
                try:
                    pending += queue.stats().records
                finally:
                    queue.close()
            if pending == 0:
                return
            time.sleep(0.25)
        raise FleetError(f"upload queues still hold {pending} records after {timeout_s:.0f} s")

    def serving(self) -> dict[str, dict[str, str]]:
        """Return each robot's serving versions, from its model store's record of what serves."""
        from fleetloop_core.contracts.manifest import load_manifest
        from fleetloop_core.model_manager import serving_package_dirs
        from fleetloop_core.model_store import ModelStore
        from fleetloop_core.signing import TrustedKeys

        out = {}
        for spec in self.specs:
            store = ModelStore(
                self.settings.root / spec.robot_id / "models", TrustedKeys.load(str(self.settings.keys_dir))
            )
            versions = {}
            for directory in serving_package_dirs(store).values():
                manifest = load_manifest(Path(directory) / "manifest.json")
                versions[manifest.tier] = manifest.version
            out[spec.robot_id] = versions
        return out

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
