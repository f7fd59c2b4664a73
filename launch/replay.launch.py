"""Play a recorded bag into the robot graph: `ros2 bag play` + launch/robot.launch.py.

    ros2 launch launch/replay.launch.py bag:=/data/site-a.mcap bag_topic:=/camera/image_raw \
        image_topics:=camera/image_raw robot_id:=robot-7 rate:=1.0

The bag's image topic is remapped onto the camera topic the perception node subscribes to (an
absolute image topic stays absolute; a relative one goes under the namespace); a bare .mcap/.db3
file gets its storage id (-s); the player starts only once perception has subscribed
(wait_for_subscribers), with the robot's DDS transport. Every robot.launch.py argument passes through.
Here, without ros2 launch, the same graph is `fleetloop robot --config ...` plus
`fleetloop camera --source BAG`.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from fleetloop_core.dds import dds_environment
from fleetloop_ros.launch_args import ARGUMENTS, bag_play_command, replay_target
from fleetloop_ros.settings import load_robot_config

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "..", "config", "robot.yaml")


def _play(context):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    target = replay_target(get("namespace"), get("image_topics"))
    play = bag_play_command(get("bag"), get("bag_topic"), target, get("rate"), get("loop"), get("storage"))
    # the player joins the robot's DDS transport, and starts once perception has subscribed
    dds = load_robot_config(get("config") or DEFAULT_CONFIG, get("namespace")).settings["perception"].dds
    gate = [
        "ros2",
        "run",
        "fleetloop_ros",
        "wait_for_subscribers",
        "--topic",
        target,
        "--count",
        "1",
        "--timeout",
        get("wait_timeout"),
        "--",
    ]
    return [ExecuteProcess(cmd=gate + play, output="screen", additional_env=dds_environment(dds))]


def generate_launch_description():
    robot_arguments = [
        DeclareLaunchArgument(a.name, default_value=a.default, description=a.description) for a in ARGUMENTS
    ]
    return LaunchDescription(
        [
            DeclareLaunchArgument("bag", description="rosbag2 to play (directory or .mcap/.db3)"),
            DeclareLaunchArgument("bag_topic", default_value="/camera/image_raw", description="image topic in the bag"),
            DeclareLaunchArgument("rate", default_value="1.0", description="playback rate"),
            DeclareLaunchArgument("loop", default_value="false", description="play the bag in a loop"),
            DeclareLaunchArgument(
                "storage",
                default_value="",
                description="rosbag2 storage id (default: mcap for .mcap, sqlite3 for .db3 files)",
            ),
            DeclareLaunchArgument(
                "wait_timeout",
                default_value="120",
                description="seconds to wait for the robot's subscription before playing",
            ),
            *robot_arguments,
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(os.path.join(HERE, "robot.launch.py")),
                launch_arguments={a.name: LaunchConfiguration(a.name) for a in ARGUMENTS}.items(),
            ),
            OpaqueFunction(function=_play),
        ]
    )
