"""A pod's volumes on the host: ``files`` written atomically, ``memory`` on a bounded tmpfs, safe subPaths.

- ``files`` (configMap, secret, downwardAPI, projected): the node gives the contents;
  ``write_files`` lays them out as the kubelet's atomic writer does, so a container
  never sees half an update::

      files/NAME/..2024_05_01_12_00_00.123456789_ab12cd/   the contents (modes as given)
      files/NAME/..data -> ..2024_...                      swapped by one rename
      files/NAME/KEY -> ..data/KEY                         one link per top-level name

  The directory is mounted read-only into containers; an update writes a new
  timestamped directory, swaps ``..data``, fixes the top-level links and removes
  the old directory. Under gVisor the mount is ``--file-access-mounts=shared``, so
  a running container sees the new contents at once.
- ``memory`` (``emptyDir.medium: Memory``): a host tmpfs of ``size_bytes``
  (``nosuid,nodev``), so it is bounded, shared by the pod's containers, and outlives
  a container's restart, as a kubelet's is; ``save_memory``/``load_memory`` carry its
  files over a hibernation.
- emptyDir on disk: a directory on the pod's disk, mode 0777 as the kubelet makes
  it (containers running as other users write there).
- ``subPath``: a directory (or file) inside a volume is opened one component at a
  time without following symlinks (a container could have planted one leading
  anywhere on the host), then that very directory is bind-mounted onto a private
  mount point outside the sandbox's reach; the bundle names the mount point, never
  the path inside the volume.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from turbok.runtime import mounts
from turbok.runtime.errors import InvalidSandboxSpec

__all__ = [
    "DATA_LINK",
    "EMPTYDIR_MODE",
    "bind_subpath",
    "check_relative",
    "load_memory",
    "mount_memory",
    "save_memory",
    "unmount_memory",
    "write_files",
]

#: The link a files volume's readers follow (the kubelet's name).
DATA_LINK = "..data"
#: Mode of an emptyDir, as the kubelet makes it.
EMPTYDIR_MODE = 0o777
_MAX_FILE_MODE = 0o777


def check_relative(kind: str, path: str) -> list[str]:
    """The components of a relative path with no ``..``, no empty part and no leading ``..`` name."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0].startswith(".."):
        raise InvalidSandboxSpec(f"{kind} {path!r}: want a relative path without '..', '.' or empty parts")
    if "\0" in path:
        raise InvalidSandboxSpec(f"{kind} {path!r}: contains a NUL")
    return parts


def write_files(target: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Make ``target`` hold exactly ``files`` (path -> (contents, mode)), atomically for readers."""
    for path, (_, mode) in files.items():
        check_relative("file", path)
        if not 0 <= mode <= _MAX_FILE_MODE:
            raise InvalidSandboxSpec(f"file {path!r}: mode {mode:o} is not 0-0777")
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y_%m_%d_%H_%M_%S.%f")
    data = target / f"..{stamp}_{secrets.token_hex(3)}"
    data.mkdir(mode=0o755)
    try:
        for path, (contents, mode) in files.items():
            dest = data / path
            dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, contents)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        raise
    old = os.readlink(target / DATA_LINK) if os.path.islink(target / DATA_LINK) else None
    tmp = target / f"{DATA_LINK}_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(data.name, tmp)
    os.replace(tmp, target / DATA_LINK)  # the switch: readers see the old set or the new one
    wanted = {path.split("/", 1)[0] for path in files}
    for name in wanted:
        link = target / name
        if not os.path.islink(link) or os.readlink(link) != f"{DATA_LINK}/{name}":
            tmp_link = target / f".{name}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp_link.unlink()
            os.symlink(f"{DATA_LINK}/{name}", tmp_link)
            os.replace(tmp_link, link)
    for entry in os.scandir(target):
        if entry.name.startswith(".."):
            if entry.name not in (DATA_LINK, data.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
        elif entry.name not in wanted and entry.is_symlink():
            os.unlink(entry.path)
    if old and old != data.name:
        shutil.rmtree(target / old, ignore_errors=True)


def mount_memory(path: Path, size_bytes: int | None) -> None:
    """A tmpfs of ``size_bytes`` (default: half the host's memory, tmpfs' own) on ``path``; no-op if mounted."""
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    if mounts.is_mount_root(path):
        return
    options = f"mode={EMPTYDIR_MODE:o}" + (f",size={size_bytes}" if size_bytes else "")
    mounts.mount("tmpfs", path, "tmpfs", mounts.SAFE, options)


def unmount_memory(path: Path) -> None:
    mounts.unmount(path)
    with contextlib.suppress(OSError):
        path.rmdir()


def save_memory(path: Path, keep: Path) -> None:
    """Copy a memory volume's files to ``keep`` (on disk) before its tmpfs goes (hibernation)."""
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(path, keep, symlinks=True)


def load_memory(keep: Path, path: Path) -> None:
    """Put the files ``save_memory`` kept back on the (new) tmpfs, and drop the copy."""
    if keep.is_dir():
        shutil.copytree(keep, path, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(keep, ignore_errors=True)


def bind_subpath(volume: Path, sub_path: str, target: Path, *, read_only: bool) -> None:
    """Bind ``volume/sub_path`` onto ``target`` without following a symlink on the way (made if missing,
    as the kubelet makes a missing subPath directory). ``target`` is a private host path."""
    parts = check_relative("subPath", sub_path)
    fd = os.open(volume, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nxt = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, EMPTYDIR_MODE, dir_fd=fd)
                nxt = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            mode = os.fstat(nxt).st_mode
            if not (stat.S_ISDIR(mode) or (last and stat.S_ISREG(mode))):
                os.close(nxt)
                raise InvalidSandboxSpec(f"subPath {sub_path!r}: {part!r} is not a directory (a symlink?)")
            os.close(fd)
            fd = nxt
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        if target.is_symlink() or (target.exists() and target.is_dir() != is_dir):
            target.unlink() if not target.is_dir() else target.rmdir()
        if is_dir:
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
        else:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            target.touch(mode=0o600, exist_ok=True)
        mounts.unmount(target)
        mounts.mount(f"/proc/self/fd/{fd}", target, None, mounts.MS_BIND)
        flags = mounts.SAFE | (mounts.MS_RDONLY if read_only else 0)
        try:
            mounts.mount("none", target, None, mounts.MS_REMOUNT | mounts.MS_BIND | flags)
        except OSError:
            mounts.unmount(target)
            raise
    finally:
        os.close(fd)
