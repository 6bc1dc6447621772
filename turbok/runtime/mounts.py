"""Host mounts the runtime makes: direct ``mount(2)``/``umount2(2)`` calls, no ``mount(8)`` process.

Every mount a sandbox can write through is ``nosuid,nodev`` (``SAFE``): a
setuid file or a device node made inside a sandbox means nothing on the host.
``is_mount_root`` asks ``statx`` (``STATX_ATTR_MOUNT_ROOT``), so it also sees a
directory bound onto itself, which ``os.path.ismount`` (a device comparison)
does not. Used by ``overlay``, ``disk`` and the runtimes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import time
from pathlib import Path

__all__ = [
    "MS_BIND",
    "MS_NODEV",
    "MS_NOSUID",
    "MS_RDONLY",
    "SAFE",
    "bind_onto_itself",
    "is_mount_root",
    "is_mounted",
    "mount",
    "mounts_below",
    "read_only",
    "unescape",
    "unmount",
]

log = logging.getLogger("turbok.runtime.mounts")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
#: What every mount holding sandbox-written files gets.
SAFE = MS_NOSUID | MS_NODEV
_MNT_DETACH = 0x2
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_ATTR_MOUNT_ROOT = 0x2000
_STATX_ATTRIBUTES_OFFSET = 8  # struct statx: u32 mask, u32 blksize, u64 attributes, ...
_STATX_ATTRIBUTES_MASK_OFFSET = 56


def mount(source: str, target: Path, fstype: str | None, flags: int, data: str = "") -> None:
    """``mount(2)``; raises ``OSError`` with the errno."""
    rc = _libc.mount(source.encode(), os.fsencode(target), fstype.encode() if fstype else None, flags,
                     data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def is_mount_root(path: Path) -> bool:
    """True when ``path`` is the root of a mount (bind mounts of the same filesystem included)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, 0, buf) != 0:
        return False
    mask = int.from_bytes(buf.raw[_STATX_ATTRIBUTES_MASK_OFFSET:_STATX_ATTRIBUTES_MASK_OFFSET + 8], "little")
    if not mask & _STATX_ATTR_MOUNT_ROOT:  # kernel older than 5.8: device comparison only
        return os.path.ismount(path)
    attributes = int.from_bytes(buf.raw[_STATX_ATTRIBUTES_OFFSET:_STATX_ATTRIBUTES_OFFSET + 8], "little")
    return bool(attributes & _STATX_ATTR_MOUNT_ROOT)


def is_mounted(path: Path) -> bool:
    return is_mount_root(path)


def mounts_below(path: Path) -> list[str]:
    """Mount points strictly below ``path`` in this process' mount namespace."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = unescape(line.split(" ", 5)[4])
            if point.startswith(prefix):
                found.append(point)
    return found


def unescape(field: str) -> str:
    """A path as ``/proc/*/mountinfo`` writes it (space, tab, newline and backslash as octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def read_only(path: Path) -> bool:
    """Whether the filesystem at ``path`` is read-only now (ext4 turns so after a write error)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def bind_onto_itself(path: Path, flags: int = SAFE) -> None:
    """Bind ``path`` onto itself with ``flags`` (a bind takes new flags only on a remount)."""
    mount(str(path), path, None, MS_BIND)
    try:
        mount("none", path, None, MS_REMOUNT | MS_BIND | flags)
    except OSError:
        unmount(path)
        raise


def unmount(target: Path, *, lazy: bool = True, wait: float = 0.0) -> None:
    """Unmount ``target`` if mounted.

    A plain unmount first (retried for ``wait`` seconds while busy), so the
    filesystem is gone when this returns; if something still holds it (a
    namespace being torn down, an open descriptor) and ``lazy``, detach it and
    let the kernel finish when the last user goes.
    """
    if not is_mount_root(target):
        return
    deadline = time.monotonic() + wait
    while True:
        if _libc.umount2(os.fsencode(target), 0) == 0:
            return
        err = ctypes.get_errno()
        if err != errno.EBUSY or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    if err == errno.EBUSY and lazy:
        log.info("unmounting %s lazily: still busy after %.1f s", target, wait)
        rc = _libc.umount2(os.fsencode(target), _MNT_DETACH)
        if rc == 0:
            return
        err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOENT):  # raced with another unmount
        raise OSError(err, f"umount {target}: {os.strerror(err)}")
