"""Sandboxes of the old runtime (one per Sandbox object, before Pods: issue 9 and before).

They live under ``<TURBOK_HOME>/sandboxes``: ``<id>/`` with the sandbox's disk
(``disk.img``, mounted on ``disk/`` while it ran), the overlay mount point
``rootfs/``, ``spec.json``, a hibernated one's ``memory/`` + ``memory.json``;
runsc's registrations in ``.runsc/`` (gVisor) or ``run/bwrap.json`` (bubblewrap: the
pid and start time of the namespace's init). Nothing starts them any more: a pod of
the same id takes a stopped one over (``LocalPodRuntime``'s ``legacy_root``: its disk
becomes the pod's). What is left to do with one that has not been taken over is what
``turbok down --stop-sandboxes`` does (``turbok.embedded.daemon``): ``stop`` it
(processes ended, overlay and disk unmounted, disk kept; a hibernated one is left as
it is by the caller, ``hibernated``) or ``remove`` it (its directory deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

from turbok.runtime import mounts, overlay
from turbok.runtime.cgroups import Cgroup
from turbok.runtime.errors import RuntimeError_
from turbok.runtime.podio import start_time
from turbok.runtime.podlayout import SandboxDir, list_ids
from turbok.runtime.pods import release_root

__all__ = ["LegacySandboxes"]

#: What the old runtime gave its disks to let go of a namespace being torn down (``Disks.unmount``).
_UNMOUNT_WAIT = 2.0


class LegacySandboxes:
    """The old runtime's sandboxes under ``root``: list, stop, remove. Ids are checked before any path."""

    def __init__(self, root: Path, *, runsc: str = "runsc", cgroup_parent: str = "/turbok") -> None:
        self.root = root.absolute()
        self.runsc = runsc
        self.state_dir = self.root / ".runsc"
        self.cgroup_parent = cgroup_parent.rstrip("/")

    def list(self) -> list[str]:
        """Ids of every sandbox with a directory."""
        return list_ids(self.root)

    def _registration(self, id: str) -> Path:
        # runsc's own layout: <root>/<sandbox id>_sandbox:<container id>.state
        return self.state_dir / f"{id}_sandbox:{id}.state"

    def hibernated(self, id: str) -> bool:
        """Stopped with its memory saved (a stop would throw that memory away)."""
        sdir = SandboxDir(self.root, id)
        return not self._registration(id).exists() and sdir.memory_marker.exists()

    async def stop(self, id: str) -> None:
        """End every process of the sandbox and unmount its overlay and disk; the disk's contents stay,
        a saved memory image does not."""
        sdir = SandboxDir(self.root, id)
        if self._registration(id).exists():
            runsc = shutil.which(self.runsc)
            if runsc is None:
                raise RuntimeError_(f"sandbox {id}: registered with runsc, but runsc is not found at {self.runsc!r}")
            proc = await asyncio.create_subprocess_exec(
                runsc, f"--root={self.state_dir}", "delete", "--force", id, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            out, _ = await proc.communicate()
            if proc.returncode != 0 and self._registration(id).exists():
                raise RuntimeError_(f"sandbox {id}: runsc delete failed: {out.decode(errors='replace').strip()}")
        await self._stop_bubblewrap(sdir)
        await asyncio.to_thread(self._release, sdir)

    async def _stop_bubblewrap(self, sdir: SandboxDir) -> None:
        """Kill the namespace's init (that ends everything in it) and whatever is left in its cgroup."""
        info_file = sdir.run / "bwrap.json"
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and isinstance(info.get("init"), int) and start_time(info["init"]) == info.get("start"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(info["init"], signal.SIGKILL)
            for _ in range(500):
                if start_time(info["init"]) is None:
                    break
                await asyncio.sleep(0.01)
        cg = Cgroup(f"{self.cgroup_parent}/{sdir.id}")
        if cg.exists():
            for pid in cg.pids():  # exec'd processes that never entered the pid namespace
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(cg.remove)
        for done in (info_file, sdir.path / "exit.json"):
            done.unlink(missing_ok=True)

    def _release(self, sdir: SandboxDir) -> None:
        """Unmount the overlay, then the disk under it, and drop a saved memory image; the last one
        also undoes the root's nosuid,nodev bind."""
        overlay.unmount(sdir.path / "rootfs")
        mounts.unmount(sdir.disk, wait=_UNMOUNT_WAIT)
        if sdir.memory_marker.exists():
            sdir.memory_marker.unlink(missing_ok=True)  # first: an image without its marker is never used
            shutil.rmtree(sdir.memory_image, ignore_errors=True)
        with contextlib.suppress(OSError):  # busy: a disk was mounted meanwhile
            if not mounts.mounts_below(self.root):
                release_root(self.root)

    async def remove(self, id: str) -> None:
        """Stop the sandbox and delete its directory. Idempotent."""
        await self.stop(id)
        sdir = SandboxDir(self.root, id)
        for path in (sdir.path / "rootfs", sdir.disk):
            if overlay.is_mounted(path):
                raise RuntimeError_(f"sandbox {id}: {path} is still mounted; not deleting")
        await asyncio.to_thread(shutil.rmtree, sdir.path, True)
