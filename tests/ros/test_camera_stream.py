"""Camera-sized frames between two processes: 640x480 rgb8 at 30 Hz, received versus sent, latency.

Both processes use the DDS settings of the robot (fleetloop_core.dds: Fast DDS LARGE_DATA builtin
transports; localhost-only discovery) and reliable QoS with two seconds of history; with those
nothing is lost.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
from fleetloop_core.cli import command_line

ROOT = Path(__file__).resolve().parents[2]


def test_640x480_rgb8_at_30_hz_between_processes_loses_nothing(ros, spawn):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    import os

    from fleetloop_core.dds import TRANSPORT_VARIABLE

    received: list[tuple[int, int, int]] = []  # (stamp ns, arrival ns, bytes)

    def on_image(msg: Image) -> None:
        received.append(
            (msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, time.time_ns(), len(msg.data))
        )

    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=60, reliability=ReliabilityPolicy.RELIABLE)
    ros.node.create_subscription(Image, ros.topic("camera/image_raw"), on_image, qos)
    sent, rate = 120, 30.0
    camera = spawn(
        command_line(
            "camera",
            "--namespace",
            ros.namespace,
            "--count",
            str(sent),
            "--rate",
            str(rate),
            "--width",
            "640",
            "--height",
            "480",
            "--reliable",
            "--wait-subscribers",
            "1",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ros.spin_until(lambda: camera.poll() is not None, 120, "the camera process")
    ros.spin_for(0.5)
    output = camera.stdout.read()
    assert camera.returncode == 0, output

    stamps = np.array([r[0] for r in received], np.int64)
    latency_ms = (np.array([r[1] for r in received], np.int64) - stamps) / 1e6
    span_s = (stamps.max() - stamps.min()) / 1e9 if len(stamps) > 1 else float("nan")
    print(
        f"\n640x480 rgb8 between processes ({TRANSPORT_VARIABLE}={os.environ.get(TRANSPORT_VARIABLE)}, "
        f"reliable): sent {sent}, received {len(received)}, {(len(received) - 1) / span_s:.1f} Hz, latency "
        f"p50 {np.percentile(latency_ms, 50):.1f} ms, p99 {np.percentile(latency_ms, 99):.1f} ms, "
        f"max {latency_ms.max():.1f} ms"
    )
    assert len(received) == sent
    assert len(set(stamps.tolist())) == sent and all(size == 640 * 480 * 3 for _, _, size in received)
    assert (np.diff(stamps) > 0).all()  # in order


def test_the_live_simulated_camera_sends_one_robots_stream_from_a_frame_index():
    from fleetloop_core.ros_convert import msg_to_rgb8
    from fleetloop_ros.camera_frames import FrameSource
    from fleetloop_ros.messages import stamp_ns
    from fleetloop_sim import sim

    camera = FrameSource("sim", width=40, height=32, seed=3, robot="robot-2", start=5, live=True)
    stream = sim.CameraStream(
        sim.make_site(0, 3), robot="robot-2", seed=3, height=32, width=40, start_ns=sim.SIM_EPOCH_NS
    )
    expected = list(stream.frames(7))[5:]
    sent = [camera.next_message(123, "camera", sim_stamps=True) for _ in expected]
    assert camera.kind == "image"
    assert [stamp_ns(m.header.stamp) for m in sent] == [frame.stamp_ns for frame in expected]
    for message, frame in zip(sent, expected):
        assert np.array_equal(msg_to_rgb8(message), frame.image)
    wall = FrameSource("sim", width=40, height=32, seed=3, robot="robot-2", live=True)
    assert stamp_ns(wall.next_message(123, "camera").header.stamp) == 123  # stamped when sent


def test_a_lockstep_camera_counts_an_answer_after_the_deadline_as_late_not_lost(ros):
    # a busy machine delays an answer past the deadline: the frame is counted lost at the deadline and
    # turns late when its answer comes; a frame never answered stays lost (real rclpy node, driven by hand)
    from fleetloop_interfaces.msg import FrameResult

    from fleetloop_ros.camera_replay import CameraReplayNode

    camera = CameraReplayNode(
        topic=ros.topic("camera/image_raw"),
        count=2,
        lockstep_topic=ros.topic("frame_results"),
        window=2,
        answer_timeout_s=0.2,
        context=ros.context,
    )
    try:
        stamps = []
        for _ in range(2):
            camera._tick()
            stamps.append(next(reversed(camera._unanswered)))
        time.sleep(0.3)
        camera._expire_unanswered()
        assert camera.counts() == {"sent": 2, "answered": 0, "lost": 2, "late": 0}
        answer = FrameResult()
        answer.header.stamp.sec, answer.header.stamp.nanosec = divmod(stamps[0], 1_000_000_000)
        camera._on_result(answer)
        camera._on_result(answer)  # the same answer twice counts once
        assert camera.counts() == {"sent": 2, "answered": 1, "lost": 1, "late": 1}
        time.sleep(0.25)  # it listened one more deadline for late answers, then it is done
        assert camera.done
    finally:
        camera.destroy_node()


def test_a_lockstep_camera_told_to_finish_ends_once_its_frames_in_flight_are_answered(ros, spawn):
    # what the demo does after its last round: a camera streaming until told (--count 0) gets SIGUSR1 while a
    # window of frames waits for answers; it sends nothing more, and ends when they are answered, every frame
    # it sent counted answered (SIGTERM would have ended it with them unanswered)
    import json
    import signal

    from fleetloop_interfaces.msg import FrameResult
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    reliable = dict(history=HistoryPolicy.KEEP_LAST, depth=32, reliability=ReliabilityPolicy.RELIABLE)
    results = ros.node.create_publisher(
        FrameResult, ros.topic("frame_results"), QoSProfile(durability=DurabilityPolicy.TRANSIENT_LOCAL, **reliable)
    )
    pending, received, answering = [], [], [True]

    def on_image(message: Image) -> None:
        pending.append(message.header.stamp)
        received.append(message.header.stamp)

    def answer() -> None:
        while answering[0] and pending:
            result = FrameResult()
            result.header.stamp = pending.pop(0)
            results.publish(result)

    ros.node.create_subscription(Image, ros.topic("camera/image_raw"), on_image, QoSProfile(**reliable))
    ros.node.create_timer(0.01, answer)
    window = 4
    camera = spawn(
        command_line(
            "camera",
            "--namespace",
            ros.namespace,
            "--count",
            "0",
            "--rate",
            "200",
            "--width",
            "64",
            "--height",
            "64",
            "--reliable",
            "--lockstep",
            "frame_results",
            "--window",
            str(window),
            "--answer-timeout",
            "30",
            "--wait-subscribers",
            "1",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ros.spin_until(lambda: len(received) >= 20, 120, "20 frames from the camera")
    answering[0] = False
    ros.spin_until(lambda: len(pending) >= window, 30, f"{window} frames waiting for their answers")
    camera.send_signal(signal.SIGUSR1)
    ros.spin_for(0.5)
    assert len(pending) == window and camera.poll() is None  # no frame more; waiting for the answers
    answering[0] = True
    ros.spin_until(lambda: camera.poll() is not None, 30, "the camera's end after the last answer")
    output = camera.stdout.read()
    assert camera.returncode == 0, output
    counts = [json.loads(line)["camera"] for line in output.splitlines() if line.startswith('{"camera"')]
    assert counts == [{"sent": len(received), "answered": len(received), "lost": 0, "late": 0}], output
