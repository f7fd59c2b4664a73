"""``fleetloop robot-sim``: one simulated robot without ROS — camera, cascade, model manager, deploy agent.

It serves simulated frames at a fixed rate through ``ModelManager.infer`` while its deploy agent
takes jobs from the configured control plane (local directory or MQTT / IoT Jobs). A status file
(JSON, rewritten atomically about twice a second) says what it served, which jobs it saw and how
they ended; the fleet tests and the rollout demo read it. The ROS robot does the same wiring in
``fleetloop_ros.model_manager``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

    from fleetloop_core.deploy_agent import DeployAgent
    from fleetloop_core.model_manager import ModelManager

log = logging.getLogger("fleetloop.robot_sim")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("robot-sim", help="a simulated robot taking model jobs (no ROS)")
    parser.add_argument(
        "--config",
        required=True,
        help="YAML with model_manager and control_plane sections (see config/model_manager.yaml)",
    )
    parser.add_argument(
        "--initial-model", required=True, help="signed T4 package served when the store has no serving version yet"
    )
    parser.add_argument("--site", type=int, default=0, help="simulated site index")
    parser.add_argument("--rate-hz", type=float, default=20.0, help="camera frame rate (frames per second)")
    parser.add_argument("--frames", type=int, default=16, help="distinct frames rendered and replayed in a loop")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: on signal)")
    parser.add_argument("--status", default=None, help="write the status JSON here")
    parser.set_defaults(handler=_run)


@dataclass
class _Served:
    """What the simulated robot served so far: frames per model version, inference errors."""

    versions: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    started: float = field(default_factory=time.monotonic)


def _run(args: argparse.Namespace) -> int:
    from fleetloop_core.cascade import Cascade
    from fleetloop_core.control_plane import load_control_plane_config, open_control_plane
    from fleetloop_core.deploy_agent import DeployAgent
    from fleetloop_core.inference import TierModel
    from fleetloop_core.model_manager import ModelManager, load_manager_config, serving_package_dirs
    from fleetloop_core.model_store import ModelStore, PackageLocation
    from fleetloop_sim import sim

    config = load_manager_config(args.config)
    plane_config = load_control_plane_config(args.config)
    thing = plane_config.thing_name
    store = ModelStore.from_config(config.store)
    boot = serving_package_dirs(store).get("edge")
    if boot is None:
        boot = str(store.install(PackageLocation(path=args.initial_model)).directory)
    cascade = Cascade(TierModel.load(boot, providers=config.providers, intra_op_threads=config.intra_op_threads))
    manager = ModelManager(cascade, store, config)
    agent = DeployAgent(
        open_control_plane(plane_config, f"{args.config}: control_plane"), manager, poll_s=plane_config.poll_s
    )
    stream = sim.CameraStream(sim.make_site(args.site, 0), thing, seed=args.site)
    frames = [f.image for f in stream.frames(args.frames) if f.image is not None]  # rendered: every one
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    served = _Served()
    status_path = Path(args.status) if args.status else None
    agent.start()
    log.info("%s: serving %s at %.1f Hz", thing, cascade.edge.version, args.rate_hz)
    try:
        _serve(
            manager,
            frames,
            args,
            stop,
            served,
            lambda: _write_status(status_path, thing, manager, agent, served),
            thing,
        )
    finally:
        agent.stop()
        manager.close()
        _write_status(status_path, thing, manager, agent, served, final=True)
    return 0


def _serve(
    manager: ModelManager,
    frames: list[np.ndarray],
    args: argparse.Namespace,
    stop: threading.Event,
    served: _Served,
    report: Callable[[], None],
    thing: str,
) -> None:
    """Serve ``frames`` in a loop at ``args.rate_hz`` until ``stop`` or ``args.duration``; ``report`` at 2 Hz."""
    period = 1.0 / args.rate_hz
    next_frame = time.monotonic()
    next_status = 0.0
    index = 0
    while not stop.is_set():
        if args.duration and time.monotonic() - served.started >= args.duration:
            break
        try:
            result = manager.infer(frames[index % len(frames)])
            version = result.model_versions.get(manager.cascade.edge.tier, "?")
            served.versions[version] = served.versions.get(version, 0) + 1
        except Exception:  # counted and logged: a robot keeps its camera loop running
            served.errors += 1
            log.exception("%s: inference failed", thing)
        index += 1
        now = time.monotonic()
        if now >= next_status:
            report()
            next_status = now + 0.5
        next_frame += period
        stop.wait(max(0.0, next_frame - time.monotonic()))


def _write_status(
    status_path: Path | None,
    thing: str,
    manager: ModelManager,
    agent: DeployAgent,
    served: _Served,
    final: bool = False,
) -> None:
    """Write the status JSON (what was served, the jobs seen and how they ended) atomically, if asked to."""
    from fleetloop_core.control_plane import write_json_atomic

    if status_path is None:
        return
    status = manager.status()
    write_json_atomic(
        status_path,
        {
            "thing": thing,
            "final": final,
            "frames_served": sum(served.versions.values()),
            "errors": served.errors,
            "versions_served": dict(served.versions),
            "serving": status.serving,
            "state": status.state,
            "connected": agent.plane.connected,
            "connections": getattr(agent.plane, "connections", None),
            "outcomes": [o.to_dict() for o in agent.outcomes],
            "events": [
                {"kind": e.kind, "version": e.version, "job_id": e.job_id, "detail": e.detail} for e in manager.events()
            ],
            "uptime_s": time.monotonic() - served.started,
        },
    )
