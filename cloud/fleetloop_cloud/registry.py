"""Model registry: signed model packages with an approval status, two backends behind one interface.

* ``local`` (embedded default): an object store (a local directory, or any ``file://`` / ``s3://``
  URI) in the layout robots read, ``models/<name>/<version>/`` (manifest.json + files), plus
  ``models/<name>/<version>/registry.json`` (approval status and history) and
  ``models/<name>/approved.json`` (the version currently approved, what deployment ships).
* ``sagemaker``: the same package files in an S3 store, plus ``model.tar.gz`` beside them and one
  SageMaker Model Registry model package per version (``fleetloop_cloud.registry_sagemaker``).

Publishing signs the package (``fleetloop_core.signing``, Ed25519) when a signing key is
configured; fetching verifies sizes, sha256 and, with trusted keys configured, the signature:
a registry entry whose signature fails is an error naming the package and the reason.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from fleetloop_core.errors import ConfigError, FleetLoopError
from fleetloop_core.contracts.manifest import MANIFEST_NAME, Manifest, load_manifest, parse_manifest, verify_files
from fleetloop_core.store import ObjectStore, StoreError, open_store

APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")


class RegistryError(FleetLoopError):
    """The registry refused an operation (message names the package, version and why)."""


@dataclass
class RegistryEntry:
    """One registered package version."""

    name: str
    version: str
    tier: str
    status: str
    location: str  # store URL of the package directory
    sha256: str  # of the model file
    key_id: Optional[str]  # signing key, None when unsigned
    metrics: dict = field(default_factory=dict)
    arn: Optional[str] = None  # SageMaker model package ARN
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Registry(Protocol):
    """What every registry backend offers."""

    def publish(
        self, package_dir: Path, status: str = "PendingManualApproval", metrics: dict | None = None
    ) -> RegistryEntry: ...
    def set_status(self, name: str, version: str, status: str, reason: str = "") -> RegistryEntry: ...
    def entries(self, name: str) -> list[RegistryEntry]: ...
    def approved(self, name: str) -> Optional[RegistryEntry]: ...
    def fetch(self, name: str, version: str, destination: Path) -> Manifest: ...


def _check_status(status: str) -> str:
    if status not in APPROVAL_STATUSES:
        raise RegistryError(f"unknown approval status {status!r} (known: {', '.join(APPROVAL_STATUSES)})")
    return status


class StoreRegistry:
    """Versioned packages in an object store (a local directory by default)."""

    def __init__(
        self,
        store: ObjectStore,
        signing_key: bytes | None = None,
        trusted=None,
        on_approved: list[Callable[[RegistryEntry], None]] | None = None,
    ):
        self.store = store
        self.signing_key = signing_key
        self.trusted = trusted
        self.on_approved = list(on_approved or [])

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def prefix(name: str, version: str) -> str:
        """Return the store prefix of a package: models/<name>/<version>."""
        return f"models/{name}/{version}"

    def _read_json(self, key: str) -> Optional[dict]:
        if not self.store.exists(key):
            return None
        return json.loads(self.store.get_bytes(key))

    def _write_json(self, key: str, data: dict) -> None:
        self.store.put_bytes(key, json.dumps(data, indent=2, sort_keys=True).encode())

    def _sign(self, package_dir: Path) -> Manifest:
        if self.signing_key is None:
            return load_manifest(package_dir)
        from fleetloop_core.signing import sign_package, verify_package

        manifest = sign_package(package_dir, self.signing_key)
        if self.trusted is not None:
            verify_package(package_dir, self.trusted)
        return manifest

    def _entry(self, name: str, version: str) -> RegistryEntry:
        record = self._read_json(f"{self.prefix(name, version)}/registry.json")
        if record is None:
            raise RegistryError(f"{self.store.uri}: no registered package {name} {version}")
        return RegistryEntry(**record)

    def _save(self, entry: RegistryEntry) -> None:
        self._write_json(f"{self.prefix(entry.name, entry.version)}/registry.json", entry.to_dict())

    # ------------------------------------------------------------------ interface
    def publish(
        self, package_dir: Path, status: str = "PendingManualApproval", metrics: dict | None = None
    ) -> RegistryEntry:
        """Sign (when a key is configured) and upload a package; record it with ``status``."""
        _check_status(status)
        package_dir = Path(package_dir)
        manifest = load_manifest(package_dir)
        verify_files(manifest, package_dir)
        manifest = self._sign(package_dir)
        prefix = self.prefix(manifest.name, manifest.version)
        if self.store.exists(f"{prefix}/registry.json"):
            existing = self._entry(manifest.name, manifest.version)
            if existing.sha256 != manifest.sha256:
                raise RegistryError(
                    f"{self.store.uri}: {manifest.name} {manifest.version} is already registered "
                    f"with a different model (sha256 {existing.sha256[:12]}..); versions are immutable"
                )
            return existing
        for entry in manifest.files:
            self.store.put_file(f"{prefix}/{entry.path}", package_dir / entry.path)
        self.store.put_file(f"{prefix}/{MANIFEST_NAME}", package_dir / MANIFEST_NAME)
        entry = RegistryEntry(
            name=manifest.name,
            version=manifest.version,
            tier=manifest.tier,
            status=status,
            location=self.store.url(prefix),
            sha256=manifest.sha256,
            key_id=manifest.signature.key_id if manifest.signature else None,
            metrics=dict(metrics or {}),
            history=[{"status": status, "time": time.time(), "reason": "registered"}],
        )
        self._after_publish(entry, manifest, package_dir)
        self._save(entry)
        if status == "Approved":
            self._approved(entry)
        return entry

    def _after_publish(self, entry: RegistryEntry, manifest: Manifest, package_dir: Path) -> None:
        """Backend hook (SageMaker: upload model.tar.gz, create the model package)."""

    def set_status(self, name: str, version: str, status: str, reason: str = "") -> RegistryEntry:
        """Change a version's approval status (Approved makes it the version deployment ships)."""
        _check_status(status)
        entry = self._entry(name, version)
        if entry.status == status:
            return entry
        entry.status = status
        entry.history.append({"status": status, "time": time.time(), "reason": reason})
        self._after_status(entry, reason)
        self._save(entry)
        if status == "Approved":
            self._approved(entry)
        elif self.approved_version(name) == version:
            self.store.delete(f"models/{name}/approved.json")
        return entry

    def _after_status(self, entry: RegistryEntry, reason: str) -> None:
        """Backend hook (SageMaker: update_model_package)."""

    def _approved(self, entry: RegistryEntry) -> None:
        self._write_json(
            f"models/{entry.name}/approved.json",
            {
                "name": entry.name,
                "version": entry.version,
                "tier": entry.tier,
                "location": entry.location,
                "sha256": entry.sha256,
                "time": time.time(),
            },
        )
        for hook in self.on_approved:
            hook(entry)

    def approved_version(self, name: str) -> Optional[str]:
        """Return the currently approved version of ``name`` (None if none)."""
        record = self._read_json(f"models/{name}/approved.json")
        return record["version"] if record else None

    def entries(self, name: str) -> list[RegistryEntry]:
        """Return every registered version of ``name``, oldest first."""
        versions = sorted(
            {
                info.key.split("/")[2]
                for info in self.store.list(f"models/{name}/")
                if info.key.endswith("/registry.json") and info.key.count("/") == 3
            }
        )
        entries = [self._entry(name, v) for v in versions]
        return sorted(entries, key=lambda e: e.history[0]["time"] if e.history else 0)

    def approved(self, name: str) -> Optional[RegistryEntry]:
        """Return the approved entry of ``name`` (None if none)."""
        version = self.approved_version(name)
        return self._entry(name, version) if version else None

    def fetch(self, name: str, version: str, destination: Path) -> Manifest:
        """Download a package into ``destination`` and verify it (files; signature with trusted keys)."""
        prefix = self.prefix(name, version)
        destination = Path(destination)
        try:
            raw = self.store.get_bytes(f"{prefix}/{MANIFEST_NAME}")
        except StoreError as exc:
            raise RegistryError(f"{self.store.uri}: cannot read {prefix}/{MANIFEST_NAME} ({exc})") from exc
        manifest = parse_manifest(json.loads(raw), f"{self.store.url(prefix)}/{MANIFEST_NAME}")
        staging = Path(
            tempfile.mkdtemp(prefix=".fetch-", dir=destination.parent if destination.parent.exists() else None)
        )
        try:
            for entry in manifest.files:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                self.store.get_file(f"{prefix}/{entry.path}", target)
            (staging / MANIFEST_NAME).write_bytes(raw)
            if self.trusted is not None:
                from fleetloop_core.signing import verify_package

                verify_package(staging, self.trusted)
            else:
                verify_files(manifest, staging)
            if destination.exists():
                shutil.rmtree(destination)
            staging.rename(destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest


def _load_keys(signing_key: str | None, trusted_keys: str | None):
    private = None
    if signing_key:
        try:
            private = Path(signing_key).read_bytes()
        except OSError as exc:
            raise ConfigError(f"registry.signing_key: cannot read {signing_key} ({exc.strerror or exc})") from exc
    trusted = None
    if trusted_keys:
        from fleetloop_core.signing import TrustedKeys

        trusted = TrustedKeys.load(trusted_keys)
    return private, trusted


def open_registry(config, on_approved: list[Callable[[RegistryEntry], None]] | None = None, client=None) -> Registry:
    """Return the registry backend ``config`` (a RegistryConfig) names."""
    private, trusted = _load_keys(config.signing_key, config.trusted_keys)
    uri = config.uri
    if "://" not in uri:
        uri = f"file://{Path(uri).resolve()}"
    store = open_store(uri)
    if config.backend == "local":
        return StoreRegistry(store, private, trusted, on_approved)
    if config.backend == "sagemaker":
        from fleetloop_cloud.registry_sagemaker import SageMakerRegistry

        if not store.url("x").startswith("s3://"):
            raise ConfigError(f"registry.uri: the sagemaker registry keeps packages in S3 (got {config.uri})")
        sm = config.sagemaker
        return SageMakerRegistry(
            store,
            sm.group_prefix,
            sm.image_uri,
            client=client,
            signing_key=private,
            trusted=trusted,
            on_approved=on_approved,
            region=sm.region,
            endpoint_url=sm.endpoint_url,
        )
    raise ConfigError(f"registry.backend: unknown backend {config.backend!r} (known: local, sagemaker)")
