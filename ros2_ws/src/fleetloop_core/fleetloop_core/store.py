"""Object stores behind one small interface, picked by URI.

``open_store("file:///var/fleetloop/store")`` (embedded default) or
``open_store("s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1")``
(any S3 API, via boto3; multipart above a threshold through boto3's transfer manager).

Keys are '/'-separated relative paths. Object layout used by the fleet (the cloud ingest's input;
a SageMaker Ground Truth input manifest is derived from it):

    frames/<robot_id>/<YYYY-MM-DD>/<sha256>.<png|jpg>   the encoded frame
    frames/<robot_id>/<YYYY-MM-DD>/<sha256>.json        its sidecar (fleetloop_core.contracts.sidecar)
    models/<name>/<version>/...                         signed model packages

The robot's uploader writes the frame object first and the sidecar last, so a sidecar is the
commit marker: the ingest reads only frames whose sidecar exists. :func:`ground_truth_manifest`
turns that layout into SageMaker Ground Truth input-manifest lines (``{"source-ref": ...}``).

Puts are atomic (a reader never sees half an object) and idempotent when the key carries the
content hash: putting the same bytes twice leaves one object. S3 puts send a SHA-256 checksum
the service verifies, and store the hex sha256 as object metadata (``sha256``).
Errors: :class:`StoreUnavailable` when a retry may help (endpoint unreachable, connection
dropped, throttling); plain :class:`StoreError` when it will not (credentials refused, missing
bucket), so an uploader backs off on the first and reports the second.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import parse_qs, unquote, urlparse

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.durable import fsync_dir


class StoreError(FleetLoopError):
    """The store refused or failed an operation (message names store, key and cause)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; retry later (network, endpoint down)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: key, size (bytes), metadata."""

    key: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectStore(Protocol):
    """What every store backend offers."""

    uri: str

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None: ...
    def put_file(self, key: str, path: str | Path, metadata: dict[str, str] | None = None) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_file(self, key: str, path: str | Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def url(self, key: str) -> str: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or any(part in ("", ".", "..") for part in key.split("/")):
        raise StoreError(f"invalid object key {key!r}: use a relative '/'-separated path without '..'")
    return key


class FileStore:
    """A directory as an object store; metadata lives in a ``.<name>.meta`` side file."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = f"file://{self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.uri}: cannot create store directory ({exc.strerror or exc})") from exc

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _write_atomic(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            fsync_dir(target.parent)
        except OSError as exc:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise StoreError(
                f"{self.uri}: cannot write {target.relative_to(self.root)} ({exc.strerror or exc})"
            ) from exc

    def _meta_path(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.meta")

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        path = self._path(key)
        if metadata:
            import json

            self._write_atomic(self._meta_path(path), json.dumps(metadata, sort_keys=True).encode())
        self._write_atomic(path, data)

    def put_file(self, key: str, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        self.put_bytes(key, Path(path).read_bytes(), metadata)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.uri}: no object {key}") from None

    def get_file(self, key: str, path: str | Path) -> None:
        Path(path).write_bytes(self.get_bytes(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        metadata = {}
        meta = self._meta_path(path)
        if meta.is_file():
            import json

            metadata = json.loads(meta.read_text())
        return ObjectInfo(key=key, size=path.stat().st_size, metadata=metadata)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root
        for directory, _, files in sorted(os.walk(base)):
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = Path(directory) / name
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield ObjectInfo(key=key, size=path.stat().st_size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        for target in (path, self._meta_path(path)):
            try:
                target.unlink()
            except FileNotFoundError:
                pass

    def url(self, key: str) -> str:
        return f"{self.uri}/{_check_key(key)}"


class S3Store:
    """An S3 bucket/prefix through boto3 (any S3-compatible endpoint)."""

    MULTIPART_THRESHOLD = 8 * 1024 * 1024

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int | None = None,
        client=None,
    ):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self._client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30),
        )
        threshold = multipart_threshold or self.MULTIPART_THRESHOLD
        self._transfer = TransferConfig(
            multipart_threshold=threshold, multipart_chunksize=max(threshold, 5 * 1024 * 1024)
        )

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    _REFUSED = {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "403",
        "401",
        "Forbidden",
    }
    _BUSY = {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "503",
        "500",
        "502",
        "504",
    }

    def _error(self, action: str, key: str, exc: Exception) -> StoreError:
        """Return the StoreError for a boto3 failure: StoreUnavailable only when a retry can help."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectionError as BotoConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__  # upload_file wraps the service's answer
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"{self.uri}: no usable AWS credentials to {action} {key} ({exc}); "
                "set them in the environment, ~/.aws or the instance role"
            )
        if isinstance(
            exc, (BotoConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectionError, TimeoutError)
        ):
            return StoreUnavailable(f"{self.uri}: cannot reach the store to {action} {key} ({exc})")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            if code in self._REFUSED:
                return StoreError(
                    f"{self.uri}: credentials refused ({code}: {error.get('Message') or 'forbidden'}) "
                    f"when trying to {action} {key}"
                )
            if code in self._BUSY:
                return StoreUnavailable(f"{self.uri}: store busy ({code}) when trying to {action} {key}")
            if code == "NoSuchBucket":
                return StoreError(f"{self.uri}: bucket {self.bucket} does not exist (when trying to {action} {key})")
            return StoreError(f"{self.uri}: {action} {key} failed ({code}: {exc})")
        from botocore.exceptions import BotoCoreError

        if isinstance(exc, BotoCoreError) and "connect" in type(exc).__name__.lower():
            return StoreUnavailable(f"{self.uri}: cannot reach the store to {action} {key} ({exc})")
        return StoreError(f"{self.uri}: {action} {key} failed ({type(exc).__name__}: {exc})")

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        import io

        self._upload(key, io.BytesIO(data), metadata, hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        with open(path, "rb") as handle:
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            handle.seek(0)
            self._upload(key, handle, metadata, digest.hexdigest())

    def _upload(self, key: str, handle, metadata: dict[str, str] | None, sha256_hex: str) -> None:
        extra = {"Metadata": {**(metadata or {}), "sha256": sha256_hex}, "ChecksumAlgorithm": "SHA256"}
        try:
            self._client.upload_fileobj(handle, self.bucket, self._key(key), ExtraArgs=extra, Config=self._transfer)
        except Exception as exc:  # boto3 raises several unrelated exception types
            raise self._error("put", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:
            raise self._error("get", key, exc) from exc

    def get_file(self, key: str, path: str | Path) -> None:
        try:
            self._client.download_file(self.bucket, self._key(key), str(path), Config=self._transfer)
        except Exception as exc:
            raise self._error("get", key, exc) from exc

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            response = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("head", key, exc) from exc
        except Exception as exc:
            raise self._error("head", key, exc) from exc
        return ObjectInfo(key=key, size=int(response["ContentLength"]), metadata=dict(response.get("Metadata", {})))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise StoreError(f"invalid key prefix {prefix!r}: use a relative '/'-separated path without '..'")
        # a prefix is not a key: it may end with '/' (list one "directory") or be empty
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    yield ObjectInfo(key=item["Key"][strip:], size=int(item["Size"]))
        except Exception as exc:
            raise self._error("list", prefix or "(all)", exc) from exc

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._error("delete", key, exc) from exc

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def open_store(uri: str) -> ObjectStore:
    """Return the store for ``uri``: ``file:///path`` or ``s3://bucket/prefix[?endpoint_url=..&region=..]``."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"{uri}: file URIs must be file:///absolute/path")
        return FileStore(unquote(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"{uri}: s3 URIs must name a bucket (s3://bucket/prefix)")
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(options) - {"endpoint_url", "region", "multipart_threshold"}
        if unknown:
            raise StoreError(
                f"{uri}: unknown option(s) {sorted(unknown)} (known: endpoint_url, region, multipart_threshold)"
            )
        threshold = int(options["multipart_threshold"]) if "multipart_threshold" in options else None
        return S3Store(
            parsed.netloc,
            parsed.path,
            endpoint_url=options.get("endpoint_url"),
            region=options.get("region"),
            multipart_threshold=threshold,
        )
    if not parsed.scheme and uri.startswith("/"):
        return FileStore(uri)
    raise StoreError(f"{uri}: unknown store scheme {parsed.scheme!r} (known: file, s3)")


def ground_truth_manifest(store: ObjectStore, prefix: str = "frames/") -> Iterator[dict[str, str]]:
    """Yield one SageMaker Ground Truth input-manifest line per committed frame under ``prefix``.

    A frame is committed when its sidecar (``<sha256>.json``) exists beside it (the uploader
    writes the sidecar last). Each line is ``{"source-ref": <frame URL>, "fleetloop-sidecar-ref":
    <sidecar URL>}``; write them as JSON Lines for a labeling job.
    """
    images: dict[str, str] = {}
    sidecars: dict[str, str] = {}
    for info in store.list(prefix):
        stem, _, extension = info.key.rpartition(".")
        if extension == "json":
            sidecars[stem] = info.key
        elif extension in ("png", "jpg"):
            images[stem] = info.key
    for stem in sorted(sidecars):
        if stem in images:
            yield {"source-ref": store.url(images[stem]), "fleetloop-sidecar-ref": store.url(sidecars[stem])}
