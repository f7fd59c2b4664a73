"""Play a recorded bag into the robot graph: `ros2 bag play` + launch/robot.launch.py.

    ros2 launch launch/replay.launch.py bag:=/data/site-a.mcap bag_topic:=/camera/image_raw \
        image_topics:=camera/image_raw robot_id:=robot-7 rate:=1.0

The bag's image topic is remapped onto the camera topic the perception node subscribes to; every
robot.launch.py argument passes through. Here, without ros2 launch, the same graph is
`fleetloop robot --config ...` plus `fleetloop camera --source BAG`.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from fleetloop_ros.launch_args import ARGUMENTS

HERE = os.path.dirname(os.path.abspath(__file__))


def _play(context):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    namespace = get("namespace").strip("/")
    camera = (get("image_topics").split(",")[0].strip() or "camera/image_raw").lstrip("/")
    target = f"/{namespace}/{camera}" if namespace else f"/{camera}"
    command = ["ros2", "bag", "play", get("bag"), "--rate", get("rate"), "--remap", f"{get('bag_topic')}:={target}"]
    if get("loop").lower() == "true":
        command.append("--loop")
    return [ExecuteProcess(cmd=command, output="screen")]


def generate_launch_description():
    robot_arguments = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                       for a in ARGUMENTS]
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 to play (directory or .mcap/.db3)"),
        DeclareLaunchArgument("bag_topic", default_value="/camera/image_raw", description="image topic in the bag"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate"),
        DeclareLaunchArgument("loop", default_value="false", description="play the bag in a loop"),
        *robot_arguments,
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(HERE, "robot.launch.py")),
            launch_arguments={a.name: LaunchConfiguration(a.name) for a in ARGUMENTS}.items(),
        ),
        OpaqueFunction(function=_play),
    ])
