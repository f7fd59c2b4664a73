"""The on-robot model store: fetch a signed package, prove it, install it atomically, keep a few versions.

Layout under the store's root directory::

    packages/<name>/<version>/   installed packages (manifest.json + the files it lists); never edited
    incoming/<random>/           downloads in progress; a crash leaves only this, cleaned at start
    state.json                   the model manager's persistent state (serving versions, jobs done)

:meth:`ModelStore.install` downloads into ``incoming/`` (from an object store via
``fleetloop_core.store.open_store`` or from a local directory), checks, in this order, the
manifest's sha256 against the job (when the job pins it), the signature against the trusted keys,
the expected name and version, compatibility with the serving model (input shape and type, label
set) (these in ``fleetloop_core.package_checks``), the disk cap, then every file's size and sha256;
only then it fsyncs and renames the directory into ``packages/``. Any rejection raises a
:class:`~fleetloop_core.errors.ModelError` whose message names what failed, and leaves the installed
packages (and so the serving model) untouched.

In an object store a package lives under ``models/<name>/<version>/`` (:func:`package_prefix`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol

from pydantic import Field, model_validator

from fleetloop_core.config import ConfigModel
from fleetloop_core.errors import ModelError
from fleetloop_core.contracts.manifest import MANIFEST_NAME, Manifest, load_manifest, verify_files
from fleetloop_core.package_checks import IncompatibleModel, checked_manifest
from fleetloop_core.signing import TrustedKeys
from fleetloop_core.store import ObjectStore, StoreError, open_store

log = logging.getLogger(__name__)

MODELS_PREFIX = "models"
STATE_NAME = "state.json"


class StoreFull(ModelError):
    """The package does not fit under the store's disk cap, even after pruning old versions."""


def package_prefix(name: str, version: str) -> str:
    """Return the object-store key prefix of a package: ``models/<name>/<version>``."""
    return f"{MODELS_PREFIX}/{name}/{version}"


class PackageLocation(ConfigModel):
    """Where a package is: an object store URI plus key prefix, or a local directory.

    ``manifest_sha256`` (optional) pins the exact manifest bytes the job means.
    """

    store: Optional[str] = None
    prefix: Optional[str] = None
    path: Optional[str] = None
    manifest_sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_source(self) -> "PackageLocation":
        if (self.path is None) == (self.store is None):
            raise ValueError("give either path (a local directory) or store + prefix")
        if self.store is not None and not self.prefix:
            raise ValueError("store needs a prefix (models/<name>/<version>)")
        return self

    def describe(self) -> str:
        """Return a human-readable location (store URI/prefix or the directory)."""
        if self.path is not None:
            return self.path
        return f"{(self.store or '').rstrip('/')}/{(self.prefix or '').strip('/')}"


# ------------------------------------------------------------------------------ package sources
class _Source(Protocol):
    where: str

    def read(self, relative: str) -> bytes: ...
    def fetch(self, relative: str, destination: Path) -> None: ...


class _StoreSource:
    def __init__(self, store: ObjectStore, prefix: str):
        self.store, self.prefix = store, prefix.strip("/")
        self.where = f"{store.uri.rstrip('/')}/{self.prefix}"

    def read(self, relative: str) -> bytes:
        return self.store.get_bytes(f"{self.prefix}/{relative}")

    def fetch(self, relative: str, destination: Path) -> None:
        self.store.get_file(f"{self.prefix}/{relative}", destination)


class _DirectorySource:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.where = str(self.directory)

    def read(self, relative: str) -> bytes:
        try:
            return (self.directory / relative).read_bytes()
        except OSError as exc:
            raise ModelError(f"{self.directory / relative}: cannot read ({exc.strerror or exc})") from None

    def fetch(self, relative: str, destination: Path) -> None:
        try:
            shutil.copyfile(self.directory / relative, destination)
        except OSError as exc:
            raise ModelError(f"{self.directory / relative}: cannot copy ({exc.strerror or exc})") from None


def _source(location: PackageLocation) -> _Source:
    if location.path is not None:
        return _DirectorySource(location.path)
    if location.store is None or location.prefix is None:  # the model's validator makes this impossible
        raise IncompatibleModel(f"{location.describe()}: neither a directory nor a store and prefix")
    return _StoreSource(open_store(location.store), location.prefix)


def publish_package(directory: str | Path, store: ObjectStore | str) -> str:
    """Upload a package to ``models/<name>/<version>/`` (files first, manifest last); return the prefix."""
    directory = Path(directory)
    store = open_store(store) if isinstance(store, str) else store
    manifest = load_manifest(directory)
    verify_files(manifest, directory)
    prefix = package_prefix(manifest.name, manifest.version)
    for entry in manifest.files:
        store.put_file(f"{prefix}/{entry.path}", directory / entry.path, metadata={"sha256": entry.sha256})
    # the manifest goes last: a reader that finds it finds every file it lists
    store.put_file(f"{prefix}/{MANIFEST_NAME}", directory / MANIFEST_NAME)
    return prefix


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------ the store
@dataclass(frozen=True)
class InstalledPackage:
    """One installed package: its manifest, directory, size (bytes) and install time (unix seconds)."""

    manifest: Manifest
    directory: Path
    size_bytes: int
    installed_at: float

    @property
    def key(self) -> tuple[str, str]:
        return self.manifest.name, self.manifest.version


class ModelStoreConfig(ConfigModel):
    """Where packages are installed, how many versions stay, the disk cap, the trusted keys."""

    root: str = "/var/lib/fleetloop/models"
    keep_versions: int = Field(default=3, ge=2)  # per package name; >= 2 so one rollback target stays
    max_bytes: Optional[int] = Field(default=None, gt=0)  # cap on packages/ in bytes; None = no cap
    trusted_keys: str = "/etc/fleetloop/trusted_keys"  # directory of *.pub or a YAML file


class ModelStore:
    """Installed, verified model packages on the robot's disk."""

    INSTALLED_MARK = ".installed"

    def __init__(self, root: str | Path, trusted: TrustedKeys, keep_versions: int = 3, max_bytes: int | None = None):
        self.root = Path(root)
        self.trusted = trusted
        self.keep_versions = max(2, int(keep_versions))
        self.max_bytes = max_bytes
        self.packages = self.root / "packages"
        self.incoming = self.root / "incoming"
        self.packages.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.incoming, ignore_errors=True)  # leftovers of an interrupted download
        self.incoming.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_config(cls, config: ModelStoreConfig, trusted: TrustedKeys | None = None) -> "ModelStore":
        """Return the store described by ``config`` (trusted keys loaded from it unless given)."""
        return cls(
            config.root, trusted or TrustedKeys.load(config.trusted_keys), config.keep_versions, config.max_bytes
        )

    # ------------------------------------------------------------------ queries
    def installed(self) -> list[InstalledPackage]:
        """Return every installed package, oldest install first."""
        found = []
        for mark in self.packages.glob(f"*/*/{self.INSTALLED_MARK}"):
            directory = mark.parent
            try:
                manifest = load_manifest(directory)
                installed_at = float(mark.read_text().strip() or 0)
            except (ModelError, ValueError, OSError) as exc:
                log.warning("%s: ignoring unreadable installed package (%s)", directory, exc)
                continue
            found.append(InstalledPackage(manifest, directory, _tree_bytes(directory), installed_at))
        return sorted(found, key=lambda p: (p.installed_at, p.directory.name))

    def get(self, name: str, version: str) -> InstalledPackage | None:
        """Return the installed package ``name`` ``version``, or None."""
        for package in self.installed():
            if package.key == (name, version):
                return package
        return None

    def bytes_used(self) -> int:
        """Return the bytes taken by installed packages."""
        return sum(p.size_bytes for p in self.installed())

    # ------------------------------------------------------------------ install
    def install(
        self,
        location: PackageLocation,
        serving: Manifest | None = None,
        expect_name: str | None = None,
        expect_version: str | None = None,
        protect: Iterable[tuple[str, str]] = (),
    ) -> InstalledPackage:
        """Fetch, verify and atomically install the package at ``location``; return it.

        ``serving`` is the manifest the package must be compatible with; ``protect`` lists
        (name, version) pairs pruning must keep (serving and rollback targets). Raises
        ModelError (SignatureError, IncompatibleModel, PackageMismatch, StoreFull, or a size/sha256
        failure) naming what failed; StoreError when the source cannot be read.
        """
        source = _source(location)
        where = source.where
        manifest_bytes = source.read(MANIFEST_NAME)
        manifest = checked_manifest(
            manifest_bytes, location.manifest_sha256, where, self.trusted, serving, expect_name, expect_version
        )
        existing = self.get(manifest.name, manifest.version)
        if existing is not None:
            if existing.manifest.signature == manifest.signature:
                try:
                    verify_files(existing.manifest, existing.directory)
                    return existing  # installed before: nothing to fetch
                except ModelError as exc:
                    log.warning("%s: installed copy is damaged (%s); installing again", existing.directory, exc)
            shutil.rmtree(existing.directory, ignore_errors=True)
        protect = set(protect)
        required = len(manifest_bytes) + sum(entry.size_bytes for entry in manifest.files)
        if self.max_bytes is not None:
            kept = sum(p.size_bytes for p in self.installed() if p.key in protect)
            if kept + required > self.max_bytes:
                raise StoreFull(
                    f"{where}: package needs {required} bytes; with the {kept} bytes of the serving "
                    f"and rollback versions that exceeds the disk cap of {self.max_bytes} bytes"
                )
        target, installed_at = self._fetch_and_place(source, manifest, manifest_bytes)
        package = InstalledPackage(load_manifest(target), target, _tree_bytes(target), float(f"{installed_at:.6f}"))
        log.info("installed %s %s (%d bytes) from %s", manifest.name, manifest.version, package.size_bytes, where)
        self.prune(protect | {package.key})
        return package

    def _fetch_and_place(self, source: _Source, manifest: Manifest, manifest_bytes: bytes) -> tuple[Path, float]:
        """Fetch every file into a staging directory, verify, fsync and rename it into place; return (dir, time)."""
        staging = Path(tempfile.mkdtemp(dir=self.incoming, prefix=f"{manifest.name}-"))
        try:
            for entry in manifest.files:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                source.fetch(entry.path, target)
            try:
                verify_files(manifest, staging)
            except ModelError as exc:
                raise ModelError(str(exc).replace(str(staging), source.where)) from None
            (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
            installed_at = time.time()
            (staging / self.INSTALLED_MARK).write_text(f"{installed_at:.6f}\n")
            for path in staging.rglob("*"):
                if path.is_file():
                    _fsync(path)
            for path in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
                _fsync(path)
            _fsync(staging)
            target = self.packages / manifest.name / manifest.version
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, target)  # atomic: the package appears whole or not at all
            _fsync(target.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target, installed_at

    def prune(self, protect: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        """Remove old versions beyond ``keep_versions`` per name and beyond the disk cap; return what went."""
        protect = set(protect)
        removed: list[tuple[str, str]] = []
        installed = self.installed()
        by_name: dict[str, list[InstalledPackage]] = {}
        for package in installed:
            by_name.setdefault(package.manifest.name, []).append(package)
        doomed = []
        for packages in by_name.values():
            surplus = len(packages) - self.keep_versions
            doomed.extend([p for p in packages if p.key not in protect][: max(0, surplus)])
        if self.max_bytes is not None:
            used = sum(p.size_bytes for p in installed) - sum(p.size_bytes for p in doomed)
            for package in installed:  # oldest first
                if used <= self.max_bytes:
                    break
                if package.key not in protect and package not in doomed:
                    doomed.append(package)
                    used -= package.size_bytes
        for package in doomed:
            shutil.rmtree(package.directory, ignore_errors=True)
            removed.append(package.key)
            log.info("pruned %s %s", *package.key)
        for directory in self.packages.iterdir():
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        return removed

    # ------------------------------------------------------------------ persistent state
    def load_state(self) -> dict[str, Any]:
        """Return the saved manager state (an empty dict when none)."""
        path = self.root / STATE_NAME
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: unreadable model-manager state ({exc})") from None

    def save_state(self, state: dict[str, Any]) -> None:
        """Write the manager state atomically (temp file, fsync, rename)."""
        path = self.root / STATE_NAME
        temporary = self.root / f".{STATE_NAME}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


__all__ = [
    "InstalledPackage",
    "ModelStore",
    "ModelStoreConfig",
    "PackageLocation",
    "StoreError",
    "StoreFull",
    "package_prefix",
    "publish_package",
]
