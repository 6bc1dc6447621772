"""The bubblewrap fallback: sandboxes as Linux namespaces, used only where runsc is missing.

Weaker than gVisor (the sandbox shares the host kernel: ``uname -r`` is the
host's), so ``make_runtime`` picks it only when runsc cannot run, and every
``RuntimeState`` says ``isolation=bubblewrap`` so the Sandbox status shows it.

Same directory layout, disk (``turbok.runtime.disk``: bounded, nosuid, nodev)
and root filesystem as gVisor (overlay of the image and the sandbox's own
layer; ``/app`` and volumes bound from its disk). The
main process runs under ``bwrap --unshare-all`` (user, pid, net, ipc, uts,
cgroup and mount namespaces; uid 0 mapped to itself only; every capability
dropped; no_new_privs), detached in its own session, its stdout/stderr on
files; ``--info-fd`` tells the pid of the namespace's init, which is kept in
``run/bwrap.json`` for a restarted control plane. The network namespace has a
loopback and nothing else.

``spawn`` enters the namespaces with ``nsenter --all --root --wd`` (host
util-linux) and drops capabilities with the image's ``setpriv`` (a command
run in the sandbox holds namespace capabilities only if the image has no
``setpriv``). Limits: the sandbox's own cgroup ``/turbok/<id>`` (memory, CPU
quota, pids), which main and exec'd processes join through a one-line shell
before exec; without writable cgroups, memory falls back to ``prlimit --as``
and CPU is not limited (the state message says so). Unlike gVisor, an OOM
kills one process, not the sandbox. ``stop`` kills the namespace's init,
which ends every process in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
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
from turbok.runtime.bundle import CFS_PERIOD_US, cpu_quota_us, main_process, network_mode, validate_env
from turbok.runtime.cgroups import Cgroup
from turbok.runtime.disk import DEFAULT_EPHEMERAL_STORAGE, bounds
from turbok.runtime.errors import InvalidSandboxSpec, SandboxStartFailed
from turbok.runtime.images import ImageStore
from turbok.runtime.layout import SandboxDir, hostname_of
from turbok.runtime.local import DEFAULT_CGROUP_PARENT, DEFAULT_PIDS_LIMIT, LocalRuntime, stopped_state
from turbok.runtime.process import HostProcess

__all__ = ["BubblewrapRuntime"]

# Joins the cgroups named before "--", then execs the rest: a process is
# limited from its first instruction, with no preexec_fn in a threaded host.
_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 126; shift; done; shift; exec "$@"'


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class BubblewrapRuntime(LocalRuntime):
    """Sandboxes as bubblewrap namespaces; state under ``root`` (see turbok.runtime.layout)."""

    isolation = Isolation.BUBBLEWRAP

    def __init__(
        self,
        root: Path,
        images: ImageStore | None = None,
        *,
        bwrap: str = "bwrap",
        pids_limit: int | None = DEFAULT_PIDS_LIMIT,
        cgroup_parent: str = DEFAULT_CGROUP_PARENT,
        bounded_disks: bool = True,
        default_ephemeral_storage: int = DEFAULT_EPHEMERAL_STORAGE,
    ) -> None:
        path = shutil.which(bwrap)
        nsenter = shutil.which("nsenter")
        if path is None or nsenter is None:
            raise SandboxStartFailed("bubblewrap runtime needs bwrap and nsenter (apt-get install -y bubblewrap util-linux)")
        super().__init__(root, images, pids_limit=pids_limit, cgroup_parent=cgroup_parent,
                         bounded_disks=bounded_disks, default_ephemeral_storage=default_ephemeral_storage)
        self.bwrap = path
        self.nsenter = nsenter

    def _info_file(self, sdir: SandboxDir) -> Path:
        return sdir.run / "bwrap.json"

    def _status_file(self, sdir: SandboxDir) -> Path:
        return sdir.path / "exit.json"

    def _running(self, sdir: SandboxDir) -> dict[str, Any] | None:
        """``{"pid", "init", "start", "env"}`` of the live sandbox, else None."""
        try:
            info = json.loads(self._info_file(sdir).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not isinstance(info.get("init"), int) or not isinstance(info.get("start"), int):
            return None
        return info if _start_time(info["init"]) == info["start"] else None

    def _state(self, sdir: SandboxDir) -> RuntimeState:
        if not sdir.exists():
            return self._absent(sdir)
        info = self._running(sdir)
        if info is not None:
            msg = "" if self._cgroup(sdir.id).exists() else "limits: no writable cgroups, memory by prlimit, cpu unlimited"
            return self._running_state(sdir, info["init"], msg)
        had_run = self._info_file(sdir).exists()
        exit_code = None
        with contextlib.suppress(OSError, ValueError):
            for doc in self._status_file(sdir).read_text().split("}"):
                if '"exit-code"' in doc:
                    exit_code = int(json.loads(doc + "}")["exit-code"])
        cg = self._cgroup(sdir.id)
        return stopped_state(sdir.id, self.isolation, counters=cg if cg.exists() else None,
                             exit_code=exit_code, had_run=had_run)

    def _limits(self, spec: SandboxSpec) -> tuple[list[str], Cgroup | None]:
        """The cgroup to join (created), or a prlimit prefix where cgroups are not writable."""
        cg = self._cgroup(spec.id)
        try:
            cg.create(
                cpu_quota_us=cpu_quota_us(spec.cpu_millis) if spec.cpu_millis else None,
                cpu_period_us=CFS_PERIOD_US,
                memory_bytes=spec.memory_bytes,
                pids=spec.pids_limit if spec.pids_limit is not None else self.pids_limit,
            )
            return [], cg
        except OSError:
            prefix = ["prlimit", f"--as={spec.memory_bytes}", "--"] if spec.memory_bytes else []
            return prefix, None

    def _join(self, cg: Cgroup | None, argv: list[str]) -> list[str]:
        if cg is None:
            return argv
        return ["/bin/sh", "-c", _JOIN, "sh", *map(str, cg.procs_files()), "--", *argv]

    async def start(self, spec: SandboxSpec) -> RuntimeState:
        sdir = SandboxDir(self.root, spec.id)
        async with self._locks(spec.id):
            current = self._state(sdir)
            if current.phase is Phase.RUNNING and not current.degraded:
                return current
            image = self.images.resolve(spec.image)
            network_mode(spec)
            main = main_process(spec, image)
            limit = bounds(spec.ephemeral_storage_bytes, self.disks.default)
            if current.degraded:
                await self._stop(sdir)

            def prepare() -> None:
                self._prepare_disk(sdir, spec, limit)
                sdir.save_spec(spec)
                sdir.clear_run()
                overlay.mount_overlay(lower=image.rootfs, upper=sdir.upper, work=sdir.ovwork, target=sdir.rootfs)

            try:
                await asyncio.to_thread(prepare)
            except OSError as e:
                await asyncio.to_thread(self._release_disk, sdir)
                raise self._start_failed(sdir, e) from e
            prefix, cg = self._limits(spec)
            argv = [
                self.bwrap, "--unshare-all", "--unshare-user", "--uid", "0", "--gid", "0",
                "--bind", str(sdir.rootfs), "/", "--proc", "/proc", "--dev", "/dev",
                "--bind", str(sdir.app), WORKDIR_MOUNT,
            ]
            for v in spec.volumes:
                argv += ["--ro-bind" if v.read_only else "--bind", str(sdir.volume(v.name)), v.mount_path]
            argv += ["--hostname", hostname_of(spec), "--chdir", main.cwd, "--clearenv"]
            for key, value in main.env.items():
                argv += ["--setenv", key, value]
            info_r, info_w = os.pipe()
            status = os.open(self._status_file(sdir), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            out, err = sdir.open_logs()
            argv += ["--cap-drop", "ALL", "--new-session", "--info-fd", str(info_w),
                     "--json-status-fd", str(status), "--", *main.argv]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self._join(cg, [*prefix, *argv]),
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, pass_fds=(info_w, status),
                )
            finally:
                for fd in (info_w, out, err, status):
                    os.close(fd)
            try:
                raw = await asyncio.wait_for(asyncio.to_thread(_read_all, info_r), 10)
            finally:
                os.close(info_r)
            try:
                init = int(json.loads(raw)["child-pid"])
            except (ValueError, KeyError):
                code = await proc.wait()
                why = sdir.stderr_log.read_bytes()[-2000:].decode(errors="replace").strip().splitlines()
                await asyncio.to_thread(self._release_disk, sdir)
                raise SandboxStartFailed(
                    f"sandbox {spec.id}: bwrap failed (exit {code}): {why[-1] if why else 'no message'}"
                ) from None
            # bwrap reports its init before it has pivoted into the sandbox's root; nsenter
            # --root follows the init's root, so wait until that root is the sandbox's.
            for _ in range(500):
                if os.path.isdir(f"/proc/{init}/root{WORKDIR_MOUNT}") or proc.returncode is not None:
                    break
                await asyncio.sleep(0.002)
            start = _start_time(init)
            sdir.write_json(self._info_file(sdir), {"pid": proc.pid, "init": init, "start": start, "env": main.env})
            # bwrap keeps running detached; reap it in the background if it ends while we live.
            asyncio.ensure_future(proc.wait())
            self._watched.discard(sdir.id)  # a new disk mount: watch its logs anew
            return self._state(sdir)

    async def stop(self, id: str) -> None:
        sdir = SandboxDir(self.root, id)
        async with self._locks(id):
            await self._stop(sdir)

    async def _stop(self, sdir: SandboxDir) -> None:
        """Stop with the lock held: kill the namespace's init and every process of its cgroup."""
        id = sdir.id
        info = self._running(sdir)
        if info is not None:
            # Killing a pid namespace's init kills everything in it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(info["init"], signal.SIGKILL)
            for _ in range(500):
                if _start_time(info["init"]) is None:
                    break
                await asyncio.sleep(0.01)
        cg = self._cgroup(id)
        if cg.exists():
            for pid in cg.pids():  # exec'd processes that never entered the pid namespace
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(cg.remove)
        for done in (self._info_file(sdir), self._status_file(sdir)):
            with contextlib.suppress(FileNotFoundError):
                done.unlink()  # a stopped sandbox did not exit on its own
        await asyncio.to_thread(self._release_disk, sdir)

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
        info = self._running(sdir)
        if info is None:
            raise SandboxNotRunning(f"sandbox {id} is not running")
        envs = {**info.get("env", {}), **(env or {})}
        validate_env(id, envs)
        # nsenter's --wd=DIR resolves DIR on the host: env -C changes directory inside.
        inner = ["env", "-i", f"--chdir={cwd or WORKDIR_MOUNT}", *(f"{k}={v}" for k, v in envs.items()), *argv]
        if (sdir.rootfs / "usr" / "bin" / "setpriv").exists():
            inner = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", *inner]
        cmd = [self.nsenter, f"--target={info['init']}", "--all", "--root", "--", *inner]
        cg = self._cgroup(id)
        proc = await asyncio.create_subprocess_exec(
            *self._join(cg if cg.exists() else None, cmd),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )

        async def kill_inside() -> None:
            # nsenter and the command share a host process group (their own session);
            # orphans that stayed in it die too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        return HostProcess(proc, stdin=stdin, kill_inside=kill_inside)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
