"""launch/replay.launch.py's decisions (storage id, topic remap, start order), as plain functions and
as the real start-order gate with rclpy. (``ros2 launch`` itself is not installable here: FACTS.md.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from fleetloop_core.errors import ConfigError
from fleetloop_ros.launch_args import bag_play_command, bag_storage, replay_target


def test_an_absolute_image_topic_stays_absolute_a_relative_one_goes_under_the_namespace():
    assert replay_target("/robot7", "/camera/color/image_raw") == "/camera/color/image_raw"
    assert replay_target("/robot7", "camera/image_raw, other/image") == "/robot7/camera/image_raw"
    assert replay_target("", "camera/image_raw") == "/camera/image_raw"
    assert replay_target("robot7/", "") == "/robot7/camera/image_raw"


def test_a_bare_bag_file_gets_its_storage_id():
    assert bag_storage("/data/site-a.mcap") == "mcap"  # Humble's ros2 bag play needs -s mcap
    assert bag_storage("/data/site-a.DB3") == "sqlite3"
    assert bag_storage("/data/site-a") is None  # a bag directory names it in metadata.yaml
    assert bag_storage("/data/site-a", "mcap") == "mcap"
    command = bag_play_command("/data/a.mcap", "/camera/image_raw", "/robot7/camera/image_raw", "2.0", "true")
    assert command == [
        "ros2",
        "bag",
        "play",
        "/data/a.mcap",
        "-s",
        "mcap",
        "--rate",
        "2.0",
        "--remap",
        "/camera/image_raw:=/robot7/camera/image_raw",
        "--loop",
    ]
    with pytest.raises(ConfigError, match="argument bag"):
        bag_play_command("", "/camera/image_raw", "/x")
    with pytest.raises(ConfigError, match="argument rate"):
        bag_play_command("a.mcap", "/camera/image_raw", "/x", rate="fast")
    with pytest.raises(ConfigError, match="argument loop"):
        bag_play_command("a.mcap", "/camera/image_raw", "/x", loop="sometimes")


def test_the_player_starts_only_once_the_topic_has_its_subscriber(ros, spawn):
    from sensor_msgs.msg import Image

    topic = ros.topic("camera/image_raw")
    gate = [sys.executable, "-m", "fleetloop_ros.wait_for_subscribers", "--topic", topic, "--count", "1"]
    # nobody subscribed: the command never starts, and the error names the topic
    done = subprocess.run(
        gate + ["--timeout", "1.5", "--", sys.executable, "-c", "print('PLAYED')"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "PLAYED" not in done.stdout
    assert f"{topic} has 0 of 1 subscriber(s)" in done.stderr
    # the subscriber appears while the gate waits: then the command runs in the gate's place
    process = spawn(
        gate + ["--timeout", "60", "--", sys.executable, "-c", "import os; print('PLAYED', os.getpid())"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ros.spin_for(1.0)
    assert process.poll() is None  # still waiting
    ros.collect(Image, "camera/image_raw")
    ros.spin_until(lambda: process.poll() is not None, 30, "the gate to start the command")
    output = process.stdout.read()
    assert process.returncode == 0 and f"PLAYED {process.pid}" in output  # exec'd: same pid


def test_the_gate_ends_at_once_on_sigint_while_waiting(ros_domain, spawn):
    import signal
    import time

    process = spawn(
        [
            sys.executable,
            "-m",
            "fleetloop_ros.wait_for_subscribers",
            "--topic",
            "/nobody/listens",
            "--timeout",
            "60",
            "--",
            "true",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(1.5)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 130 and time.monotonic() - started < 5
