"""Snapshot data on disk (``turbok.runtime.snapshotstore``): sparse copies that keep holes and bytes, private files,
only complete snapshots listed, ids checked before a path is built."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.snapshotstore import SnapshotDir, SnapshotInfo, copy_image, list_snapshots, wait_released

MiB = 1 << 20


def test_a_disk_copy_keeps_its_bytes_and_its_holes(tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    with open(src, "wb") as f:
        f.truncate(256 * MiB)
        for offset in (0, 100 * MiB, 256 * MiB - 4096):
            f.seek(offset)
            f.write(os.urandom(4096) + b"marker %d" % offset)
    dst = tmp_path / "copy.img"
    used = copy_image(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert used < 4 * MiB, "only the written extents take room"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.copy"))


def test_only_complete_snapshots_are_listed_and_their_files_are_private(tmp_path: Path) -> None:
    done, partial = SnapshotDir(tmp_path, "tk" + "a" * 22), SnapshotDir(tmp_path, "tk" + "b" * 22)
    for d in (done, partial):
        d.make()
    (tmp_path / ".snapshots" / "not-an-id").mkdir()
    info = SnapshotInfo(id=done.id, pod="tk" + "c" * 22, container="main", created_at=1.0, memory_bytes=5,
                        disk_bytes=6, key={"memory": 1})
    done.commit(info)
    assert list_snapshots(tmp_path) == [done.id]
    assert done.info() == info and partial.info() is None
    assert stat.S_IMODE(done.info_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(done.path.stat().st_mode) == 0o700
    done.remove()
    assert list_snapshots(tmp_path) == [] and done.info() is None


@pytest.mark.parametrize("bad", ["../../etc", "tk" + "a" * 21, "TK" + "a" * 22, ""])
def test_a_bad_id_never_becomes_a_path(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidSandboxSpec):
        SnapshotDir(tmp_path, bad)


def test_a_disk_never_mounted_is_released(tmp_path: Path) -> None:
    assert wait_released(tmp_path / "disk.img", tmp_path / "disk.loop", timeout=0.0)
