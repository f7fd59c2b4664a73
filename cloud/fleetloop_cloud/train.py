"""Training on the SageMaker training-container contract: one entry point, SageMaker or local.

SageMaker runs ``train`` in the image of docker/training.Dockerfile and lays out the job under
``/opt/ml``: ``input/config/hyperparameters.json`` (every value a string),
``input/config/inputdataconfig.json`` (the channels), ``input/config/resourceconfig.json`` (the
hosts and this host), the channels under ``input/data/<channel>/``; it collects ``model/`` as
model.tar.gz after exit and reads ``output/failure`` when the job fails. That tree is read by
``sagemaker_job.read_job`` (``SM_*`` variables only override where set). The same code runs as a
local process (the embedded default) in the same tree laid out elsewhere:
``python -m fleetloop_cloud.train --ml-root DIR``.

The job runs the trainer of the task its ``models`` channel's T2 package declares (manifest
``task``): ``classifier_training`` (T2, distilled T3/T4, INT8 variants, several hosts) or
``box_train`` (detectors, one host); what they share is ``training_job``. Host 0 writes the
report ``training_report.json`` beside the packages.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.contracts.manifest import load_manifest

from fleetloop_cloud.box_train import train_detectors
from fleetloop_cloud.channels import ChannelError
from fleetloop_cloud.classifier_training import train_classifiers
from fleetloop_cloud.sagemaker_job import Cluster, default_root, read_job
from fleetloop_cloud.training_job import REPORT, Hyperparameters, TrainingRun, parse_hyperparameters

log = logging.getLogger("fleetloop_cloud.train")

CHANNELS = ("train", "replay", "unlabeled", "calibration", "models")

TRAINERS: dict[str, Callable[[TrainingRun], dict]] = {
    "classification": train_classifiers,
    "detection": train_detectors,
}


def _task_of(models_dir: Path) -> str:
    """Return the task of the ``models`` channel's T2 package (classification when it has no manifest yet)."""
    path = models_dir / "T2" / "manifest.json"
    return load_manifest(path).task if path.is_file() else "classification"


def run_training(
    channels: dict[str, Optional[Path]],
    model_dir: Path,
    hp: Hyperparameters,
    cluster: Cluster | None = None,
    progress: bool = True,
) -> dict:
    """Train the tiers of the task the production packages declare into ``model_dir``; return the report."""
    cluster = cluster or Cluster(["algo-1"], "algo-1")
    started = time.perf_counter()
    if channels.get("models") is None:
        raise ChannelError(
            "channel 'models' is missing: the job needs the production packages "
            "(input/data/models, listed in inputdataconfig.json)"
        )
    models_dir = Path(channels["models"])  # type: ignore[arg-type]
    if not models_dir.is_dir():
        raise ChannelError(f"channel 'models': directory {channels['models']} does not exist")
    trainer = TRAINERS[_task_of(models_dir)]  # the manifest schema admits only tasks with a trainer
    report = trainer(TrainingRun(channels, models_dir, model_dir, hp, cluster, progress))
    report["seconds"] = round(time.perf_counter() - started, 2)
    if cluster.leader:
        (model_dir / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


# ------------------------------------------------------------------------------ entry point
def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the entry point (everything defaults to the SageMaker job tree)."""
    parser = argparse.ArgumentParser(
        prog="fleetloop-cloud train --sagemaker",
        description="FleetLoop training job (SageMaker training-container contract)",
    )
    parser.add_argument(
        "--ml-root",
        type=Path,
        default=None,
        help="the job tree SageMaker lays out (default $FLEETLOOP_ML_ROOT or /opt/ml)",
    )
    parser.add_argument("--model-dir", type=Path, help="override /opt/ml/model")
    parser.add_argument("--output-dir", type=Path, help="override /opt/ml/output")
    for channel in CHANNELS:
        parser.add_argument(f"--{channel}", type=Path, help=f"override /opt/ml/input/data/{channel}")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main_contract(argv: Sequence[str] | None = None) -> int:
    """Run one training job; on failure write <output-dir>/failure (the SageMaker contract) and return 1."""
    args = build_parser().parse_args(argv)
    root = args.ml_root or default_root()
    output_dir = args.output_dir or Path(os.environ.get("SM_OUTPUT_DIR") or root / "output")
    try:
        job = read_job(root, known_channels=CHANNELS)
        output_dir = args.output_dir or job.output_dir
        hp = parse_hyperparameters(job.hyperparameters, str(job.hyperparameters_path))
        channels = {c: getattr(args, c) or job.channel_path(c) for c in CHANNELS}
        model_dir = args.model_dir or job.model_dir
        model_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "job tree %s: host %s (%d of %d), channels %s%s",
            root,
            job.cluster.current,
            job.cluster.rank + 1,
            job.cluster.world_size,
            ", ".join(sorted(job.channels)) or "none",
            f"; overridden by {', '.join(job.overrides)}" if job.overrides else "",
        )
        run_training(channels, model_dir, hp, job.cluster, progress=not args.no_progress)
        return 0
    except FleetLoopError as exc:
        message = str(exc)
    except Exception:  # the job must always leave a reason behind
        message = traceback.format_exc()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "failure").write_text(message[:1024])
    print(f"training failed: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main_contract())
