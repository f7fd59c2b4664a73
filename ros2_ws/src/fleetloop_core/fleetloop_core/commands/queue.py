"""``fleetloop queue stats|drain|purge``: look at, empty or clear a robot's upload queue."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("fleetloop.queue")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("queue", help="inspect, drain or purge the on-robot upload queue")
    actions = parser.add_subparsers(dest="queue_command", metavar="ACTION")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", default=None, help="queue config (default: config/upload_queue.yaml)")
        sub.add_argument("--queue", default=None, help="queue directory (overrides the config)")

    stats = actions.add_parser("stats", help="records, bytes, in flight, lifetime counters")
    common(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=_stats)

    drain = actions.add_parser("drain", help="upload queued records to the store")
    common(drain)
    drain.add_argument("--store", default=None, help="store URI (overrides the config)")
    drain.add_argument("--max", type=int, default=None, help="upload at most this many records")
    drain.add_argument("--deadline", type=float, default=None, help="stop after this many seconds")
    drain.add_argument("--forever", action="store_true", help="keep draining as records arrive")
    drain.set_defaults(handler=_drain)

    purge = actions.add_parser("purge", help="delete queued records without uploading them")
    common(purge)
    purge.add_argument("--corrupt-only", action="store_true", help="only records set aside as corrupt")
    purge.add_argument("--yes", action="store_true", help="do it (without it, only say what would go)")
    purge.set_defaults(handler=_purge)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _config(args: argparse.Namespace):
    from pathlib import Path

    from fleetloop_core.config import default_config_path, validate
    from fleetloop_core.upload_queue import QueueConfig, load_queue_config

    path = args.config or default_config_path("upload_queue.yaml")
    config = load_queue_config(path) if (args.config or Path(path).is_file()) else QueueConfig()
    overrides = {}
    if args.queue:
        overrides["directory"] = args.queue
    if getattr(args, "store", None):
        overrides["store"] = args.store
    return validate(QueueConfig, {**config.model_dump(), **overrides}, "command line") if overrides else config


def _open(args: argparse.Namespace):
    from pathlib import Path

    from fleetloop_core.errors import FleetLoopError
    from fleetloop_core.upload_queue import UploadQueue

    config = _config(args)
    if not (Path(config.directory) / "queue.db").is_file():
        raise FleetLoopError(f"{config.directory}: no upload queue there (queue.db missing)")
    return config, UploadQueue.from_config(config)


def _stats(args: argparse.Namespace) -> int:
    _, queue = _open(args)
    with queue:
        stats = queue.stats()
    if args.json:
        print(json.dumps(stats.as_dict(), indent=2, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"upload queue {stats.directory}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    cap_pct = 100.0 * stats.bytes / stats.disk_cap_bytes
    for name, value in [
        ("records queued", f"{stats.records}"),
        ("bytes queued", f"{stats.bytes:,} ({cap_pct:.1f} % of cap {stats.disk_cap_bytes:,})"),
        ("in flight", f"{stats.in_flight}"),
        ("frame uploaded, sidecar pending", f"{stats.frame_uploaded}"),
        ("set aside as corrupt", f"{stats.corrupt}"),
        ("uploaded (lifetime)", f"{stats.uploaded_total}"),
        ("evicted (lifetime)", f"{stats.evicted_total}"),
        ("rejected (lifetime)", f"{stats.rejected_total}"),
        ("records per robot", ", ".join(f"{k}: {v}" for k, v in sorted(stats.by_robot.items())) or "-"),
        ("last error", stats.last_error or "-"),
    ]:
        table.add_row(name, value)
    Console().print(table)
    return 0


def _drain(args: argparse.Namespace) -> int:
    from fleetloop_core.store import open_store
    from fleetloop_core.uploader import Uploader

    config, queue = _open(args)
    with queue:
        uploader = Uploader(queue, open_store(config.store), config)
        if uploader.recovered["released"] or uploader.recovered["orphans_removed"]:
            log.info("recovered after a crash: %s", uploader.recovered)
        try:
            report = uploader.drain(max_records=args.max, deadline_s=args.deadline, forever=args.forever)
        except KeyboardInterrupt:
            report = uploader.last_report
        left = len(queue)
    if report is None:
        return 130
    print(
        json.dumps(
            {
                "uploaded": report.uploaded,
                "uploaded_bytes": report.uploaded_bytes,
                "failures": report.failures,
                "corrupt": report.corrupt,
                "left": left,
                "seconds": round(report.seconds, 3),
                "error": report.error,
            }
        )
    )
    if report.error:
        log.error("%s (%d records stay queued)", report.error, left)
        return 1
    return 0


def _purge(args: argparse.Namespace) -> int:
    _, queue = _open(args)
    with queue:
        if not args.yes:
            stats = queue.stats()
            count = stats.corrupt if args.corrupt_only else stats.records - stats.in_flight
            print(f"would delete {count} record(s) from {stats.directory}; add --yes to do it")
            return 0
        removed = queue.purge(corrupt_only=args.corrupt_only)
    print(f"deleted {removed} record(s)")
    return 0
