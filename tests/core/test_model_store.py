"""On-robot model store: every kind of bad package is rejected with a named reason; good ones install atomically."""

from __future__ import annotations

import pytest

from fixtures.model_packages import BAD_KINDS, _truncate, bad_packages, make_version
from fleetloop_core.errors import ModelError
from fleetloop_core.contracts.manifest import load_manifest, write_manifest
from fleetloop_core.model_store import ModelStore, PackageLocation, StoreFull, package_prefix, publish_package
from fleetloop_core.package_checks import IncompatibleModel, PackageMismatch, check_compatible
from fleetloop_core.signing import sign_package
from fleetloop_core.store import open_store


@pytest.fixture
def store(tmp_path, signing_keys):
    return ModelStore(tmp_path / "robot", signing_keys["trusted"], keep_versions=2)


@pytest.mark.parametrize("via", ["directory", "object_store"])
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_package_is_rejected_with_its_reason_and_nothing_is_installed(
    kind, via, tmp_path, store, test_models, signing_keys
):
    build, error, message = bad_packages(signing_keys["keys"])[kind]
    serving = load_manifest(test_models["T4"])
    good = make_version(test_models["T4"], tmp_path / "good", "v-good", signing_keys["keys"]["fleet"][0])
    store.install(PackageLocation(path=str(good)), serving=serving)
    before = [(p.key, p.size_bytes) for p in store.installed()]
    package = build(test_models["T4"], tmp_path / kind)
    if via == "directory":
        location, where = PackageLocation(path=str(package)), str(package)
    else:
        bucket = open_store(f"file://{tmp_path / 'bucket'}")
        manifest = load_manifest(package)
        prefix = package_prefix(manifest.name, manifest.version)
        for path in package.iterdir():  # publish as is: publish_package would refuse bad files
            bucket.put_file(f"{prefix}/{path.name}", path)
        location, where = PackageLocation(store=bucket.uri, prefix=prefix), prefix
    with pytest.raises(error, match=message) as caught:
        store.install(location, serving=serving)
    assert where in str(caught.value)  # names where
    assert [(p.key, p.size_bytes) for p in store.installed()] == before
    assert not any(store.incoming.iterdir()), "the failed download was not cleaned"


def test_good_package_installs_atomically_from_an_object_store(tmp_path, store, test_models, signing_keys):
    package = make_version(test_models["T4"], tmp_path / "v2", "v2", signing_keys["keys"]["rotated"][0])
    bucket = open_store(f"file://{tmp_path / 'bucket'}")
    prefix = publish_package(package, bucket)
    assert prefix == f"models/{load_manifest(package).name}/v2"
    installed = store.install(
        PackageLocation(store=bucket.uri, prefix=prefix), serving=load_manifest(test_models["T4"]), expect_version="v2"
    )
    assert installed.directory == store.packages / installed.manifest.name / "v2"
    assert installed.manifest.signature.key_id == load_manifest(package).signature.key_id
    assert (installed.directory / "model.onnx").read_bytes() == (package / "model.onnx").read_bytes()
    again = store.install(PackageLocation(store=bucket.uri, prefix=prefix))  # idempotent, no refetch
    assert again.installed_at == installed.installed_at


def test_job_pins_name_version_and_manifest_bytes(tmp_path, store, test_models, signing_keys):
    package = make_version(test_models["T4"], tmp_path / "v2", "v2", signing_keys["keys"]["fleet"][0])
    with pytest.raises(PackageMismatch, match="version v2 is not the job's v3"):
        store.install(PackageLocation(path=str(package)), expect_version="v3")
    with pytest.raises(PackageMismatch, match="manifest_sha256"):
        store.install(PackageLocation(path=str(package), manifest_sha256="0" * 64))
    assert store.installed() == []


def test_keeps_the_last_n_versions_and_never_prunes_protected_ones(tmp_path, store, test_models, signing_keys):
    fleet = signing_keys["keys"]["fleet"][0]
    name = load_manifest(test_models["T4"]).name
    for version in ("v1", "v2", "v3", "v4"):
        package = make_version(test_models["T4"], tmp_path / version, version, fleet)
        store.install(PackageLocation(path=str(package)), protect={(name, "v1")})
    # keep_versions=2: the newest plus the protected rollback target survive
    assert [p.manifest.version for p in store.installed()] == ["v1", "v4"]


def test_disk_cap_rejects_a_package_that_cannot_fit(tmp_path, signing_keys, test_models):
    size = sum(f.stat().st_size for f in test_models["T4"].iterdir())
    store = ModelStore(tmp_path / "robot", signing_keys["trusted"], keep_versions=5, max_bytes=int(size * 1.5))
    fleet = signing_keys["keys"]["fleet"][0]
    name = load_manifest(test_models["T4"]).name
    v1 = make_version(test_models["T4"], tmp_path / "v1", "v1", fleet)
    v2 = make_version(test_models["T4"], tmp_path / "v2", "v2", fleet)
    store.install(PackageLocation(path=str(v1)))
    with pytest.raises(StoreFull, match="disk cap"):
        store.install(PackageLocation(path=str(v2)), protect={(name, "v1")})
    store.install(PackageLocation(path=str(v2)))  # v1 not protected: pruned to make room
    assert [p.manifest.version for p in store.installed()] == ["v2"]
    assert store.bytes_used() <= int(size * 1.5)


def test_path_traversal_in_a_signed_manifest_is_refused(tmp_path, store, test_models, signing_keys):
    package = make_version(test_models["T4"], tmp_path / "evil", "evil", None)
    manifest = load_manifest(package)
    files = [f.model_copy(update={"path": "../../escape.onnx"}) for f in manifest.files]
    write_manifest(manifest.model_copy(update={"files": files}), package)
    from fleetloop_core.signing import sign_manifest

    write_manifest(sign_manifest(load_manifest(package), signing_keys["keys"]["fleet"][0]), package)
    with pytest.raises(ModelError, match="not a plain relative path"):
        store.install(PackageLocation(path=str(package)))
    assert not (tmp_path / "escape.onnx").exists()


def test_compatibility_names_each_field(test_models):
    serving = load_manifest(test_models["T4"])
    check_compatible(serving, serving)
    gray = serving.model_copy(update={"input": serving.input.model_copy(update={"color_order": "BGR"})})
    with pytest.raises(IncompatibleModel, match="input.color_order BGR"):
        check_compatible(gray, serving)
    shuffled = serving.model_copy(update={"labels": list(reversed(serving.labels))})
    with pytest.raises(IncompatibleModel, match="another order"):
        check_compatible(shuffled, serving)


def test_location_needs_exactly_one_source():
    from fleetloop_core.errors import ConfigError
    from fleetloop_core.config import validate

    with pytest.raises(ConfigError, match="either path"):
        validate(PackageLocation, {"path": "/x", "store": "file:///y", "prefix": "models/a/b"})
    with pytest.raises(ConfigError, match="needs a prefix"):
        validate(PackageLocation, {"store": "file:///y"})


def test_sign_package_then_publish_refuses_damaged_files(tmp_path, test_models, signing_keys):
    package = make_version(test_models["T4"], tmp_path / "v2", "v2", signing_keys["keys"]["fleet"][0])
    _truncate(package)
    with pytest.raises(ModelError, match="truncated"):
        publish_package(package, f"file://{tmp_path / 'bucket'}")
    with pytest.raises(ModelError):
        sign_package(package, signing_keys["keys"]["fleet"][0])
