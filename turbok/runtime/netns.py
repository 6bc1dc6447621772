"""Named network namespaces, made as ``ip netns`` makes them, without a process per namespace.

A named namespace is a bind mount of a thread's ``ns/net`` onto a file (by default
in ``/run/netns``, so ``ip netns list`` and ``ip netns exec`` see turbok's pods too).
``create`` makes one from a short-lived thread that ``unshare``s its network
namespace, binds it, opens a netlink socket inside it and ends: no fork, no
exec, and the calling threads never change namespace. ``enter`` opens a socket
inside an existing one the same way (``setns`` in a throwaway thread).

The directory is made a shared mount, as ``ip netns`` does, so that removing a
namespace's file here also removes the copies other mount namespaces took
(a ``runsc`` starting at that moment), and the namespace is freed.

Only ``turbok.runtime.network`` and tests use this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from turbok.runtime.netlink import Netlink

__all__ = ["call_in", "create", "enter", "exists", "prepare_dir", "remove", "shows_rmem_default"]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_SHARED = 0x1000, 0x4000, 0x100000
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(source: str | None, target: str | Path, flags: int) -> None:
    _check(_libc.mount(source.encode() if source else b"none", str(target).encode(), None, flags, None),
           f"mount {source or ''} on {target}")


def call_in(path: Path | None, fn: Callable[[], T], *, new: bool = False) -> T:
    """``fn()`` in a fresh thread inside the namespace at ``path`` (or a new one, ``new=True``).

    The thread ends with ``fn``, so no pooled thread is ever left in another namespace.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            if new:
                _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            elif path is not None:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _check(_libc.setns(fd, CLONE_NEWNET), f"setns {path}")
                finally:
                    os.close(fd)
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="turbok-netns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def prepare_dir(directory: Path) -> None:
    """Make ``directory`` (0755) a shared mount point, as ``ip netns add`` does."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        _mount(None, directory, MS_SHARED | MS_REC)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: not a mount point yet
            raise
        _mount(str(directory), directory, MS_BIND | MS_REC)
        _mount(None, directory, MS_SHARED | MS_REC)


@functools.cache
def shows_rmem_default() -> bool:
    """Does this kernel show /proc/sys/net/core/rmem_default inside a non-root namespace (Linux >= 6.10)?
    runsc before gVisor's fix of its issue 10704 takes that for the root namespace and refuses to boot there
    (see ``turbok.runtime.network.runsc_prefix`` and ``turbok.runtime.bootns``)."""
    return call_in(None, lambda: os.path.exists("/proc/sys/net/core/rmem_default"), new=True)


def exists(path: Path) -> bool:
    """Is a namespace bound at ``path`` (not merely a file left by a crash)?"""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except FileNotFoundError:
        return False


def create(path: Path) -> Netlink:
    """A netlink socket inside the namespace bound at ``path``, made now unless it exists.

    In a new namespace IPv6 is off for interfaces made later (the pod's ``eth0``:
    the pod network is IPv4 only) and stays on for ``lo`` (``::1`` inside).
    """
    if exists(path):
        return enter(path)
    with contextlib.suppress(FileExistsError):  # a file without a mount: left by a crash, reused
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))

    def inside() -> Netlink:
        with contextlib.suppress(FileNotFoundError):  # a kernel without IPv6
            Path("/proc/sys/net/ipv6/conf/default/disable_ipv6").write_text("1")
        nl = Netlink()
        try:
            _mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, MS_BIND)
        except BaseException:
            nl.close()
            raise
        return nl

    return call_in(None, inside, new=True)


def enter(path: Path) -> Netlink:
    """A netlink socket inside the existing namespace at ``path``."""
    return call_in(path, Netlink)


def remove(path: Path) -> bool:
    """Unbind and delete the namespace's file; False when there was none.

    The namespace itself ends when nothing else holds it (a process inside, an open fd).
    """
    try:
        _check(_libc.umount2(str(path).encode(), MNT_DETACH), f"umount {path}")
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted (a crash's leftover)
            raise
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
