"""What both local runtimes share: the directory layout, per-sandbox locks, remove, list.

``LocalRuntime`` is the base of ``RunscRuntime`` and ``BubblewrapRuntime``:
sandboxes live under ``root`` (see ``turbok.runtime.layout``), images come
from an ``ImageStore``, limits go to the cgroup ``<cgroup_parent>/<id>``. A
subclass provides ``start``, ``stop``, ``spawn`` and ``_state`` (the cheap
state of one sandbox directory); ``stopped_state`` turns what a dead sandbox
left behind into a reason. Creating one sets the limits of the sandboxes'
parent cgroup: a low CPU weight, and a memory limit that leaves the control
plane a reserve (``$TURBOK_SANDBOXES_MEMORY`` overrides it).

Each sandbox lives on a disk of its own (``turbok.runtime.disk``). The root is
kept private: 0700, like every sandbox directory (tightened at each start, also
on trees made by older versions), and, the first time this process starts a
sandbox, bound onto itself ``nosuid,nodev`` unless its filesystem is already
both (defence in depth: each sandbox's disk is nosuid,nodev anyway).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from turbok.api.quantity import QuantityError, to_bytes
from turbok.runtime import cgroups, mounts, overlay
from turbok.runtime.base import Isolation, Phase, Runtime, RuntimeState, SandboxSpec
from turbok.runtime.cgroups import Cgroup
from turbok.runtime.disk import DEFAULT_EPHEMERAL_STORAGE, Bounds, Disks
from turbok.runtime.errors import RuntimeError_, SandboxStartFailed
from turbok.runtime.images import ImageStore
from turbok.runtime.layout import DIR_MODE, SandboxDir, list_ids
from turbok.runtime.locks import KeyedLock
from turbok.runtime.logs import ROTATOR

__all__ = ["DEFAULT_CGROUP_PARENT", "DEFAULT_PIDS_LIMIT", "DISK_FAILED", "HOME_RESERVE_BYTES",
           "SANDBOXES_MEMORY_ENV", "LocalRuntime", "release_root", "sandboxes_memory_limit", "stopped_state"]

log = logging.getLogger(__name__)

#: Host tasks one sandbox may use (an idle gVisor sandbox uses about 41; each process in it adds some).
DEFAULT_PIDS_LIMIT = 2048
#: Parent of every sandbox's cgroup, in each controller.
DEFAULT_CGROUP_PARENT = "/turbok"
#: No sandbox starts while the root's filesystem has less free than this: it would fail its first
#: writes, and the store beside it needs room too.
HOME_RESERVE_BYTES = 64 * 1024 * 1024
#: ``RuntimeState.reason`` of a running sandbox whose disk turned read-only after a write error.
DISK_FAILED = "DiskFailed"
#: Memory all sandboxes together may use, as a quantity (``16Gi``); default: the machine's less a reserve.
SANDBOXES_MEMORY_ENV = "TURBOK_SANDBOXES_MEMORY"


def sandboxes_memory_limit() -> int | None:
    """``$TURBOK_SANDBOXES_MEMORY`` if set, else the machine's memory less the control plane's reserve."""
    value = os.environ.get(SANDBOXES_MEMORY_ENV, "").strip()
    if value:
        try:
            return to_bytes(value) or None
        except QuantityError:
            log.warning("ignoring %s=%r: not a quantity such as 16Gi", SANDBOXES_MEMORY_ENV, value)
    return cgroups.sandboxes_memory_bytes()


def stopped_state(
    id: str, isolation: Isolation, *, counters: Cgroup | None, exit_code: int | None, had_run: bool
) -> RuntimeState:
    """The state of a sandbox that has a directory but no running processes."""
    c = counters.counters() if counters is not None else None
    if c is not None and c.oom_kills:
        return RuntimeState(id, Phase.STOPPED, isolation, exit_code=137, reason="OOMKilled",
                            message="killed: the sandbox reached its memory limit")
    if c is not None and c.pids_limit_hits:
        return RuntimeState(id, Phase.STOPPED, isolation, exit_code=137, reason="PidsLimit",
                            message="killed: the sandbox reached its limit of host tasks (a fork bomb?)")
    if exit_code is not None:
        return RuntimeState(id, Phase.STOPPED, isolation, exit_code=exit_code, reason="Exited",
                            message=f"the main process exited with code {exit_code}")
    if had_run:
        return RuntimeState(id, Phase.STOPPED, isolation, reason="Crashed",
                            message="the sandbox ended and left no exit status")
    return RuntimeState(id, Phase.STOPPED, isolation, reason="Stopped", message="not running; disk kept")


class LocalRuntime(Runtime):
    def __init__(
        self,
        root: Path,
        images: ImageStore | None,
        *,
        pids_limit: int | None,
        cgroup_parent: str,
        bounded_disks: bool = True,
        default_ephemeral_storage: int = DEFAULT_EPHEMERAL_STORAGE,
        sandboxes_memory: int | None = None,
    ) -> None:
        self.root = root.absolute()
        self.images = images or ImageStore()
        self.pids_limit = pids_limit
        self.cgroup_parent = cgroup_parent
        self.disks = Disks(bounded=bounded_disks, default=default_ephemeral_storage)
        self._locks = KeyedLock()
        self._root_secured = False
        self._watched: set[str] = set()
        # All sandboxes together weigh less than the control plane when CPU is short, and leave it memory.
        cgroups.weigh_parent(cgroup_parent)
        self.sandboxes_memory = sandboxes_memory_limit() if sandboxes_memory is None else sandboxes_memory
        if not cgroups.bound_parent_memory(cgroup_parent, self.sandboxes_memory):
            log.info("could not bound the memory of all sandboxes together (cgroup %s)", cgroup_parent)

    # -- the root and the disks (blocking: called in worker threads) --

    def _secure_root(self) -> None:
        """0700 on the root and every sandbox directory, and the root bound nosuid,nodev (once)."""
        if self._root_secured:
            return
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, DIR_MODE)
        for id in list_ids(self.root):  # trees made by older versions were 0755
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.root / id, DIR_MODE)
        flags = os.statvfs(self.root).f_flag
        if not (flags & os.ST_NOSUID and flags & os.ST_NODEV) and not mounts.is_mount_root(self.root):
            below = mounts.mounts_below(self.root)
            if below:
                # A bind now would hide them (or copy them, and leave copies nothing unmounts); the
                # next start once none runs binds it.
                log.debug("not binding %s nosuid,nodev yet: %d mounts of running sandboxes are below it "
                          "(each sandbox's disk is nosuid,nodev itself)", self.root, len(below))
            else:
                mounts.bind_onto_itself(self.root)
        self._root_secured = True

    def _prepare_disk(self, sdir: SandboxDir, spec: SandboxSpec, limit: Bounds) -> None:
        """The sandbox's directory and its mounted disk, ready for its overlay."""
        self._secure_root()
        free = self._free_bytes()
        if free is not None and free < HOME_RESERVE_BYTES:
            raise OSError(errno.ENOSPC, "below the reserve kept free for the store and running sandboxes")
        sdir.create(spec)
        if not self.disks.mounted(sdir) or self.disks.failed(sdir):
            overlay.unmount(sdir.rootfs)  # never an overlay over a disk that is not mounted
        self.disks.prepare(sdir, limit)
        sdir.populate(spec)

    def _release_disk(self, sdir: SandboxDir) -> None:
        """Unmount the overlay, then the disk under it; the disk's contents stay. The last one
        also undoes the root's bind, so nothing of turbok stays mounted while no sandbox runs."""
        self._watched.discard(sdir.id)
        overlay.unmount(sdir.rootfs)
        self.disks.unmount(sdir)
        with contextlib.suppress(OSError):  # busy: a disk was mounted meanwhile
            if not mounts.mounts_below(self.root):  # idle: the next start tightens and binds anew
                self._root_secured = False
                release_root(self.root)

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _start_failed(self, sdir: SandboxDir, err: OSError) -> SandboxStartFailed:
        """A start that failed on the host's side, said so a user can act on it."""
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            free = self._free_bytes()
            left = f"{free / 2**20:.0f} MiB free" if free is not None else "free space unknown"
            return SandboxStartFailed(
                f"sandbox {sdir.id}: no space left for sandboxes on the filesystem of {self.root} ({left}, "
                f"{HOME_RESERVE_BYTES // 2**20} MiB kept in reserve): {err}; it starts once space is freed"
            )
        return SandboxStartFailed(f"sandbox {sdir.id}: preparing its disk failed: {err}")

    def _watch_logs(self, sdir: SandboxDir) -> None:
        """Have the main process' logs rotated (once per running life in this process)."""
        if sdir.id not in self._watched:
            self._watched.add(sdir.id)
            ROTATOR.watch(sdir.stdout_log, sdir.stderr_log, sdir.boot_log)

    def _running_state(self, sdir: SandboxDir, pid: int, message: str = "") -> RuntimeState:
        """The state of a running sandbox: degraded when its disk failed; notes on what is not bounded."""
        self._watch_logs(sdir)
        if self.disks.failed(sdir):
            free = self._free_bytes()
            return RuntimeState(
                sdir.id, Phase.RUNNING, self.isolation, pid=pid, reason=DISK_FAILED,
                message=("its disk turned read-only after a write error (the filesystem of its home has "
                         f"{(free or 0) / 2**20:.0f} MiB free); starting it again checks the disk"),
            )
        notes = [m for m in (message, self.disks.note(sdir)) if m]
        return RuntimeState(sdir.id, Phase.RUNNING, self.isolation, pid=pid, message="; ".join(notes))

    def _cgroup(self, id: str) -> Cgroup:
        return Cgroup(f"{self.cgroup_parent}/{id}")

    @abc.abstractmethod
    def _state(self, sdir: SandboxDir) -> RuntimeState:
        """State of one sandbox from files and /proc only: no subprocess."""

    def _absent(self, sdir: SandboxDir) -> RuntimeState:
        return RuntimeState(sdir.id, Phase.ABSENT, self.isolation, reason="Stopped", message="no such sandbox")

    async def state(self, id: str) -> RuntimeState:
        return self._state(SandboxDir(self.root, id))

    async def states(self, ids: Sequence[str]) -> dict[str, RuntimeState]:
        # Hundreds of state files and /proc reads: in a worker thread, so requests are not kept waiting.
        def read() -> dict[str, RuntimeState]:
            found: dict[str, RuntimeState] = {}
            for id in ids:
                with contextlib.suppress(RuntimeError_):
                    found[id] = self._state(SandboxDir(self.root, id))
            return found

        return await asyncio.to_thread(read)

    async def list(self) -> list[str]:
        return list_ids(self.root)

    def workdir(self, id: str) -> Path:
        return SandboxDir(self.root, id).app

    async def remove(self, id: str) -> None:
        await self.stop(id)
        sdir = SandboxDir(self.root, id)
        async with self._locks(id):
            await asyncio.to_thread(self._release_disk, sdir)  # also a disk a failed start left mounted
            for path in (sdir.rootfs, sdir.disk):
                if overlay.is_mounted(path):
                    raise RuntimeError_(f"sandbox {id}: {path} is still mounted; not deleting")
            await asyncio.to_thread(shutil.rmtree, sdir.path, True)


def release_root(root: Path) -> bool:
    """Undo the nosuid,nodev bind of ``root`` once nothing is mounted below it (tests, uninstall);
    True when it was undone. A filesystem of its own mounted there is left alone."""
    root = root.absolute()
    if not mounts.is_mount_root(root) or mounts.mounts_below(root):
        return False
    if os.stat(root).st_dev != os.stat(root.parent).st_dev:
        return False  # not our bind: a filesystem someone mounted there
    # Busy a moment while the loop device of a disk unmounted lazily lets go of its file.
    mounts.unmount(root, lazy=False, wait=2.0)
    return True
