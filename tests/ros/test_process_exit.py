"""Every robot-side process ends when asked, in every state, and a frozen one ends on its own.

Within 5 s of SIGINT and of SIGTERM: a robot waiting for frames, streaming, swapping a model,
draining its queue into a store that never answers; a camera waiting for subscribers. Nothing the
queue accepted is lost. A perception node whose frame path freezes marks /diagnostics ERROR and
exits 3 after ``health.frozen_exit_s``; one frozen inside a C call holding the GIL is ended by the
native timer (fleetloop_ros.runner).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fleetloop_core.upload_queue import UploadQueue
from fleetloop_core.cli import command_line
from fleetloop_ros.runner import EXIT_TEARDOWN_HUNG

ROOT = Path(__file__).resolve().parents[2]
EXIT_WITHIN_S = 5.0
KEEP_ALL = {
    "/**/selector": {
        "selection.policy.name": "threshold",
        "selection.policy.params": {"threshold": 0.0},
        "selection.budget.frames_per_hour": 360000.0,
        "selection.dedup.enabled": False,
    },
    "/**/perception": {"image_qos": "reliable"},
}


def _camera(spawn, namespace: str, *args: str) -> subprocess.Popen:
    return spawn(
        command_line("camera", "--namespace", namespace, *args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop_timed(process: subprocess.Popen, signum: int) -> tuple[int, float]:
    started = time.monotonic()
    process.send_signal(signum)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"pid {process.pid} did not exit within 20 s of {signal.Signals(signum).name}")
    return process.returncode, time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_robot_exits_when_waiting_and_when_streaming(ros, robot, signum, spawn):
    from fleetloop_interfaces.msg import FrameDecision

    idle = robot(ros.namespace + "_idle")
    assert idle.stop(signum=signum) == 0 and idle.stop_seconds < EXIT_WITHIN_S, idle.output[-2000:]

    streaming = robot(ros.namespace, KEEP_ALL)
    decisions = ros.collect(FrameDecision, "frame_decisions")
    ros.wait_for_publishers(["frame_decisions"])
    camera = _camera(
        spawn,
        ros.namespace,
        "--rate",
        "30",
        "--width",
        "640",
        "--height",
        "480",
        "--reliable",
        "--wait-subscribers",
        "1",
    )
    try:
        ros.spin_until(lambda: len(decisions) >= 20, 60, lambda: f"20 decisions (have {len(decisions)})")
        assert streaming.stop(signum=signum) == 0, streaming.output[-2000:]
        assert streaming.stop_seconds < EXIT_WITHIN_S
    finally:
        code, seconds = _stop_timed(camera, signum)
    assert code == 0 and seconds < EXIT_WITHIN_S, camera.stdout.read()[-2000:]
    # every frame the selector kept (its decision published after the queue took it) is on disk
    kept = sum(d.keep for d in decisions)
    with UploadQueue(streaming.state / "queue") as queue:
        stats = queue.stats()
    assert stats.records + stats.uploaded_total >= kept > 0


def test_robot_exits_while_swapping_a_model(ros, robot, test_models, signing_keys, tmp_path):
    from fleetloop_interfaces.srv import SwapModel

    from fixtures.model_packages import make_version

    package = make_version(test_models["T4"], tmp_path / "t4-3.0.0", "3.0.0", signing_keys["keys"]["fleet"][0])
    # no camera: the shadow check waits for frames, so the swap is still in progress when the signal comes
    process = robot(ros.namespace, {"/**/model_manager": {"manager.shadow.frame_wait_s": 60.0}})
    client = ros.node.create_client(SwapModel, ros.topic("model_manager/swap_model"))
    ros.spin_until(client.service_is_ready, 30, "the swap service")
    future = client.call_async(SwapModel.Request(tier="T4", package=str(package)))
    ros.spin_for(2.0)
    assert not future.done()
    assert process.stop(signum=signal.SIGTERM) == 0 and process.stop_seconds < EXIT_WITHIN_S, process.output[-2000:]


@pytest.fixture
def silent_store():
    """An S3 endpoint that accepts connections and never answers: an upload hangs in flight."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"s3://frames/robot?endpoint_url=http://127.0.0.1:{server.getsockname()[1]}&region=us-east-1"
    stop.set()
    thread.join(2)
    for connection in held:
        connection.close()
    server.close()


def test_robot_exits_while_an_upload_hangs_and_keeps_every_record(ros, robot, silent_store, spawn):
    from fleetloop_interfaces.msg import FrameDecision

    store = {"/**": {"queue.store": silent_store}}
    overrides = {**KEEP_ALL, **store}
    process = robot(ros.namespace, overrides, env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    decisions = ros.collect(FrameDecision, "frame_decisions")
    ros.wait_for_publishers(["frame_decisions"])
    camera = _camera(spawn, ros.namespace, "--rate", "20", "--count", "40", "--reliable", "--wait-subscribers", "1")
    ros.spin_until(lambda: camera.poll() is not None, 60, "the camera")
    ros.spin_until(lambda: sum(d.keep for d in decisions) >= 30, 30, lambda: f"30 kept (have {len(decisions)})")
    assert process.stop(signum=signal.SIGINT) == 0 and process.stop_seconds < EXIT_WITHIN_S, process.output[-2000:]
    with UploadQueue(process.state / "queue") as queue:
        stats = queue.stats()
    assert stats.uploaded_total == 0 and stats.records >= sum(d.keep for d in decisions)


def _read_until(process: subprocess.Popen, text: str) -> str:
    """Return the process's output up to and including the first line containing ``text`` (or up to its end)."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            break
    return "".join(lines)


def test_camera_waiting_for_subscribers_exits_on_sigint_and_gives_up_with_a_clear_error(ros, spawn):
    waiting = _camera(spawn, ros.namespace, "--count", "10", "--wait-subscribers", "1")
    # the camera says when it waits (a fixed sleep raced its start-up on a loaded machine: the SIGINT
    # landed during its imports and ended it with a KeyboardInterrupt instead of a clean stop)
    said = _read_until(waiting, "camera replay: waiting for 1 subscriber(s)")
    assert "waiting for 1 subscriber(s)" in said, said
    code, seconds = _stop_timed(waiting, signal.SIGINT)
    assert code == 0 and seconds < EXIT_WITHIN_S, said + waiting.stdout.read()

    started = time.monotonic()
    giving_up = _camera(spawn, ros.namespace, "--count", "10", "--wait-subscribers", "2", "--wait-timeout", "2")
    output, _ = giving_up.communicate(timeout=30)
    assert giving_up.returncode == 2 and time.monotonic() - started < 15
    assert f"0 of 2 subscriber(s) matched on {ros.namespace}/camera/image_raw within 2 s" in output
    assert '{"camera": {"sent": 0, "answered": 0, "lost": 0, "late": 0}}' in output


@pytest.mark.parametrize(
    "how, code, within_s", [("sleep", 3, 3.0 + EXIT_WITHIN_S), ("gil", 1, 3.0 + 5.0 + EXIT_WITHIN_S)]
)
def test_a_frozen_frame_path_is_reported_and_the_process_exits(ros, test_models, how, code, within_s, spawn):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from fleetloop_core.health import ERROR
    from fleetloop_ros.camera_frames import sim_frames
    from fleetloop_ros.messages import level_of

    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    process = spawn(
        [
            sys.executable,
            str(ROOT / "tests" / "ros" / "programs" / "frozen_perception.py"),
            str(test_models["T4"].parent),
            ros.namespace,
            "5",
            how,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        camera = ros.publisher(Image, "camera/image_raw")
        ros.wait_for_subscribers(camera, timeout=60)
        ros.stream(camera, sim_frames(10, 128, 128), rate_hz=10.0, count=6)
        frozen_at = time.monotonic()
        process.wait(within_s + 10)
        elapsed = time.monotonic() - frozen_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    assert process.returncode == code, stderr[-3000:]
    assert elapsed < within_s, f"exited {elapsed:.1f} s after the freeze"
    if how == "sleep":
        ros.spin_for(0.5)
        liveness = [s for m in diagnostics for s in m.status if s.name.endswith(": liveness")]
        assert any(level_of(s) == ERROR and "has not answered" in s.message for s in liveness), liveness[-3:]
        assert stderr.count("frozen: the frame path has not answered") == 1  # logged once
        assert "exiting with code 3" in stderr and 'frozen_perception.py", line' in stderr  # the stacks say where
    else:
        assert "Timeout (0:00:08)!" in stderr and "in infer" in stderr


def test_a_process_stuck_in_c_during_start_up_still_ends_on_sigint(ros_domain, spawn):
    """The main thread never returns to Python (a C wait that signals do not end, GIL released):
    the signal is seen by a thread through Python's wakeup fd, and the kernel deadline ends it."""
    process = spawn(
        [sys.executable, str(ROOT / "tests" / "ros" / "programs" / "stuck_startup.py")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "stuck in start-up", process.stderr.read()
    time.sleep(0.5)
    code, seconds = _stop_timed(process, signal.SIGINT)
    assert seconds < 5.0 and code == EXIT_TEARDOWN_HUNG, (code, seconds)
    assert 'stuck_startup.py", line' in process.stderr.read()  # the stack dump says where


def test_a_camera_started_with_sigint_ignored_still_stops_on_sigint_during_start_up(ros_domain, spawn):
    """A background job of a non-interactive shell inherits SIGINT ignored; a SIGINT during start-up
    (before run_nodes' handlers exist) was lost and the camera ran on for good (seen in make test
    launched in the background)."""

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = spawn(
        command_line("camera", "--namespace", "/ignored_sigint", "--count", "10", "--wait-subscribers", "1"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=ignore_sigint,
    )
    # the moment restore() made SIGINT count again (the kernel shows a process's ignored signals); it is still
    # importing then, long before run_nodes' handlers. Before it nothing can catch a SIGINT: the kernel drops it.
    ignored = 1 << (signal.SIGINT - 1)
    while process.poll() is None and int(_proc_status(process.pid)["SigIgn"], 16) & ignored:
        time.sleep(0.001)
    code, seconds = _stop_timed(process, signal.SIGINT)
    assert seconds < 5.0 and code != 0, (code, seconds)


def _proc_status(pid: int) -> dict[str, str]:
    """Return the fields of /proc/<pid>/status (Linux)."""
    with open(f"/proc/{pid}/status") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
