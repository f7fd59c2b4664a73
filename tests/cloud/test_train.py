"""The training entry point on the SageMaker training-container contract (hyperparameters.json, SM_* variables)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from fleetloop_core import sim
from fleetloop_core.inference import TierModel
from fleetloop_core.manifest import load_manifest

from fleetloop_cloud.channels import write_channel
from fleetloop_cloud.train import main_contract

from fixtures.cloud_world import fleet_sites
from fixtures.s3 import free_port


@pytest.fixture(scope="module")
def field_frames():
    site = fleet_sites()[0]
    return sim.field_test_set(site, 72, seed=5)       # items never streamed; only used as channel content here


def _channels(root, models, frames, train_count=40, train_labels=None):
    labels = frames.labels if train_labels is None else train_labels
    items = [(f"f{i:04d}", frames.images[i], int(labels[i]), "site-0") for i in range(len(frames.labels))]
    channels = {"train": write_channel(root / "train", items[:train_count]),
                "unlabeled": write_channel(root / "unlabeled", [(f, im, -1 if i % 2 else l, s)
                                                                for i, (f, im, l, s) in enumerate(items)]),
                "calibration": write_channel(root / "calibration", [(f, im, -1, s) for f, im, _, s in items[:8]]),
                "models": root / "models"}
    (root / "models").mkdir()
    for tier in ("T2", "T3", "T4"):
        shutil.copytree(models[tier], root / "models" / tier)
    return channels


def _sagemaker_env(monkeypatch, root, channels, hyperparameters):
    """Lay out the job the way SageMaker does and point the SM_* variables at it."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    # SageMaker passes every hyperparameter as a string
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    monkeypatch.setenv("FLEETLOOP_HYPERPARAMETERS", str(config / "hyperparameters.json"))
    monkeypatch.setenv("SM_MODEL_DIR", str(root / "model"))
    monkeypatch.setenv("SM_OUTPUT_DIR", str(root / "output"))
    for name, path in channels.items():
        monkeypatch.setenv(f"SM_CHANNEL_{name.upper()}", str(path))


HP = {"version": "r9-test", "teacher_epochs": 1, "distil_epochs": 1, "batch_size": 16, "int8_calibration_frames": 8,
      "tiers": "T2,T4"}      # T3 is distilled the same way as T4 (the end-to-end round test runs all three)


def test_contract_trains_t2_distils_t3_t4_and_writes_int8(tmp_path, monkeypatch, cloud_models, field_frames):
    channels = _channels(tmp_path / "data", cloud_models, field_frames)
    _sagemaker_env(monkeypatch, tmp_path / "job", channels, HP)
    assert main_contract(["--no-progress"]) == 0
    model_dir = tmp_path / "job" / "model"
    report = json.loads((model_dir / "training_report.json").read_text())
    assert report["channels"] == {"train": 40, "replay": 0, "unlabeled": 72, "calibration": 8}
    assert report["tiers"]["T2"]["field_labels"] == 40
    assert report["tiers"]["T4"]["labeled"] == 36 and report["tiers"]["T4"]["samples"] == 72   # soft targets on all
    assert "T3" not in report["tiers"]
    for variant in ("T2", "T4", "T4-int8"):
        manifest = load_manifest(model_dir / variant)
        assert manifest.version == "r9-test"
        model = TierModel.load(model_dir / variant, providers=("cpu",), warmup=0)   # hashes verified
        assert model.infer_batch(field_frames.images[:4]).probs.shape == (4, 11)
    t4 = load_manifest(model_dir / "T4")
    assert t4.name == load_manifest(cloud_models["T4"]).name
    assert {f.path: f.role for f in t4.files} == {"model.onnx": "model", "weights.pt": "extra"}
    int8 = load_manifest(model_dir / "T4-int8")
    assert int8.name.endswith("-int8") and int8.training["quantization"]["format"] == "QDQ"
    comparison = report["tiers"]["T4-int8"]
    assert comparison["int8_ms"] > 0 and comparison["fp32_ms"] > 0 and 0 <= comparison["agreement"] <= 1


def test_empty_training_channel_fails_with_the_reason(tmp_path, monkeypatch, cloud_models, field_frames):
    channels = _channels(tmp_path / "data", cloud_models, field_frames, train_count=0)
    _sagemaker_env(monkeypatch, tmp_path / "job", channels, HP)
    assert main_contract(["--no-progress"]) == 1
    failure = (tmp_path / "job" / "output" / "failure").read_text()
    assert "channel 'train'" in failure and "empty" in failure


def test_unknown_class_and_bad_hyperparameters_fail_with_the_reason(tmp_path, monkeypatch, cloud_models, field_frames):
    labels = field_frames.labels.copy()
    labels[3] = 42
    channels = _channels(tmp_path / "data", cloud_models, field_frames, train_labels=labels)
    _sagemaker_env(monkeypatch, tmp_path / "job", channels, HP)
    assert main_contract(["--no-progress"]) == 1
    assert "frame f0003 has label 42, not a known class" in (tmp_path / "job" / "output" / "failure").read_text()
    _sagemaker_env(monkeypatch, tmp_path / "job2", channels, {**HP, "teacher_epochs": "zero"})
    assert main_contract(["--no-progress"]) == 1
    assert "teacher_epochs" in (tmp_path / "job2" / "output" / "failure").read_text()


def test_two_hosts_train_with_distributed_data_parallel(tmp_path, cloud_models, field_frames, spawn):
    """Two local processes as SageMaker's algo-1 and algo-2 (gloo over loopback): host 0 writes the package."""
    channels = _channels(tmp_path / "data", cloud_models, field_frames)
    hp = tmp_path / "hyperparameters.json"
    hp.write_text(json.dumps({**{k: str(v) for k, v in HP.items()}, "tiers": "T2", "int8": "false",
                              "master_port": str(free_port())}))
    processes = []
    for host in ("algo-1", "algo-2"):
        env = {**os.environ, "SM_HOSTS": '["algo-1", "algo-2"]', "SM_CURRENT_HOST": host,
               "FLEETLOOP_MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "FLEETLOOP_HYPERPARAMETERS": str(hp),
               "SM_MODEL_DIR": str(tmp_path / host / "model"), "SM_OUTPUT_DIR": str(tmp_path / host / "output"),
               "OMP_NUM_THREADS": "1", **{f"SM_CHANNEL_{k.upper()}": str(v) for k, v in channels.items()}}
        processes.append(spawn([sys.executable, "-m", "fleetloop_cloud.train", "--no-progress"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    report = json.loads((tmp_path / "algo-1" / "model" / "training_report.json").read_text())
    assert report["hosts"] == 2 and report["tiers"]["T2"]["hosts"] == 2
    assert (tmp_path / "algo-1" / "model" / "T2" / "manifest.json").is_file()
    assert not (tmp_path / "algo-2" / "model" / "T2").exists()
    assert "rank 1 of 2" in outputs[1]
