"""Archives are extracted with every member checked: real tar and zip files holding ``..``, absolute paths and links."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest
import torch

from rsst.data.archives import UnsafeArchiveError, extract, filtered_tar_extraction
from rsst.data.files import CorruptDatasetError


def write_tar(path, members):
    """A real tar: ``(name, kind, payload)`` with kind file, symlink or hardlink (payload: contents or link target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, kind, payload in members:
            info = zipfile.ZipInfo(name)
            if kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, payload)


@pytest.fixture
def outside(tmp_path):
    """A file beside the destination that an archive aims at, and its bytes."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    return victim


@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize(
    ("member", "says"),
    [
        (("../victim.txt", "file", b"overwritten"), "'../victim.txt'"),
        (("data/../../victim.txt", "file", b"overwritten"), "'data/../../victim.txt'"),
        (("/abs/victim.txt", "file", b"overwritten"), "'/abs/victim.txt'"),
        (("data/link", "symlink", "../victim.txt"), "'data/link': a link"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink"],
)
def test_an_archive_member_outside_the_folder_or_a_link_is_refused_and_nothing_outside_changes(
    tmp_path, outside, kind, member, says
):
    archive = tmp_path / f"data.{'tar.gz' if kind == 'tar' else 'zip'}"
    (write_tar if kind == "tar" else write_zip)(archive, [("data/ok.txt", "file", b"fine"), member])
    dest = tmp_path / "dest"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UnsafeArchiveError) as err:
        extract(archive, dest)
    assert str(err.value).startswith(f"{archive}: refuses the archive member ") and says in str(err.value)
    assert isinstance(err.value, CorruptDatasetError)  # a run reports it as one line, like any broken data file
    assert outside.read_bytes() == b"precious\n"
    assert not (tmp_path / "abs").exists() and not (dest / "data" / "link").exists()
    assert {p: p.read_bytes() for p in before} == before


def test_a_hard_link_in_a_tar_is_refused(tmp_path, outside):
    archive = tmp_path / "data.tar.gz"
    write_tar(archive, [("data/ok.txt", "file", b"fine"), ("data/hard", "hardlink", "data/ok.txt")])
    with pytest.raises(UnsafeArchiveError, match=r"'data/hard': a link \(to 'data/ok.txt'\)"):
        extract(archive, tmp_path / "dest")


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_a_plain_archive_is_extracted_in_full(tmp_path, kind):
    archive = tmp_path / f"data.{'tar.gz' if kind == 'tar' else 'zip'}"
    files = {"data/a.txt": b"a" * 100, "data/sub/b.bin": bytes(range(256))}
    (write_tar if kind == "tar" else write_zip)(archive, [(n, "file", b) for n, b in files.items()])
    extract(archive, tmp_path / "dest")
    assert {n: (tmp_path / "dest" / n).read_bytes() for n in files} == files


def test_torchvisions_own_extraction_gets_the_filter_inside_the_block_and_its_default_back_after(tmp_path, outside):
    from torchvision.datasets.utils import extract_archive

    archive = tmp_path / "data.tar.gz"
    write_tar(archive, [("../victim.txt", "file", b"overwritten")])
    default = tarfile.TarFile.extraction_filter
    with pytest.raises(UnsafeArchiveError, match="'../victim.txt'"), filtered_tar_extraction():
        extract_archive(str(archive), str(tmp_path / "dest"))
    assert outside.read_bytes() == b"precious\n"
    assert tarfile.TarFile.extraction_filter is default


def test_imagenet_wnids_that_are_not_wordnet_ids_are_refused_before_any_image_moves(tmp_path):
    from rsst.data.imagenet import DEVKIT, META_FILE, TRAIN_TAR, VAL_TAR, ImageNet

    root = tmp_path / "imagenet"
    root.mkdir()
    for name in (DEVKIT, TRAIN_TAR, VAL_TAR):
        (root / name).write_bytes(b"archive")
    torch.save(({"n01440764": ("tench",)}, ["n01440764", "../../victim/X"]), root / META_FILE)
    with pytest.raises(CorruptDatasetError) as err:
        ImageNet(root=str(tmp_path), num_workers=0)
    assert str(err.value) == (
        f"{root / META_FILE}: '../../victim/X' is not a WordNet id (expected n and 8 digits, e.g. n01440764)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenet"]
    assert not (root / "val").exists() and not (root / "val.partial").exists()
