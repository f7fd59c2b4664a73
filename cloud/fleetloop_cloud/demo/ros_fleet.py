"""The demo's ROS fleet: every robot a ``fleetloop robot`` process fed by a ``fleetloop camera`` process.

The camera replays that robot's simulated stream paced by the robot's answers (the next frame
leaves while fewer than a window of frames are unanswered; a frame unanswered for two seconds is
counted lost, never waited for); frames carry their simulated capture time (the camera processes:
:mod:`fleetloop_cloud.demo.ros_cameras`). Models roll out while the next round streams; where they roll out
longer, the cameras stream on past the round's frames until they are done, and after the last round until
its models are (:meth:`RosFleet.stream_while`), as a robot's camera does in the field. The in-process fleet
and what both share are in :mod:`fleetloop_cloud.demo.fleet`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

import yaml

from fleetloop_core.stop_signals import end_with_parent_env
from fleetloop_core.cli import command_line

from fleetloop_cloud.demo.config import merge

from fleetloop_cloud.demo.fleet import Busy, FleetError, FleetSettings, RobotRound, RobotSpec, store_objects
from fleetloop_cloud.demo.ros_cameras import CameraRun

log = logging.getLogger("fleetloop.demo")

# starting: a fleet whose robots all boot at once on few cores comes up one robot after another (fifty
# took minutes on two cores); it is stuck only when no robot came up for this long
ROBOT_STALL_S = 120.0


# ====================================================================================== ROS 2
class RosFleet:
    """Robots as ``fleetloop robot`` processes (rclpy), each fed by a ``fleetloop camera`` process."""

    def __init__(
        self,
        specs: Sequence[RobotSpec],
        settings: FleetSettings,
        domain_id: int | None = None,
        log_dir: Path | None = None,
        domain_per_robot: bool = False,
    ):
        self.specs = list(specs)
        self.settings = settings
        self.gate = None  # robots on camera time in their own processes swap where the clock puts it
        # domain_per_robot: robot i and its cameras in ROS domain ``domain_id + i``, as robots on their own
        # machines never meet on DDS; one domain for a large fleet on one machine runs out of participant
        # ports (measured: 50 robots and 50 cameras in one domain, a camera's shared-memory port failed and
        # its robot was never discovered). Domains stay within 0..101, the range safe on Linux.
        self.domain_per_robot = domain_per_robot
        if domain_per_robot and len(self.specs) > 100:
            raise FleetError(f"{len(self.specs)} robots with a ROS domain each: at most 100 fit in 0..101")
        if domain_id is None:
            domain_id = 1 + os.getpid() % (101 - len(self.specs)) if domain_per_robot else 40 + (os.getpid() % 150)
        self.domain_id = domain_id
        self.log_dir = log_dir or settings.root / "logs"
        self.processes: dict[str, subprocess.Popen] = {}
        self._started_frames = {spec.robot_id: 0 for spec in specs}
        self._round = 0

    def _env(self, index: int) -> dict[str, str]:
        """The environment of robot ``index`` and its cameras."""
        from fleetloop_core.dds import DdsConfig, dds_environment

        env = dict(os.environ)
        domain = self.domain_id + (index if self.domain_per_robot else 0)
        env.update(ROS_DOMAIN_ID=str(domain), ROS_LOCALHOST_ONLY="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
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
        perception["cascade"] = merge(perception.get("cascade", {}), self.settings.cascade_overrides)
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
        for index, spec in enumerate(self.specs):
            root = self.settings.root / spec.robot_id
            # provisioning: the robot's store holds its round-0 packages, so it can roll back to them
            store = ModelStore(root / "models", TrustedKeys.load(str(self.settings.keys_dir)))
            for tier in ("T4", "T3"):
                store.install(PackageLocation(path=str(self.settings.packages[tier])))
            config = self._robot_yaml(spec)
            command = command_line(
                "robot", "--config", str(config), "--namespace", f"/{spec.robot_id.replace('-', '_')}"
            )
            out = open(self.log_dir / f"{spec.robot_id}.log", "ab")
            self.processes[spec.robot_id] = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self._env(index), start_new_session=True
            )
        self._wait_up()
        last = self.domain_id + (len(self.specs) - 1 if self.domain_per_robot else 0)
        log.info("ROS fleet: %d robot processes (ROS_DOMAIN_ID %d..%d)", len(self.specs), self.domain_id, last)

    def _wait_up(self) -> None:
        """Wait until every robot process says it is up (its log's ``robot up`` line); FleetError when one
        exits, or when no robot came up for ``ROBOT_STALL_S``."""
        pending, last = {spec.robot_id for spec in self.specs}, time.monotonic()
        while pending:
            self._check_alive()
            up = {r for r in pending if "robot up" in (self.log_dir / f"{r}.log").read_text(errors="replace")}
            if up:
                pending, last = pending - up, time.monotonic()
            elif time.monotonic() - last > ROBOT_STALL_S:
                first = sorted(pending)[0]
                raise FleetError(
                    f"{len(pending)} robots not up, and none came up for {ROBOT_STALL_S:.0f} s; "
                    f"{first}'s log tail:\n{self._log_tail(first)}"
                )
            else:
                time.sleep(0.5)

    def _log_tail(self, robot_id: str) -> str:
        path = self.log_dir / f"{robot_id}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def _check_alive(self) -> None:
        for robot_id, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.log_dir / f"{robot_id}.log").read_text(errors="replace")[-2000:]
                raise FleetError(f"{robot_id}: robot process exited with {process.returncode}; log tail:\n{tail}")

    def stream(self, frames_per_robot: int, busy: Busy = None) -> list[RobotRound]:
        """Stream one round from every robot's camera at once; return per robot what it saw, kept, uploaded, dropped.

        ``busy``: the last round's rollouts, which run while this round streams; while ``busy()`` after the
        round's frames, the cameras stream on (a watch after a swap judges the frames that follow it: with
        none it would pass unjudged), and those frames are this round's too (``RobotRound.extra_frames``)."""
        self._check_alive()
        reports, cameras = {}, {}
        store_root = (
            Path(self.settings.store_uri[len("file://") :]) if self.settings.store_uri.startswith("file://") else None
        )
        before = {s.robot_id: store_objects(store_root, s.robot_id) if store_root else (0, 0) for s in self.specs}
        kept_before = {s.robot_id: self._kept(s) for s in self.specs}
        started = time.perf_counter()
        for index, spec in enumerate(self.specs):
            self._wait_boot_slot(cameras)
            cameras[spec.robot_id] = self._camera(index, spec, frames_per_robot)
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
        if busy is not None:
            for robot_id, counts in self._stream_on(busy).items():
                reports[robot_id].extra_frames = int(counts["sent"])
                reports[robot_id].frames += int(counts["sent"])
                reports[robot_id].answered += int(counts["answered"])
        self._wait_drained(store_root)
        for spec in self.specs:
            report = reports[spec.robot_id]
            after = store_objects(store_root, spec.robot_id) if store_root else (0, 0)
            report.uploaded = after[0] - before[spec.robot_id][0]
            report.uploaded_bytes = after[1] - before[spec.robot_id][1]
            report.kept = self._kept(spec) - kept_before[spec.robot_id]
            report.seconds = time.perf_counter() - started
        serving = self.serving()
        for spec in self.specs:
            reports[spec.robot_id].serving = serving.get(spec.robot_id, {})
        return [reports[spec.robot_id] for spec in self.specs]

    def stream_while(self, busy: Callable[[], bool]) -> list[RobotRound]:
        """Keep every robot's camera streaming on from its last frame while ``busy()`` (the rollouts after the
        last round: nothing else would bring the watch after a swap its frames); return per robot the frames
        sent and answered. The robots keep and upload what they select, as after any round; those uploads
        belong to no round of the report."""
        return [
            RobotRound(robot_id, frames=int(counts["sent"]), answered=int(counts["answered"]))
            for robot_id, counts in self._stream_on(busy).items()
        ]

    def _stream_on(self, busy: Callable[[], bool]) -> dict[str, dict]:
        """Stream every robot's camera on from its last frame while ``busy()``; return each camera's counts
        (none when ``busy()`` is false at once)."""
        if not busy():
            return {}
        self._check_alive()
        cameras: dict[str, CameraRun] = {}
        counts: dict[str, dict] = {}
        try:
            for index, spec in enumerate(self.specs):
                self._wait_boot_slot(cameras)
                cameras[spec.robot_id] = self._camera(index, spec, 0)
            while busy():
                self._check_alive()
                for robot_id, camera in cameras.items():
                    camera.raise_if_stalled(lambda robot_id=robot_id: self._log_tail(robot_id))
                time.sleep(0.2)
            for robot_id, camera in cameras.items():
                counts[robot_id] = camera.finish(lambda robot_id=robot_id: self._log_tail(robot_id))
                self._started_frames[robot_id] += int(counts[robot_id]["sent"])
                log.info("%s: %d frames streamed on while models rolled out", robot_id, counts[robot_id]["sent"])
        finally:
            for camera in cameras.values():
                camera.kill()
        return counts

    def _camera(self, index: int, spec: RobotSpec, count: int) -> CameraRun:
        """Start robot ``spec``'s camera on from its last frame: ``count`` frames, 0 until told to stop."""
        command = command_line(
            "camera",
            "--source",
            "sim",
            "--namespace",
            f"/{spec.robot_id.replace('-', '_')}",
            "--robot",
            spec.robot_id,
            "--site",
            str(spec.site_index),
            "--seed",
            str(spec.world_seed),
            "--start",
            str(self._started_frames[spec.robot_id]),
            "--count",
            str(count),
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
        )
        return CameraRun(spec.robot_id, command, self._env(index))

    @staticmethod
    def _wait_boot_slot(cameras: dict[str, CameraRun]) -> None:
        """Let at most one camera per CPU start up at a time (imports, DDS); fifty started at once on two
        cores starved one another past the stall limit before any printed a line (measured)."""
        slots = max(1, os.cpu_count() or 1)
        while sum(1 for c in cameras.values() if not c.up and c.process.poll() is None) >= slots:
            time.sleep(0.02)

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
        """End every robot process: SIGINT (its own orderly shutdown), then SIGKILL after the deadline (one
        second of this machine's time per robot beyond 15 s: fifty robots shut down on two cores at once)."""
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15 + len(self.processes)
        killed = []
        for robot_id, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                killed.append(robot_id)
        if killed:  # their DDS shared-memory files stay in /dev/shm: say so
            log.warning("robot processes killed after the shutdown deadline: %s", ", ".join(killed))
