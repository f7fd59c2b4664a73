"""Auto-labeling at scale: the teacher packages as SageMaker batch transform jobs.

Same package, same answers as the embedded ONNX Runtime path (``autolabel.run_teachers``); only
where it runs differs. Per teacher version: the package goes to the store as ``model.tar.gz``
(once), ``create_model`` names it with the inference image (``fleetloop-cloud serve``), and per
batch of frames a ``create_transform_job`` reads a manifest of the frames' keys (the frames are
already in S3, uploaded by the robots) and writes one ``<key>.out`` JSON per frame, which is read
back into the pool. Job names are derived from the frames and the teacher version, so a rerun
after a crash finds the job it started instead of starting another.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from fleetloop_core.errors import ConfigError, FleetLoopError
from fleetloop_core.contracts.manifest import load_manifest
from fleetloop_core.store import ObjectStore

from fleetloop_cloud.autolabel import AutolabelReport
from fleetloop_cloud.config import SageMakerTransformConfig
from fleetloop_cloud.pool import Pool


class TransformError(FleetLoopError):
    """A batch transform job could not run or its output is unreadable (names the job and frame)."""


def _name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9-]", "-", text)[:63].strip("-")


def job_name(tier: str, version: str, frame_ids: Sequence[str]) -> str:
    """Return the deterministic transform job name of one teacher version over a batch of frames."""
    digest = hashlib.sha256("\n".join([tier, version, *sorted(frame_ids)]).encode()).hexdigest()[:12]
    return _name(f"fleetloop-{tier.lower()}-{version}")[:50].rstrip("-") + f"-{digest}"


class BatchTransformTeachers:
    """Runs teacher packages over pool frames as SageMaker batch transform jobs."""

    def __init__(
        self,
        settings: SageMakerTransformConfig,
        store: ObjectStore,
        client=None,
        sleep: Callable[[float], None] = time.sleep,
        frames_per_job: int = 10_000,
    ):
        if not store.url("x").startswith("s3://"):
            raise ConfigError(f"autolabel.backend sagemaker-batch needs an s3:// store (got {store.uri})")
        for key in ("role_arn", "image_uri"):
            if not getattr(settings, key):
                raise ConfigError(f"config/cloud.yaml: autolabel.sagemaker.{key} must be set for sagemaker-batch")
        self.settings, self.store, self.sleep = settings, store, sleep
        self.frames_per_job = frames_per_job
        if client is None:
            import boto3

            client = boto3.client("sagemaker", region_name=settings.region, endpoint_url=settings.endpoint_url)
        self.client = client

    def _call(self, operation: str, **kwargs):
        try:
            return getattr(self.client, operation)(**kwargs)
        except Exception as exc:  # botocore ClientError / ParamValidationError / connection errors
            raise TransformError(f"SageMaker: {operation} failed ({exc})") from exc

    def ensure_model(self, package_dir: Path) -> str:
        """Upload the package as model.tar.gz (once) and create the SageMaker model; return its name."""
        from botocore.exceptions import ClientError

        from fleetloop_cloud.model_archive import pack_package

        manifest = load_manifest(package_dir)
        name = _name(f"fleetloop-{manifest.name}-{manifest.version}")
        key = f"sagemaker/models/{manifest.name}/{manifest.version}/model.tar.gz"
        if not self.store.exists(key):
            with tempfile.TemporaryDirectory() as scratch:
                archive = pack_package(package_dir, Path(scratch) / "model.tar.gz")
                self.store.put_file(key, archive)
        try:
            self.client.describe_model(ModelName=name)
            return name
        except ClientError:
            pass
        self._call(
            "create_model",
            ModelName=name,
            ExecutionRoleArn=self.settings.role_arn,
            PrimaryContainer={
                "Image": self.settings.image_uri,
                "ModelDataUrl": self.store.url(key),
                "Environment": {"FLEETLOOP_TIER": manifest.tier},
            },
            Tags=[{"Key": "fleetloop-version", "Value": manifest.version}],
        )
        return name

    def request(self, job: str, model: str, manifest_uri: str) -> dict:
        """Return the create_transform_job request of one job."""
        s = self.settings
        return {
            "TransformJobName": job,
            "ModelName": model,
            "BatchStrategy": "SingleRecord",
            "MaxPayloadInMB": s.max_payload_mb,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest_uri}},
                "ContentType": "application/x-image",
                "SplitType": "None",
            },
            "TransformOutput": {
                "S3OutputPath": self.store.url(f"transform/{job}/output"),
                "Accept": "application/json",
                "AssembleWith": "None",
            },
            "TransformResources": {"InstanceType": s.instance_type, "InstanceCount": s.instance_count},
        }

    def output_key(self, job: str, frame_key: str) -> str:
        """Return where a job writes the answer for one input frame (``<output>/<key>.out``)."""
        return f"transform/{job}/output/{frame_key}.out"

    def run_job(self, tier: str, package_dir: Path, rows: Sequence) -> tuple[np.ndarray, np.ndarray | None]:
        """Run (or find) the job for one batch of pool rows; return (probs, embeddings) in row order."""
        from botocore.exceptions import ClientError

        manifest = load_manifest(package_dir)
        ids = [r["id"] for r in rows]
        job = job_name(tier, manifest.version, ids)
        model = self.ensure_model(package_dir)
        try:
            self.client.describe_transform_job(TransformJobName=job)
        except ClientError:
            # a ManifestFile input: a prefix, then keys relative to it (the robots' frame keys)
            prefix = self.store.url("x")[:-1]
            listing = [{"prefix": prefix}] + [r["frame_key"] for r in rows]
            self.store.put_bytes(f"transform/{job}/input.manifest", json.dumps(listing).encode())
            self._call(
                "create_transform_job", **self.request(job, model, self.store.url(f"transform/{job}/input.manifest"))
            )
        deadline = time.monotonic() + self.settings.max_wait_s
        while True:
            status = self._call("describe_transform_job", TransformJobName=job)
            state = status["TransformJobStatus"]
            if state == "Completed":
                break
            if state in ("Failed", "Stopped"):
                raise TransformError(f"batch transform job {job} {state}: {status.get('FailureReason', '')}")
            if time.monotonic() > deadline:
                raise TransformError(f"batch transform job {job} still {state} after {self.settings.max_wait_s:.0f} s")
            self.sleep(self.settings.poll_s)
        probs, embeddings = [], []
        for row in rows:
            key = self.output_key(job, row["frame_key"])
            try:
                answer = json.loads(self.store.get_bytes(key))
                probs.append(np.asarray(answer["probs"], np.float32))
                embeddings.append(np.asarray(answer["embedding"], np.float32) if "embedding" in answer else None)
            except (FleetLoopError, KeyError, ValueError, TypeError) as exc:
                raise TransformError(
                    f"batch transform job {job}: no readable answer for frame {row['id']} at {key} ({exc})"
                ) from exc
        if any(e is None for e in embeddings):
            return np.stack(probs), None
        return np.stack(probs), np.stack(embeddings)

    def run(self, pool: Pool, packages: Mapping[str, Path], frame_ids: Sequence[str]) -> AutolabelReport:
        """Predict every frame each teacher version has not seen yet; store the answers in the pool."""
        started, cpu_started = time.perf_counter(), time.process_time()
        rows = {r["id"]: r for r in pool.frames(ids=frame_ids, include_duplicates=True)}
        predicted, versions = {}, {}
        for tier, package in packages.items():
            version = load_manifest(package).version
            versions[tier] = version
            todo = pool.missing_predictions(tier, version, list(frame_ids))
            predicted[tier] = len(todo)
            for start in range(0, len(todo), self.frames_per_job):
                batch = todo[start : start + self.frames_per_job]
                probs, embeddings = self.run_job(tier, package, [rows[f] for f in batch])
                pool.put_predictions(tier, version, batch, probs, embeddings)
        return AutolabelReport(
            frames=len(frame_ids),
            predicted=predicted,
            versions=versions,
            seconds=time.perf_counter() - started,
            cpu_seconds=time.process_time() - cpu_started,
        )
