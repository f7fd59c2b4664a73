"""Training on the SageMaker training-container contract: one entry point, SageMaker or local.

SageMaker runs ``train`` in the image of docker/training.Dockerfile and lays out the job under
``/opt/ml``: ``input/config/hyperparameters.json`` (every value a string),
``input/config/inputdataconfig.json`` (the channels), ``input/config/resourceconfig.json`` (the
hosts and this host), the channels under ``input/data/<channel>/``; it collects ``model/`` as
model.tar.gz after exit and reads ``output/failure`` when the job fails. That tree is read by
``sagemaker_job.read_job`` (``SM_*`` variables only override where set). The same code runs as a
local process (the embedded default) in the same tree laid out elsewhere:
``python -m fleetloop_cloud.train --ml-root DIR``.

What it does:
1. trains T2 (domain teacher) on every accepted label (``train`` channel; plus the ``replay``
   channel of lab labels, so classes rare in the field are not forgotten), warm-starting from the
   production package's weights when it ships them;
2. distils T3 and T4 from the new T2 on every uploaded frame, labeled or not (``unlabeled``
   channel: soft targets, plus the hard label where one exists);
3. exports each tier as a model package (ONNX + manifest + ``weights.pt``) into the model dir;
4. writes INT8 variants of T3 and T4 (static, QDQ, per-channel, calibrated on the
   ``calibration`` channel of field frames) and reports their speed and agreement honestly.

With several hosts, torch DistributedDataParallel (gloo on CPU, NCCL on GPU) trains each tier
on one shard of the data per host; host 0 writes the packages.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from pydantic import Field, ValidationError, field_validator

from fleetloop_core.config import ConfigModel
from fleetloop_core.errors import ConfigError, FleetLoopError
from fleetloop_core.manifest import Manifest, file_entry, load_manifest, write_manifest

from fleetloop_cloud.channels import ChannelError, ChannelData, read_channel
from fleetloop_cloud.sagemaker_job import Cluster, default_root, read_job

log = logging.getLogger("fleetloop_cloud.train")

CHANNELS = ("train", "replay", "unlabeled", "calibration", "models")
REPORT = "training_report.json"
WEIGHTS = "weights.pt"


class TrainingError(FleetLoopError):
    """Training cannot run or failed (message names the channel, tier or file)."""


class Hyperparameters(ConfigModel):
    """The job's hyperparameters (SageMaker passes every value as a string; pydantic parses them)."""

    version: str = Field(min_length=1)  # version string of the new packages
    teacher_epochs: int = Field(default=3, ge=1)
    distil_epochs: int = Field(default=3, ge=1)
    warm_start_epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=4e-3, gt=0)
    finetune_lr: float = Field(default=5e-4, gt=0)  # peak rate when warm-starting from production weights
    distil_temperature: float = Field(default=2.0, gt=0)
    seed: int = 0
    int8: bool = True
    int8_per_channel: bool = True
    int8_calibration_frames: int = Field(default=64, ge=1)
    threads: Optional[int] = Field(default=None, ge=1)
    master_port: int = Field(default=29500, ge=1, le=65535)
    tiers: str = "T2,T3,T4"

    @field_validator("threads", mode="before")
    @classmethod
    def _none(cls, value):
        return None if value in ("", "None", "null") else value


def parse_hyperparameters(data: dict, source: str) -> Hyperparameters:
    """Return validated hyperparameters; ConfigError naming the source and the key."""
    try:
        return Hyperparameters.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


# ------------------------------------------------------------------------------ distributed
def _init_distributed(cluster: Cluster, port: int) -> None:
    """Join the process group: every host connects to the first host (resourceconfig.json's order)."""
    import torch
    import torch.distributed as dist

    if cluster.network_interface:  # SageMaker names the interface the hosts reach each other on
        os.environ.setdefault("GLOO_SOCKET_IFNAME", cluster.network_interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", cluster.network_interface)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://{cluster.master}:{port}", rank=cluster.rank, world_size=cluster.world_size
    )
    log.info(
        "distributed: rank %d of %d on %s (%s, master %s:%d)",
        cluster.rank,
        cluster.world_size,
        cluster.current,
        backend,
        cluster.master,
        port,
    )


def _shard(n: int, cluster: Cluster, seed: int) -> np.ndarray:
    """Return this host's indices: an equal-size shard of a seeded permutation (wrapped to equal length)."""
    order = np.random.default_rng(seed).permutation(n)
    per_host = -(-n // cluster.world_size)
    padded = np.resize(order, per_host * cluster.world_size)
    return padded[cluster.rank :: cluster.world_size]


def _distributed_view(model, cluster: Cluster):
    """Return ``model`` as fit() sees it: with several hosts, logits go through DistributedDataParallel."""
    if cluster.world_size == 1:
        return model
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    class _Logits(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixels):
            return self.inner.logits(pixels)

    class _Distributed(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            inner.to(device)
            self.ddp = DistributedDataParallel(_Logits(inner))

        def logits(self, pixels):
            return self.ddp(pixels)

    return _Distributed(model)


# ------------------------------------------------------------------------------ packages
def _load_base(models_dir: Path, tier: str):
    """Return (manifest, Deployable, warm) for a tier: production weights when shipped, else fresh."""
    import torch

    from fleetloop_core import zoo
    from fleetloop_core.trainers import classification as training

    directory = models_dir / tier
    manifest = load_manifest(directory)
    if not manifest.architecture:
        raise TrainingError(f"{directory}: manifest names no architecture; cannot rebuild {tier}")
    net = zoo.build(manifest.architecture, num_classes=len(manifest.labels))
    model = training.Deployable(net, mean=manifest.input.mean, std=manifest.input.std)
    weights = next((f for f in manifest.files if f.path == WEIGHTS), None)
    warm = False
    if weights is not None:
        state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        warm = True
    return manifest, model, warm


def write_package(
    model, base: Manifest, directory: Path, version: str, training_info: dict, name: str | None = None
) -> Manifest:
    """Export ``model`` as a package (model.onnx, weights.pt, manifest.json) in ``directory``."""
    import torch

    from fleetloop_core import zoo
    from fleetloop_core.trainers import classification as training

    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = training.export_onnx(
        model, directory / "model.onnx", base.input.height, base.input.width, base.input.channels
    )
    torch.save(model.state_dict(), directory / WEIGHTS)
    manifest = base.model_copy(
        update={
            "name": name or base.name,
            "version": version,
            "signature": None,
            "metrics": {},
            "files": [file_entry(onnx_path, directory), file_entry(directory / WEIGHTS, directory, role="extra")],
            "parameters": zoo.parameter_count(model.net),
            "training": training_info,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    write_manifest(manifest, directory)
    return manifest


def write_int8_package(
    fp32_dir: Path, directory: Path, calibration: np.ndarray, per_channel: bool
) -> tuple[Manifest, dict]:
    """Write the INT8 variant of a package next to it; return (manifest, comparison)."""
    from fleetloop_cloud import quantize

    base = load_manifest(fp32_dir)
    directory.mkdir(parents=True, exist_ok=True)
    int8_path = quantize.quantize_int8(
        fp32_dir / base.model_file.path,
        directory / "model.onnx",
        calibration,
        input_name=base.input.name,
        per_channel=per_channel,
    )
    comparison = quantize.compare(
        fp32_dir / base.model_file.path, int8_path, calibration[:64], input_name=base.input.name
    )
    manifest = base.model_copy(
        update={
            "name": f"{base.name}-int8",
            "signature": None,
            "files": [file_entry(int8_path, directory)],
            "training": {
                **base.training,
                "quantization": {
                    "method": "static",
                    "format": "QDQ",
                    "per_channel": per_channel,
                    "calibration_frames": len(calibration),
                    "of": f"{base.name} {base.version}",
                },
            },
            "metrics": {"int8_vs_fp32": comparison.to_dict()},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    write_manifest(manifest, directory)
    return manifest, comparison.to_dict()


# ------------------------------------------------------------------------------ the job
def _check_labels(name: str, data: ChannelData, classes: int, allow_unlabeled: bool) -> None:
    low = -1 if allow_unlabeled else 0
    bad = np.flatnonzero((data.labels < low) | (data.labels >= classes))
    if len(bad):
        raise ChannelError(
            f"channel '{name}': frame {data.frame_ids[bad[0]]} has label {int(data.labels[bad[0]])}, "
            f"not a known class (0..{classes - 1})"
        )


def run_training(
    channels: dict[str, Optional[Path]],
    model_dir: Path,
    hp: Hyperparameters,
    cluster: Cluster | None = None,
    progress: bool = True,
) -> dict:
    """Train T2, distil T3/T4, export packages (+ INT8) into ``model_dir``; return the report."""
    from fleetloop_core.trainers import classification as training

    cluster = cluster or Cluster(["algo-1"], "algo-1")
    started = time.perf_counter()
    tiers = [t.strip() for t in hp.tiers.split(",") if t.strip()]
    if channels.get("models") is None:
        raise ChannelError(
            "channel 'models' is missing: the job needs the production packages "
            "(input/data/models, listed in inputdataconfig.json)"
        )
    if not Path(channels["models"]).is_dir():
        raise ChannelError(f"channel 'models': directory {channels['models']} does not exist")
    models_dir = Path(channels["models"])
    from fleetloop_cloud.box_train import is_detection, run_detection_training

    if is_detection(models_dir):  # detectors: same contract, box channels (box_train.py)
        return run_detection_training(channels, model_dir, hp, cluster, progress)
    train = read_channel("train", channels.get("train"), required=True)
    replay = read_channel("replay", channels.get("replay"), required=False)
    unlabeled = read_channel("unlabeled", channels.get("unlabeled"), required=False)
    calibration = read_channel("calibration", channels.get("calibration"), required=False)
    if cluster.world_size > 1:
        _init_distributed(cluster, hp.master_port)
    report: dict = {
        "version": hp.version,
        "tiers": {},
        "hosts": cluster.world_size,
        "channels": {
            "train": len(train),
            "replay": len(replay),
            "unlabeled": len(unlabeled),
            "calibration": len(calibration),
        },
    }
    config = training.FitConfig(
        batch_size=hp.batch_size, lr=hp.lr, seed=hp.seed, threads=hp.threads, distil_temperature=hp.distil_temperature
    )

    def fit(
        tier: str,
        model,
        images: np.ndarray,
        labels: np.ndarray,
        soft: np.ndarray | None,
        epochs: int,
        warm: bool = False,
    ):
        if cluster.world_size > 1:
            index = _shard(len(images), cluster, hp.seed)
            images, labels = images[index], labels[index]
            soft = soft[index] if soft is not None else None
        # one-cycle needs a few steps: shrink the batch for tiny sets
        batch = max(2, min(hp.batch_size, len(images) // 8 or 2))
        cfg = training.FitConfig(
            **{**config.__dict__, "epochs": epochs, "batch_size": batch, "lr": hp.finetune_lr if warm else hp.lr}
        )
        return training.fit(
            _distributed_view(model, cluster),
            images,
            labels,
            soft_targets=soft,
            config=cfg,
            desc=f"{tier} {hp.version}",
            progress=progress and cluster.leader,
        )

    # 1. T2 on every accepted label (+ lab replay)
    manifest2, teacher, warm = _load_base(models_dir, "T2")
    classes = len(manifest2.labels)
    _check_labels("train", train, classes, allow_unlabeled=False)
    _check_labels("replay", replay, classes, allow_unlabeled=False)
    _check_labels("unlabeled", unlabeled, classes, allow_unlabeled=True)
    size2 = manifest2.input.height
    x2 = np.concatenate([train.resized(size2)] + ([replay.resized(size2)] if len(replay) else []))
    y2 = np.concatenate([train.labels] + ([replay.labels] if len(replay) else []))
    if "T2" in tiers:
        fit_report = fit("T2", teacher, x2, y2, None, hp.warm_start_epochs if warm else hp.teacher_epochs, warm)
        info = {
            "round_version": hp.version,
            "samples": int(len(x2)),
            "field_labels": len(train),
            "replay_labels": len(replay),
            "warm_start": warm,
            "epochs": fit_report.epochs,
            "seconds": round(fit_report.seconds, 2),
            "final_loss": round(fit_report.final_loss, 4),
            "device": fit_report.device,
            "hosts": cluster.world_size,
        }
        report["tiers"]["T2"] = info
        if cluster.leader:
            write_package(teacher, manifest2, model_dir / "T2", hp.version, info)

    # 2. distil T3 and T4 from the new T2 on every uploaded frame (soft targets) + labels where known
    distil = unlabeled if len(unlabeled) else ChannelData(train.images, train.labels, train.frame_ids)
    for tier in (t for t in ("T3", "T4") if t in tiers):
        manifest, student, warm = _load_base(models_dir, tier)
        size = manifest.input.height
        images = distil.resized(size)
        labels = distil.labels
        if len(replay):
            images = np.concatenate([images, replay.resized(size)])
            labels = np.concatenate([labels, replay.labels])
        teacher_images = (
            images
            if size == size2
            else np.concatenate([distil.resized(size2)] + ([replay.resized(size2)] if len(replay) else []))
        )
        soft, _ = training.predict(teacher.eval(), teacher_images)
        fit_report = fit(tier, student, images, labels, soft, hp.warm_start_epochs if warm else hp.distil_epochs, warm)
        info = {
            "round_version": hp.version,
            "distilled_from": f"{manifest2.name} {hp.version}",
            "samples": int(len(images)),
            "labeled": int((labels >= 0).sum()),
            "warm_start": warm,
            "epochs": fit_report.epochs,
            "seconds": round(fit_report.seconds, 2),
            "final_loss": round(fit_report.final_loss, 4),
            "device": fit_report.device,
            "distil_temperature": hp.distil_temperature,
            "hosts": cluster.world_size,
        }
        report["tiers"][tier] = info
        if not cluster.leader:
            continue
        write_package(student, manifest, model_dir / tier, hp.version, info)
        # 3. INT8 variant, calibrated on field frames
        if hp.int8:
            source = calibration if len(calibration) else distil
            frames = source.resized(size)[: hp.int8_calibration_frames]
            _, comparison = write_int8_package(
                model_dir / tier, model_dir / f"{tier}-int8", frames, hp.int8_per_channel
            )
            report["tiers"][f"{tier}-int8"] = comparison
    report["seconds"] = round(time.perf_counter() - started, 2)
    if cluster.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
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
