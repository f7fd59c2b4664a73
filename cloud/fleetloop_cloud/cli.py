"""The ``fleetloop-cloud`` command line.

Each step registers itself: an entry point ``name = module:register`` in the
``fleetloop_cloud.commands`` group (cloud/setup.py); ``register(subparsers)`` adds the parser and
sets ``handler``. Adding a step never edits this file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from typing import Sequence

from fleetloop_core.errors import FleetLoopError

log = logging.getLogger("fleetloop_cloud")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``fleetloop-cloud``."""
    parser = argparse.ArgumentParser(prog="fleetloop-cloud", description="FleetLoop cloud loop")
    parser.add_argument("-v", "--verbose", action="store_true")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in sorted(entry_points(group="fleetloop_cloud.commands"), key=lambda e: e.name):
        entry.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    parser = build_parser()
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


if __name__ == "__main__":
    sys.exit(main())
