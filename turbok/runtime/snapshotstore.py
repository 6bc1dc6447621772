"""Snapshots of pod sandboxes on this machine: where each lives, what it holds, and how disks are copied.

A snapshot is what a pod sandbox was at one instant, complete enough to start
any number of independent copies of it (forks) or to put a pod back to it
(restore). ``turbok.runtime.pods_gvisor`` takes and restores them; this module
only owns their layout under the pod runtime's root::

    <root>/.snapshots/<id>/
        memory/checkpoint.img    the sandbox's memory and kernel state (``runsc checkpoint``)
        memory/volumes/NAME/     the contents of its ``memory`` volumes (tmpfs emptyDirs)
        disk.img disk.json       a copy of the pod's disk (writable layers, emptyDirs, /app), made
                                 while the sandbox was stopped, so it matches the memory exactly
        container.json           the container's record at that instant (process, image, mounts)
        snapshot.json            ``SnapshotInfo`` plus the config key a restore must match;
                                 written last: a snapshot without it is incomplete and ignored

Ids are the runtime's fixed-width ids (``turbok.runtime.ids.sandbox_id``), so
paths are built only from checked names. Everything here is 0700/0600: a
memory image holds whatever the sandbox held (secrets included).

The pod's disk is flushed (``sync_filesystem``) while still mounted, right
after the checkpoint, and copied once its loop device has let go of the image
(``wait_released``): an unmount returns at once when another mount namespace
(runsc's gofer, going away) still holds the filesystem, which then lives on
unflushed, and a copy made then held stale blocks (a file's new size, zeros for
its data).

Disk copies (``copy_image``) are reflinks where the filesystem has them (btrfs,
xfs: O(1), shared blocks) and otherwise sparse copies that read and write only
the allocated extents (``SEEK_DATA``/``SEEK_HOLE`` with ``copy_file_range``):
a 4 GiB disk on which a sandbox wrote 50 MiB costs 50 MiB and a few ms.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from turbok.runtime import loopdev
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.ids import validate_id
from turbok.runtime.podlayout import DIR_MODE

__all__ = ["SNAPSHOTS_DIR", "SnapshotDir", "SnapshotInfo", "copy_image", "copy_tree", "list_snapshots",
           "sync_filesystem", "wait_released"]

SNAPSHOTS_DIR = ".snapshots"
_FICLONE = 0x40049409
_CHUNK = 64 * 1024 * 1024
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class SnapshotInfo:
    """What a complete snapshot holds (``snapshot.json``)."""

    id: str
    #: the pod sandbox it was taken of
    pod: str
    #: the container whose memory it holds (a snapshot holds one running container, as runsc restores one)
    container: str
    created_at: float
    memory_bytes: int
    #: bytes the disk copy takes on the host (its allocated extents)
    disk_bytes: int
    #: what a pod config must match to start from it (``pods_gvisor.snapshot_key``)
    key: Any = None


class SnapshotDir:
    """Paths of one snapshot (see the module docstring)."""

    def __init__(self, root: Path, id: str) -> None:
        self.id = validate_id(id)
        self.path = root / SNAPSHOTS_DIR / id

    @property
    def memory(self) -> Path:
        return self.path / "memory"

    @property
    def volumes(self) -> Path:
        return self.memory / "volumes"

    @property
    def disk_image(self) -> Path:
        return self.path / "disk.img"

    @property
    def disk_state(self) -> Path:
        return self.path / "disk.json"

    @property
    def container(self) -> Path:
        return self.path / "container.json"

    @property
    def info_file(self) -> Path:
        return self.path / "snapshot.json"

    def make(self) -> None:
        """A fresh, empty directory (what an interrupted earlier attempt left is removed)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.path.parent, DIR_MODE)
        self.path.mkdir(mode=DIR_MODE)

    def info(self) -> SnapshotInfo | None:
        """The snapshot's record; None while it is incomplete or absent."""
        try:
            data = json.loads(self.info_file.read_text())
            return SnapshotInfo(**data)
        except (OSError, ValueError, TypeError):
            return None

    def commit(self, info: SnapshotInfo) -> None:
        """Write ``snapshot.json`` (atomically, 0600): the snapshot is complete from now on."""
        tmp = self.info_file.with_name("snapshot.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(info), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.info_file)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def list_snapshots(root: Path) -> list[str]:
    """Ids of the complete snapshots under ``root``."""
    base = root / SNAPSHOTS_DIR
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    out = []
    for name in sorted(names):
        with contextlib.suppress(InvalidSandboxSpec):
            if (base / validate_id(name) / "snapshot.json").exists():
                out.append(name)
    return out


def copy_image(src: Path, dst: Path) -> int:
    """Copy the file ``src`` to ``dst`` (replaced atomically, mode 0600) as a reflink when the filesystem
    can, else extent by extent, keeping holes; the bytes ``dst`` takes on the host."""
    tmp = dst.with_name(dst.name + ".copy")
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.ioctl(fout, _FICLONE, fin)
            except OSError:
                _sparse_copy(fin, fout)
            os.fsync(fout)
        finally:
            os.close(fout)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fin)
    return os.stat(dst).st_blocks * 512


def _sparse_copy(fin: int, fout: int) -> None:
    size = os.fstat(fin).st_size
    os.ftruncate(fout, size)
    offset = 0
    while offset < size:
        try:
            data = os.lseek(fin, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data past offset: the rest is a hole
                break
            raise
        end = os.lseek(fin, data, os.SEEK_HOLE)
        pos = data
        while pos < end:
            n = os.copy_file_range(fin, fout, min(_CHUNK, end - pos), pos, pos)
            if n == 0:
                break
            pos += n
        offset = end


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a small directory tree (a memory volume's files), keeping modes and owners; ``dst`` replaced."""
    shutil.rmtree(dst, ignore_errors=True)
    if src.is_dir():
        dst.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        shutil.copytree(src, dst, symlinks=True)


def sync_filesystem(path: Path) -> None:
    """``syncfs`` the filesystem mounted at ``path``: its dirty data and journal written to its device."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def wait_released(image: Path, device_file: Path, timeout: float) -> bool:
    """Wait until the loop device named in ``device_file`` no longer backs ``image`` (its last mount gone, in
    every namespace); False if it still does after ``timeout`` seconds."""
    try:
        device = device_file.read_text().strip()
    except FileNotFoundError:
        return True
    deadline = time.monotonic() + timeout
    while True:
        backing = loopdev.backing_file(device)
        if backing is None or backing.removesuffix(" (deleted)") != str(image):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
