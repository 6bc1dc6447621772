"""The gVisor runtime: every sandbox is one ``runsc`` container on this machine.

Start path (``start``; nothing else runs before ``runsc run`` returns): resolve
the image (a pattern match and a stat), make the sandbox directory and its disk
(first start only: a fresh ext4 copied into a sparse file, 0.2 ms), mount the
disk (a loop device and a ``mount(2)``, 1-5 ms; ``turbok.runtime.disk``) and the
overlay root filesystem on it (one syscall), write ``config.json``, then
``runsc --root R --network=none run --detach`` with the main process'
stdout/stderr on files (on its disk, rotated by ``turbok.runtime.logs``) and in
a session of its own (a signal to the control plane's process group never
reaches a sandbox). It returns once the sandbox accepts ``exec``.

Exec path (``spawn``): a state check (the state file and /proc/PID/cmdline)
and ``runsc exec --internal-pid-file=/dev/fd/N --cwd /app ID argv`` with
pipes; the command's pid inside the sandbox comes back on pipe N, so no file
is created per exec (a busy ext4 made that slow). Each
exec'd command is its own session and process-group leader in the sandbox;
``Process.kill`` kills that group and every descendant of the command (found
with ``runsc ps``), so a timeout leaves nothing running.

``stop`` is ``runsc delete --force`` (1.1-1.8 s: gVisor's ptrace platform
tears its stub processes down slowly; callers run it in the background) and
unmounts the overlay and the disk; the disk's contents stay, a saved memory
image does not. ``state`` reads runsc's own state file in
``<root>/.runsc`` and checks the sandbox pid, so it costs no subprocess and
works for a control plane that restarted: the containers belong to the
directory, not to a process.

``hibernate`` is ``runsc checkpoint`` into ``<id>/memory`` (processes, open
files and the sandbox's tmpfs: about 0.1 s and a few MiB compressed for an
idle sandbox), then ``delete`` and unmount; ``memory.json`` is written last
and records the spec. The next ``start`` of the same spec is ``runsc restore``
of that image instead of ``run``, and deletes it: a resumed sandbox moves on,
and its old memory must never come back over a newer disk. A changed spec,
or a restore that fails, boots afresh on the kept disk, with a warning.

When a sandbox dies on its own, ``state`` says why from what is left: the
cgroup's OOM and pids counters (gVisor cannot kill one process for memory:
the host kills the whole sandbox), else the main process' exit status from
runsc's boot log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

from turbok.runtime import overlay
from turbok.runtime.base import (
    WORKDIR_MOUNT,
    Isolation,
    Phase,
    Process,
    RuntimeState,
    SandboxNotRunning,
    SandboxSpec,
)
from turbok.runtime.bundle import network_mode, oci_config, validate_env
from turbok.runtime.disk import DEFAULT_EPHEMERAL_STORAGE, bounds
from turbok.runtime.errors import InvalidSandboxSpec, RuntimeError_, SandboxStartFailed
from turbok.runtime.images import ImageStore
from turbok.runtime.layout import SandboxDir
from turbok.runtime.local import DEFAULT_CGROUP_PARENT, DEFAULT_PIDS_LIMIT, LocalRuntime, stopped_state
from turbok.runtime.process import HostProcess

__all__ = ["DEFAULT_PIDS_LIMIT", "RunscRuntime"]

log = logging.getLogger("turbok.runtime.gvisor")

_EXIT_RE = re.compile(rb"application exiting with exit status (\d+)")


def _memory_image_for(sdir: SandboxDir, spec: SandboxSpec) -> bool:
    """Whether a complete memory image of this very spec waits for ``start``; drops any other."""
    try:
        saved = json.loads(sdir.memory_marker.read_text())["spec"]
    except FileNotFoundError:
        _drop_memory_image(sdir)  # an interrupted hibernation leaves an image without its marker
        return False
    except (OSError, ValueError, KeyError, TypeError):
        saved = None
    if isinstance(saved, dict):
        # Fields added since the image was saved: the sandbox ran with their defaults.
        added = {f.name: f.default for f in fields(SandboxSpec) if f.name not in saved and f.default is not MISSING}
        saved = {**json.loads(json.dumps(added)), **saved}
    if saved == json.loads(json.dumps(asdict(spec))):
        return True
    log.warning("sandbox %s: its spec changed while it hibernated; booting afresh on the kept disk", sdir.id)
    _drop_memory_image(sdir)
    return False


def _drop_memory_image(sdir: SandboxDir) -> None:
    sdir.memory_marker.unlink(missing_ok=True)  # first: an image without its marker is never used
    shutil.rmtree(sdir.memory_image, ignore_errors=True)


def _tail(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read()
    except OSError:
        return b""


class _Exec:
    """One ``runsc exec``: its internal pid arrives on a pipe (no file: nothing on the hot path
    touches the filesystem), read when a kill needs it."""

    def __init__(self) -> None:
        self._r, self.w = os.pipe()
        os.set_blocking(self._r, False)
        self._data = b""
        self._pid: int | None = None

    def read_pid(self) -> int | None:
        if self._pid is None and self._r >= 0:
            with contextlib.suppress(BlockingIOError):
                self._data += os.read(self._r, 64)
            if self._data.strip().isdigit():
                self._pid = int(self._data)
        return self._pid

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.w)

    def cleanup(self) -> None:
        self.read_pid()
        if self._r >= 0:
            os.close(self._r)
            self._r = -1


#: Niceness of ``runsc run`` (see ``RunscRuntime.__init__``).
BOOT_NICENESS = 10


class RunscRuntime(LocalRuntime):
    """Sandboxes as gVisor containers; state under ``root`` (see turbok.runtime.layout)."""

    isolation = Isolation.GVISOR
    supports_hibernation = True

    def __init__(
        self,
        root: Path,
        images: ImageStore | None = None,
        *,
        runsc: str = "runsc",
        pids_limit: int | None = DEFAULT_PIDS_LIMIT,
        cgroup_parent: str = DEFAULT_CGROUP_PARENT,
        bounded_disks: bool = True,
        default_ephemeral_storage: int = DEFAULT_EPHEMERAL_STORAGE,
    ) -> None:
        path = shutil.which(runsc)
        if path is None:
            raise SandboxStartFailed(f"runsc not found at {runsc!r}: install gVisor (apt-get install -y runsc)")
        super().__init__(root, images, pids_limit=pids_limit, cgroup_parent=cgroup_parent,
                         bounded_disks=bounded_disks, default_ephemeral_storage=default_ephemeral_storage)
        self.runsc = path
        self.state_dir = self.root / ".runsc"
        # Booting is background work next to the control plane's requests: the runsc client and
        # what it forks before joining the sandbox's cgroup run at a lower priority.
        nice = shutil.which("nice")
        self._boot_prefix: tuple[str, ...] = (nice, "-n", str(BOOT_NICENESS)) if nice else ()

    # -- helpers --

    def _cmd(self, *args: str) -> list[str]:
        return [self.runsc, f"--root={self.state_dir}", *args]

    async def _runsc(self, *args: str, timeout: float = 60.0) -> tuple[int, bytes]:
        """Run one runsc command to completion; its exit code and stderr (stdout for ``ps``)."""
        proc = await asyncio.create_subprocess_exec(
            *self._cmd(*args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError_(f"runsc {' '.join(args)} did not finish in {timeout:.0f} s") from None
        assert proc.returncode is not None
        return proc.returncode, out

    def _state_file(self, id: str) -> Path:
        # runsc's own layout: <root>/<sandbox id>_sandbox:<container id>.state
        return self.state_dir / f"{id}_sandbox:{id}.state"

    def _read_runsc_state(self, id: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._state_file(id).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being rewritten by runsc: exists, contents unknown
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _alive(pid: int, id: str) -> bool:
        """True when ``pid`` is the sandbox process of ``id`` (pids are reused)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return False
        return cmdline.startswith(b"runsc-sandbox") and id.encode() in cmdline

    def _running_pid(self, id: str) -> int | None:
        data = self._read_runsc_state(id)
        if data is None:
            return None
        status = data.get("status")
        pid = (data.get("sandbox") or {}).get("pid")
        if status in ("running", "created", "paused") and isinstance(pid, int) and self._alive(pid, id):
            return pid
        return None

    def _state(self, sdir: SandboxDir) -> RuntimeState:
        if not sdir.exists():
            return self._absent(sdir)
        pid = self._running_pid(sdir.id)
        if pid is not None:
            return self._running_state(sdir, pid)
        had_run = self._state_file(sdir.id).exists()
        if not had_run and sdir.memory_marker.exists():
            return RuntimeState(sdir.id, Phase.STOPPED, self.isolation, reason="Hibernated",
                                message="stopped with its memory saved; start resumes it")
        exit_code = None
        if had_run:
            codes = _EXIT_RE.findall(_tail(sdir.boot_log))
            exit_code = int(codes[-1]) if codes else None
        return stopped_state(
            sdir.id, self.isolation, counters=self._cgroup(sdir.id) if had_run else None,
            exit_code=exit_code, had_run=had_run,
        )

    # -- the contract --

    async def start(self, spec: SandboxSpec) -> RuntimeState:
        sdir = SandboxDir(self.root, spec.id)
        async with self._locks(spec.id):
            current = self._state(sdir)
            if current.phase is Phase.RUNNING and not current.degraded:
                return current
            image = self.images.resolve(spec.image)
            network = network_mode(spec)
            limit = bounds(spec.ephemeral_storage_bytes, self.disks.default)
            config = oci_config(spec, image, sdir, pids_limit=self.pids_limit, cgroup_parent=self.cgroup_parent)
            if self._read_runsc_state(spec.id) is not None:
                # A container that died on its own (or before a crash of ours), or one whose disk
                # failed, is still registered: forget it, or runsc refuses the id.
                await self._runsc("delete", "--force", spec.id)

            def prepare() -> tuple[int, int]:
                self._prepare_disk(sdir, spec, limit)
                self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                sdir.clear_run()
                overlay.mount_overlay(lower=image.rootfs, upper=sdir.upper, work=sdir.ovwork, target=sdir.rootfs)
                sdir.write_json(sdir.config, config)
                sdir.save_spec(spec)
                with contextlib.suppress(FileNotFoundError):
                    sdir.boot_log.unlink()
                return sdir.open_logs()

            # Directories, the overlay mount and files: blocking calls that a busy disk or a
            # mount lock can make slow, so off the event loop that serves every request.
            if await asyncio.to_thread(_memory_image_for, sdir, spec):
                try:
                    return await self._launch(sdir, spec, network, prepare, resume=True)
                except SandboxStartFailed as e:
                    log.warning("%s; booting afresh on the kept disk, without the saved memory", e)
            return await self._launch(sdir, spec, network, prepare, resume=False)

    async def _launch(self, sdir: SandboxDir, spec: SandboxSpec, network: str,
                      prepare: Callable[[], tuple[int, int]], *, resume: bool) -> RuntimeState:
        """``runsc run`` (or ``restore`` of the memory image) of a prepared bundle; the lock is held."""
        try:
            out, err = await asyncio.to_thread(prepare)
        except OSError as e:  # the host's side: a full home, a disk that cannot be made or mounted
            await asyncio.to_thread(self._release_disk, sdir)
            raise self._start_failed(sdir, e) from e
        err_at = os.fstat(err).st_size
        verb = ("restore", f"--image-path={sdir.memory_image}") if resume else ("run",)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._boot_prefix,
                *self._cmd(
                    f"--network={network}",
                    "--cpu-num-from-quota",
                    f"--debug-log={sdir.boot_log}",
                    "--debug-command=boot",
                    *verb,
                    "--detach",
                    f"--bundle={sdir.path}",
                    spec.id,
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        finally:
            os.close(out)
            os.close(err)
        code = await proc.wait()
        log.debug("runsc %s %s: exit %d", verb[0], spec.id, code)
        if resume:
            await asyncio.to_thread(_drop_memory_image, sdir)  # used or refused, never restored twice
        if code != 0:
            with open(sdir.stderr_log, "rb") as f:
                f.seek(err_at)
                why = f.read(4096).decode(errors="replace").strip().splitlines()
            with contextlib.suppress(RuntimeError_):
                await self._runsc("delete", "--force", spec.id)
            await asyncio.to_thread(self._release_disk, sdir)
            raise SandboxStartFailed(
                f"sandbox {spec.id}: runsc {verb[0]} failed (exit {code}): {why[-1] if why else 'no message'}"
            )
        self._watched.discard(sdir.id)  # a new disk mount: watch its logs anew
        return self._state(sdir)

    async def hibernate(self, id: str) -> None:
        sdir = SandboxDir(self.root, id)
        async with self._locks(id):
            if self._running_pid(id) is None:
                raise SandboxNotRunning(f"sandbox {id} is not running")
            await asyncio.to_thread(_drop_memory_image, sdir)
            sdir.memory_image.mkdir()
            code, out = await self._runsc("checkpoint", f"--image-path={sdir.memory_image}", id, timeout=600)
            if code != 0:
                await asyncio.to_thread(_drop_memory_image, sdir)
                raise RuntimeError_(f"sandbox {id}: runsc checkpoint failed: {out.decode(errors='replace').strip()}")
            # The container has stopped; forget it so the id is free for ``restore``.
            await self._runsc("delete", "--force", id)
            await asyncio.to_thread(self._release_disk, sdir)
            size = sum(f.stat().st_size for f in sdir.memory_image.iterdir())
            sdir.write_json(sdir.memory_marker, {"spec": json.loads(sdir.spec_file.read_text()), "bytes": size})
            log.info("sandbox %s hibernated: %.1f MiB of memory image", id, size / 2**20)

    async def stop(self, id: str) -> None:
        sdir = SandboxDir(self.root, id)
        async with self._locks(id):
            if self._read_runsc_state(id) is not None:
                log.debug("stopping sandbox %s", id)
                code, out = await self._runsc("delete", "--force", id)
                if code != 0 and self._read_runsc_state(id) is not None:
                    raise RuntimeError_(f"sandbox {id}: runsc delete failed: {out.decode(errors='replace').strip()}")
            await asyncio.to_thread(self._release_disk, sdir)
            if sdir.memory_marker.exists():
                await asyncio.to_thread(_drop_memory_image, sdir)  # stopped means its memory is gone

    async def spawn(
        self,
        id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Process:
        sdir = SandboxDir(self.root, id)
        if not argv:
            raise InvalidSandboxSpec(f"sandbox {id}: empty command")
        if self._running_pid(id) is None:
            raise SandboxNotRunning(f"sandbox {id} is not running")
        validate_env(id, env or {})
        flags = [f"--cwd={cwd or WORKDIR_MOUNT}", *(f"--env={k}={v}" for k, v in (env or {}).items())]
        handle = _Exec()
        try:
            proc = await asyncio.create_subprocess_exec(
                # runsc writes the command's pid inside the sandbox to this path: our pipe.
                *self._cmd("exec", f"--internal-pid-file=/dev/fd/{handle.w}", *flags, id, *argv),
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                pass_fds=(handle.w,),
            )
        except BaseException:
            handle.close_write()
            handle.cleanup()
            raise
        handle.close_write()

        async def kill_inside() -> None:
            await self._kill_exec(sdir, handle, proc)

        return HostProcess(proc, stdin=stdin, kill_inside=kill_inside, cleanup=handle.cleanup)

    async def _kill_exec(self, sdir: SandboxDir, handle: _Exec, client: asyncio.subprocess.Process) -> None:
        """Kill an exec'd command's process group and descendants inside the sandbox."""
        pid = handle.read_pid()
        # The pid arrives once the command runs; a kill right after spawn waits for it.
        for _ in range(100):
            if pid is not None or client.returncode is not None:
                break
            await asyncio.sleep(0.01)
            pid = handle.read_pid()
        if pid is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)
            return
        await self.kill_tree(sdir.id, pid)

    async def kill_tree(self, id: str, pid: int) -> None:
        """SIGKILL process ``pid`` of sandbox ``id``, its descendants and its process group."""
        sdir = SandboxDir(self.root, id)
        code, out = await self._runsc("ps", id)
        if code != 0:
            return  # the sandbox is gone, and the command with it
        targets = _descendants(_parse_ps(out), pid)
        if (sdir.rootfs / "bin" / "sh").exists():
            # One exec kills the group (orphans keep their group) and the tree (children
            # that made groups of their own).
            script = f"kill -9 -{pid} {' '.join(map(str, sorted(targets)))} 2>/dev/null; exit 0"
            await self._runsc("exec", id, "/bin/sh", "-c", script)
        else:
            await asyncio.gather(*(self._runsc("kill", f"--pid={p}", id, "KILL") for p in targets))


def _parse_ps(out: bytes) -> dict[int, int]:
    """``runsc ps`` table -> {pid: ppid}."""
    procs: dict[int, int] = {}
    for line in out.decode(errors="replace").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3 and cols[1].isdigit() and cols[2].isdigit():
            procs[int(cols[1])] = int(cols[2])
    return procs


def _descendants(procs: dict[int, int], root: int) -> set[int]:
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in procs.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found
