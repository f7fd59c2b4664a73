"""``fleetloop robot``: bring a robot up here from its YAML, with an rclpy executor (no ros2 launch).

Registered from fleetloop_ros's setup.py under the ``fleetloop.commands`` entry-point group, so
fleetloop_core never imports ROS. The options are the arguments of ``launch/robot.launch.py``
(``fleetloop_ros.launch_args``: same names, dashes for underscores, same meaning; a test compares
them); an option left out keeps the YAML's value. Only ``--nodes`` and ``--duration`` are CLI-only.
With ``--composed false`` the nodes still share this process but pass frames over topics (the
launch file starts one process per node). The YAML's ``dds`` section (or ``--transport``,
``--type-propagation``) sets the DDS environment before rclpy starts; the process ends within a
few seconds of SIGINT or SIGTERM, and exits non-zero when its frame path freezes
(``fleetloop_ros.runner``).
"""

from __future__ import annotations

import argparse
import logging

from fleetloop_core.config import default_config_path
from fleetloop_ros.launch_args import ARGUMENTS, node_overrides, parse_bool

log = logging.getLogger("fleetloop.robot")

CLI_ONLY = ("nodes", "duration")


def register(subparsers) -> None:
    """Add the ``robot`` sub-command."""
    parser = subparsers.add_parser(
        "robot",
        help="run the robot nodes (perception, model manager, selector, uploader)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for argument in ARGUMENTS:
        parser.add_argument(
            f"--{argument.name.replace('_', '-')}",
            dest=argument.name,
            default=argument.default,
            help=argument.description,
        )
    parser.add_argument(
        "--nodes",
        default="perception,model_manager,selector,uploader",
        help="comma-separated subset of nodes to run in this process",
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate the robot YAML, create the nodes, spin until Ctrl-C or ``--duration``."""
    from fleetloop_ros.robot import build_robot
    from fleetloop_ros.runner import run_nodes
    from fleetloop_ros.settings import load_robot_config

    values = {argument.name: getattr(args, argument.name) for argument in ARGUMENTS}
    config_path = values.pop("config") or str(default_config_path("robot.yaml"))
    composed = parse_bool("composed", values.pop("composed") or "true")
    namespace = values.pop("namespace")
    config = load_robot_config(config_path, namespace, node_overrides(values))
    roles = [r.strip() for r in args.nodes.split(",") if r.strip()]
    log.info(
        "robot %s from %s: nodes %s (%s)",
        config.settings["perception"].robot_id,
        config_path,
        ", ".join(roles),
        "composed" if composed else "topics between nodes",
    )

    def ready(nodes) -> None:
        log.info("robot up: %s", ", ".join(node.get_fully_qualified_name() for node in nodes))

    perception = config.settings["perception"]
    run_nodes(
        lambda: build_robot(config, namespace, composed, roles),
        [],
        duration_s=args.duration,
        on_ready=ready,
        dds=perception.dds,
        health=perception.health,
    )
