"""The classifier trainer of a training job (``fleetloop_cloud.train`` runs it when the ``models``
channel holds classifiers).

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

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fleetloop_core.contracts.manifest import Manifest, file_entry, load_manifest, write_manifest

from fleetloop_cloud.channels import ChannelData, ChannelError, read_channel
from fleetloop_cloud.sagemaker_job import Cluster
from fleetloop_cloud.training_job import WEIGHTS, TrainingError, TrainingRun, load_weights, tier_info

log = logging.getLogger("fleetloop_cloud.train")


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
    from fleetloop_models import zoo
    from fleetloop_models.trainers import classification as training

    directory = models_dir / tier
    manifest = load_manifest(directory)
    if not manifest.architecture:
        raise TrainingError(f"{directory}: manifest names no architecture; cannot rebuild {tier}")
    net = zoo.build(manifest.architecture, num_classes=len(manifest.labels))
    model = training.Deployable(net, mean=manifest.input.mean, std=manifest.input.std)
    return manifest, model, load_weights(model, manifest, directory)


def write_package(
    model, base: Manifest, directory: Path, version: str, training_info: dict, name: str | None = None
) -> Manifest:
    """Export ``model`` as a package (model.onnx, weights.pt, manifest.json) in ``directory``."""
    import torch

    from fleetloop_models import zoo
    from fleetloop_models.trainers import classification as training

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


class _Channels:
    """The job's classifier channels (train, replay, unlabeled, calibration)."""

    def __init__(self, run: TrainingRun):
        channels = run.channels
        self.train = read_channel("train", channels.get("train"), required=True)
        self.replay = read_channel("replay", channels.get("replay"), required=False)
        self.unlabeled = read_channel("unlabeled", channels.get("unlabeled"), required=False)
        self.calibration = read_channel("calibration", channels.get("calibration"), required=False)

    def check(self, classes: int) -> None:
        """Raise ChannelError naming the channel and frame of a label outside 0..classes-1."""
        _check_labels("train", self.train, classes, allow_unlabeled=False)
        _check_labels("replay", self.replay, classes, allow_unlabeled=False)
        _check_labels("unlabeled", self.unlabeled, classes, allow_unlabeled=True)

    def counts(self) -> dict[str, int]:
        """Return the frames per channel (the report's ``channels``)."""
        return {
            "train": len(self.train),
            "replay": len(self.replay),
            "unlabeled": len(self.unlabeled),
            "calibration": len(self.calibration),
        }

    def with_replay(self, data: ChannelData, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (frames resized to ``size``, labels) of ``data`` followed by the replay channel."""
        images, labels = data.resized(size), data.labels
        if len(self.replay):
            images = np.concatenate([images, self.replay.resized(size)])
            labels = np.concatenate([labels, self.replay.labels])
        return images, labels


def _fit(run: TrainingRun, tier: str, model, images, labels, soft, epochs: int, warm: bool):
    """Fit one tier (this host's shard when there are several) and return the fit report."""
    from fleetloop_models.trainers import classification as training

    hp, cluster = run.hp, run.cluster
    if cluster.world_size > 1:
        index = _shard(len(images), cluster, hp.seed)
        images, labels = images[index], labels[index]
        soft = soft[index] if soft is not None else None
    config = training.FitConfig(
        epochs=epochs,
        batch_size=hp.batch_for(len(images)),
        lr=hp.finetune_lr if warm else hp.lr,
        seed=hp.seed,
        threads=hp.threads,
        distil_temperature=hp.distil_temperature,
    )
    return training.fit(
        _distributed_view(model, cluster),
        images,
        labels,
        soft_targets=soft,
        config=config,
        desc=f"{tier} {hp.version}",
        progress=run.progress and cluster.leader,
    )


def train_classifiers(run: TrainingRun) -> dict:
    """Train T2, distil T3/T4, export packages (+ INT8) into the model dir; return the report."""
    hp, cluster = run.hp, run.cluster
    data = _Channels(run)
    if cluster.world_size > 1:
        _init_distributed(cluster, hp.master_port)
    manifest2, teacher, warm = _load_base(run.models_dir, "T2")
    data.check(len(manifest2.labels))
    report: dict = {"version": hp.version, "tiers": {}, "hosts": cluster.world_size, "channels": data.counts()}
    # 1. T2 on every accepted label (+ lab replay)
    if "T2" in run.tiers:
        x2, y2 = data.with_replay(data.train, manifest2.input.height)
        fit = _fit(run, "T2", teacher, x2, y2, None, hp.epochs(warm, hp.teacher_epochs), warm)
        info = tier_info(
            hp,
            fit,
            len(x2),
            warm,
            field_labels=len(data.train),
            replay_labels=len(data.replay),
            hosts=cluster.world_size,
        )
        report["tiers"]["T2"] = info
        if cluster.leader:
            write_package(teacher, manifest2, run.model_dir / "T2", hp.version, info)
    # 2. distil T3 and T4 from the new T2 on every uploaded frame (soft targets) + labels where known
    for tier in (t for t in ("T3", "T4") if t in run.tiers):
        report["tiers"].update(_distil(run, tier, data, teacher, manifest2))
    if cluster.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return report


def _distil(run: TrainingRun, tier: str, data: _Channels, teacher, manifest2: Manifest) -> dict[str, dict]:
    """Distil one student tier from the new teacher, write its package (+ INT8); return its report entries."""
    from fleetloop_models.trainers import classification as training

    hp, cluster = run.hp, run.cluster
    distil = (
        data.unlabeled
        if len(data.unlabeled)
        else ChannelData(data.train.images, data.train.labels, data.train.frame_ids)
    )
    manifest, student, warm = _load_base(run.models_dir, tier)
    size, size2 = manifest.input.height, manifest2.input.height
    images, labels = data.with_replay(distil, size)
    teacher_images = images if size == size2 else data.with_replay(distil, size2)[0]
    soft, _ = training.predict(teacher.eval(), teacher_images)
    fit = _fit(run, tier, student, images, labels, soft, hp.epochs(warm, hp.distil_epochs), warm)
    info = tier_info(
        hp,
        fit,
        len(images),
        warm,
        distilled_from=f"{manifest2.name} {hp.version}",
        labeled=int((labels >= 0).sum()),
        distil_temperature=hp.distil_temperature,
        hosts=cluster.world_size,
    )
    entries = {tier: info}
    if not cluster.leader:
        return entries
    write_package(student, manifest, run.model_dir / tier, hp.version, info)
    # 3. INT8 variant, calibrated on field frames
    if hp.int8:
        source = data.calibration if len(data.calibration) else distil
        frames = source.resized(size)[: hp.int8_calibration_frames]
        _, comparison = write_int8_package(
            run.model_dir / tier, run.model_dir / f"{tier}-int8", frames, hp.int8_per_channel
        )
        entries[f"{tier}-int8"] = comparison
    return entries
