#!/usr/bin/env python3
"""Frames per second through the ROS graph versus the core pipeline alone, on the same frames.

  core  fleetloop_core only: Image fields -> ros_convert -> cascade (T4, escalation to T3), in this
        process, one frame after another (what the perception node computes per frame)
  ros   the same frames as sensor_msgs/Image from this process to a robot process
        (`fleetloop robot --nodes perception`, real rclpy, Fast DDS LARGE_DATA, reliable QoS), and
        fleetloop_interfaces/FrameResult back; up to --in-flight frames outstanding, so the figure is
        the graph's throughput, not one round trip

and prints frames/s of both and their ratio, the CPU time per frame of both (the ROS figure sums
this process and the robot process; it moves far less than frames/s when other jobs share the
machine) and its ratio, and the round-trip latency through the graph, for
128x128 frames (the models' size) and 640x480 (a camera's; resized in the node). Both measure the
same cascade configuration; the robot process has the machine's other cores. After streaming, the robot
process's memory: resident (RSS) and unique to it (USS: what one more robot process adds).

Then the DDS transport comparison: 640x480 rgb8 at 30 Hz between two fresh processes with Fast DDS
default transports and with LARGE_DATA (what the robot sets), best-effort and reliable: frames
received of those sent, and the median latency (ms).

Usage: python benchmarks/ros_graph.py [--quick] [--models DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from _common import ROOT, locate_models, machine, percentile, print_table, process_memory_mb, write_json  # noqa: E402
from fleetloop_core.cli import command_line


class _Core:
    """The core pipeline alone, as the perception node runs it per frame: Image fields -> RGB -> cascade."""

    def __init__(self, models: Path):
        from fleetloop_core.cascade import Cascade
        from fleetloop_core.inference import TierModel

        self.cascade = Cascade(
            TierModel.load(models / "T4", providers=("cpu",), warmup=20),
            TierModel.load(models / "T3", providers=("cpu",), warmup=20),
        )

    def run(self, frames: list[np.ndarray]) -> tuple[float, float]:
        """Return (frames/s, CPU ms per frame) over one pass of ``frames``."""
        from fleetloop_core.ros_convert import array_to_image, image_to_rgb8

        images = [array_to_image(f, "rgb8") for f in frames]
        start, cpu = time.perf_counter(), time.process_time()
        for image in images:
            frame = image_to_rgb8(image.height, image.width, image.encoding, image.is_bigendian, image.step, image.data)
            self.cascade.infer(frame, stream="bench")
        return len(images) / (time.perf_counter() - start), (time.process_time() - cpu) * 1000.0 / len(images)


class _Graph:
    """This process's side of the graph: publishes frames, counts results, keeps ``in_flight`` outstanding."""

    def __init__(self, namespace: str):
        import rclpy
        from fleetloop_interfaces.msg import FrameResult
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        rclpy.init()
        self.node = rclpy.create_node("ros_graph_bench", namespace=namespace)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, "camera/image_raw", qos)
        self.sent: dict[int, float] = {}
        self.round_trips: list[float] = []
        self.answered = 0
        self._cv = threading.Condition()
        self.results_topic = f"{namespace}/frame_results"
        self.node.create_subscription(FrameResult, self.results_topic, self._on_result, qos)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self._spinner.start()

    def _on_result(self, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._cv:
            sent = self.sent.pop(stamp, None)
            if sent is not None:
                self.round_trips.append(time.perf_counter() - sent)
            self.answered += 1
            self._cv.notify_all()

    def wait_matched(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.publisher.get_subscription_count() and self.node.count_publishers(self.results_topic):
                time.sleep(1.0)
                return
            time.sleep(0.1)
        raise RuntimeError("the robot process did not appear in the graph")

    def run(self, frames: list[np.ndarray], in_flight: int, timeout: float = 300.0) -> float:
        """Send every frame (at most ``in_flight`` unanswered); return frames/s until the last answer."""
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from fleetloop_core.ros_convert import array_to_image

        images = [array_to_image(f, "rgb8") for f in frames]
        with self._cv:
            self.answered, self.round_trips = 0, []
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        for index, fields in enumerate(images):
            with self._cv:
                while index - self.answered >= in_flight:
                    if not self._cv.wait(timeout=max(0.0, deadline - time.monotonic())):
                        raise RuntimeError(f"no answer within {timeout:.0f} s ({self.answered} of {index})")
            now = time.time_ns()
            header = Header(frame_id="bench")
            header.stamp.sec, header.stamp.nanosec = now // 1_000_000_000, now % 1_000_000_000
            with self._cv:
                self.sent[now] = time.perf_counter()
            self.publisher.publish(
                Image(
                    header=header,
                    height=fields.height,
                    width=fields.width,
                    encoding="rgb8",
                    is_bigendian=0,
                    step=fields.step,
                    data=fields.data,
                )
            )
        with self._cv:
            while self.answered < len(images):
                if not self._cv.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"only {self.answered} of {len(images)} frames answered")
        return len(images) / (time.perf_counter() - start)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def _count_frames(namespace: str, seconds: float, reliable: bool, expected: int) -> None:
    """Subscriber process of the transport comparison: print how many frames arrived (and latency p50 ms).

    Listens until ``expected`` frames arrived or ``seconds`` passed."""
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("frame_counter", namespace=namespace)
    latencies: list[float] = []
    qos = (
        QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        if reliable
        else qos_profile_sensor_data
    )
    node.create_subscription(
        Image,
        "camera/image_raw",
        lambda m: latencies.append(
            (time.time_ns() - m.header.stamp.sec * 1_000_000_000 - m.header.stamp.nanosec) / 1e6
        ),
        qos,
    )
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(latencies) < expected:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(f"RECEIVED {len(latencies)} {percentile(latencies, 50) if latencies else float('nan'):.2f}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def _transport_row(transports: str | None, reliable: bool, sent: int, rate: float) -> dict:
    """Send ``sent`` 640x480 rgb8 frames at ``rate`` between two fresh processes with these DDS settings."""
    env = dict(os.environ, FASTDDS_BUILTIN_TRANSPORTS=transports or "DEFAULT")
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)  # the builtin transports named here, not the robot's profile
    namespace = f"/transport{os.getpid()}_{int(time.monotonic() * 1000) % 100000}"
    listen_s = sent / rate + 10.0  # start-up, discovery, the stream, then a margin for stragglers
    counter = subprocess.Popen(
        [sys.executable, __file__, "--count-frames", namespace, str(listen_s), "1" if reliable else "0", str(sent)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    camera = command_line(
        "camera",
        "--namespace",
        namespace,
        "--count",
        str(sent),
        "--rate",
        str(rate),
        "--width",
        "640",
        "--height",
        "480",
        "--wait-subscribers",
        "1",
    )
    if reliable:
        camera.append("--reliable")
    subprocess.run(camera, cwd=ROOT, env=env, capture_output=True, timeout=listen_s + 60)
    output = counter.communicate(timeout=listen_s + 60)[0]
    line = next(line for line in output.splitlines() if line.startswith("RECEIVED"))
    received, latency = int(line.split()[1]), float(line.split()[2])
    return {
        "transports": transports or "DEFAULT",
        "qos": "reliable" if reliable else "sensor_data (best effort)",
        "sent": sent,
        "received": received,
        "latency_p50_ms": round(latency, 2),
    }


def _start_robot(models: Path, namespace: str, workdir: Path) -> subprocess.Popen:
    config = workdir / "robot.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "/**/perception": {
                    "ros__parameters": {
                        "models_dir": str(models),
                        "image_qos": "reliable",
                        "image_topics": ["camera/image_raw"],
                    }
                }
            }
        )
    )
    command = command_line("robot", "--config", str(config), "--namespace", namespace, "--nodes", "perception")
    log = open(workdir / "robot.log", "w")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer frames (< 60 s)")
    parser.add_argument("--models", default=None, help="directory with T1..T4 (default: ./models or build)")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--in-flight", type=int, default=4, help="frames outstanding in the graph")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument("--no-transports", action="store_true", help="skip the DDS transport comparison")
    parser.add_argument(
        "--count-frames", nargs=4, metavar=("NAMESPACE", "SECONDS", "RELIABLE", "EXPECTED"), help=argparse.SUPPRESS
    )  # the subscriber process of the transport comparison
    args = parser.parse_args(argv)
    if args.count_frames:
        namespace, seconds, reliable, expected = args.count_frames
        _count_frames(namespace, float(seconds), reliable == "1", int(expected))
        return 0

    from fleetloop_ros.camera_frames import sim_frames
    from fleetloop_core.dds import DdsConfig, dds_environment

    os.environ.setdefault("ROS_DOMAIN_ID", str(90 + os.getpid() % 10))
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
    dds_environment(DdsConfig(), os.environ)  # the robot's default transport (fleetloop_core.dds)
    models = locate_models(args.models, args.quick)
    count = args.frames or (100 if args.quick else 400)
    rounds = 3 if args.quick else 5
    sizes = [(128, 128), (480, 640)]
    frames = {size: sim_frames(min(count, 200), *size) for size in sizes}
    frames = {size: [f[i % len(f)] for i in range(count)] for size, f in frames.items()}

    namespace = f"/bench{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix="ros-graph-"))
    robot = _start_robot(models, namespace, workdir)
    import psutil

    robot_process = psutil.Process(robot.pid)  # the ROS bootstrap re-execs in place: same pid
    graph = None
    figures: dict = {
        "frames": count,
        "in_flight": args.in_flight,
        "models": str(models),
        "machine": machine(),
        "dds": {k: os.environ.get(k) for k in ("FASTDDS_BUILTIN_TRANSPORTS", "ROS_LOCALHOST_ONLY")},
        "sizes": {},
    }
    try:
        graph = _Graph(namespace)
        graph.wait_matched()
        core = _Core(models)
        graph.run(frames[sizes[0]][:20], args.in_flight)  # warm-up of both sides
        for size in sizes:
            # interleaved rounds: load from other processes hits both rows alike
            core_fps, ros_fps, core_cpu, ros_cpu, trips = [], [], [], [], []
            for _ in range(rounds):
                fps, cpu = core.run(frames[size])
                core_fps.append(fps)
                core_cpu.append(cpu)
                # CPU of both processes (this one publishing and receiving, the robot answering): unlike
                # frames/s it hardly moves when other jobs share the machine
                before = time.process_time(), robot_process.cpu_times()
                ros_fps.append(graph.run(frames[size], args.in_flight))
                after = time.process_time(), robot_process.cpu_times()
                robot_s = (after[1].user + after[1].system) - (before[1].user + before[1].system)
                ros_cpu.append((after[0] - before[0] + robot_s) * 1000.0 / len(frames[size]))
                trips.extend(t * 1000.0 for t in graph.round_trips)
            core_median, ros_median = float(np.median(core_fps)), float(np.median(ros_fps))
            core_cpu_ms, ros_cpu_ms = float(np.median(core_cpu)), float(np.median(ros_cpu))
            figures["sizes"][f"{size[1]}x{size[0]}"] = {
                "core_fps": round(core_median, 1),
                "ros_fps": round(ros_median, 1),
                "ratio_ros_to_core": round(ros_median / core_median, 3),
                "rounds": rounds,
                "core_cpu_ms_per_frame": round(core_cpu_ms, 3),
                "ros_cpu_ms_per_frame": round(ros_cpu_ms, 3),
                "cpu_ratio_core_to_ros": round(core_cpu_ms / ros_cpu_ms, 3),
                "round_trip_p50_ms": round(percentile(trips, 50), 2),
                "round_trip_p99_ms": round(percentile(trips, 99), 2),
            }
        # the robot process's memory after streaming both sizes: resident, and unique to it (USS: what a
        # second robot process on the same machine adds; shared libraries' pages are counted once)
        rss, uss = process_memory_mb(robot.pid)
        figures["robot_memory_mb"] = {"rss": rss, "uss": uss}
    finally:
        if graph is not None:
            graph.close()
        robot.terminate()
        robot.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)  # the robot's queue, store and logs: the figures are in the JSON
    if not args.no_transports:
        sent = 90 if args.quick else 300
        figures["transports"] = [
            _transport_row(transports, reliable, sent, 30.0)
            for transports in (None, "LARGE_DATA")
            for reliable in (False, True)
        ]
    rows = []
    for name, row in figures["sizes"].items():
        rows += [
            (f"{name} core pipeline alone (frames/s)", f"{row['core_fps']:.0f}"),
            (f"{name} through the ROS graph (frames/s)", f"{row['ros_fps']:.0f}"),
            (f"{name} ratio ROS graph / core (frames/s)", f"{row['ratio_ros_to_core']:.3f}"),
            (
                f"{name} CPU per frame: core / ROS graph, both processes (ms)",
                f"{row['core_cpu_ms_per_frame']:.2f} / {row['ros_cpu_ms_per_frame']:.2f}",
            ),
            (f"{name} ratio by CPU cost (core / ROS graph)", f"{row['cpu_ratio_core_to_ros']:.3f}"),
            (f"{name} round trip p50 / p99 (ms)", f"{row['round_trip_p50_ms']:.1f} / {row['round_trip_p99_ms']:.1f}"),
        ]
    memory = figures.get("robot_memory_mb")
    if memory:
        rows.append(
            ("robot process memory, perception node: resident / unique (MB)", f"{memory['rss']} / {memory['uss']}")
        )
    for row in figures.get("transports", []):
        rows.append(
            (
                f"640x480 @ 30 Hz, {row['transports']}, {row['qos']}: received / sent",
                f"{row['received']} / {row['sent']} ({row['latency_p50_ms']:.0f} ms)",
            )
        )
    print_table(f"ROS graph vs core ({count} frames x {rounds} rounds, {args.in_flight} in flight)", rows)
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
