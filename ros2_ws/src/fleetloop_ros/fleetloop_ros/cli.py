"""``fleetloop robot``: bring a robot up here from its YAML, with an rclpy executor (no ros2 launch).

Registered from fleetloop_ros's setup.py under the ``fleetloop.commands`` entry-point group, so
fleetloop_core never imports ROS. The options are the arguments of ``launch/robot.launch.py``
(same names, dashes for underscores; a test compares them); an option left out keeps the YAML's
value. Only ``--nodes`` and ``--duration`` are CLI-only.
"""

from __future__ import annotations

import argparse
import logging

from fleetloop_core.config import default_config_path

log = logging.getLogger("fleetloop.robot")

CLI_ONLY = ("nodes", "duration")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _topics(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(subparsers) -> None:
    """Add the ``robot`` sub-command."""
    parser = subparsers.add_parser("robot", help="run the robot nodes (perception, model manager, selector, uploader)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(default_config_path("robot.yaml")),
                        help="robot YAML with ros__parameters per node (default: config/robot.yaml)")
    parser.add_argument("--robot-id", default=None, help="robot id (sidecars, diagnostics)")
    parser.add_argument("--namespace", default="", help="ROS namespace of every node, e.g. /robot7")
    parser.add_argument("--image-topics", type=_topics, default=None, help="comma-separated sensor_msgs/Image topics")
    parser.add_argument("--compressed-topics", type=_topics, default=None,
                        help="comma-separated sensor_msgs/CompressedImage topics")
    parser.add_argument("--store-uri", default=None, help="object store the uploader drains to (file:///..., s3://...)")
    parser.add_argument("--models-dir", default=None, help="reference models directory (<dir>/T4, <dir>/T3)")
    parser.add_argument("--control-plane", default=None, help="control-plane URI of the model manager")
    parser.add_argument("--use-gpu", type=_bool, default=None, help="true: TensorRT -> CUDA -> CPU providers")
    parser.add_argument("--composed", type=_bool, default=True,
                        help="true (default): frames pass from perception to the selector in-process; "
                             "false: the selector pairs images and results from topics")
    parser.add_argument("--nodes", default="perception,model_manager,selector,uploader",
                        help="comma-separated subset of nodes to run in this process")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.set_defaults(handler=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Return per-node parameter overrides (dotted keys) from the options that were given."""
    robot_id, store, topics, compressed = args.robot_id, args.store_uri, args.image_topics, args.compressed_topics
    return {
        "perception": {"robot_id": robot_id, "image_topics": topics, "compressed_topics": compressed,
                       "models_dir": args.models_dir, "use_gpu": args.use_gpu},
        "model_manager": {"robot_id": robot_id, "control_plane.thing_name": robot_id,
                          "control_plane.uri": args.control_plane, "use_gpu": args.use_gpu},
        "selector": {"robot_id": robot_id, "image_topics": topics, "compressed_topics": compressed,
                     "queue.store": store},
        "uploader": {"robot_id": robot_id, "queue.store": store},
    }


def run(args: argparse.Namespace) -> int:
    """Validate the robot YAML, create the nodes, spin until Ctrl-C or ``--duration``."""
    from fleetloop_ros.robot import build_robot
    from fleetloop_ros.runner import run_nodes
    from fleetloop_ros.settings import load_robot_config

    config = load_robot_config(args.config, args.namespace, overrides_from_args(args))
    roles = [r.strip() for r in args.nodes.split(",") if r.strip()]
    log.info("robot %s from %s: nodes %s (%s)", config.settings["perception"].robot_id, args.config,
             ", ".join(roles), "composed" if args.composed else "topics between nodes")

    def ready(nodes) -> None:
        log.info("robot up: %s", ", ".join(node.get_fully_qualified_name() for node in nodes))

    return run_nodes(lambda: build_robot(config, args.namespace, args.composed, roles), [],
                     duration_s=args.duration, on_ready=ready)
