"""Signed model packages: Ed25519 over a canonical JSON form of the manifest.

A package is a directory: ``manifest.json`` (signed) plus the files it lists. The signature covers
:func:`canonical_bytes` of the manifest without its ``signature`` field; that form includes every
file's path, sha256 and size, so the signature pins the bytes of every file too.

Robots trust several public keys at once (:class:`TrustedKeys`), by key id, so keys can rotate:
ship the new public key to the fleet, start signing with the new private key, retire the old
public key once no package signed with it is still in use. In an object store a package lives
under ``models/<name>/<version>/`` (manifest.json + files).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any, Final, Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetloop_core.config import read_yaml
from fleetloop_core.errors import ConfigError, ModelError
from fleetloop_core.contracts.manifest import Manifest, Signature, load_manifest, verify_files, write_manifest

ALGORITHM: Final = "ed25519"


class SignatureError(ModelError):
    """A manifest is unsigned, signed by a key we do not trust, or its signature does not verify."""


# ---------------------------------------------------------------------------------------- keys
def generate_keypair() -> tuple[bytes, bytes]:
    """Return a new Ed25519 key pair as (private PEM (PKCS8, unencrypted), public PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def _load_public(public_pem: bytes, where: str = "<public key>") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{where}: public key is {type(key).__name__}, expected Ed25519")
    return key


def _load_private(private_pem: bytes, where: str = "<private key>") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{where}: private key is {type(key).__name__}, expected Ed25519")
    return key


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_pem: bytes) -> str:
    """Return the key id: the first 16 hex chars of sha256 over the raw 32-byte public key."""
    return hashlib.sha256(_raw_public(_load_public(public_pem))).hexdigest()[:16]


# ---------------------------------------------------------------------------------------- signing
def canonical_bytes(manifest: Manifest) -> bytes:
    """Return the bytes that get signed: the manifest without signature as compact sorted JSON (UTF-8).

    The same field set as ``manifest.json`` on disk (nulls left out), so a manifest written and
    read back has the same canonical form.
    """
    data = manifest.unsigned().model_dump(mode="json", exclude_none=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_manifest(manifest: Manifest, private_pem: bytes) -> Manifest:
    """Return a copy of ``manifest`` carrying an Ed25519 signature made with ``private_pem``."""
    private = _load_private(private_pem)
    value = base64.b64encode(private.sign(canonical_bytes(manifest))).decode("ascii")
    kid = hashlib.sha256(_raw_public(private.public_key())).hexdigest()[:16]
    return manifest.model_copy(update={"signature": Signature(algorithm=ALGORITHM, key_id=kid, value=value)})


def sign_package(directory: str | Path, private_pem: bytes) -> Manifest:
    """Check the package's files, sign its manifest and rewrite ``<directory>/manifest.json`` atomically."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    verify_files(manifest, directory)  # never sign hashes that do not match the files
    signed = sign_manifest(manifest, private_pem)
    write_manifest(signed, directory)
    return signed


# ---------------------------------------------------------------------------------------- trust
class TrustedKeys:
    """The public keys a robot accepts, by key id (several at once, for rotation)."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None, source: str = "<trusted keys>"):
        self._keys: dict[str, Ed25519PublicKey] = dict(keys or {})
        self.source = source

    @classmethod
    def from_pems(cls, pems: Iterable[bytes], source: str = "<trusted keys>") -> "TrustedKeys":
        """Return the keys of these public PEMs."""
        trusted = cls(source=source)
        for pem in pems:
            trusted.add(pem)
        return trusted

    @classmethod
    def from_directory(cls, directory: str | Path) -> "TrustedKeys":
        """Return every ``*.pub`` PEM in ``directory``; ConfigError when there is none."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(f"{directory}: trusted key directory does not exist")
        trusted = cls(source=str(directory))
        for path in sorted(directory.glob("*.pub")):
            trusted.add(path.read_bytes(), where=str(path))
        if not trusted:
            raise ConfigError(f"{directory}: no *.pub public keys found")
        return trusted

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrustedKeys":
        """Return the keys listed in a YAML file.

        ``trusted_keys:`` is a list whose items are a PEM string, or a mapping with ``pem`` (inline)
        or ``path`` (relative to the YAML file) and an optional ``key_id`` that must match.
        """
        path = Path(path)
        data = read_yaml(path)
        items = data.get("trusted_keys")
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{path}: trusted_keys must be a non-empty list")
        trusted = cls(source=str(path))
        for index, item in enumerate(items):
            where = f"{path}: trusted_keys.{index}"
            if isinstance(item, str):
                item = {"pem": item}
            if not isinstance(item, dict) or not ({"pem", "path"} & item.keys()):
                raise ConfigError(f"{where}: must be a PEM string or a mapping with pem or path")
            unknown = set(item) - {"pem", "path", "key_id"}
            if unknown:
                raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]}")
            if "path" in item:
                key_path = path.parent / str(item["path"])
                try:
                    pem = key_path.read_bytes()
                except OSError as exc:
                    raise ConfigError(f"{where}.path: cannot read {key_path} ({exc.strerror or exc})") from None
            else:
                pem = str(item["pem"]).encode("ascii")
            try:
                kid = trusted.add(pem, where=where)
            except SignatureError as exc:
                raise ConfigError(str(exc)) from None
            if "key_id" in item and not isinstance(item["key_id"], str):
                # YAML reads an unquoted all-digit (or 1e5-like) id as a number: demand quotes
                raise ConfigError(f"{where}.key_id: must be a quoted string (got {item['key_id']!r})")
            if "key_id" in item and item["key_id"] != kid:
                raise ConfigError(f"{where}.key_id: {item['key_id']} does not match the key's id {kid}")
        return trusted

    @classmethod
    def load(cls, path: str | Path) -> "TrustedKeys":
        """Return keys from a directory of ``*.pub`` files or a YAML file, whichever ``path`` is."""
        path = Path(path)
        return cls.from_directory(path) if path.is_dir() else cls.from_yaml(path)

    def add(self, public_pem: bytes, where: str = "<public key>") -> str:
        """Trust one more public key; return its key id."""
        key = _load_public(public_pem, where)
        kid = hashlib.sha256(_raw_public(key)).hexdigest()[:16]
        self._keys[kid] = key
        return kid

    def remove(self, kid: str) -> None:
        """Stop trusting a key id (retirement after rotation)."""
        self._keys.pop(kid, None)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    @property
    def key_ids(self) -> list[str]:
        """Return the trusted key ids, sorted."""
        return sorted(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TrustedKeys({self.key_ids}, source={self.source!r})"


def verify_manifest(manifest: Manifest, trusted: TrustedKeys) -> None:
    """Return None when ``manifest`` is signed by a trusted key; SignatureError naming what failed."""
    _verify(f"manifest {manifest.name} {manifest.version}", manifest.signature, canonical_bytes(manifest), trusted)


def _verify(what: str, signature: Signature | None, signed: bytes, trusted: TrustedKeys) -> None:
    """Check ``signature`` over ``signed`` against the trusted keys; SignatureError naming ``what`` and why."""
    if signature is None:
        raise SignatureError(f"{what}: unsigned (no signature field)")
    if signature.algorithm != ALGORITHM:
        raise SignatureError(f"{what}: signature algorithm {signature.algorithm!r} is not {ALGORITHM}")
    key = trusted.get(signature.key_id)
    if key is None:
        raise SignatureError(
            f"{what}: unknown key id {signature.key_id} (trusted: {', '.join(trusted.key_ids) or 'none'})"
        )
    try:
        raw = base64.b64decode(signature.value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SignatureError(f"{what}: bad signature (key id {signature.key_id}): value is not base64") from None
    try:
        key.verify(raw, signed)
    except InvalidSignature:
        raise SignatureError(
            f"{what}: bad signature (key id {signature.key_id}): it was altered or signed by another key"
        ) from None


def document_bytes(document: Mapping[str, Any]) -> bytes:
    """Return the bytes a job document's signature covers: the document without ``signature`` as compact
    sorted JSON (UTF-8), the same rule as a manifest's."""
    data = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_document(document: Mapping[str, Any], private_pem: bytes) -> dict[str, Any]:
    """Return a copy of a JSON job document carrying an Ed25519 ``signature`` made with ``private_pem``."""
    private = _load_private(private_pem)
    value = base64.b64encode(private.sign(document_bytes(document))).decode("ascii")
    kid = hashlib.sha256(_raw_public(private.public_key())).hexdigest()[:16]
    signature = Signature(algorithm=ALGORITHM, key_id=kid, value=value)
    return {**{k: v for k, v in document.items() if k != "signature"}, "signature": signature.model_dump()}


def verify_document(document: Mapping[str, Any], trusted: TrustedKeys, what: str) -> None:
    """Return None when a JSON job document is signed by a trusted key; SignatureError naming ``what`` otherwise."""
    raw = document.get("signature")
    if raw is not None and not isinstance(raw, Mapping):
        raise SignatureError(f"{what}: signature must be an object with algorithm, key_id and value")
    try:
        signature = None if raw is None else Signature.model_validate(raw)
    except ValueError as exc:
        raise SignatureError(f"{what}: signature: {exc}") from None
    _verify(what, signature, document_bytes(document), trusted)


def verify_package(directory: str | Path, trusted: TrustedKeys) -> Manifest:
    """Return the manifest of the package in ``directory`` after checking its signature, sizes and sha256."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    try:
        verify_manifest(manifest, trusted)
    except SignatureError as exc:
        raise SignatureError(f"{directory}: {exc}") from None
    verify_files(manifest, directory)
    return manifest
