"""A process that ended without destroying its DDS participant leaves a 9 MB segment in /dev/shm; the
next of our processes to start removes it (fleetloop_core.dds_shm, fleetloop_ros.runner)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fleetloop_core.cli import command_line
from fleetloop_core.dds_shm import SEGMENT, SHM_DIR

ROOT = Path(__file__).resolve().parents[2]


def _segments() -> set[str]:
    return {p.name for p in SHM_DIR.glob("fastdds_*") if SEGMENT.fullmatch(p.name)}


def test_a_segment_left_by_a_killed_process_is_removed_when_a_node_process_starts(spawn):
    env = {**os.environ, "ROS_DOMAIN_ID": "93"}
    before = _segments()
    # a camera waiting for a subscriber that never comes: its participant exists, then kill -9
    waiting = spawn(
        command_line("camera", "--count", "5", "--wait-subscribers", "1", "--wait-timeout", "60", "--progress", "0.2"),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in waiting.stdout:  # its first line: the node (and so the participant) exists
        if "camera" in line:
            break
    waiting.send_signal(signal.SIGKILL)
    waiting.wait(30)
    orphans = _segments() - before
    assert orphans, "a process killed with SIGKILL cannot remove its segment"
    assert all((SHM_DIR / name).stat().st_size > 1_000_000 for name in orphans)  # the shm transport's segments
    # lock files younger than 5 s are left alone (a starting participant locks its own a moment after making it)
    made = max((SHM_DIR / f"{name}_el").stat().st_mtime for name in orphans)
    time.sleep(max(0.0, made + 5.2 - time.time()))

    camera = spawn(
        command_line("camera", "--count", "3", "--rate", "50"),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = camera.communicate(timeout=120)
    assert camera.returncode == 0, output
    assert "left by ended processes" in output
    assert not orphans & _segments()  # removed, lock files with them
    assert not any((SHM_DIR / f"{name}_el").exists() for name in orphans)
    assert not _segments() - before  # and the camera, ending cleanly, left none of its own


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (("--rate", "0"), "camera replay: rate_hz must be > 0 (got 0.0)"),
        # the simulated camera's own limit, said as the option's error (it was a traceback)
        (("--width", "16"), "camera --source sim: frame size must be at least 32x32 (got 16x128) (--width / --height)"),
    ],
)
def test_a_node_process_refusing_its_options_leaves_no_segment(spawn, option, said):
    before = _segments()
    # the camera's node exists (and so the participant) when the option is refused
    camera = spawn(
        command_line("camera", "--count", "2", *option),
        env={**os.environ, "ROS_DOMAIN_ID": "93"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = camera.communicate(timeout=120)
    assert camera.returncode == 1 and said in output and "Traceback" not in output, output
    assert not _segments() - before  # before the fix: one 9 MB segment a refused start


def _segments_of(pid: int) -> set[str]:
    """Return the Fast DDS segments whose lock file process ``pid`` holds (its participants'), from /proc/locks."""
    held = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[4] == str(pid):
            held.add(int(fields[5].split(":")[2]))
    found = set()
    for lock in SHM_DIR.glob("fastdds_*_el"):
        try:
            name = lock.name[: -len("_el")]
            if lock.stat().st_ino in held and SEGMENT.fullmatch(name):  # not the shared port files
                found.add(name)
        except OSError:
            continue
    return found


def test_a_robot_stopped_by_sigint_destroys_its_participant(robot):
    """The robot's nodes are destroyed while no executor waits on them, so its segment goes with it.

    Before: 8 of 16 SIGINT stops left the 9 MB segment (the side executor of the nodes with blocking
    callbacks was still waiting on them when the teardown destroyed them, and rclpy deferred it).
    """
    for attempt in range(8):
        process = robot(f"shm{attempt}")
        own = _segments_of(process.process.pid)
        assert own, "a robot with the shm transport holds a segment"
        assert process.stop() == 0, process.output
        left = {name for name in own if (SHM_DIR / name).exists()}
        assert not left, f"stop {attempt + 1}: the robot left {sorted(left)} in /dev/shm"
