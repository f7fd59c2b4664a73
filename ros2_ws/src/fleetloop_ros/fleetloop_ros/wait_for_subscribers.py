"""Start a command once a topic has its subscribers: the start order of launch/replay.launch.py.

    ros2 run fleetloop_ros wait_for_subscribers --topic /robot7/camera/image_raw --count 1 \
        --timeout 120 -- ros2 bag play site-a.mcap -s mcap ...

``ros2 bag play`` publishes at once; frames published before the robot's perception node has
subscribed are lost. This waits (rclpy ``count_subscribers``) until ``--count`` subscribers exist,
then replaces itself with the command (``os.execvp``: the command gets this process's pid, so
launch's signals and exit handling reach it directly). Past ``--timeout`` it exits 2 naming the
topic and how many subscribers it saw; SIGINT/SIGTERM while waiting end it at once (exit 130/143).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wait_for_subscribers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", required=True, help="fully qualified topic, e.g. /robot7/camera/image_raw")
    parser.add_argument("--count", type=int, default=1, help="subscribers to wait for (default 1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up (exit 2)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to start")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("wait_for_subscribers: no command given after --", file=sys.stderr)
        return 2
    stop = {"signal": 0}

    def _stop(number, _frame) -> None:
        stop["signal"] = number

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    import rclpy

    context = rclpy.Context()
    rclpy.init(
        args=["--ros-args", "--disable-rosout-logs"],
        context=context,
        signal_handler_options=rclpy.signals.SignalHandlerOptions.NO,
    )
    node = rclpy.create_node("wait_for_subscribers", context=context, start_parameter_services=False)
    seen, deadline = 0, time.monotonic() + args.timeout
    try:
        while not stop["signal"]:
            seen = node.count_subscribers(args.topic)
            if seen >= args.count or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    if stop["signal"]:
        return 128 + stop["signal"]
    if seen < args.count:
        print(
            f"wait_for_subscribers: {args.topic} has {seen} of {args.count} subscriber(s) after "
            f"{args.timeout:g} s; not starting {command[0]}",
            file=sys.stderr,
        )
        return 2
    print(f"wait_for_subscribers: {args.topic} has {seen} subscriber(s); starting {' '.join(command)}", flush=True)
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
