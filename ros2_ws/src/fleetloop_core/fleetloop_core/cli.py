"""The ``fleetloop`` command line.

Sub-commands are plugins: every package registers ``name = module:register`` under the
``fleetloop.commands`` entry-point group, so core, ROS and cloud each add their own commands
without core importing them (dependencies point one way).
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from typing import Sequence

from fleetloop_core import stop_signals
from fleetloop_core.errors import FleetLoopError

log = logging.getLogger("fleetloop")


def command_line(*args: str) -> list[str]:
    """Return the argv that runs ``fleetloop ARGS`` with this interpreter (for the processes we start)."""
    return [sys.executable, "-m", "fleetloop_core.cli", *args]


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every installed sub-command registered."""
    parser = argparse.ArgumentParser(prog="fleetloop", description="FleetLoop: edge-first ML loop for robot fleets")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in sorted(entry_points(group="fleetloop.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:  # a plugin whose optional dependencies are absent
            log.debug("fleetloop command %s unavailable: %s", entry.name, exc)
            continue
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code (130 after a SIGINT, also one during start-up)."""
    stop_signals.restore()  # before any slow import: a SIGINT during start-up must not be lost
    try:
        parser = build_parser()  # imports every sub-command's module: seconds on a loaded robot
    except KeyboardInterrupt:
        return 130
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except FleetLoopError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
