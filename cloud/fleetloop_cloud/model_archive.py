"""``model.tar.gz``: how SageMaker moves models, both ways.

SageMaker hands a model to a container as one gzip tarball (``ModelDataUrl`` of a model or a
Model Registry package; the ``model.tar.gz`` a training job leaves) and extracts it into
``/opt/ml/model``. A FleetLoop package is a directory (manifest.json + the files it lists), so the
archive holds exactly that at its root: the manifest and every file it lists, hashes checked
before packing, nothing else (no staging files, no registry records). ``fleetloop-cloud serve``
then loads ``/opt/ml/model`` as it loads any package (hashes verified again).

Built on the standard library's ``tarfile``; extraction uses its ``data`` filter (members that
escape the directory, links and devices are refused) where the Python has it (3.10.12+ / 3.11.4+).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.contracts.manifest import MANIFEST_NAME, load_manifest, verify_files

ARCHIVE_NAME = "model.tar.gz"


class ArchiveError(FleetLoopError):
    """A model archive cannot be written or is unsafe/incomplete (message names the archive and member)."""


def _add(archive: tarfile.TarFile, path: Path, name: str) -> None:
    info = archive.gettarinfo(str(path), arcname=name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with open(path, "rb") as handle:
        archive.addfile(info, handle)


def pack_package(package_dir: Path, target: Path) -> Path:
    """Write ``target`` (model.tar.gz): the package's manifest and every file it lists, at the root."""
    package_dir = Path(package_dir)
    manifest = load_manifest(package_dir)
    verify_files(manifest, package_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as archive:
        _add(archive, package_dir / MANIFEST_NAME, MANIFEST_NAME)
        for entry in manifest.files:
            _add(archive, package_dir / entry.path, entry.path)
    return target


def pack_model_dir(model_dir: Path, target: Path) -> Path:
    """Write ``target``: every file under ``model_dir`` (what SageMaker uploads after a training job)."""
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(Path(model_dir).rglob("*")):
            if path.is_file():
                _add(archive, path, path.relative_to(model_dir).as_posix())
    return target


def extract(archive_path: Path, destination: Path, where: str | None = None) -> Path:
    """Extract ``archive_path`` into ``destination`` as SageMaker does; refuse unsafe members."""
    where = where or str(archive_path)
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            if hasattr(tarfile, "data_filter"):
                try:
                    archive.extractall(destination, filter="data")
                except tarfile.FilterError as exc:
                    raise ArchiveError(f"{where}: unsafe member in the model archive ({exc})") from None
            else:  # Python without extraction filters: refuse members escaping the directory, and links
                for member in archive.getmembers():
                    if (
                        member.name.startswith("/")
                        or ".." in Path(member.name).parts
                        or not (member.isfile() or member.isdir())
                    ):
                        raise ArchiveError(f"{where}: unsafe member {member.name} in the model archive")
                archive.extractall(destination)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{where}: not a readable model.tar.gz ({exc})") from None
    return destination
