"""Step 4, train: T2 on every accepted label, T3/T4 distilled from it (a local process or a SageMaker job).

The job's channels (train, unlabeled, the task's extra ones, lab replay, the production models)
are written here in the task's format; the job follows the SageMaker training contract.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetloop_cloud.loop.core import CloudLoop


def _frame_size(loop: "CloudLoop") -> tuple[int, int]:
    sizes = [(r["height"], r["width"]) for r in loop.pool.frames()]
    return max(set(sizes), key=sizes.count) if sizes else (128, 128)


def write_channels(loop: "CloudLoop", round_number: int, root: Path) -> tuple[dict[str, Path], list[str]]:
    """Write the job's channels under ``root``; return them and the labeled frames the job trains on."""
    rows = [r for r in loop.pool.frames() if not r["holdout"]]
    labels = loop.task.answers.labels([r["id"] for r in rows])
    labeled = [r for r in rows if r["id"] in labels]
    channels = loop.task.write_channels(root, rows, labels, round_number)
    count = loop.config.training.lab_replay_frames
    if count > 0:
        height, width = _frame_size(loop)
        replay = loop.world.lab_frames(loop.task.name, count, loop.config.training.seed, height, width)
        channels["replay"] = loop.task.write_channel(root / "replay", replay)
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    for tier in ("T2", "T3", "T4"):
        if not (models / tier).exists():
            shutil.copytree(loop.production(tier), models / tier)
    channels["models"] = models
    return channels, [r["id"] for r in labeled]


def run(loop: "CloudLoop", round_number: int) -> dict:
    """Return the training job's outcome (skipped without new labels since the last job)."""
    from fleetloop_cloud.training_backends import TrainingJob

    task = loop.task
    labels = task.answers.labels()
    fingerprint = hashlib.sha256(
        json.dumps(sorted((k, task.fingerprint_value(v)) for k, v in labels.items())).encode()
    ).hexdigest()
    if not labels:
        return {"_status": "skipped", "reason": f"no accepted {task.label_noun} yet: nothing to train on"}
    if fingerprint == loop.pool.get(task.pool_key("trained_on")):
        return {"_status": "skipped", "reason": f"no new {task.label_noun} since the last training job"}
    version = f"r{round_number}-{fingerprint[:8]}"
    root = loop.work / "rounds" / f"{round_number:04d}"
    channels, used = write_channels(loop, round_number, root / "channels")
    t = loop.config.training
    hyperparameters = {
        "version": version,
        "teacher_epochs": t.teacher_epochs,
        "distil_epochs": t.distil_epochs,
        "warm_start_epochs": t.warm_start_epochs,
        "batch_size": t.batch_size,
        "lr": t.lr,
        "seed": t.seed,
        "threads": t.threads,
        **task.hyperparameters(),
    }
    job = TrainingJob(
        name=f"{task.job_prefix}{version}",
        channels=channels,
        hyperparameters={
            k: json.dumps(v) if isinstance(v, bool) or v is None else str(v) for k, v in hyperparameters.items()
        },
        work_dir=root / "jobs",
    )
    result = loop.training_backend.run(job)
    loop.pool.record_usage(used, version)
    loop.pool.put(task.pool_key("trained_on"), fingerprint)
    return {
        "version": version,
        "model_dir": str(result.model_dir),
        "report": result.report,
        "backend": loop.training_backend.name,
        "train_frames": len(used),
        "job_cpu_seconds": round(result.cpu_seconds, 3),
        "gpu_seconds": round(result.gpu_seconds, 3),
        "instance_seconds": round(result.instance_seconds, 3),
        "details": result.details,
    }
