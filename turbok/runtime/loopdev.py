"""Loop devices, set up with ioctls (no ``losetup`` process): a file made into a block device.

``attached(image)`` asks ``/dev/loop-control`` for a free device
(``LOOP_CTL_GET_FREE``) and binds the file to it in one ``LOOP_CONFIGURE``
(Linux 5.8+) with:

- ``LO_FLAGS_AUTOCLEAR``: the device lets go of the file by itself when its
  last user (the mount) goes, so an unmount leaves no device behind;
- ``LO_FLAGS_DIRECT_IO``: reads and writes bypass the page cache of the file
  underneath, so a sandbox's data is cached once (by its own filesystem), not
  twice; the kernel drops the flag where the file's filesystem cannot do it;
- a 4096-byte block size, as the filesystems made by ``turbok.runtime.disk``.

Another process may take the device between the two calls: then it asks again.
Attaching and binding take about 0.15 ms here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from turbok.runtime import mounts

__all__ = ["LOOP_CONTROL", "LOOP_MAJOR", "LoopUnavailable", "attached", "backing_file", "holders", "unavailable"]

LOOP_CONTROL = Path("/dev/loop-control")
#: The block devices' major number of every loop device.
LOOP_MAJOR = 7
_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
_LO_FLAGS_DIRECT_IO = 16
_BLOCK_SIZE = 4096


class LoopUnavailable(OSError):
    """No loop device can be had here (no /dev/loop-control, no permission, an old kernel)."""


class _Info(ctypes.Structure):  # struct loop_info64
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * 64),
        ("lo_crypt_name", ctypes.c_char * 64),
        ("lo_encrypt_key", ctypes.c_char * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _Config(ctypes.Structure):  # struct loop_config
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", _Info),
                ("reserved", ctypes.c_uint64 * 8)]


def unavailable(control: Path = LOOP_CONTROL) -> str | None:
    """Why loop devices cannot be used here, or None when they can."""
    try:
        fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"{control}: {e.strerror}"
    os.close(fd)
    return None


def _open_device(n: int) -> int:
    path = f"/dev/loop{n}"
    for _ in range(200):  # devtmpfs adds the node of a new device as it is created; udev may lag
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            time.sleep(0.005)
    raise LoopUnavailable(errno.ENOENT, f"{path} did not appear")


@contextlib.contextmanager
def attached(image: Path, control: Path = LOOP_CONTROL) -> Iterator[str]:
    """Bind ``image`` to a free loop device and yield its path (``/dev/loopN``).

    Mount it inside the ``with``: on leaving, the device is released, which
    detaches it (autoclear) unless a mount holds it.
    """
    try:
        ctl = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise LoopUnavailable(e.errno, f"{control}: {e.strerror}") from None
    try:
        backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(100):
                n = fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)
                dev = _open_device(n)
                config = _Config(fd=backing, block_size=_BLOCK_SIZE)
                config.info.lo_flags = _LO_FLAGS_AUTOCLEAR | _LO_FLAGS_DIRECT_IO
                config.info.lo_file_name = os.fsencode(image)[-63:]
                try:
                    fcntl.ioctl(dev, _LOOP_CONFIGURE, config)
                except OSError as e:
                    os.close(dev)
                    if e.errno == errno.EBUSY:
                        continue  # another process took this device first
                    if e.errno in (errno.EINVAL, errno.ENOTTY):
                        raise LoopUnavailable(e.errno, "this kernel has no LOOP_CONFIGURE (Linux 5.8+)") from None
                    raise
                break
            else:
                raise LoopUnavailable(errno.EBUSY, "no free loop device after 100 tries")
        finally:
            os.close(backing)
        try:
            yield f"/dev/loop{n}"
        finally:
            os.close(dev)
    finally:
        os.close(ctl)


def backing_file(device: str) -> str | None:
    """The file a loop device (``loopN`` or ``/dev/loopN``) is bound to, or None when it is free."""
    name = os.path.basename(device)
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().rstrip("\n")
    except OSError:
        return None


def holders(device: str, directory: Path | None = None) -> list[str]:
    """Who keeps the filesystem on ``device`` alive: processes whose mount namespace still has it mounted, or
    a mount made from ``directory`` (an overlay whose layers are on it), or that have a file, their working
    directory or their root on it (also in a mount detached since); and this process' own mounts of it and
    files it holds open on it.
    Reads every process' mount table and descriptors: only for saying why a disk stays held, never on a
    boot's path."""
    name = os.path.basename(device)
    try:
        major, minor = Path(f"/sys/block/{name}/dev").read_text().split(":")
    except (OSError, ValueError):
        return []
    dev, rdev = f" {int(major)}:{int(minor)} ", os.makedev(int(major), int(minor))
    below = None if directory is None else f"{directory}/"
    me, mine, found = str(os.getpid()), os.readlink("/proc/self/ns/mnt"), []

    def on_it(path: str) -> bool:
        with contextlib.suppress(OSError):
            return os.stat(path).st_dev == rdev
        return False

    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if pid == me:
                with open("/proc/self/mountinfo") as f:  # one hidden under a later mount cannot be unmounted by path
                    found += [f"this process' mount on {mounts.unescape(line.split()[4])}" for line in f if dev in line]
                found += [f"this process' file {os.readlink(f'/proc/self/fd/{fd}')}"
                          for fd in os.listdir("/proc/self/fd") if on_it(f"/proc/self/fd/{fd}")]
                continue
            why = ""
            if os.readlink(f"/proc/{pid}/ns/mnt") != mine:
                with open(f"/proc/{pid}/mountinfo") as f:
                    if any(dev in line or below is not None and below in line for line in f):
                        why = "a mount"
            if not why and (on_it(f"/proc/{pid}/cwd") or on_it(f"/proc/{pid}/root")):
                why = "its directory"
            if not why and any(on_it(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")):
                why = "a file"
            if why:
                found.append(f"{pid} ({Path(f'/proc/{pid}/comm').read_text().strip()}: {why})")
    return found
