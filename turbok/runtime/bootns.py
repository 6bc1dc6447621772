"""The mount namespace a sandbox boots from: the host's, without any pod's mounts but the booting pod's own.

Every ``runsc run`` copies the mount table it starts in twice (its gofer's and
its sandbox's new namespaces), and on Linux >= 6.10 turbok's old ``unshare
--mount`` prefix (``turbok.runtime.network.runsc_prefix``) made a third copy.
Each running pod has about three mounts on the host (its disk, its container's
overlay, its network namespace), so each copy grew with the number of pods:
about 2.4 us per mount, under the kernel's one namespace lock that every pod's
mount and unmount also takes (13 ms per copy at 1,800 pods).

Here a boot starts instead in a fresh copy of a **pristine** namespace: the
host's as it was when the runtime first booted, every mount below the runtime's
root and every other pod-like mount (loop-device filesystems, overlays,
namespace files) taken out, and private (nothing propagates into it). Into that
copy go clones of exactly the trees the boot reads (``open_tree(OPEN_TREE_CLONE)``
taken on the host, ``move_mount`` into the copy): the pod's directory with its
disk and overlays, its network namespace file, any host path a bundle binds.
The copy costs the same at 10 pods and at 1,800, and so do runsc's own two.

The copy is made on a thread kept for boots (``unshare(CLONE_FS)`` lets one
thread change mount namespace), which forks runsc there and goes back to the
host's namespace. The network namespace's ``/proc/sys/net/core`` is hidden in the
copy from that thread too (what the prefix did with three processes; see
``runsc_prefix``), so a boot runs no helper process at all.

Where the kernel lacks ``open_tree`` (before 5.2), or a tree cannot be moved in
(a path that does not exist in the pristine namespace: a host volume on a
filesystem mounted since), the caller boots as before, from the host's namespace.
A pristine namespace keeps alive the filesystems it copied and did not take out
(a tmpfs mounted before the first boot and unmounted since stays until the
runtime goes); it never holds a pod's disk.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import logging
import os
import subprocess
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from turbok.runtime import loopdev, mounts, spawn
from turbok.runtime import netns as netns_

__all__ = ["BootNamespace", "Unavailable"]

log = logging.getLogger("turbok.runtime.bootns")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

_CLONE_FS, _CLONE_NEWNS, _CLONE_NEWNET = 0x200, 0x20000, 0x40000000
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT = 428, 429  # the same number on every architecture (after 403)
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC, _AT_RECURSIVE = 1, os.O_CLOEXEC, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 4
_AT_FDCWD = -100
_MS_RDONLY, _MS_REC, _MS_PRIVATE = 0x1, 0x4000, 1 << 18
_MNT_DETACH = 2
#: Filesystem types a pod mounts (its container's rootfs, its network namespace file), besides its loop disk.
_POD_LIKE = frozenset({"overlay", "nsfs"})


class Unavailable(OSError):
    """This boot cannot start from the pristine namespace: boot from the host's (the reason says why)."""


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _setns(fd: int, kind: int, what: str) -> None:
    _check(_libc.setns(fd, kind), f"setns({what})")


def _open_tree(path: Path) -> int:
    return _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(path),
                                _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE), f"open_tree {path}")


def _move_mount(fd: int, target: Path) -> None:
    _check(_libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH),
           f"move_mount onto {target}")


def _strip(root: Path) -> int:
    """Take out of this thread's (new, private) namespace every mount below ``root`` and every pod-like mount
    that ``root`` does not live on; the number taken out."""
    keep = {str(p) for p in (root, *root.parents)}
    below = str(root).rstrip("/") + "/"
    points = []
    with open("/proc/thread-self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            point, fstype, major = mounts.unescape(fields[4]), fields[dash + 1], int(fields[2].split(":")[0])
            if point.startswith(below) or (point not in keep and (fstype in _POD_LIKE or major == loopdev.LOOP_MAJOR)):
                points.append(point)
    taken = 0
    for point in sorted(points, key=len, reverse=True):  # innermost first; a parent gone takes its children
        if _libc.umount2(os.fsencode(point), _MNT_DETACH) == 0:
            taken += 1
        elif ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
            err = ctypes.get_errno()
            raise OSError(err, f"detaching {point} from the boot namespace: {os.strerror(err)}")
    return taken


class _Threads:
    """The threads boots fork from: each has a filesystem context of its own (``unshare(CLONE_FS)``), which
    a thread needs to change mount namespace, and is back in the host's namespace between boots."""

    def __init__(self, workers: int = 2) -> None:
        self.host_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self.host_net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="turbok-boot",
                                                          initializer=self._own_fs)
        self.broken: str | None = None

    @staticmethod
    def _own_fs() -> None:
        _check(_libc.unshare(_CLONE_FS), "unshare(CLONE_FS)")

    def home(self) -> None:
        """Back to the host's namespaces. Should that ever fail, the thread is elsewhere for good: no boot
        uses these threads again (``broken``), every one starts from the host's namespace instead."""
        try:
            _setns(self.host_net, _CLONE_NEWNET, "the host's network namespace")
            _setns(self.host_mnt, _CLONE_NEWNS, "the host's mount namespace")
            os.chdir("/")
        except OSError as e:
            self.broken = f"a boot thread could not go back to the host's namespaces ({e})"
            log.error("%s; boots start from the host's namespace from now on", self.broken)
            raise


_threads_lock = threading.Lock()
_threads: _Threads | None = None


def _boot_threads() -> _Threads:
    global _threads
    with _threads_lock:
        if _threads is None:
            _threads = _Threads()
        return _threads


class BootNamespace:
    """The pristine namespace of one runtime (``root``: its pods' directory), made at the first boot."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self._fd: int | None = None
        self._made = threading.Lock()
        self.unavailable: str | None = None

    def _pristine(self, threads: _Threads) -> int:
        """The pristine namespace's descriptor, made on this (boot) thread the first time."""
        with self._made:
            if self.unavailable is not None:
                raise Unavailable(errno.ENOSYS, self.unavailable)
            if self._fd is not None:
                return self._fd
            try:
                _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
                try:
                    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making it private")
                    taken = _strip(self.root)
                    fd = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                finally:
                    threads.home()
                probe = _open_tree(Path("/"))  # the kernel has open_tree (5.2+)
                os.close(probe)
            except OSError as e:
                self.unavailable = f"no pristine mount namespace for boots ({e}); boots copy the host's"
                log.warning("%s", self.unavailable)
                raise Unavailable(e.errno or errno.ENOSYS, self.unavailable) from e
            self._fd = fd
            weakref.finalize(self, os.close, fd)
            log.info("boots start from a pristine mount namespace (%d mounts of pods left out)", taken)
            return fd

    def _fork(self, threads: _Threads, fork: Callable[[], subprocess.Popen[bytes]], trees: Sequence[Path],
              netns: Path | None, hide: bool) -> subprocess.Popen[bytes]:
        """``fork()`` in a fresh copy of the pristine namespace holding ``trees``; ``Unavailable`` when anything
        before the fork fails (nothing started)."""
        pristine = self._pristine(threads)
        clones: list[tuple[int, Path]] = []
        net: int | None = None
        try:
            try:
                for tree in trees:
                    clones.append((_open_tree(tree), tree))
                if netns is not None:
                    net = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                _setns(pristine, _CLONE_NEWNS, "the pristine mount namespace")
                try:
                    _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
                    for fd, tree in clones:  # ENOENT: not in the pristine namespace (a filesystem mounted since)
                        _move_mount(fd, tree)
                    if net is not None and hide:
                        self._hide_rmem_default(net, threads.host_net)
                except OSError:
                    threads.home()
                    raise
            except OSError as e:
                raise Unavailable(e.errno or errno.EINVAL, str(e)) from e
            try:
                return fork()
            finally:
                with contextlib.suppress(OSError):  # it marked the threads broken; what fork() did stands
                    threads.home()
        finally:
            if net is not None:
                os.close(net)
            for fd, _ in clones:
                os.close(fd)

    @staticmethod
    def _hide_rmem_default(net: int, host_net: int) -> None:
        """An empty read-only tmpfs over ``/proc/sys/net/core`` as the pod's network namespace sees it (see
        ``turbok.runtime.network.runsc_prefix``). runsc itself starts in the host's network namespace: its
        control socket is an abstract one, which only that namespace's ``runsc kill`` reaches."""
        _setns(net, _CLONE_NEWNET, "the pod's network namespace")
        try:
            _check(_libc.mount(b"turbok-netns", b"/proc/sys/net/core", b"tmpfs", _MS_RDONLY, b"size=4k"),
                   "hiding /proc/sys/net/core")
        finally:
            _setns(host_net, _CLONE_NEWNET, "the host's network namespace")

    async def start(self, argv: Sequence[str], *, stdin: int, stdout: int, stderr: int, trees: Sequence[Path],
                    netns: Path | None) -> subprocess.Popen[bytes]:
        """``argv`` started (as ``spawn.start``) in a fresh copy of the pristine namespace holding ``trees``
        (and ``netns``, a network namespace file, with what runsc must not see hidden inside it).
        ``Unavailable``: nothing was started; boot from the host's namespace instead."""
        threads = _boot_threads()
        if threads.broken is not None:
            raise Unavailable(errno.EINVAL, threads.broken)
        every = [*trees, *([netns] if netns is not None else [])]
        # Asked here, not on the boot thread: it starts a thread, which would share the boot thread's
        # filesystem context for a moment, and setns() refuses a mount namespace to a thread that shares it.
        hide = netns is not None and netns_.shows_rmem_default()

        def fork() -> subprocess.Popen[bytes]:
            return subprocess.Popen(list(argv), stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True,
                                    cwd="/")

        return await spawn.forked(lambda: self._fork(threads, fork, every, netns, hide), executor=threads.pool)

