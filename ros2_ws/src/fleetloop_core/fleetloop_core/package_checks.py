"""What a model package must prove before the robot installs it: the checks on its manifest, no I/O.

:func:`checked_manifest` takes the manifest's bytes as fetched and checks, in this order, its sha256
against the job's (when the job pins it), its signature against the trusted keys, the name and
version the job expects, compatibility with the serving model (:func:`check_compatible`: task,
placement, input shape and type, label set) and that every file path is plain and relative. Each
failure raises a :class:`~fleetloop_core.errors.ModelError` naming the package and what failed. The
files' sizes and sha256 are checked once fetched (``fleetloop_core.model_store``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath

from fleetloop_core.contracts.manifest import MANIFEST_NAME, Manifest, parse_manifest
from fleetloop_core.errors import ModelError
from fleetloop_core.signing import SignatureError, TrustedKeys, verify_manifest


class IncompatibleModel(ModelError):
    """The package cannot replace the serving model (input shape or type, labels, task)."""


class PackageMismatch(ModelError):
    """The package is not the one the job asked for (name, version or manifest sha256)."""


def check_compatible(candidate: Manifest, serving: Manifest) -> None:
    """Return None when ``candidate`` can replace ``serving``; IncompatibleModel naming the field otherwise."""
    what = f"package {candidate.name} {candidate.version}"
    against = f"serving {serving.name} {serving.version}"
    if candidate.task != serving.task:
        raise IncompatibleModel(f"{what}: task {candidate.task} does not match {against} ({serving.task})")
    if candidate.placement != "robot":
        raise IncompatibleModel(f"{what}: placement {candidate.placement} is not robot")
    if list(candidate.input.shape[1:]) != list(serving.input.shape[1:]):
        raise IncompatibleModel(
            f"{what}: input.shape {candidate.input.shape} does not match {against} ({serving.input.shape})"
        )
    for field in ("dtype", "layout", "color_order"):
        mine, theirs = getattr(candidate.input, field), getattr(serving.input, field)
        if mine != theirs:
            raise IncompatibleModel(f"{what}: input.{field} {mine} does not match {against} ({theirs})")
    if list(candidate.labels) != list(serving.labels):
        missing = [label for label in serving.labels if label not in candidate.labels]
        extra = [label for label in candidate.labels if label not in serving.labels]
        detail = f"missing {missing}, extra {extra}" if missing or extra else "same labels in another order"
        raise IncompatibleModel(f"{what}: labels differ from {against}: {detail}")


def checked_manifest(
    manifest_bytes: bytes,
    manifest_sha256: str | None,
    where: str,
    trusted: TrustedKeys,
    serving: Manifest | None,
    expect_name: str | None,
    expect_version: str | None,
) -> Manifest:
    """Return the package's manifest once its hash, signature, name, version, compatibility and paths check out."""
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    if manifest_sha256 and digest != manifest_sha256:
        raise PackageMismatch(
            f"{where}/{MANIFEST_NAME}: sha256 {digest} is not the job's manifest_sha256 {manifest_sha256}"
        )
    try:
        data = json.loads(manifest_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{where}/{MANIFEST_NAME}: manifest is not valid JSON ({exc})") from None
    manifest = parse_manifest(data, f"{where}/{MANIFEST_NAME}")
    try:
        verify_manifest(manifest, trusted)
    except SignatureError as exc:
        raise SignatureError(f"{where}: {exc}") from None
    if expect_name is not None and manifest.name != expect_name:
        raise PackageMismatch(f"{where}: manifest name {manifest.name} is not the job's {expect_name}")
    if expect_version is not None and manifest.version != expect_version:
        raise PackageMismatch(f"{where}: manifest version {manifest.version} is not the job's {expect_version}")
    if serving is not None:
        try:
            check_compatible(manifest, serving)
        except IncompatibleModel as exc:
            raise IncompatibleModel(f"{where}: {exc}") from None
    _check_paths(manifest, where)
    return manifest


def _check_paths(manifest: Manifest, where: str) -> None:
    for entry in manifest.files:
        path = PurePosixPath(entry.path)
        if path.is_absolute() or ".." in path.parts or entry.path in ("", MANIFEST_NAME) or "\\" in entry.path:
            raise ModelError(f"{where}: manifest file path {entry.path!r} is not a plain relative path")


__all__ = ["IncompatibleModel", "PackageMismatch", "check_compatible", "checked_manifest"]
