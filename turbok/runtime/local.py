"""What both local runtimes share: the directory layout, per-sandbox locks, remove, list.

``LocalRuntime`` is the base of ``RunscRuntime`` and ``BubblewrapRuntime``:
sandboxes live under ``root`` (see ``turbok.runtime.layout``), images come
from an ``ImageStore``, limits go to the cgroup ``<cgroup_parent>/<id>``. A
subclass provides ``start``, ``stop``, ``spawn`` and ``_state`` (the cheap
state of one sandbox directory); ``stopped_state`` turns what a dead sandbox
left behind into a reason.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from turbok.runtime import cgroups, overlay
from turbok.runtime.base import Isolation, Phase, Runtime, RuntimeState
from turbok.runtime.cgroups import Cgroup
from turbok.runtime.errors import RuntimeError_
from turbok.runtime.images import ImageStore
from turbok.runtime.layout import SandboxDir, list_ids
from turbok.runtime.locks import KeyedLock

__all__ = ["DEFAULT_CGROUP_PARENT", "DEFAULT_PIDS_LIMIT", "LocalRuntime", "stopped_state"]

#: Host tasks one sandbox may use (an idle gVisor sandbox uses about 41; each process in it adds some).
DEFAULT_PIDS_LIMIT = 2048
#: Parent of every sandbox's cgroup, in each controller.
DEFAULT_CGROUP_PARENT = "/turbok"


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
    ) -> None:
        self.root = root.absolute()
        self.images = images or ImageStore()
        self.pids_limit = pids_limit
        self.cgroup_parent = cgroup_parent
        self._locks = KeyedLock()
        # All sandboxes together weigh less than the control plane when CPU is short.
        cgroups.weigh_parent(cgroup_parent)

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
            if overlay.is_mounted(sdir.rootfs):
                raise RuntimeError_(f"sandbox {id}: {sdir.rootfs} is still mounted; not deleting")
            await asyncio.to_thread(shutil.rmtree, sdir.path, True)
