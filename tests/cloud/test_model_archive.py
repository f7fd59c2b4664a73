"""model.tar.gz both ways: exactly the package going in, nothing unsafe coming out."""

import io
import tarfile

import pytest

from fleetloop_core.errors import ModelError
from fleetloop_core.contracts.manifest import load_manifest

from fleetloop_cloud.model_archive import ArchiveError, extract, pack_package


def test_the_archive_holds_the_manifest_and_every_listed_file_only(tmp_path, model_copy):
    package = model_copy("T4")
    (package / "scratch.tmp").write_text("not part of the package")
    archive = pack_package(package, tmp_path / "model.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert all(m.uid == 0 and m.isfile() for m in tar.getmembers())
    assert sorted(names) == sorted(["manifest.json"] + [f.path for f in load_manifest(package).files])
    out = extract(archive, tmp_path / "opt" / "ml" / "model")
    assert load_manifest(out).sha256 == load_manifest(package).sha256


def test_a_package_whose_files_do_not_match_is_not_packed(tmp_path, model_copy):
    package = model_copy("T4")
    (package / "model.onnx").write_bytes(b"changed after the manifest was written")
    with pytest.raises(ModelError, match="model.onnx"):
        pack_package(package, tmp_path / "model.tar.gz")
    assert not (tmp_path / "model.tar.gz").exists()


@pytest.mark.parametrize("member", ["../escape.txt", "link"])
def test_unsafe_members_are_refused_with_the_name(tmp_path, member):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(ArchiveError, match="unsafe member"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_a_truncated_archive_is_named(tmp_path, model_copy):
    archive = pack_package(model_copy("T4"), tmp_path / "model.tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(ArchiveError, match="not a readable model.tar.gz"):
        extract(archive, tmp_path / "out")
