"""``fleetloop models build``: train and export the reference tiers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="build, sign and verify model packages")
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION")
    build = actions.add_parser("build", help="train the four reference tiers and export ONNX + manifests")
    build.add_argument("--out", default="models", help="output directory (default: models)")
    build.add_argument("--profile", default="default", help="profile in config/models.yaml (default, test)")
    build.add_argument("--config", default=None, help="models config file (default: config/models.yaml)")
    build.add_argument("--tiers", default="T1,T2,T3,T4", help="comma-separated tiers to build")
    build.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.set_defaults(handler=_build)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)


def _build(args: argparse.Namespace) -> int:
    from fleetloop_core.manifest import load_manifest
    from fleetloop_core.modelbuild import build_reference_models

    tiers = tuple(t.strip().upper() for t in args.tiers.split(",") if t.strip())
    dirs = build_reference_models(args.out, args.profile, args.config, tiers=tiers,
                                  progress=not args.no_progress, force=args.force)
    rows = []
    for tier, directory in dirs.items():
        manifest = load_manifest(directory)
        rows.append({"tier": tier, "name": manifest.name, "version": manifest.version,
                     "parameters": manifest.parameters,
                     "train_seconds": manifest.training.get("seconds"),
                     "lab_acc": manifest.metrics.get("lab_test_accuracy"),
                     "field_acc": manifest.metrics.get("field_test_accuracy"),
                     "dir": str(Path(directory))})
    for row in rows:
        print(json.dumps(row))
    return 0
