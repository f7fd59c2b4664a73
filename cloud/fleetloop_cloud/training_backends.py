"""Where the training entry point runs: a local process (embedded default) or a SageMaker training job.

Both run the same code (``fleetloop_cloud.train``) on the same channels and hand back the same
model directory; only the transport differs, as with httpx's transports.

* ``local``: ``python -m fleetloop_cloud.train --ml-root DIR`` as a child process, in a job tree
  laid out exactly as SageMaker lays out /opt/ml (``sagemaker_job.write_job_tree``: the three
  config files, the channels under input/data); its CPU time is measured (``RUSAGE_CHILDREN``).
* ``sagemaker``: channels uploaded to the S3 store under ``training/<job>/input/<channel>/``,
  ``create_training_job`` with the training image, ``describe_training_job`` until it ends,
  ``model.tar.gz`` downloaded and unpacked. Billable seconds x instances is the compute used.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from fleetloop_core.errors import ConfigError
from fleetloop_core.store import ObjectStore

from fleetloop_cloud.config import SageMakerTrainingConfig
from fleetloop_cloud.model_archive import extract, pack_model_dir  # noqa: F401  (pack_model_dir: what a job leaves)
from fleetloop_cloud.sagemaker_job import write_job_tree
from fleetloop_cloud.training_job import TrainingError

CONTENT_TYPES = {
    "train": "application/jsonlines",
    "replay": "application/jsonlines",
    "unlabeled": "application/jsonlines",
    "calibration": "application/jsonlines",
    "models": "application/octet-stream",
}


@dataclass
class TrainingJob:
    """One job: a name, channel directories, hyperparameters (strings) and where results go."""

    name: str
    channels: dict[str, Path]
    hyperparameters: dict[str, str]
    work_dir: Path


@dataclass
class TrainingResult:
    """Where the packages are and what the job cost."""

    model_dir: Path
    report: dict
    cpu_seconds: float = 0.0  # local: measured CPU time of the job
    gpu_seconds: float = 0.0
    instance_seconds: float = 0.0  # sagemaker: billable seconds x instance count
    details: dict = field(default_factory=dict)


class TrainingBackend(Protocol):
    """Runs a training job to completion."""

    name: str

    def run(self, job: TrainingJob) -> TrainingResult: ...


def _read_report(model_dir: Path) -> dict:
    path = model_dir / "training_report.json"
    if not path.is_file():
        raise TrainingError(f"{model_dir}: the job wrote no training_report.json")
    return json.loads(path.read_text())


class LocalProcessBackend:
    """The entry point as a local child process in a SageMaker job tree of its own."""

    name = "local"

    def __init__(self, progress: bool = False, extra_env: dict[str, str] | None = None):
        self.progress = progress
        self.extra_env = dict(extra_env or {})

    def run(self, job: TrainingJob) -> TrainingResult:
        root = job.work_dir / job.name
        model_dir, output_dir = root / "model", root / "output"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (output_dir / "failure").unlink(missing_ok=True)
        write_job_tree(root, job.hyperparameters, job.channels, content_types=CONTENT_TYPES)
        # the job reads its tree only: SM_* variables of this process must not leak into it
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SM_")}, **self.extra_env}
        command = [sys.executable, "-m", "fleetloop_cloud.train", "--ml-root", str(root)] + (
            [] if self.progress else ["--no-progress"]
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        (root / "job.log").write_text(completed.stdout)
        if completed.returncode != 0:
            failure = output_dir / "failure"
            reason = failure.read_text() if failure.is_file() else completed.stdout[-2000:]
            raise TrainingError(f"training job {job.name} failed: {reason.strip()}")
        report = _read_report(model_dir)
        gpu = (
            wall
            if any(
                t.get("device", "cpu").startswith("cuda")
                for t in report.get("tiers", {}).values()
                if isinstance(t, dict)
            )
            else 0.0
        )
        return TrainingResult(
            model_dir=model_dir,
            report=report,
            cpu_seconds=cpu,
            gpu_seconds=gpu,
            details={"wall_seconds": round(wall, 2), "log": str(root / "job.log")},
        )


class SageMakerBackend:
    """create_training_job on Amazon SageMaker (any endpoint: AWS, or moto's server in tests)."""

    name = "sagemaker"

    def __init__(
        self,
        settings: SageMakerTrainingConfig,
        store: ObjectStore,
        client=None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not store.url("x").startswith("s3://"):
            raise ConfigError(f"training.backend sagemaker needs an s3:// store for the channels (got {store.uri})")
        for key in ("role_arn", "image_uri"):
            if not getattr(settings, key):
                raise ConfigError(f"config/cloud.yaml: training.sagemaker.{key} must be set for the sagemaker backend")
        self.settings, self.store, self.sleep = settings, store, sleep
        if client is None:
            import boto3

            client = boto3.client("sagemaker", region_name=settings.region, endpoint_url=settings.endpoint_url)
        self.client = client

    def channel_prefix(self, job: str, channel: str) -> str:
        return f"training/{job}/input/{channel}"

    def output_prefix(self, job: str) -> str:
        return f"training/{job}/output"

    def upload_channels(self, job: TrainingJob) -> dict[str, str]:
        """Upload every channel directory; return channel -> S3 URI."""
        uris = {}
        for channel, directory in job.channels.items():
            prefix = self.channel_prefix(job.name, channel)
            for path in sorted(Path(directory).rglob("*")):
                if path.is_file():
                    self.store.put_file(f"{prefix}/{path.relative_to(directory).as_posix()}", path)
            uris[channel] = self.store.url(prefix)
        return uris

    def request(self, job: TrainingJob, uris: dict[str, str]) -> dict:
        """Return the create_training_job request for ``job``."""
        s = self.settings
        return {
            "TrainingJobName": job.name,
            "HyperParameters": dict(job.hyperparameters),
            "AlgorithmSpecification": {"TrainingImage": s.image_uri, "TrainingInputMode": "File"},
            "RoleArn": s.role_arn,
            "InputDataConfig": [
                {
                    "ChannelName": channel,
                    "ContentType": CONTENT_TYPES.get(channel, "application/octet-stream"),
                    "InputMode": "File",
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": uri,
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                }
                for channel, uri in uris.items()
            ],
            "OutputDataConfig": {"S3OutputPath": self.store.url(self.output_prefix(job.name))},
            "ResourceConfig": {
                "InstanceType": s.instance_type,
                "InstanceCount": s.instance_count,
                "VolumeSizeInGB": s.volume_gb,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": s.max_runtime_s},
            "Tags": [{"Key": "fleetloop-job", "Value": job.name}],
        }

    def run(self, job: TrainingJob) -> TrainingResult:
        from fleetloop_cloud.annotators_aws import store_key_of

        uris = self.upload_channels(job)
        try:
            self.client.create_training_job(**self.request(job, uris))
        except Exception as exc:
            raise TrainingError(f"SageMaker: create_training_job {job.name} failed ({exc})") from exc
        deadline = time.monotonic() + self.settings.max_runtime_s + 3600
        while True:
            try:
                status = self.client.describe_training_job(TrainingJobName=job.name)
            except Exception as exc:
                raise TrainingError(f"SageMaker: describe_training_job {job.name} failed ({exc})") from exc
            state = status["TrainingJobStatus"]
            if state == "Completed":
                break
            if state in ("Failed", "Stopped"):
                raise TrainingError(f"SageMaker training job {job.name} {state}: {status.get('FailureReason', '')}")
            if time.monotonic() > deadline:
                raise TrainingError(f"SageMaker training job {job.name} still {state} after its runtime limit")
            self.sleep(self.settings.poll_s)
        artifact = status["ModelArtifacts"]["S3ModelArtifacts"]
        root = job.work_dir / job.name
        model_dir = root / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            archive = Path(scratch) / "model.tar.gz"
            try:
                self.store.get_file(store_key_of(self.store, artifact), archive)
            except Exception as exc:
                raise TrainingError(f"SageMaker training job {job.name}: cannot download {artifact} ({exc})") from exc
            extract(archive, model_dir, where=artifact)
        billable = float(status.get("BillableTimeInSeconds") or 0) * self.settings.instance_count
        return TrainingResult(
            model_dir=model_dir,
            report=_read_report(model_dir),
            instance_seconds=billable,
            details={
                "training_job_arn": status.get("TrainingJobArn"),
                "artifact": artifact,
                "instance_type": self.settings.instance_type,
                "instance_count": self.settings.instance_count,
            },
        )


def make_backend(
    name: str, settings: SageMakerTrainingConfig, store: ObjectStore, client=None, progress: bool = False
) -> TrainingBackend:
    """Return training backend ``name`` (local | sagemaker)."""
    if name == "local":
        return LocalProcessBackend(progress=progress)
    if name == "sagemaker":
        return SageMakerBackend(settings, store, client=client)
    raise ConfigError(f"config/cloud.yaml: training.backend: unknown backend {name!r} (known: local, sagemaker)")
