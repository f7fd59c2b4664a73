"""What every task's trainer shares in a training job: the hyperparameters, the job as a trainer
sees it, and the pieces each tier's training repeats (tier list, batch size, warm start, report).

The job's contract (the SageMaker tree, the entry point) is ``fleetloop_cloud.train``; each task's
trainer (``classifier_training``, ``box_train``) gets a :class:`TrainingRun` and returns its report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, ValidationError, field_validator

from fleetloop_core.config import ConfigModel
from fleetloop_core.errors import ConfigError, FleetLoopError
from fleetloop_core.contracts.manifest import Manifest

from fleetloop_cloud.sagemaker_job import Cluster

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

    def tier_list(self) -> list[str]:
        """Return the tiers this job trains (``tiers``, comma-separated)."""
        return [t.strip() for t in self.tiers.split(",") if t.strip()]

    def epochs(self, warm: bool, fresh: int) -> int:
        """Return the epochs of a tier: ``warm_start_epochs`` when warm-starting, else ``fresh``."""
        return self.warm_start_epochs if warm else fresh

    def batch_for(self, samples: int) -> int:
        """Return the batch size for ``samples`` frames (one-cycle needs a few steps: tiny sets, smaller batches)."""
        return max(2, min(self.batch_size, samples // 8 or 2))


def parse_hyperparameters(data: dict, source: str) -> Hyperparameters:
    """Return validated hyperparameters; ConfigError naming the source and the key."""
    try:
        return Hyperparameters.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


@dataclass(frozen=True)
class TrainingRun:
    """One training job as a task's trainer sees it."""

    channels: dict[str, Optional[Path]]  # channel name -> directory (None: not given)
    models_dir: Path  # the production packages (``models`` channel), one directory per tier
    model_dir: Path  # where the new packages go
    hp: Hyperparameters
    cluster: Cluster
    progress: bool

    @property
    def tiers(self) -> list[str]:
        """Return the tiers to train."""
        return self.hp.tier_list()


def tier_info(hp: Hyperparameters, fit: Any, samples: int, warm: bool, **extra: Any) -> dict:
    """Return a tier's training record (package manifest and report): the fit's figures and ``extra``."""
    return {
        "round_version": hp.version,
        **extra,
        "samples": int(samples),
        "warm_start": warm,
        "epochs": fit.epochs,
        "seconds": round(fit.seconds, 2),
        "final_loss": round(fit.final_loss, 4),
        "device": fit.device,
    }


def load_weights(model: Any, manifest: Manifest, directory: Path) -> bool:
    """Load the package's ``weights.pt`` into ``model`` when it ships one; return whether it did (warm start)."""
    if not any(f.path == WEIGHTS for f in manifest.files):
        return False
    import torch

    model.load_state_dict(torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
    return True
