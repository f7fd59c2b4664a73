#!/usr/bin/env python3
"""The robot stack under stress: start/stop cycles, long camera streams, DDS transports and vendors.

Counts what must never happen, and what the transport costs:

  cycles      robot processes (`fleetloop robot`, all four nodes) and camera processes
              (`fleetloop camera`) started and stopped over and over, ``--pairs`` robot/camera pairs
              side by side (so the machine is busy). Even cycles: a camera paced by the robot's
              answers sends ``--frames`` frames (a frame unanswered for 2 s is counted lost, never
              waited for) and ends by itself; odd cycles: a free-running camera is stopped by a signal.
              Robots are stopped by a signal every ``--robot-every`` cycles. SIGINT and SIGTERM
              alternate.
  streams     640x480 rgb8 at 30 Hz from a camera process into a robot for ``--stream-s`` seconds,
              best effort and reliable: frames sent, answered, lost.
  transports  (not with --no-transports) frames answered of those sent and the latency, for each DDS
              transport (shm, large_data, udp, default), camera vendor (Fast DDS through rclpy; Eclipse
              Cyclone DDS without ROS), size (320x240, 640x480) and QoS (best effort, reliable), 30 Hz.

  hang        a process that did not reach its next state in time (robot up within 90 s; a paced
              camera done within its own bound; an exit within 20 s of the signal)
  late        a paced frame answered after its 2 s deadline (counted apart from lost: a busy machine
              delays answers, a fault loses them)
  freeze      the robot's watchdog saw its frame path unanswered for health.frame_deadline_s (2 s)
  slow exit   an exit more than 5 s after SIGINT/SIGTERM
  loss        a paced camera run with frames unanswered (its camera log, the robot's log and stacks are
              kept; the work directory too, unless ``--workdir`` names one the caller owns)

Usage: python benchmarks/ros_stress.py [--quick] [--cycles N] [--stream-s S] [--no-transports] [--json PATH]
  --quick: 50 cycles, 10 s streams, a reduced transport table (what `make test` runs, without the table);
  default: 500 cycles, 120 s streams, the full table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402

from _common import ROOT, locate_models, machine, percentile, print_table, process_memory_mb, write_json  # noqa: E402
from fleetloop_core.cli import command_line

EXIT_WITHIN_S = 5.0
HANG_EXIT_S = 20.0
ROBOT_UP_S = 90.0
CYCLONE_CAMERA = ROOT / "tests" / "fixtures" / "cyclone_camera.py"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Tally:
    """What the cycles and streams counted."""

    robot_starts: int = 0
    robot_stops: int = 0
    camera_runs: int = 0
    camera_stops: int = 0
    frames_sent: int = 0
    frames_answered: int = 0
    frames_lost: int = 0
    frames_late: int = 0  # paced cameras: answered after the 2 s deadline (a busy machine), not lost
    hangs: list[str] = field(default_factory=list)
    freezes: list[str] = field(default_factory=list)
    slow_exits: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)  # paced runs that lost frames: the evidence (logs kept)
    # robots ended by the runner's shutdown deadline (SIGALRM: state closed, the DDS teardown hung); not a
    # failure, but a participant that never said goodbye: kept beside the losses as evidence
    teardown_deadlines: list[str] = field(default_factory=list)
    exit_s: list[float] = field(default_factory=list)
    # a whole robot process (all four nodes) after each paced run: resident and unique (USS) MB
    robot_memory_mb: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def note(self, kind: str, text: str) -> None:
        with self.lock:
            getattr(self, kind).append(text)

    def summary(self) -> dict:
        with self.lock:
            data = {
                f.name: (list(v) if isinstance(v := getattr(self, f.name), list) else v)
                for f in fields(self)
                if f.name not in ("lock", "exit_s", "robot_memory_mb")
            }
            if self.robot_memory_mb:
                rss, uss = zip(*self.robot_memory_mb)
                data["robot_memory_mb"] = {"rss_p50": round(percentile(list(rss), 50), 1), "rss_max": max(rss)}
                data["robot_memory_mb"].update(uss_p50=round(percentile(list(uss), 50), 1), uss_max=max(uss))
                data["robot_memory_mb"]["samples"] = len(rss)
        data["exit_s_p50"] = round(percentile(self.exit_s, 50), 3) if self.exit_s else None
        data["exit_s_max"] = round(max(self.exit_s), 3) if self.exit_s else None
        for kind in ("hangs", "freezes", "slow_exits", "failures", "losses", "teardown_deadlines"):
            data[f"{kind}_count"] = len(data[kind])
        return data


def _env(dds: dict | None = None, extra: dict | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(extra or {})
    return env


class Robot:
    """A `fleetloop robot` process with its state in a temporary directory; its log kept for the freeze count."""

    def __init__(
        self,
        models: Path,
        workdir: Path,
        namespace: str,
        nodes: str = "",
        dds: dict | None = None,
        image_qos: str = "reliable",
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        data = yaml.safe_load((ROOT / "config" / "robot.yaml").read_text())
        common = data["/**"]["ros__parameters"]
        common["queue"].update(directory=str(workdir / "queue"), store=f"file://{workdir / 'store'}")
        common["dds"] = dds or {"transport": "shm", "type_propagation": True}  # the robots' default
        perception = data["/**/perception"]["ros__parameters"]
        perception.update(models_dir=str(models), image_qos=image_qos)
        manager = data["/**/model_manager"]["ros__parameters"]
        manager["manager"]["store"].update(root=str(workdir / "models"), trusted_keys=str(ROOT / "config" / "keys"))
        manager["control_plane"]["uri"] = f"file://{workdir / 'jobs'}"
        config = workdir / "robot.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        self.log_path = workdir / f"robot-{time.monotonic_ns()}.log"
        command = command_line("robot", "--config", str(config), "--namespace", namespace)
        if nodes:
            command += ["--nodes", nodes]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=_env())

    def wait_up(self, timeout: float = ROBOT_UP_S) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "robot up" in self.log_path.read_text(errors="replace"):
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def freezes(self) -> list[str]:
        return [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if "frozen: the frame path has not answered" in line
        ]

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-1500:]

    def stop(self, signum: int) -> float | None:
        """Signal the robot; return seconds to its exit (None: killed after HANG_EXIT_S)."""
        seconds = _stop(self.process, signum)
        self._log.close()
        return seconds


def _stop(process: subprocess.Popen, signum: int) -> float | None:
    if process.poll() is not None:
        return 0.0
    started = time.monotonic()
    process.send_signal(signum)
    try:
        process.wait(HANG_EXIT_S)
        return time.monotonic() - started
    except subprocess.TimeoutExpired:
        _dump_stacks(process)
        process.kill()
        process.wait()
        return None


HANG_DUMPS: list[str] = []  # py-spy dumps of processes that did not exit (evidence, written to the JSON)


def _stacks(pid: int, native: bool = False) -> str:
    """Return where a process is (``py-spy dump``), or why that could not be read."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        done = subprocess.run(
            [spy, "dump", *(["--native"] if native else []), "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy failed ({exc})"


def _dump_stacks(process: subprocess.Popen) -> None:
    """Record where a process that did not exit is (``py-spy dump --native``), before it is killed."""
    HANG_DUMPS.append(
        f"pid {process.pid} {' '.join(map(str, process.args))[:200]}\n{_stacks(process.pid, native=True)}"
    )
    print(HANG_DUMPS[-1][:4000], file=sys.stderr, flush=True)


def _record_exit(tally: Tally, what: str, seconds: float | None) -> None:
    if seconds is None:
        tally.note("hangs", f"{what}: no exit within {HANG_EXIT_S:.0f} s of the signal")
        return
    tally.exit_s.append(seconds)
    if seconds > EXIT_WITHIN_S:
        tally.note("slow_exits", f"{what}: exit after {seconds:.1f} s")


def _camera_command(namespace: str, *args: str) -> list[str]:
    return command_line("camera", "--namespace", namespace, *args)


def _final_counts(output: str) -> dict | None:
    for line in reversed(output.splitlines()):
        if line.startswith('{"camera"'):
            return json.loads(line)["camera"]
    return None


# ------------------------------------------------------------------------------ cycles
def _pair(
    index: int, cycles: int, frames: int, robot_every: int, models: Path, workdir: Path, tally: Tally, progress
) -> None:
    namespace = f"/stress{os.getpid()}_{index}"
    robot: Robot | None = None
    signals = itertools.cycle(SIGNALS)
    try:
        for cycle in range(cycles):
            if robot is None or cycle % robot_every == 0:
                if robot is not None:
                    _end_robot(robot, next(signals), tally, f"pair {index} cycle {cycle}")
                robot = Robot(models, workdir / f"pair{index}", namespace)
                tally.add(robot_starts=1)
                if not robot.wait_up():
                    tally.note(
                        "hangs",
                        f"pair {index} cycle {cycle}: robot not up within {ROBOT_UP_S:.0f} s "
                        f"(exit {robot.process.poll()}): {robot.tail()}",
                    )
                    _end_robot(robot, signal.SIGKILL, tally, "", count=False)
                    robot = None
                    continue
            if cycle % 2 == 0:
                _paced_camera(namespace, frames, tally, f"pair {index} cycle {cycle}", robot)
            else:
                _stopped_camera(namespace, next(signals), tally, f"pair {index} cycle {cycle}")
            progress()
    finally:
        if robot is not None:
            _end_robot(robot, next(signals), tally, f"pair {index} end")


def _end_robot(robot: Robot, signum: int, tally: Tally, what: str, count: bool = True) -> None:
    seconds = robot.stop(signum)
    if robot.process.returncode == -signal.SIGALRM:
        tally.note("teardown_deadlines", f"{what}: robot {robot.log_path.name} ended by the shutdown deadline")
    for line in robot.freezes():
        tally.note("freezes", f"{what}: {line.strip()[:200]}")
    if count:
        tally.add(robot_stops=1)
        _record_exit(tally, f"{what}: robot, {signal.Signals(signum).name}", seconds)


def _paced_camera(namespace: str, frames: int, tally: Tally, what: str, robot: Robot) -> None:
    wait_s, answer_s = 30.0, 2.0
    bound = wait_s + frames * answer_s / 4 + 30.0  # its own give-up time, then a margin
    process = subprocess.Popen(
        _camera_command(
            namespace,
            "--count",
            str(frames),
            "--rate",
            "30",
            "--reliable",
            "--lockstep",
            "frame_results",
            "--window",
            "4",
            "--answer-timeout",
            str(answer_s),
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            str(wait_s),
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        out, err = process.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        tally.note("hangs", f"{what}: paced camera not done within {bound:.0f} s")
        return
    counts = _final_counts(out)
    tally.add(camera_runs=1)
    if process.returncode != 0 or counts is None:
        tally.note("failures", f"{what}: camera exit {process.returncode}: {err[-600:]}")
        return
    tally.add(
        frames_sent=counts["sent"],
        frames_answered=counts["answered"],
        frames_lost=counts["lost"],
        frames_late=counts.get("late", 0),
    )
    if counts["lost"]:
        _record_loss(tally, what, counts, err, robot)
    _sample_memory(tally, robot)


def _sample_memory(tally: Tally, robot: Robot) -> None:
    """Record the robot process's resident and unique memory (the ROS bootstrap re-execs in place: same pid)."""
    import psutil

    try:
        memory = process_memory_mb(robot.process.pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return  # it ended meanwhile: its exit is counted where it is stopped
    with tally.lock:
        tally.robot_memory_mb.append(memory)


def _record_loss(tally: Tally, what: str, counts: dict, camera_log: str, robot: Robot) -> None:
    """Keep the evidence of a paced run that lost frames: the camera's log, the robot's stacks and log file."""
    stacks = _stacks(robot.process.pid)
    tally.note(
        "losses",
        f"{what}: {counts} (robot log {robot.log_path})\ncamera log:\n{camera_log[-1500:]}\n"
        f"robot log so far:\n{robot.tail()}\nrobot stacks:\n{stacks[-3000:]}",
    )


def _stopped_camera(namespace: str, signum: int, tally: Tally, what: str) -> None:
    process = subprocess.Popen(
        _camera_command(namespace, "--rate", "30", "--reliable", "--wait-subscribers", "1", "--wait-timeout", "30"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    time.sleep(1.5)  # start-up, discovery, a few frames
    seconds = _stop(process, signum)
    process.communicate()
    if process.returncode == -signal.SIGALRM:
        tally.note("teardown_deadlines", f"{what}: camera ended by the shutdown deadline")
    tally.add(camera_stops=1)
    _record_exit(tally, f"{what}: camera, {signal.Signals(signum).name}", seconds)


def run_cycles(cycles: int, pairs: int, frames: int, robot_every: int, models: Path, workdir: Path) -> Tally:
    from tqdm import tqdm

    tally = Tally()
    per_pair = [cycles // pairs + (1 if i < cycles % pairs else 0) for i in range(pairs)]
    bar = tqdm(total=cycles, desc="start/stop cycles", unit="cycle", file=sys.stderr)
    lock = threading.Lock()

    def progress() -> None:
        with lock:
            bar.update(1)

    threads = [
        threading.Thread(target=_pair, args=(i, n, frames, robot_every, models, workdir, tally, progress))
        for i, n in enumerate(per_pair)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bar.close()
    return tally


# ------------------------------------------------------------------------------ long streams and transports
class Collector:
    """FrameResults of one namespace, in this process, on a context with the robot's transport."""

    def __init__(self, namespace: str, dds: dict):
        import rclpy
        from fleetloop_interfaces.msg import FrameResult
        from rclpy.executors import SingleThreadedExecutor

        from fleetloop_core.dds import DdsConfig, dds_environment_during
        from fleetloop_ros.perception import RESULTS_QOS

        with dds_environment_during(DdsConfig(**dds)):
            self.context = rclpy.Context()
            rclpy.init(context=self.context)
            self.node = rclpy.create_node(f"stress_collector_{os.getpid()}", namespace=namespace, context=self.context)
        self.results: list[tuple[str, int, float]] = []  # (frame_id, stamp ns, latency ms)
        self.node.create_subscription(FrameResult, "frame_results", self._on_result, RESULTS_QOS)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _on_result(self, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.results.append((msg.header.frame_id, stamp, float(msg.latency_ms)))

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def settle(self, quiet_s: float = 2.0, timeout: float = 30.0) -> None:
        end, count, since = time.monotonic() + timeout, len(self.results), time.monotonic()
        while time.monotonic() < end and time.monotonic() - since < quiet_s:
            time.sleep(0.1)
            if len(self.results) != count:
                count, since = len(self.results), time.monotonic()

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._thread.join(5)
        self.executor.shutdown(timeout_sec=1)
        rclpy.try_shutdown(context=self.context)


class ProcessCollector:
    """A Collector in a child process with exactly the robot's DDS environment.

    Fast DDS reads its XML profiles once per process: after this process's first participant (on our
    shm profile) every later participant here gets that profile whatever the environment says then,
    so a LARGE_DATA robot's results (sent over TCP/SHM only) never reached an in-process collector
    (measured: 0 answered in every large_data row). A process per collector has no such history.
    """

    def __init__(self, namespace: str, dds: dict):
        from fleetloop_core.dds import DdsConfig, dds_environment

        env = dict(os.environ)
        dds_environment(DdsConfig(**dds), env)
        self.results: list[tuple[str, int, float]] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--collect", namespace, "--collect-dds", json.dumps(dds)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip() == "ready":
                self.ready.set()
                continue
            frame_id, stamp, latency = line.split()
            self.results.append((frame_id, int(stamp), float(latency)))

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until the child's subscription has matched the robot's results publisher."""
        return self.ready.wait(timeout)

    settle = Collector.settle

    def close(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._thread.join(5)


def _collect_main(namespace: str, dds: dict) -> int:
    """``--collect``: print every FrameResult of ``namespace`` as 'frame_id stamp_ns latency_ms' lines."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    collector = Collector(namespace, dds)
    printed = 0
    topic = f"{namespace.rstrip('/')}/frame_results"
    try:
        while not stop.wait(0.05) and not collector.node.count_publishers(topic):
            pass
        time.sleep(0.5)  # endpoint matching follows graph discovery
        print("ready", flush=True)
        while not stop.wait(0.05):
            rows = collector.results[printed:]  # the spin thread appends meanwhile: count what was taken
            for row in rows:
                print(*row, flush=True)
            printed += len(rows)
    finally:
        collector.close()
    return 0


def _stream(
    vendor: str, namespace: str, width: int, height: int, reliable: bool, seconds: float, workdir: Path, dds: dict
) -> tuple[int, str]:
    """Run one camera for ``seconds`` at 30 Hz; return (frames sent, error text)."""
    count = int(30 * seconds)
    if vendor == "cyclone":
        sys.path.insert(0, str(CYCLONE_CAMERA.parent))
        from cyclone_camera import cyclone_environment

        command = [
            sys.executable,
            str(CYCLONE_CAMERA),
            "--topic",
            f"{namespace}/camera/image_raw",
            "--count",
            str(count),
            "--rate",
            "30",
            "--width",
            str(width),
            "--height",
            str(height),
            "--wait-timeout",
            "20",
        ]
        env = _env(extra=cyclone_environment(workdir))
    else:
        command = _camera_command(
            namespace,
            "--count",
            str(count),
            "--rate",
            "30",
            "--width",
            str(width),
            "--height",
            str(height),
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            "20",
            "--transport",
            dds["transport"],
            "--frame-id",
            "fastdds",
        )
        if not dds.get("type_propagation", True):
            command.append("--no-type-propagation")
        env = _env()
    if reliable:
        command.append("--reliable")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = process.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return 0, f"{vendor} camera hung"
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            counts = json.loads(line)
            counts = counts.get("camera") or counts.get("cyclone_camera")
            return int(counts["sent"]), "" if counts["sent"] else f"no reader matched ({err.strip()[-200:]})"
    return 0, f"{vendor} camera exit {process.returncode}: {err[-300:]}"


def run_stream_rows(rows: list[tuple], seconds: float, models: Path, workdir: Path, tally: Tally | None) -> list[dict]:
    """Each row: (transport, type_propagation, vendor, width, height, reliable); one robot per transport."""
    from tqdm import tqdm

    out = []
    by_dds: dict[tuple, list[tuple]] = {}
    for row in rows:
        by_dds.setdefault(row[:2], []).append(row)
    bar = tqdm(total=len(rows), desc="camera streams", unit="stream", file=sys.stderr)
    for (transport, propagation), group in by_dds.items():
        dds = {"transport": transport, "type_propagation": propagation}
        for image_qos in ("reliable", "sensor_data"):
            qos_rows = [r for r in group if r[5] == (image_qos == "reliable")]
            if not qos_rows:
                continue
            namespace = f"/stream{os.getpid()}_{transport}_{int(propagation)}_{image_qos}"
            robot = Robot(
                models,
                workdir / f"stream-{transport}-{int(propagation)}-{image_qos}",
                namespace,
                nodes="perception",
                dds=dds,
                image_qos=image_qos,
            )
            collector = ProcessCollector(namespace, dds)
            try:
                if not robot.wait_up():
                    raise RuntimeError(f"robot for {dds} not up: {robot.tail()}")
                if not collector.wait_ready():
                    raise RuntimeError(f"result collector for {dds} never matched the robot's results")
                time.sleep(2.0)
                for _, _, vendor, width, height, reliable in qos_rows:
                    frame_id = "cyclone" if vendor == "cyclone" else "fastdds"
                    before = len(collector.results)
                    sent, error = _stream(vendor, namespace, width, height, reliable, seconds, workdir, dds)
                    collector.settle()
                    answered = [r for r in collector.results[before:] if r[0] == frame_id]
                    latencies = [r[2] for r in answered]
                    out.append(
                        {
                            "transport": transport,
                            "type_propagation": propagation,
                            "camera": vendor,
                            "size": f"{width}x{height}",
                            "qos": "reliable" if reliable else "best effort",
                            "sent": sent,
                            "answered": len(answered),
                            "answered_fraction": round(len(answered) / sent, 3) if sent else 0.0,
                            "latency_p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
                            "latency_p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
                            "note": error,
                        }
                    )
                    if tally is not None:
                        tally.add(
                            frames_sent=sent, frames_answered=len(answered), frames_lost=max(0, sent - len(answered))
                        )
                    bar.update(1)
            finally:
                collector.close()
                seconds_to_exit = robot.stop(signal.SIGINT)
                if tally is not None:
                    for line in robot.freezes():
                        tally.note("freezes", f"stream {dds}: {line.strip()[:200]}")
                    _record_exit(tally, f"stream robot {dds}", seconds_to_exit)
    bar.close()
    return out


def transport_rows(quick: bool) -> list[tuple]:
    sizes = [(320, 240), (640, 480)]
    rows = []
    for transport, propagation in (("shm", False), ("large_data", True), ("udp", False), ("default", False)):
        for vendor in ("fastdds", "cyclone"):
            for width, height in sizes:
                for reliable in (False, True):
                    rows.append((transport, propagation, vendor, width, height, reliable))
    if quick:
        rows = [r for r in rows if r[3] == 640]
    return rows


def _markdown(title: str, rows: list[dict], columns: list[str]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 cycles, 10 s streams, a reduced transport table")
    parser.add_argument("--models", default=None, help="directory with T1..T4 (default: ./models, else the test build)")
    parser.add_argument("--cycles", type=int, default=None, help="camera start/stop cycles (500; quick 50)")
    parser.add_argument("--pairs", type=int, default=2, help="robot/camera pairs side by side")
    parser.add_argument("--frames", type=int, default=30, help="frames per paced camera")
    parser.add_argument("--robot-every", type=int, default=10, help="restart the robots every N cycles")
    parser.add_argument("--stream-s", type=float, default=None, help="seconds per long stream (120; quick 10)")
    parser.add_argument("--no-transports", action="store_true", help="skip the DDS transport / vendor table")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument("--markdown", default=None, help="write the tables as Markdown to this file")
    parser.add_argument("--no-streams", action="store_true", help="skip the two long streams")
    parser.add_argument(
        "--workdir",
        default=None,
        help="keep the robots' state and logs here (default: a temporary directory, removed unless a run went wrong)",
    )
    parser.add_argument("--collect", default=None, help=argparse.SUPPRESS)  # child mode: ProcessCollector
    parser.add_argument("--collect-dds", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collect:
        return _collect_main(args.collect, json.loads(args.collect_dds))

    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
    os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    cycles = args.cycles if args.cycles is not None else (50 if args.quick else 500)
    stream_s = args.stream_s if args.stream_s is not None else (10.0 if args.quick else 120.0)
    models = locate_models(args.models, quick=True)
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return _measure(args, cycles, stream_s, models, workdir)  # the caller's directory: the caller removes it
    workdir = Path(tempfile.mkdtemp(prefix="ros-stress-"))
    code = 2
    try:
        code = _measure(args, cycles, stream_s, models, workdir)
        return code
    finally:
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)  # robots' state and logs: what counts is in the JSON
        else:
            print(f"robots' state and logs kept in {workdir}", file=sys.stderr)


def _measure(args: argparse.Namespace, cycles: int, stream_s: float, models: Path, workdir: Path) -> int:
    """Run the cycles, streams and transports in ``workdir``; print and write the figures; return the exit code."""
    started = time.monotonic()

    tally = run_cycles(cycles, args.pairs, args.frames, args.robot_every, models, workdir) if cycles else Tally()
    streams = (
        run_stream_rows(
            [("shm", True, "fastdds", 640, 480, reliable) for reliable in (False, True)],
            stream_s,
            models,
            workdir,
            tally,
        )
        if stream_s > 0 and not args.no_streams
        else []
    )
    transports = (
        []
        if args.no_transports
        else run_stream_rows(transport_rows(args.quick), min(stream_s, 10.0), models, workdir, None)
    )
    summary = tally.summary()
    rows = [
        ("start/stop cycles (camera)", str(cycles)),
        ("robot starts / stops", f"{summary['robot_starts']} / {summary['robot_stops']}"),
        ("camera runs (paced) / stopped by a signal", f"{summary['camera_runs']} / {summary['camera_stops']}"),
        ("hangs", str(summary["hangs_count"])),
        ("freezes (no answer within 2 s)", str(summary["freezes_count"])),
        ("exits slower than 5 s", str(summary["slow_exits_count"])),
        ("failures (a process exited with an error)", str(summary["failures_count"])),
        ("exit after the signal, p50 / max (s)", f"{summary['exit_s_p50']} / {summary['exit_s_max']}"),
        (
            "frames sent / answered / lost (cycles + streams)",
            f"{summary['frames_sent']} / {summary['frames_answered']} / {summary['frames_lost']}",
        ),
        ("paced frames answered after the 2 s deadline (late, not lost)", str(summary["frames_late"])),
        ("paced camera runs that lost frames", str(summary["losses_count"])),
        ("robots ended by the shutdown deadline (DDS teardown hung)", str(summary["teardown_deadlines_count"])),
    ]
    memory = summary.get("robot_memory_mb")
    if memory:
        rows.append(
            (
                "robot process memory after a paced run, resident / unique p50 (max) MB",
                f"{memory['rss_p50']} ({memory['rss_max']}) / {memory['uss_p50']} ({memory['uss_max']})",
            )
        )
    print_table(f"robot stack under stress ({time.monotonic() - started:.0f} s)", rows)
    stream_columns = [
        "transport",
        "type_propagation",
        "camera",
        "size",
        "qos",
        "sent",
        "answered",
        "answered_fraction",
        "latency_p50_ms",
        "latency_p99_ms",
        "note",
    ]
    for title, table in (("long streams, 30 Hz", streams), ("DDS transports and camera vendors, 30 Hz", transports)):
        if table:
            print_table(
                title,
                [
                    (
                        f"{r['transport']} {r['camera']} {r['size']} {r['qos']}",
                        f"{r['answered']}/{r['sent']}  p50 {r['latency_p50_ms']} ms",
                    )
                    for r in table
                ],
            )
    for kind in ("hangs", "freezes", "slow_exits", "failures", "losses"):
        for text in summary[kind][:10]:
            print(f"{kind}: {text}", file=sys.stderr)
    payload = {
        "machine": machine(),
        "cycles": cycles,
        "pairs": args.pairs,
        "stream_s": stream_s,
        "summary": summary,
        "streams": streams,
        "transports": transports,
        "seconds": round(time.monotonic() - started, 1),
        "hang_dumps": HANG_DUMPS,
    }
    write_json(args.json, payload)
    if args.markdown:
        text = _markdown(
            "Start/stop cycles and long streams",
            [dict(zip(("measure", "value"), r)) for r in rows],
            ["measure", "value"],
        )
        if streams:
            text += "\n" + _markdown("Long streams, 640x480 rgb8 at 30 Hz", streams, stream_columns)
        if transports:
            text += "\n" + _markdown("DDS transports and camera vendors, 30 Hz", transports, stream_columns)
        Path(args.markdown).write_text(text)
    bad = sum(summary[f"{kind}_count"] for kind in ("hangs", "freezes", "slow_exits", "failures", "losses"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
