"""The demo's ROS fleet: a round's cameras stream on past its frames while the last round's models roll out."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from fleetloop_core.contracts.sidecar import Sidecar

from fixtures.demo_fleet import fleet_settings

from fleetloop_cloud.demo.config import merge
from fleetloop_cloud.demo.fleet import robot_specs, store_objects
from fleetloop_cloud.demo.ros_fleet import RosFleet


def _stamps(store: Path) -> list[int]:
    return sorted(Sidecar.model_validate_json(p.read_text()).stamp_ns for p in store.rglob("*.json"))


def test_a_round_streams_on_while_busy_and_counts_those_frames_as_its_own(tmp_path, ros_domain, test_models):
    settings, _ = fleet_settings(tmp_path, test_models["T4"].parent)
    # every frame the robot answers is kept and uploaded (the threshold stays at 0: the policy's warm-up never
    # ends), so the store shows which frames it saw
    keep_all = {
        "policy": {"params": {"initial_threshold": 0.0, "warmup_frames": 1_000_000}},
        "dedup": {"enabled": False},
        "random_fraction": 0.0,
        "budget": {"frames_per_hour": 1.0e9, "bytes_per_hour": 1.0e15},
    }
    settings = dataclasses.replace(settings, selection=merge(settings.selection, keep_all))
    spec = robot_specs(1, world_seed=3)[0]
    store = tmp_path / "store"
    fleet = RosFleet([spec], settings, domain_id=ros_domain, log_dir=tmp_path / "logs")
    deadline = time.monotonic() + 180

    def rolling_out() -> bool:  # a rollout that ends once the robot uploaded 30 frames past the round's 20
        assert time.monotonic() < deadline, "the cameras did not stream on"
        return store_objects(store, spec.robot_id)[0] < 50

    fleet.start()
    try:
        (first,) = fleet.stream(20, busy=rolling_out)
        (second,) = fleet.stream(10)  # nothing rolling out: the round's frames only
    finally:
        fleet.stop()
    assert first.extra_frames >= 30 and first.frames == 20 + first.extra_frames
    assert first.answered == first.frames and first.uploaded == first.frames  # the round's uploads include them
    assert (second.frames, second.extra_frames, second.answered) == (10, 0, 10)
    # the frames streamed on are the stream's next ones, and the next round goes on after them
    expected = [f.stamp_ns for f in spec.camera().frames(first.frames + 10, render=False)]
    assert _stamps(store) == expected
