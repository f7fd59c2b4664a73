"""Model registry: signed packages with approval status (local store; SageMaker Model Registry on moto)."""

import json

import boto3
import pytest

from fleetloop_core.manifest import load_manifest, write_manifest
from fleetloop_core.signing import SignatureError, TrustedKeys, generate_keypair
from fleetloop_core.store import open_store

from fleetloop_cloud.config import RegistryConfig
from fleetloop_cloud.registry import RegistryError, SageMakerRegistry, StoreRegistry, open_registry


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
    registry = open_registry(RegistryConfig(uri=str(tmp_path / "registry"), signing_key=str(keys[0]),
                                            trusted_keys=str(keys[1])), on_approved=[approved.append])
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
    from fleetloop_core.manifest import file_entry
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
    registry = open_registry(RegistryConfig(uri=str(tmp_path / "registry"), signing_key=str(keys[0]),
                                            trusted_keys=str(keys[1])))
    registry.publish(package, "Approved")
    stored = tmp_path / "registry" / "models" / name / "r2-bbbb" / "manifest.json"
    data = json.loads(stored.read_text())
    data["metrics"] = {"field_test_accuracy": 0.999}            # tampered after signing
    stored.write_text(json.dumps(data))
    with pytest.raises(SignatureError, match="bad signature"):
        registry.fetch(name, "r2-bbbb", tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()                    # nothing half-installed
    # a reader that does not trust the signing key refuses it before looking any further
    other = StoreRegistry(open_store(f"file://{tmp_path / 'registry'}"), trusted=TrustedKeys())
    with pytest.raises(SignatureError, match="unknown key id"):
        other.fetch(name, "r2-bbbb", tmp_path / "fetched")


def test_sagemaker_model_registry_on_moto(tmp_path, model_copy, s3_bucket, keys):
    endpoint, bucket = s3_bucket
    store = open_store(f"s3://{bucket}/registry?endpoint_url={endpoint}&region=us-east-1")
    client = boto3.client("sagemaker", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    private = keys[0].read_bytes()
    registry = SageMakerRegistry(store, "fleetloop-test", "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleetloop:1",
                                 client=client, signing_key=private, trusted=TrustedKeys.load(keys[1]))
    package = model_copy("T4")
    name = _version(package, "r3-cccc")
    entry = registry.publish(package, "PendingManualApproval")
    assert entry.arn and entry.location.startswith(f"s3://{bucket}/registry/models/{name}/r3-cccc")
    described = client.describe_model_package(ModelPackageName=entry.arn)
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    assert described["CustomerMetadataProperties"]["fleetloop-version"] == "r3-cccc"
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == f"{entry.location}/model.onnx"
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
