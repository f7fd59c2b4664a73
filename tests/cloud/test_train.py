"""The training entry point on the SageMaker training-container contract.

Each job tree is laid out here by hand, file for file as SageMaker lays out /opt/ml (AWS developer
guide: "How Amazon SageMaker Provides Training Information", "Distributed Training
Configuration"), and no ``SM_*`` variable is set: those come from the sagemaker-training toolkit,
which our image does not install.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from fleetloop_sim import sim
from fleetloop_core.inference import TierModel
from fleetloop_core.contracts.manifest import load_manifest

from fleetloop_cloud.channels import write_channel
from fleetloop_cloud.train import main_contract

from fixtures.cloud_world import fleet_sites
from fixtures.s3 import free_port


@pytest.fixture(scope="module")
def field_frames():
    site = fleet_sites()[0]
    return sim.field_test_set(site, 72, seed=5)  # items never streamed; only used as channel content here


def _channels(root, models, frames, train_count=40, train_labels=None):
    labels = frames.labels if train_labels is None else train_labels
    items = [(f"f{i:04d}", frames.images[i], int(labels[i]), "site-0") for i in range(len(frames.labels))]
    channels = {
        "train": write_channel(root / "train", items[:train_count]),
        "unlabeled": write_channel(
            root / "unlabeled", [(f, im, -1 if i % 2 else label, s) for i, (f, im, label, s) in enumerate(items)]
        ),
        "calibration": write_channel(root / "calibration", [(f, im, -1, s) for f, im, _, s in items[:8]]),
        "models": root / "models",
    }
    (root / "models").mkdir()
    for tier in ("T2", "T3", "T4"):
        shutil.copytree(models[tier], root / "models" / tier)
    return channels


@pytest.fixture(autouse=True)
def _no_toolkit_variables(monkeypatch):
    for key in [k for k in os.environ if k.startswith("SM_")]:
        monkeypatch.delenv(key)


def _job_tree(root, channels, hyperparameters, hosts=("algo-1",), current="algo-1", interface=None, listed=None):
    """Write /opt/ml as SageMaker does (``listed``: the channels inputdataconfig.json names)."""
    config, data = root / "input" / "config", root / "input" / "data"
    config.mkdir(parents=True)
    data.mkdir()
    # SageMaker passes every hyperparameter as a string
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    listed = list(channels) if listed is None else listed
    (config / "inputdataconfig.json").write_text(
        json.dumps(
            {
                name: {
                    "ContentType": "application/jsonlines",
                    "TrainingInputMode": "File",
                    "S3DistributionType": "FullyReplicated",
                    "RecordWrapperType": "None",
                }
                for name in listed
            }
        )
    )
    resources = {
        "current_host": current,
        "current_instance_type": "ml.m5.xlarge",
        "current_group_name": "homogeneousCluster",
        "hosts": list(hosts),
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.xlarge", "hosts": list(hosts)}
        ],
    }
    if interface:
        resources["network_interface_name"] = interface
    (config / "resourceconfig.json").write_text(json.dumps(resources))
    for name, path in channels.items():
        shutil.copytree(path, data / name)  # SageMaker downloads each channel into input/data/<channel>
    return root


HP = {
    "version": "r9-test",
    "teacher_epochs": 1,
    "distil_epochs": 1,
    "batch_size": 16,
    "int8_calibration_frames": 8,
    "tiers": "T2,T4",
}  # T3 is distilled the same way as T4 (the end-to-end round test runs all three)


def test_contract_trains_t2_distils_t3_t4_and_writes_int8(tmp_path, cloud_models, field_frames):
    channels = _channels(tmp_path / "data", cloud_models, field_frames)
    _job_tree(tmp_path / "job", channels, HP)
    assert main_contract(["--ml-root", str(tmp_path / "job"), "--no-progress"]) == 0
    model_dir = tmp_path / "job" / "model"
    report = json.loads((model_dir / "training_report.json").read_text())
    assert report["channels"] == {"train": 40, "replay": 0, "unlabeled": 72, "calibration": 8}
    assert report["tiers"]["T2"]["field_labels"] == 40
    assert report["tiers"]["T4"]["labeled"] == 36 and report["tiers"]["T4"]["samples"] == 72  # soft targets on all
    assert "T3" not in report["tiers"]
    for variant in ("T2", "T4", "T4-int8"):
        manifest = load_manifest(model_dir / variant)
        assert manifest.version == "r9-test"
        model = TierModel.load(model_dir / variant, providers=("cpu",), warmup=0)  # hashes verified
        assert model.infer_batch(field_frames.images[:4]).probs.shape == (4, 11)
    t4 = load_manifest(model_dir / "T4")
    assert t4.name == load_manifest(cloud_models["T4"]).name
    assert {f.path: f.role for f in t4.files} == {"model.onnx": "model", "weights.pt": "extra"}
    int8 = load_manifest(model_dir / "T4-int8")
    assert int8.name.endswith("-int8") and int8.training["quantization"]["format"] == "QDQ"
    comparison = report["tiers"]["T4-int8"]
    assert comparison["int8_ms"] > 0 and comparison["fp32_ms"] > 0 and 0 <= comparison["agreement"] <= 1


def test_empty_training_channel_fails_with_the_reason(tmp_path, cloud_models, field_frames):
    channels = _channels(tmp_path / "data", cloud_models, field_frames, train_count=0)
    _job_tree(tmp_path / "job", channels, HP)
    assert main_contract(["--ml-root", str(tmp_path / "job"), "--no-progress"]) == 1
    failure = (tmp_path / "job" / "output" / "failure").read_text()
    assert "channel 'train'" in failure and "empty" in failure


def test_unknown_class_and_bad_hyperparameters_fail_with_the_reason(tmp_path, cloud_models, field_frames):
    labels = field_frames.labels.copy()
    labels[3] = 42
    channels = _channels(tmp_path / "data", cloud_models, field_frames, train_labels=labels)
    _job_tree(tmp_path / "job", channels, HP)
    assert main_contract(["--ml-root", str(tmp_path / "job"), "--no-progress"]) == 1
    assert "frame f0003 has label 42, not a known class" in (tmp_path / "job" / "output" / "failure").read_text()
    _job_tree(tmp_path / "job2", channels, {**HP, "teacher_epochs": "zero"})
    assert main_contract(["--ml-root", str(tmp_path / "job2"), "--no-progress"]) == 1
    assert "teacher_epochs" in (tmp_path / "job2" / "output" / "failure").read_text()


def test_missing_channel_and_pipe_mode_fail_with_the_reason(tmp_path, cloud_models, field_frames):
    channels = _channels(tmp_path / "data", cloud_models, field_frames)
    without_models = {k: v for k, v in channels.items() if k != "models"}
    _job_tree(tmp_path / "job", without_models, HP)
    assert main_contract(["--ml-root", str(tmp_path / "job"), "--no-progress"]) == 1
    assert "channel 'models' is missing" in (tmp_path / "job" / "output" / "failure").read_text()
    root = _job_tree(tmp_path / "job2", channels, HP)
    config = root / "input" / "config" / "inputdataconfig.json"
    described = json.loads(config.read_text())
    described["train"]["TrainingInputMode"] = "Pipe"
    config.write_text(json.dumps(described))
    assert main_contract(["--ml-root", str(root), "--no-progress"]) == 1
    failure = (root / "output" / "failure").read_text()
    assert "'train'" in failure and "Pipe" in failure


def test_hyperparameters_file_missing_is_named(tmp_path):
    assert main_contract(["--ml-root", str(tmp_path / "empty"), "--no-progress"]) == 1
    failure = (tmp_path / "empty" / "output" / "failure").read_text()
    assert "hyperparameters.json" in failure and "missing" in failure


def test_the_local_backend_runs_the_same_tree(tmp_path, cloud_models, field_frames):
    """LocalProcessBackend lays out the tree with sagemaker_job.write_job_tree; the job reads it alone."""
    from fleetloop_cloud.training_backends import LocalProcessBackend, TrainingJob

    channels = _channels(tmp_path / "data", cloud_models, field_frames)
    job = TrainingJob(
        name="fleetloop-r9",
        channels=channels,
        work_dir=tmp_path / "work",
        hyperparameters={k: str(v) for k, v in {**HP, "tiers": "T4", "int8": "false"}.items()},
    )
    result = LocalProcessBackend(extra_env={"OMP_NUM_THREADS": "1"}).run(job)
    config = tmp_path / "work" / "fleetloop-r9" / "input" / "config"
    assert set(json.loads((config / "inputdataconfig.json").read_text())) == set(channels)
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["algo-1"]
    assert result.report["tiers"]["T4"]["samples"] == 72 and result.report["hosts"] == 1


def test_two_hosts_find_each_other_through_resourceconfig(tmp_path, cloud_models, field_frames, spawn):
    """Two processes, each with its own /opt/ml tree, as SageMaker's two hosts: no SM_* variable, no
    master address given. They rank themselves from resourceconfig.json, meet at the first host and
    train with DistributedDataParallel (gloo over loopback); only the first host writes the packages.

    The host names are loopback names, because SageMaker's ``algo-N`` resolve only inside its cluster.
    """
    channels = _channels(tmp_path / "data", cloud_models, field_frames)
    hp = {**HP, "tiers": "T2", "int8": "false", "master_port": free_port()}
    hosts = ["localhost", "127.0.0.1"]  # listed as given; each host sorts them the same way
    processes = []
    for host in hosts:
        root = _job_tree(tmp_path / host, channels, hp, hosts=hosts, current=host, interface="lo")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
        processes.append(
            spawn(
                [sys.executable, "-m", "fleetloop_cloud.train", "--ml-root", str(root), "--no-progress"],
                env={**env, "OMP_NUM_THREADS": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = dict(zip(hosts, (p.communicate(timeout=300)[0] for p in processes)))
    assert [p.returncode for p in processes] == [0, 0], outputs
    leader, follower = tmp_path / "127.0.0.1" / "model", tmp_path / "localhost" / "model"
    report = json.loads((leader / "training_report.json").read_text())
    assert report["hosts"] == 2 and report["tiers"]["T2"]["hosts"] == 2
    assert (leader / "T2" / "manifest.json").is_file()
    assert list(follower.iterdir()) == []  # SageMaker merges every host's model dir: no clashes
    assert "rank 0 of 2 on 127.0.0.1" in outputs["127.0.0.1"] and "rank 1 of 2 on localhost" in outputs["localhost"]


def test_the_job_needs_only_the_training_requirements(tmp_path, cloud_models, field_frames):
    """docker/training.Dockerfile installs requirements/training.txt and torch only: the entry point,
    INT8 included, runs with every other distribution made unimportable."""
    channels = _channels(tmp_path / "data", cloud_models, field_frames)
    root = _job_tree(tmp_path / "job", channels, {**HP, "tiers": "T4"})
    program = os.path.join(os.path.dirname(__file__), "programs", "only_training_requirements.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    done = subprocess.run(
        [sys.executable, program, "--ml-root", str(root), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (root / "model" / "T4-int8" / "manifest.json").is_file()
    requirements = open(os.path.join(os.path.dirname(__file__), "..", "..", "requirements", "training.txt")).read()
    assert "boto3" not in requirements and "fastapi" not in requirements and "rclpy" not in requirements
