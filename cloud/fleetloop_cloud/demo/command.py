"""``fleetloop demo``: the closed-loop demo's command line (classification by default, ``--task detection``)."""

from __future__ import annotations

import argparse
import logging
import os
from datetime import datetime
from pathlib import Path


from fleetloop_core.config import repo_root

from fleetloop_cloud.demo.run import Demo

log = logging.getLogger("fleetloop.demo")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fleetloop demo``."""
    parser = subparsers.add_parser("demo", help="the closed loop on a simulated fleet, with baselines and a report")
    parser.add_argument("--quick", action="store_true", help="small fleet, two short rounds (<= 2 min)")
    parser.add_argument("--robots", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None, help="camera frames per robot per round")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--seeds", default=None, help="run once per seed (e.g. 0,1,2): each figure as mean and range (OUT/seeds.md)"
    )
    parser.add_argument("--control-plane", choices=("local", "mqtt"), default=None)
    parser.add_argument(
        "--store", default=None, help="object store URI for the loop's uploads (default file://OUT/...)"
    )
    parser.add_argument("--out", default=None, help="report directory (default runs/<timestamp>)")
    parser.add_argument("--models", default=None, help="reference models (built if missing; default ./models)")
    parser.add_argument(
        "--no-ros", action="store_true", help="run the robots' core objects in-process instead of ROS 2"
    )
    parser.add_argument("--config", default=None, help="demo config (default config/demo.yaml)")
    parser.add_argument(
        "--task",
        choices=("classification", "detection"),
        default="classification",
        help="detection: the loop with detectors (in-process robots, mAP per round)",
    )
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    from fleetloop_cloud.demo.config import load_demo_config

    if args.task == "detection":
        return _detection(args)

    overrides = {
        "robots": args.robots,
        "rounds": args.rounds,
        "frames_per_robot": args.frames,
        "seed": args.seed,
        "control_plane": args.control_plane,
    }
    if args.no_ros:
        overrides["ros"] = False
    out = Path(args.out) if args.out else repo_root() / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")
    from fleetloop_cloud.demo.report_files import print_headline

    if args.seeds is None:
        config = load_demo_config(args.config, quick=args.quick, overrides=overrides)
        report = Demo(
            config, out, models=Path(args.models) if args.models else None, store_uri=args.store, quick=args.quick
        ).run()
        print_headline(report, out)
        return 0
    from fleetloop_cloud.demo import seeds

    chosen = _seeds(args)
    reports = {}
    for seed in chosen:
        config = load_demo_config(args.config, quick=args.quick, overrides={**overrides, "seed": seed})
        run_out = out / f"seed-{seed}"
        reports[seed] = Demo(config, run_out, models=Path(args.models) if args.models else None, quick=args.quick).run()
        print_headline(reports[seed], run_out)
    print(seeds.write(out, seeds.aggregate(reports), seeds.pooled_audit(reports)))
    print(f"figures over seeds {args.seeds}: {out / 'seeds.md'}")
    return 0


def _seeds(args: argparse.Namespace) -> list[int]:
    """Return the seeds of ``--seeds`` (SystemExit naming what is wrong, or an option that names one run)."""
    from fleetloop_cloud.demo import seeds

    if args.seed is not None or args.store is not None:
        raise SystemExit("fleetloop demo --seeds: --seed and --store name one run; leave them out")
    try:
        return seeds.parse_seeds(args.seeds)
    except ValueError as exc:
        raise SystemExit(f"fleetloop demo: {exc}") from None


def _detection(args: argparse.Namespace) -> int:
    """``fleetloop demo --task detection``: the detection demo (fleetloop_cloud.demo.detection)."""
    from fleetloop_cloud.demo.config import load_demo_config
    from fleetloop_cloud.demo.detection import run_detection_demo

    unsupported = [
        name for name, value in (("--control-plane", args.control_plane), ("--store", args.store)) if value is not None
    ]
    if unsupported:
        raise SystemExit(
            f"fleetloop demo --task detection: {', '.join(unsupported)} not supported "
            f"(the detection demo runs its robots in-process with a local store)"
        )
    overrides = {"robots": args.robots, "rounds": args.rounds, "frames_per_robot": args.frames, "seed": args.seed}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    # the robots' overrides without --quick's: the detection robots keep the full watch window
    robot = load_demo_config(args.config).robot
    out = Path(args.out) if args.out else repo_root() / "runs" / "detection-demo"
    models = Path(args.models) if args.models else None
    os.environ.setdefault("FLEETLOOP_TRAIN_THREADS", "1")

    def run(seed_overrides: dict, run_out: Path) -> dict:
        detection = {**overrides, **seed_overrides}
        settings = load_demo_config(args.config, quick=args.quick, overrides={"detection": detection}).detection
        report = run_detection_demo(run_out, settings, models, robot=robot)
        print((run_out / "report.md").read_text())
        print(f"report: {run_out / 'report.json'} ({report['seconds']:.0f} s)")
        return report

    if args.seeds is None:
        run({}, out)
        return 0
    from fleetloop_cloud.demo import seeds

    chosen = _seeds(args)
    reports = {seed: run({"seed": seed}, out / f"seed-{seed}") for seed in chosen}
    print(seeds.write(out, seeds.aggregate(reports, seeds.DETECTION_FIGURES)))
    print(f"figures over seeds {args.seeds}: {out / 'seeds.md'}")
    return 0
