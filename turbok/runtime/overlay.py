"""A sandbox's root filesystem: the read-only image under its own writable layer.

Host overlayfs (we are root): ``lowerdir`` = the image's rootfs (never
written: overlayfs copies a file up into ``upper`` before changing it),
``upperdir`` = the sandbox's ``upper/``, mounted on its ``rootfs/``. The
writable layer is a plain directory on disk, so it survives ``stop``/``start``
(suspend/resume keeps disk) and a control-plane restart; runsc's own
``--overlay2=root:memory`` would keep it in sandbox memory and lose it on stop.

``mount``/``umount`` are direct syscalls (ctypes), not ``mount(8)``: no extra
process on the start path. Called by the gvisor and bubblewrap runtimes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from turbok.runtime.errors import SandboxStartFailed

__all__ = ["is_mounted", "mount_overlay", "unmount"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MNT_DETACH = 0x2


def is_mounted(path: Path) -> bool:
    """True when something is mounted on ``path`` (two stats, no /proc parsing)."""
    return os.path.ismount(path)


def mount_overlay(*, lower: Path, upper: Path, work: Path, target: Path) -> None:
    """Mount ``lower`` (read-only) + ``upper`` on ``target``; no-op when already mounted."""
    if is_mounted(target):
        return
    for p in (lower, upper, work, target):
        if "," in str(p) or ":" in str(p):
            # overlayfs splits its options on these characters.
            raise SandboxStartFailed(f"overlay path {p} must not contain ',' or ':'")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    # nodev/nosuid: nothing the sandbox writes into its layer means anything to the host.
    rc = _libc.mount(b"overlay", os.fsencode(target), b"overlay", _MS_NOSUID | _MS_NODEV, options.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise SandboxStartFailed(
            f"mount overlay on {target} failed: {os.strerror(err)} (lower {lower}, upper {upper}); "
            "the runtime needs root and a kernel with overlayfs"
        )


def unmount(target: Path) -> None:
    """Unmount ``target`` if mounted; lazily, so a gofer still closing files cannot block it."""
    if not is_mounted(target):
        return
    rc = _libc.umount2(os.fsencode(target), _MNT_DETACH)
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # raced with another unmount
            raise OSError(err, f"umount {target}: {os.strerror(err)}")
