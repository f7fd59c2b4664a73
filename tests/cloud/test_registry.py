"""Model registry: signed packages with approval status (local store; SageMaker Model Registry on moto)."""

import json
from pathlib import Path

import boto3
import pytest

from fleetloop_core.contracts.manifest import load_manifest, write_manifest
from fleetloop_core.signing import SignatureError, TrustedKeys, generate_keypair
from fleetloop_core.store import open_store

from fleetloop_cloud.config import RegistryConfig
from fleetloop_cloud.registry import RegistryError, StoreRegistry, open_registry
from fleetloop_cloud.registry_sagemaker import SageMakerRegistry


@pytest.fixture
def keys(tmp_path):
    private, public = generate_keypair()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "fleet.pub").write_bytes(public)
    (tmp_path / "fleet.key").write_bytes(private)
    return tmp_path / "fleet.key", tmp_path / "keys"


def _version(package, version):
    manifest = load_manifest(package)
    write_manifest(manifest.model_copy(update={"version": version}), package)
    return manifest.name


def test_local_registry_signs_approves_and_fetches_verified(tmp_path, model_copy, keys):
    package = model_copy("T4")
    name = _version(package, "r1-aaaa")
    approved = []
    registry = open_registry(
        RegistryConfig(uri=str(tmp_path / "registry"), signing_key=str(keys[0]), trusted_keys=str(keys[1])),
        on_approved=[approved.append],
    )
    entry = registry.publish(package, "PendingManualApproval", metrics={"after": 0.9})
    assert entry.key_id and load_manifest(package).signature is not None
    assert registry.approved(name) is None
    registry.set_status(name, "r1-aaaa", "Approved", "gate passed")
    assert registry.approved(name).version == "r1-aaaa" and [e.version for e in approved] == ["r1-aaaa"]
    # the robots' layout: models/<name>/<version>/manifest.json + files
    root = tmp_path / "registry" / "models" / name
    assert (root / "r1-aaaa" / "manifest.json").is_file() and (root / "approved.json").is_file()
    fetched = registry.fetch(name, "r1-aaaa", tmp_path / "fetched")
    assert fetched.version == "r1-aaaa" and (tmp_path / "fetched" / "model.onnx").is_file()
    # publishing the same version again is a no-op; a different model under that version is refused
    assert registry.publish(package).version == "r1-aaaa"
    (package / "model.onnx").write_bytes(b"not the same model")
    from fleetloop_core.contracts.manifest import file_entry

    manifest = load_manifest(package)
    write_manifest(manifest.model_copy(update={"files": [file_entry(package / "model.onnx", package)]}), package)
    with pytest.raises(RegistryError, match="versions are immutable"):
        registry.publish(package)
    registry.set_status(name, "r1-aaaa", "Rejected", "rolled back")
    assert registry.approved(name) is None
    assert [h["status"] for h in registry.entries(name)[0].history] == ["PendingManualApproval", "Approved", "Rejected"]


def test_a_registry_entry_whose_signature_fails_is_refused(tmp_path, model_copy, keys):
    package = model_copy("T3")
    name = _version(package, "r2-bbbb")
    registry = open_registry(
        RegistryConfig(uri=str(tmp_path / "registry"), signing_key=str(keys[0]), trusted_keys=str(keys[1]))
    )
    registry.publish(package, "Approved")
    stored = tmp_path / "registry" / "models" / name / "r2-bbbb" / "manifest.json"
    data = json.loads(stored.read_text())
    data["metrics"] = {"field_test_accuracy": 0.999}  # tampered after signing
    stored.write_text(json.dumps(data))
    with pytest.raises(SignatureError, match="bad signature"):
        registry.fetch(name, "r2-bbbb", tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()  # nothing half-installed
    # a reader that does not trust the signing key refuses it before looking any further
    other = StoreRegistry(open_store(f"file://{tmp_path / 'registry'}"), trusted=TrustedKeys())
    with pytest.raises(SignatureError, match="unknown key id"):
        other.fetch(name, "r2-bbbb", tmp_path / "fetched")


def test_sagemaker_model_registry_on_moto(tmp_path, model_copy, s3_bucket, keys):
    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/registry?endpoint_url={endpoint}&region=us-east-1")
    client = boto3.client(
        "sagemaker",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    private = keys[0].read_bytes()
    registry = SageMakerRegistry(
        store,
        "fleetloop-test",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleetloop:1",
        client=client,
        signing_key=private,
        trusted=TrustedKeys.load(keys[1]),
    )
    package = model_copy("T4")
    name = _version(package, "r3-cccc")
    entry = registry.publish(package, "PendingManualApproval")
    assert entry.arn and entry.location.startswith(f"s3://{bucket}/registry/models/{name}/r3-cccc")
    described = client.describe_model_package(ModelPackageName=entry.arn)
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    assert described["CustomerMetadataProperties"]["fleetloop-version"] == "r3-cccc"
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == f"{entry.location}/model.tar.gz"
    assert registry.approved_in_sagemaker(name) is None
    registry.set_status(name, "r3-cccc", "Approved", "gate passed: +0.05")
    described = client.describe_model_package(ModelPackageName=entry.arn)
    assert described["ModelApprovalStatus"] == "Approved"
    assert described["CustomerMetadataProperties"]["fleetloop-key-id"] == entry.key_id
    assert registry.approved_in_sagemaker(name) == "r3-cccc"
    groups = client.list_model_package_groups()["ModelPackageGroupSummaryList"]
    assert registry.group(name) in [g["ModelPackageGroupName"] for g in groups]
    # the package itself is fetched from S3 and verified like the local registry's
    assert registry.fetch(name, "r3-cccc", tmp_path / "fetched").version == "r3-cccc"


def test_a_registered_package_serves_after_sagemakers_extraction(tmp_path, model_copy, s3_bucket, keys, spawn):
    """Register, download ModelDataUrl from the S3 server, extract as SageMaker does into
    /opt/ml/model, run `fleetloop-cloud serve` on it: /ping and /invocations answer."""
    import shutil
    import subprocess
    import sys
    import tarfile
    import time
    import urllib.request

    import cv2
    import numpy as np

    from fixtures.s3 import free_port

    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/registry?endpoint_url={endpoint}&region=us-east-1")
    client = boto3.client(
        "sagemaker",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    registry = SageMakerRegistry(
        store,
        "fleetloop-test",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleetloop:1",
        client=client,
        signing_key=keys[0].read_bytes(),
    )
    package = model_copy("T2")
    (package / "notes.txt").write_text("a stray file the manifest does not list")
    name = _version(package, "r4-dddd")
    entry = registry.publish(package, "Approved")
    url = client.describe_model_package(ModelPackageName=entry.arn)["InferenceSpecification"]["Containers"][0][
        "ModelDataUrl"
    ]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket_name, key = url[len("s3://") :].split("/", 1)
    archive = tmp_path / "model.tar.gz"
    s3.download_file(bucket_name, key, str(archive))
    manifest = load_manifest(package)
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(["manifest.json"] + [f.path for f in manifest.files])
        model_dir = tmp_path / "opt" / "ml" / "model"
        model_dir.mkdir(parents=True)
        tar.extractall(model_dir, filter="data")
    assert load_manifest(model_dir).signature is not None  # the signed manifest travelled along
    port = free_port()
    server = spawn(
        [
            shutil.which("fleetloop-cloud") or str(Path(sys.executable).parent / "fleetloop-cloud"),
            "serve",
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if server.poll() is not None:
            raise AssertionError(f"serve exited with {server.returncode}: {server.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                assert response.status == 200
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise AssertionError("serve never answered /ping")
    spec = manifest.input
    frame = np.random.default_rng(0).integers(0, 255, (spec.height, spec.width, 3), dtype=np.uint8)
    request = urllib.request.Request(
        f"{base}/invocations",
        data=cv2.imencode(".png", frame)[1].tobytes(),
        headers={"Content-Type": "application/x-image"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert answer["name"] == name and answer["version"] == "r4-dddd" and answer["tier"] == manifest.tier
    assert len(answer["probs"]) == len(manifest.labels) and abs(sum(answer["probs"]) - 1) < 1e-3
