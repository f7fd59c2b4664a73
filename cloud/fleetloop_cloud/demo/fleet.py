"""The simulated fleet: robots at sites running the real robot stack, and the world's ground truth.

Two ways to run a robot, one interface (:class:`Fleet`):

* ``RosFleet`` (the default, in :mod:`fleetloop_cloud.demo.ros_fleet`): every robot is a ``fleetloop robot``
  process (the rclpy nodes: perception with the model manager, selector, uploader) fed by a ``fleetloop
  camera`` process replaying that robot's simulated camera paced by the robot's answers (the next frame
  leaves while fewer than a window of frames are unanswered, so the fleet runs as fast as the CPU allows; a
  frame unanswered for two seconds is counted lost, never waited for); frames carry their simulated capture
  time, so upload budgets run on camera time. Frames dropped = frames the camera published minus frames the
  robot answered (:mod:`fleetloop_cloud.demo.ros_cameras`). While models roll out the cameras stream on,
  past a round's frames and after the last round, so the watch after each swap judges frames.
* :class:`InProcessFleet` (``--no-ros``): the same core objects (ModelManager around the
  cascade, Selector, UploadQueue + Uploader, DeployAgent on the local control plane) called
  in-process, one :class:`InProcessRobot` per robot. The same robot class runs the detection
  demo's robots (:mod:`fleetloop_cloud.demo.detection`) and both demos' random-upload baselines:
  what differs per task is data of its :class:`RobotSpec` (the camera's task, stream name and
  start time, from :func:`robot_specs`) and the sidecar truth of the task's part in
  :data:`fleetloop_cloud.simfleet.FLEET_TASKS` (boxes for detection).

Both install the round-0 edge packages (signed) into each robot's model store before it starts,
take deploy jobs from the control plane, and report per round what each robot saw, kept,
uploaded and dropped. :class:`TruthOracle` replays each robot's stream without pixels to give the
ground truth of any (robot, stamp): what the simulated annotators and the evaluation read, never a
model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence


from fleetloop_sim import sim, sim_tasks
from fleetloop_core.errors import FleetLoopError

from fleetloop_cloud.demo.config import merge
from fleetloop_cloud.demo.rollout_gate import RolloutGate
from fleetloop_cloud.demo.watch_feed import WatchFeed
from fleetloop_cloud.simfleet import FLEET_TASKS

log = logging.getLogger("fleetloop.demo")

# a demo robot's camera per task: its stream name, and how far apart the robots' cameras start (robot i
# at SIM_EPOCH_NS + i * step), as each demo has always run them
DEMO_CAMERAS: dict[str, tuple[str, int]] = {"classification": ("camera", 0), "detection": ("front", 10**12)}


class FleetError(FleetLoopError):
    """A robot of the simulated fleet failed (message names the robot and what happened)."""


@dataclass(frozen=True)
class RobotSpec:
    """One robot: its id, the site it works at (site index = robot index) and its camera.

    ``task`` is the world the camera shows (``classification`` or ``detection``: what a frame holds and
    what its truth is), ``start_ns`` the simulated time of its first frame, ``stream`` the camera's
    stream name (perception's and the sidecars').
    """

    robot_id: str
    site_index: int
    world_seed: int
    task: str = "classification"
    start_ns: int = sim.SIM_EPOCH_NS
    stream: str = "camera"

    @property
    def site(self) -> sim.Site:
        return sim.make_site(self.site_index, self.world_seed)

    def camera(self) -> sim.CameraStream:
        """Return this robot's camera stream from its first frame (the same for every consumer)."""
        return sim.CameraStream(self.site, self.robot_id, seed=self.world_seed, start_ns=self.start_ns, task=self.task)


def robot_specs(count: int, world_seed: int, task: str = "classification") -> list[RobotSpec]:
    """Return ``count`` robots of the ``task``'s demo, robot-i at site i (cameras as :data:`DEMO_CAMERAS` says)."""
    stream, step_ns = DEMO_CAMERAS[task]
    return [RobotSpec(f"robot-{i}", i, world_seed, task, sim.SIM_EPOCH_NS + i * step_ns, stream) for i in range(count)]


@dataclass
class RobotRound:
    """What one robot did in one round."""

    robot_id: str
    frames: int = 0  # camera frames sent to the robot
    # of them, frames streamed on after the round's count while the last round's models rolled out (ROS robots)
    extra_frames: int = 0
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
            "extra_frames": self.extra_frames,
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


def store_objects(store_root: Path, robot_id: str) -> tuple[int, int]:
    """Return (frames, bytes) a robot has in a file store (frames only, sidecars not counted)."""
    base = store_root / "frames" / robot_id
    count = size = 0
    if base.is_dir():
        for path in base.rglob("*"):
            if path.is_file() and path.suffix in (".png", ".jpg") and not path.name.startswith("."):
                count += 1
                size += path.stat().st_size
    return count, size


Busy = Optional[Callable[[], bool]]  # while true, the rollouts of the last round's models still run


class Fleet(Protocol):
    """What the demo needs from a fleet."""

    specs: list[RobotSpec]
    gate: RolloutGate | None  # in-process robots: the last round's rollouts swap in before a round

    def start(self) -> None: ...
    def stream(self, frames_per_robot: int, busy: Busy = None) -> list[RobotRound]: ...
    def stream_while(self, busy: Callable[[], bool]) -> list[RobotRound]: ...
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
    cascade_overrides: dict = field(default_factory=dict)  # the cascade's settings (robot.yaml ``cascade``)
    camera_window: int = 4
    camera_rate_hz: float = 10.0
    queue_synchronous: str = "full"  # in-process robots' upload queue: sqlite durability (full or normal)


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
    cascade_overrides: dict | None = None,
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
    if cascade_overrides:  # the task's own settings model, validated like robot.yaml's block
        settings = {**cascade.config.model_dump(), **cascade_overrides}
        cascade.config = validate(type(cascade.config), settings, source=f"demo {robot_id} cascade")
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
    """One robot's stack as core objects in this process, for either task (its spec's).

    Camera stream -> model manager (the task's cascade) -> selector -> upload queue -> uploader; deploy
    jobs arrive through the control plane (``settings.jobs_uri``) and the deploy agent applies them on
    the model manager's thread while the robot streams (from :meth:`start`). ``selection_override`` is
    merged over ``settings.selection`` (the random-upload baseline's keep-everything selector).
    """

    def __init__(
        self,
        spec: RobotSpec,
        settings: FleetSettings,
        selection_override: dict | None = None,
        gate: RolloutGate | None = None,
    ):
        from fleetloop_core.selection import Selector
        from fleetloop_core.selection_campaigns import Campaigns
        from fleetloop_core.signing import TrustedKeys
        from fleetloop_core.store import open_store
        from fleetloop_core.upload_queue import QueueConfig, UploadQueue
        from fleetloop_core.uploader import Uploader

        self.spec = spec
        self.gate = gate  # holds the round until the arm's rollouts have ended (the same frame every run)
        root = settings.root / spec.robot_id
        stack = serving_stack(
            spec.robot_id,
            root,
            settings.packages,
            settings.keys_dir,
            settings.jobs_uri,
            settings.manager_overrides,
            settings.mqtt[spec.robot_id] if settings.mqtt else None,
            settings.cascade_overrides,
        )
        self.cascade, self.manager, self.agent = stack.cascade, stack.manager, stack.agent
        self.selector = Selector(
            demo_selection(settings.selection, selection_override, f"demo selection ({spec.task})"),
            robot_id=spec.robot_id,
            labels=self.cascade.frame_labels,
        )
        # data campaigns (fleetloop.update_selection jobs) change this selector, signed by the fleet's key
        trusted = TrustedKeys.from_directory(settings.keys_dir)
        self.agent.campaigns = Campaigns(self.selector, trusted, root / "campaign.json")
        self.agent.campaigns.resume()
        queue_config = QueueConfig(
            directory=str(root / "queue"), store=settings.store_uri, synchronous=settings.queue_synchronous
        )
        self.queue = UploadQueue.from_config(queue_config)
        self.uploader = Uploader(self.queue, open_store(settings.store_uri), queue_config)
        self.store_root = (
            Path(settings.store_uri[len("file://") :]) if settings.store_uri.startswith("file://") else None
        )
        self.camera = spec.camera()
        self._sidecar_truth = FLEET_TASKS[spec.task].simulation
        # while the robot waits for its turn, its camera shows the watches after its swaps their frames
        self.watch_feed = WatchFeed(spec, self.manager) if gate is not None else None

    def start(self) -> None:
        self.agent.start()
        if self.watch_feed is not None:
            self.watch_feed.start()

    def stream(self, frames: int, offer_only: set[int] | None = None, drain: bool = True) -> RobotRound:
        """Run ``frames`` camera frames through the stack; ``offer_only``: offer just these frame indices
        to the selector (the random-upload baseline's robots: everything else is the same). With ``drain``
        the round ends when the queue is uploaded; without, the uploader's own thread (if started) does it."""
        spec = self.spec
        report = RobotRound(spec.robot_id)
        before = store_objects(self.store_root, spec.robot_id) if self.store_root else (0, 0)
        started = time.perf_counter()
        site = spec.site.name
        if self.gate is not None:  # the last round's rollouts end before this round's first frame
            self.gate.hold()
        with self.watch_feed.paused() if self.watch_feed is not None else contextlib.nullcontext():
            for index, frame in enumerate(self.camera.frames(frames)):
                report.frames += 1
                result = self.manager.infer(frame.image, stream=spec.stream)
                report.answered += 1
                if offer_only is not None and index not in offer_only:
                    continue
                # the selector's robot id and track hint (the cascade's track) are its defaults
                decision = self.selector.offer(
                    frame.image,
                    result,
                    frame.stamp_ns,
                    stream=spec.stream,
                    site=site,
                    simulation=self._sidecar_truth(frame.truth),
                )
                if decision.keep:
                    self.queue.put(decision.record)
                    report.kept += 1
        if drain:
            self.uploader.drain(stop_on_refusal=True)
        after = store_objects(self.store_root, spec.robot_id) if self.store_root else (0, 0)
        report.uploaded, report.uploaded_bytes = after[0] - before[0], after[1] - before[1]
        report.seconds = time.perf_counter() - started
        report.serving = self.cascade.model_versions()
        return report

    def stop(self) -> None:
        if self.watch_feed is not None:
            self.watch_feed.stop()
        self.agent.stop()
        self.manager.close()
        self.queue.close()


class InProcessFleet:
    """Robots as core objects in this process (``--no-ros``)."""

    def __init__(self, specs: Sequence[RobotSpec], settings: FleetSettings):
        self.specs = list(specs)
        self.settings = settings
        self.robots: list[InProcessRobot] = []
        self.gate: RolloutGate | None = RolloutGate()

    def start(self) -> None:
        self.robots = [InProcessRobot(spec, self.settings, gate=self.gate) for spec in self.specs]
        for robot in self.robots:
            robot.start()

    def stream(self, frames_per_robot: int, busy: Busy = None, drain: bool = True, extra: Mapping | None = None):
        """Stream a round: each robot ``frames_per_robot`` frames and ``extra[robot id]`` more (what the loop's
        ROS robots streamed on while models rolled out: every arm sees the same frames). ``busy`` is not
        waited on: these robots' rounds start once the rollouts ended (``gate``)."""
        extra = extra or {}
        return [r.stream(frames_per_robot + extra.get(r.spec.robot_id, 0), drain=drain) for r in self.robots]

    def stream_while(self, busy: Callable[[], bool]) -> list[RobotRound]:
        """Return at once (nothing streamed): the watch feed serves these robots' watches their frames."""
        return []

    def serving(self) -> dict[str, dict[str, str]]:
        return {robot.spec.robot_id: robot.cascade.model_versions() for robot in self.robots}

    def stop(self) -> None:
        for robot in self.robots:
            robot.stop()
