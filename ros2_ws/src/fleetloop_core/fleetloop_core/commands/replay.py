"""``fleetloop replay BAG``: tune frame selection on a recorded bag (see fleetloop_core.replay)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a rosbag2 through the cascade and selector; sweep selection settings",
        description="Replay a rosbag2 (sqlite3 or MCAP) through the real cascade and selector, offline and "
        "faster than real time, for each swept setting; print a table, write CSV and PNG plots.",
    )
    parser.add_argument("bag", nargs="+", help="rosbag2 directory (several: replayed in order)")
    parser.add_argument("--config", default=None, help="selection config (default: config/selection.yaml)")
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="selection key and values to try, e.g. policy.params.threshold=0.3,0.5 (repeat for a grid)",
    )
    parser.add_argument("--out", default=None, help="output directory (default: runs/replay/<bag name>)")
    parser.add_argument(
        "--models", default=None, help="directory with T4 (and T3); default: ./models, else .cache/models-test"
    )
    parser.add_argument("--topics", nargs="*", default=None, help="only these image topics")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run)


def _models(choice: str | None) -> Path:
    from fleetloop_core.config import repo_root
    from fleetloop_core.bags import ReplayError

    if choice:
        return Path(choice)
    for candidate in (Path("models"), repo_root() / "models", repo_root() / ".cache" / "models-test"):
        if (candidate / "T4" / "manifest.json").is_file():
            return candidate
    raise ReplayError(
        "no models found in ./models or .cache/models-test: run `fleetloop models build` or pass --models DIR"
    )


def _run(args: argparse.Namespace) -> int:
    from fleetloop_core.replay import replay
    from fleetloop_core.replay_outputs import print_report, write_outputs
    from fleetloop_core.selection_config import load_selection_config

    base = load_selection_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / "replay" / Path(args.bag[0]).name
    report = replay(args.bag, _models(args.models), base, args.sweep, topics=args.topics, progress=not args.no_progress)
    write_outputs(report, out)
    print_report(report)
    return 0
