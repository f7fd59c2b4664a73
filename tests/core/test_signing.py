"""Signed model packages: canonical form, sign/verify, key rotation, every failure named."""

from __future__ import annotations

import json

import pytest

from fleetloop_core.errors import ConfigError, ModelError
from fleetloop_core.contracts.manifest import load_manifest, write_manifest
from fleetloop_core.signing import (
    SignatureError,
    TrustedKeys,
    canonical_bytes,
    generate_keypair,
    key_id,
    sign_manifest,
    sign_package,
    verify_manifest,
    verify_package,
)


@pytest.fixture(scope="module")
def keys():
    return {name: generate_keypair() for name in ("old", "new", "stranger")}


def test_key_id_is_16_hex_of_raw_public_key(keys):
    from cryptography.hazmat.primitives import serialization
    import hashlib

    private_pem, public_pem = keys["old"]
    raw = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert len(raw) == 32
    assert key_id(public_pem) == hashlib.sha256(raw).hexdigest()[:16]
    assert key_id(public_pem) != key_id(keys["new"][1])


def test_canonical_bytes_are_sorted_compact_and_ignore_the_signature(model_copy, keys):
    manifest = load_manifest(model_copy("T4"))
    body = canonical_bytes(manifest)
    data = json.loads(body)
    assert body == json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert "signature" not in data
    assert data["files"][0]["sha256"] == manifest.sha256 and data["files"][0]["size_bytes"] > 0
    assert canonical_bytes(sign_manifest(manifest, keys["old"][0])) == body


def test_signed_package_verifies_and_survives_a_write_read_cycle(model_copy, keys):
    package = model_copy("T4")
    signed = sign_package(package, keys["old"][0])
    assert signed.signature.key_id == key_id(keys["old"][1])
    trusted = TrustedKeys.from_pems([keys["old"][1]])
    assert verify_package(package, trusted).version == signed.version


def test_rotation_trusts_old_and_new_keys_at_once(model_copy, keys):
    a, b = model_copy("T4"), model_copy("T3")
    sign_package(a, keys["old"][0])
    sign_package(b, keys["new"][0])
    trusted = TrustedKeys.from_pems([keys["old"][1], keys["new"][1]])
    verify_package(a, trusted)
    verify_package(b, trusted)
    trusted.remove(key_id(keys["old"][1]))  # old key retired
    with pytest.raises(SignatureError, match=f"unknown key id {key_id(keys['old'][1])}"):
        verify_package(a, trusted)


def test_unsigned_unknown_key_and_bad_signature_are_named(model_copy, keys):
    package = model_copy("T4")
    manifest = load_manifest(package)
    trusted = TrustedKeys.from_pems([keys["old"][1]])
    with pytest.raises(SignatureError, match="unsigned"):
        verify_manifest(manifest, trusted)
    with pytest.raises(SignatureError, match="unknown key id"):
        verify_manifest(sign_manifest(manifest, keys["stranger"][0]), trusted)
    signed = sign_manifest(manifest, keys["old"][0])
    tampered = signed.model_copy(update={"labels": list(reversed(signed.labels))})
    with pytest.raises(SignatureError, match="bad signature"):
        verify_manifest(tampered, trusted)
    forged = signed.model_copy(update={"signature": signed.signature.model_copy(update={"value": "!!notb64"})})
    with pytest.raises(SignatureError, match="bad signature.*not base64"):
        verify_manifest(forged, trusted)
    assert issubclass(SignatureError, ModelError)


def test_a_changed_file_fails_even_with_a_valid_signature(model_copy, keys):
    package = model_copy("T4")
    sign_package(package, keys["old"][0])
    with open(package / "model.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ModelError, match="sha256"):
        verify_package(package, TrustedKeys.from_pems([keys["old"][1]]))


def test_sign_package_refuses_to_sign_files_that_do_not_match(model_copy, keys):
    package = model_copy("T4")
    with open(package / "model.onnx", "ab") as handle:
        handle.write(b"extra")
    with pytest.raises(ModelError, match="size"):
        sign_package(package, keys["old"][0])


def test_trusted_keys_from_directory_and_yaml(tmp_path, keys):
    directory = tmp_path / "trusted"
    directory.mkdir()
    (directory / "old.pub").write_bytes(keys["old"][1])
    (directory / "new.pub").write_bytes(keys["new"][1])
    assert TrustedKeys.load(directory).key_ids == sorted([key_id(keys["old"][1]), key_id(keys["new"][1])])
    config = tmp_path / "trusted.yaml"
    config.write_text(
        "trusted_keys:\n"
        f"  - path: trusted/old.pub\n    key_id: {key_id(keys['old'][1])}\n"
        "  - pem: |\n" + "".join(f"      {line}\n" for line in keys["new"][1].decode().splitlines())
    )
    assert len(TrustedKeys.load(config)) == 2
    config.write_text("trusted_keys:\n  - path: trusted/old.pub\n    key_id: '0000000000000000'\n")
    with pytest.raises(ConfigError, match=r"trusted_keys.0.key_id: 0000000000000000 does not match"):
        TrustedKeys.load(config)
    config.write_text("trusted_keys:\n  - path: trusted/old.pub\n    key_id: 0000000000000000\n")
    with pytest.raises(ConfigError, match=r"trusted_keys.0.key_id: must be a quoted string"):
        TrustedKeys.load(config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no \\*.pub"):
        TrustedKeys.load(tmp_path / "empty")


def test_cli_keygen_sign_verify(tmp_path, model_copy, capsys):
    from fleetloop_core.cli import main

    package = model_copy("T4")
    assert main(["models", "keygen", "--out", str(tmp_path / "keys")]) == 0
    assert (tmp_path / "keys" / "signing.key").stat().st_mode & 0o077 == 0
    assert main(["models", "sign", str(package), "--key", str(tmp_path / "keys" / "signing.key")]) == 0
    assert main(["models", "verify", str(package), "--trusted", str(tmp_path / "keys")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["verified"] is True
    manifest = load_manifest(package)
    write_manifest(manifest.model_copy(update={"version": "tampered"}), package)
    assert main(["models", "verify", str(package), "--trusted", str(tmp_path / "keys")]) == 1
