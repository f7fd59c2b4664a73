"""FleetLoop robot bring-up: perception + model manager, selector, uploader from one robot YAML.

    ros2 launch launch/robot.launch.py config:=config/robot.yaml robot_id:=robot-7 \
        namespace:=/robot7 image_topics:=camera/image_raw store_uri:=s3://fleet-frames/site-a use_gpu:=true

A camera of another DDS vendor (Cyclone DDS, Connext):  transport:=udp type_propagation:=false
(docs/ros_robustness.md). The DDS settings become the processes' environment before rclpy starts.
A node whose frame path freezes exits non-zero (health.frozen_exit_s); respawn:=true (default)
starts it again after respawn_delay seconds.

composed:=true (default) starts the `robot` executable: all four nodes in one process, frames handed
from perception to the selector without copies. composed:=false starts `model_manager` (perception
and its model manager: the manager hot-swaps that process's cascade), `selector` (pairs images
and results from topics) and `uploader` as three processes. The arguments are the options of
`fleetloop robot` (fleetloop_ros.launch_args maps both to the same parameter overrides), which
starts the same nodes from the same YAML where ros2 launch is not installed.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from fleetloop_core.dds import dds_environment
from fleetloop_ros.launch_args import LAUNCH_ONLY, node_overrides, parse_bool
from fleetloop_ros.settings import load_robot_config

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "config", "robot.yaml")
PASSED = (
    "robot_id",
    "image_topics",
    "compressed_topics",
    "store_uri",
    "models_dir",
    "control_plane",
    "use_gpu",
    "transport",
    "type_propagation",
)


def _nodes(context):
    value = {
        name: LaunchConfiguration(name).perform(context)
        for name in (*PASSED, *LAUNCH_ONLY, "config", "namespace", "composed")
    }
    config = value["config"] or DEFAULT_CONFIG
    namespace = value["namespace"]
    overrides = node_overrides({name: value[name] for name in PASSED})
    # validated like `fleetloop robot` does (errors name file, node and key); its dds section is the environment
    dds = load_robot_config(config, namespace, overrides).settings["perception"].dds
    common = dict(
        package="fleetloop_ros",
        namespace=namespace,
        output="screen",
        emulate_tty=True,
        additional_env=dds_environment(dds),
        respawn=parse_bool("respawn", value["respawn"]),
        respawn_delay=float(value["respawn_delay"]),
    )
    if parse_bool("composed", value["composed"]):
        merged = {}
        for node in ("perception", "model_manager", "selector", "uploader"):
            merged.update(overrides[node])  # rcl applies them to every node of the process
        return [Node(executable="robot", parameters=[config, merged], **common)]
    manager_process = {**overrides["perception"], **overrides["model_manager"]}
    return [
        Node(executable="model_manager", parameters=[config, manager_process], **common),
        Node(executable="selector", parameters=[config, overrides["selector"]], **common),
        Node(executable="uploader", parameters=[config, overrides["uploader"]], **common),
    ]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument("config", default_value="", description="robot YAML; default: config/robot.yaml"),
            DeclareLaunchArgument("robot_id", default_value="", description="robot id (YAML value when empty)"),
            DeclareLaunchArgument("namespace", default_value="", description="ROS namespace of every node"),
            DeclareLaunchArgument("image_topics", default_value="", description="comma-separated Image topics"),
            DeclareLaunchArgument(
                "compressed_topics", default_value="", description="comma-separated CompressedImage topics"
            ),
            DeclareLaunchArgument(
                "store_uri", default_value="", description="object store URI (file:///..., s3://...)"
            ),
            DeclareLaunchArgument("models_dir", default_value="", description="reference models directory"),
            DeclareLaunchArgument(
                "control_plane", default_value="", description="file:///dir or mqtts://endpoint:8883"
            ),
            DeclareLaunchArgument("use_gpu", default_value="", description="true: TensorRT -> CUDA -> CPU"),
            DeclareLaunchArgument("composed", default_value="true", description="one process (true) or one per node"),
            DeclareLaunchArgument(
                "transport", default_value="", description="large_data, udp, shm or default (YAML when empty)"
            ),
            DeclareLaunchArgument(
                "type_propagation",
                default_value="",
                description="false for cameras of other DDS vendors (YAML when empty)",
            ),
            DeclareLaunchArgument(
                "respawn",
                default_value="true",
                description="start a node again when it exits (a frozen node exits non-zero)",
            ),
            DeclareLaunchArgument("respawn_delay", default_value="2.0", description="seconds before a respawn"),
            OpaqueFunction(function=_nodes),
        ]
    )
