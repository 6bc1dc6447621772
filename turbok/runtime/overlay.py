"""A sandbox's root filesystem: the read-only image under its own writable layer.

Host overlayfs (we are root): ``lowerdir`` = the image's rootfs (never
written: overlayfs copies a file up into ``upper`` before changing it),
``upperdir`` = the container's ``upper/`` on its pod's disk (``turbok.runtime.disk``),
mounted on its ``rootfs/``. The writable layer is kept on disk, so it survives
a stop and start of the pod (suspend/resume keeps disk) and a control-plane restart;
runsc's own ``--overlay2=root:memory`` would keep it in sandbox memory and lose
it on stop.

``mount``/``umount`` are direct syscalls (``turbok.runtime.mounts``), not
``mount(8)``: no extra process on the start path. Called by the gvisor and
bubblewrap runtimes.
"""

from __future__ import annotations

from pathlib import Path

from turbok.runtime import mounts
from turbok.runtime.errors import SandboxStartFailed

__all__ = ["is_mounted", "mount_overlay", "unmount"]


def is_mounted(path: Path) -> bool:
    """True when something is mounted on ``path`` (one ``statx``, no /proc parsing)."""
    return mounts.is_mount_root(path)


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
    try:
        mounts.mount("overlay", target, "overlay", mounts.SAFE, options)
    except OSError as e:
        raise SandboxStartFailed(
            f"mount overlay on {target} failed: {e.strerror} (lower {lower}, upper {upper}); "
            "the runtime needs root and a kernel with overlayfs"
        ) from None


def unmount(target: Path) -> None:
    """Unmount ``target`` if mounted; lazily if busy, so a gofer still closing files cannot block it."""
    mounts.unmount(target)
