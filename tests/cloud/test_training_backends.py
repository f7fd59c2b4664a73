"""Training backends: create_training_job validated against moto's SageMaker, artifacts through S3."""

import json
import shutil

import boto3
import pytest

from fleetloop_core.errors import ConfigError
from fleetloop_core.store import open_store

from fleetloop_cloud.channels import write_channel
from fleetloop_cloud.config import SageMakerTrainingConfig
from fleetloop_cloud.training_job import TrainingError
from fleetloop_cloud.training_backends import SageMakerBackend, TrainingJob, pack_model_dir

import numpy as np

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleetloop-train:latest"
ROLE = "arn:aws:iam::123456789012:role/SageMakerTraining"


def _job(tmp_path, cloud_models) -> TrainingJob:
    rng = np.random.default_rng(0)
    frames = [(f"f{i}", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), i % 11, "site-0") for i in range(6)]
    channels = {
        "train": write_channel(tmp_path / "ch" / "train", frames),
        "unlabeled": write_channel(tmp_path / "ch" / "unlabeled", frames),
        "models": tmp_path / "ch" / "models",
    }
    shutil.copytree(cloud_models["T2"], channels["models"] / "T2")
    return TrainingJob(
        name="fleetloop-r1-abcdef12",
        channels=channels,
        hyperparameters={"version": "r1-abcdef12", "teacher_epochs": "2", "int8": "true"},
        work_dir=tmp_path / "jobs",
    )


def test_create_training_job_on_moto_and_model_artifacts_from_s3(tmp_path, s3_bucket, cloud_models):
    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/fleet?endpoint_url={endpoint}&region=us-east-1")
    client = boto3.client(
        "sagemaker",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    settings = SageMakerTrainingConfig(
        role_arn=ROLE, image_uri=IMAGE, instance_type="ml.g4dn.xlarge", instance_count=2, poll_s=0.01
    )
    backend = SageMakerBackend(settings, store, client=client, sleep=lambda s: None)
    job = _job(tmp_path, cloud_models)
    # what the container leaves in SM_MODEL_DIR (the entry point itself is tested in test_train.py)
    produced = tmp_path / "container-model"
    shutil.copytree(cloud_models["T2"], produced / "T2")
    (produced / "training_report.json").write_text(json.dumps({"version": "r1-abcdef12", "tiers": {}}))
    artifact_key = f"{backend.output_prefix(job.name)}/{job.name}/output/model.tar.gz"
    pack_model_dir(produced, tmp_path / "model.tar.gz")
    store.put_file(artifact_key, tmp_path / "model.tar.gz")

    result = backend.run(job)

    described = client.describe_training_job(TrainingJobName=job.name)
    assert described["HyperParameters"] == job.hyperparameters
    assert described["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert described["ResourceConfig"]["InstanceCount"] == 2
    assert described["RoleArn"] == ROLE
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in described["InputDataConfig"]}
    assert channels == {
        name: store.url(f"training/{job.name}/input/{name}") for name in ("train", "unlabeled", "models")
    }
    # the channels really are in S3, in the layout the entry point reads
    assert store.exists(f"training/{job.name}/input/train/manifest.jsonl")
    assert store.exists(f"training/{job.name}/input/models/T2/manifest.json")
    assert (result.model_dir / "T2" / "manifest.json").is_file()
    assert result.report["version"] == "r1-abcdef12"
    assert result.details["artifact"] == store.url(artifact_key)


def test_missing_artifact_and_bad_settings_are_clear_errors(tmp_path, s3_bucket, cloud_models):
    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/fleet?endpoint_url={endpoint}&region=us-east-1")
    client = boto3.client(
        "sagemaker",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    backend = SageMakerBackend(
        SageMakerTrainingConfig(role_arn=ROLE, image_uri=IMAGE), store, client=client, sleep=lambda s: None
    )
    with pytest.raises(TrainingError, match="cannot download"):
        backend.run(_job(tmp_path, cloud_models))
    with pytest.raises(ConfigError, match="training.sagemaker.image_uri must be set"):
        SageMakerBackend(SageMakerTrainingConfig(role_arn=ROLE), store, client=client)
    with pytest.raises(ConfigError, match="needs an s3:// store"):
        SageMakerBackend(
            SageMakerTrainingConfig(role_arn=ROLE, image_uri=IMAGE), open_store(f"file://{tmp_path}/s"), client=client
        )
