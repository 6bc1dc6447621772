"""Pods under bubblewrap: the fallback where runsc cannot run (the host kernel is shared: weaker).

Each container is one ``bwrap`` namespace set (user, pid, ipc, uts, cgroup, mount;
the pod's network namespace when it has one, else a loopback of its own) on the
pod's disk, with the same overlay root, volumes, raw output files, CRI logs,
stdin FIFO and holder as under gVisor (``turbok.runtime.pods``). There is no
shared sandbox process, so ``single_container`` changes nothing here and
``hibernate_pod_sandbox`` raises ``HibernationUnsupported``.

Limits: a cgroup per pod (``<parent>/<pod id>``: the pod's cpu, memory, pids) and
one per container below it (the container's own cpu and memory: unlike gVisor,
bubblewrap bounds each container); a process joins them before it runs, through
a one-line shell. Without writable cgroups nothing is bounded and the pod's notes
say so. A container's memory limit kills one process (the kernel's OOM killer),
reported ``OOMKilled`` when the main process was the one.

Users: ``runAsUser``/``runAsGroup`` are the uid/gid inside the container's user
namespace (files it makes are root's on the host, as with rootless containers).
Capabilities: none by default (bubblewrap drops them all), the container's
``add`` within its user namespace.

``exec`` enters the container's namespaces with ``nsenter`` and runs the command
as the container's user through the image's ``setpriv``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from turbok.runtime.cgroups import Cgroup
from turbok.runtime.cri import ContainerConfig, Isolation, PodSandboxConfig
from turbok.runtime.errors import HibernationUnsupported, SandboxStartFailed
from turbok.runtime.images import ImageStore
from turbok.runtime.podbundle import CFS_PERIOD_US, ContainerProcess, MountSpec, cpu_quota_us, hostname_of
from turbok.runtime.podio import start_time
from turbok.runtime.podlayout import ContainerDir, PodDir
from turbok.runtime.pods import (
    DEFAULT_PIDS_LIMIT,
    LocalPodRuntime,
    PodNetworkLike,
    _config_from,
    _read_json,
    _write_json,
)

__all__ = ["BubblewrapPodRuntime"]

# Joins the cgroups named before "--", then execs the rest: a process is limited from its first
# instruction, with no preexec_fn in a threaded host.
_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 126; shift; done; shift; exec "$@"'


class BubblewrapPodRuntime(LocalPodRuntime):
    """Pods as bubblewrap namespaces (see the module docstring); state under ``root``."""

    isolation = Isolation.BUBBLEWRAP
    supports_hibernation = False

    def __init__(self, root: Path, images: ImageStore | None = None, *, bwrap: str = "bwrap",
                 network: PodNetworkLike | None = None, pids_limit: int | None = DEFAULT_PIDS_LIMIT,
                 cgroup_parent: str = "/turbok", bounded_disks: bool = True,
                 default_ephemeral_storage: int | None = None, legacy_root: Path | None = None) -> None:
        path, nsenter = shutil.which(bwrap), shutil.which("nsenter")
        if path is None or nsenter is None:
            raise SandboxStartFailed("the bubblewrap pod runtime needs bwrap and nsenter "
                                     "(apt-get install -y bubblewrap util-linux)")
        kw: dict[str, Any] = {}
        if default_ephemeral_storage is not None:
            kw["default_ephemeral_storage"] = default_ephemeral_storage
        super().__init__(root, images, network=network, pids_limit=pids_limit, cgroup_parent=cgroup_parent,
                         bounded_disks=bounded_disks, legacy_root=legacy_root, **kw)
        self.bwrap = path
        self.nsenter = nsenter

    # ------------------------------------------------------------------ helpers

    def _pod_cgroup(self, pdir: PodDir) -> Cgroup:
        return Cgroup(f"{self.cgroup_parent}/{pdir.id}")

    def _container_cgroup(self, pdir: PodDir, cdir: ContainerDir) -> Cgroup:
        return Cgroup(f"{self.cgroup_parent}/{pdir.id}/{cdir.name}")

    @staticmethod
    def _info_file(cdir: ContainerDir) -> Path:
        return cdir.path / "bwrap.json"

    @staticmethod
    def _status_file(cdir: ContainerDir) -> Path:
        return cdir.path / "bwrap-status.json"

    def _info(self, cdir: ContainerDir, rec: dict[str, Any]) -> dict[str, Any] | None:
        info = _read_json(self._info_file(cdir))
        if info is None or info.get("cid") != rec.get("cid") or not isinstance(info.get("init"), int):
            return None
        return info if start_time(info["init"]) == info.get("start") else None


    def _join(self, groups: list[Cgroup], argv: list[str]) -> list[str]:
        files = [str(f) for g in groups if g.exists() for f in g.procs_files()]
        if not files:
            return argv
        return ["/bin/sh", "-c", _JOIN, "sh", *files, "--", *argv]

    # ------------------------------------------------------------------ the pod

    async def _boot_pod(self, pdir: PodDir, pod: dict[str, Any], config: PodSandboxConfig,
                        netns: Path | None) -> None:
        self._make_pod_cgroup(pdir, config)

    def _make_pod_cgroup(self, pdir: PodDir, config: PodSandboxConfig) -> bool:
        try:
            self._pod_cgroup(pdir).create(
                cpu_quota_us=cpu_quota_us(config.cpu_millis) if config.cpu_millis else None,
                cpu_period_us=CFS_PERIOD_US, memory_bytes=config.memory_bytes,
                pids=config.pids_limit if config.pids_limit is not None else self.pids_limit)
        except OSError:
            return False
        return True

    def _pod_alive(self, pdir: PodDir, pod: dict[str, Any]) -> tuple[bool, str, str]:
        return True, "", ""

    def _pod_notes(self, pdir: PodDir, pod: dict[str, Any]) -> list[str]:
        notes = ["bubblewrap: the pod's containers share the host's kernel (gVisor is not available)"]
        if not self._pod_cgroup(pdir).exists():
            notes.append("no writable cgroups: the pod's cpu, memory and pids limits are not enforced")
        return notes

    async def _stop_pod(self, pdir: PodDir, pod: dict[str, Any]) -> None:
        """Kill what is left in the pod's cgroups; the containers' first (the pod's cannot go before them)."""
        groups = [self._container_cgroup(pdir, pdir.container(n)) for n in pdir.container_names()]
        for cg in [*groups, self._pod_cgroup(pdir)]:
            if cg.exists():
                for pid in cg.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(cg.remove)

    def _container_notes(self, config: PodSandboxConfig, container: ContainerConfig) -> list[str]:
        notes = []
        if container.security.supplemental_groups:
            notes.append(f"supplementalGroups of container {container.name} are not set: bubblewrap's user "
                         "namespace does not allow setgroups")
        if not container.security.capabilities.add and container.security.run_as_user in (None, 0):
            notes.append(f"container {container.name} runs without capabilities: bubblewrap drops them all "
                         "(gVisor would give Docker's default set)")
        return notes

    # ------------------------------------------------------------------ containers

    async def _launch(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], container: ContainerConfig,
                      proc: ContainerProcess, container_mounts: list[MountSpec], netns: Path | None,
                      stdio: tuple[int, int, int] | None, console: Path | None) -> int | None:
        pod = _read_json(pdir.pod_file) or {}
        config = _config_from(pod["config"])
        groups: list[Cgroup] = []
        if self._pod_cgroup(pdir).exists() or self._make_pod_cgroup(pdir, config):
            cg = self._container_cgroup(pdir, cdir)
            with contextlib.suppress(OSError):
                cg.create(cpu_quota_us=cpu_quota_us(container.cpu_millis) if container.cpu_millis else None,
                          cpu_period_us=CFS_PERIOD_US, memory_bytes=container.memory_bytes, pids=None)
                groups = [cg]
        # --as-pid-1: the command is the namespace's init, so the container ends when it does, as under
        # runc (what it started goes with it) and a SIGTERM without a handler is ignored there, as there.
        argv = [self.bwrap, "--unshare-user", "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
                "--uid", str(proc.uid), "--gid", str(proc.gid),
                "--ro-bind" if container.security.read_only_root_filesystem else "--bind", str(cdir.rootfs), "/",
                "--proc", "/proc", "--dev", "/dev"]
        if netns is None:
            argv.insert(1, "--unshare-net")
        for m in container_mounts:
            argv += ["--ro-bind" if m.read_only else "--bind", str(m.source), m.destination]
        argv += ["--hostname", hostname_of(config), "--chdir", proc.cwd, "--clearenv"]
        for key, value in proc.env.items():
            argv += ["--setenv", key, value]
        argv += ["--cap-drop", "ALL"]
        for cap in container.security.capabilities.add:
            name = cap.upper() if cap.upper().startswith("CAP_") else f"CAP_{cap.upper()}"
            if name in proc.capabilities:
                argv += ["--cap-add", name]
        master = replica = None
        if container.tty:
            master, replica = os.openpty()
            os.set_inheritable(master, False)
            stdio = (replica, replica, replica)
        else:
            argv.append("--new-session")  # no terminal: keep it from reaching ours (TIOCSTI)
        assert stdio is not None
        info_r, info_w = os.pipe()
        status = os.open(self._status_file(cdir), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        argv += ["--info-fd", str(info_w), "--json-status-fd", str(status), "--", *proc.argv]
        if netns is not None:
            argv = [self.nsenter, f"--net={netns}", "--", *argv]
        try:
            child = await asyncio.create_subprocess_exec(
                *self._join(groups, argv), stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                start_new_session=True, pass_fds=(info_w, status))
        finally:
            for fd in (info_w, status, *((replica,) if replica is not None else ())):
                os.close(fd)
        try:
            raw = await asyncio.wait_for(asyncio.to_thread(_read_all, info_r), 10)
        finally:
            os.close(info_r)
        try:
            init = int(json.loads(raw)["child-pid"])
        except (ValueError, KeyError):
            code = await child.wait()
            if master is not None:
                os.close(master)
            err = pdir.raw_log(cdir.name, int(rec["attempt"]), "stderr")
            why = err.read_bytes()[-2000:].decode(errors="replace").strip().splitlines() if err.exists() else []
            raise SandboxStartFailed(f"container {cdir.name} of pod {pdir.id}: bwrap failed (exit {code}): "
                                     f"{why[-1] if why else 'no message'}") from None
        _write_json(self._info_file(cdir), {"cid": rec["cid"], "pid": child.pid, "init": init,
                                            "start": start_time(init)})
        asyncio.ensure_future(child.wait())  # reaped while we live; detached otherwise
        return master

    def _running(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> bool:
        return rec.get("started_at") is not None and self._info(cdir, rec) is not None

    async def _exit_of(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> dict[str, Any]:
        code = None
        with contextlib.suppress(OSError, ValueError):
            for doc in self._status_file(cdir).read_text().split("}"):
                if '"exit-code"' in doc:
                    code = int(json.loads(doc + "}")["exit-code"])
        finished = None
        with contextlib.suppress(OSError):
            finished = self._status_file(cdir).stat().st_mtime
        cg = self._container_cgroup(pdir, cdir)
        if cg.exists() and cg.counters().oom_kills and code in (None, 137):
            return {"exit_code": 137, "reason": "OOMKilled", "finished_at": finished,
                    "message": "killed: the container reached its memory limit"}
        if code is None:
            return {"exit_code": None, "reason": "Error", "message": "the container ended and left no exit status"}
        return {"exit_code": code, "finished_at": finished}

    async def _signal(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], sig: str) -> None:
        info = self._info(cdir, rec)
        if info is None:
            return
        number = getattr(signal, f"SIG{sig}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(info["init"], number)

    async def _forget(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> None:
        info = self._info(cdir, rec)
        if info is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info["init"], signal.SIGKILL)
            for _ in range(500):
                if start_time(info["init"]) is None:
                    break
                await asyncio.sleep(0.01)
        cg = self._container_cgroup(pdir, cdir)
        if cg.exists():
            for pid in cg.pids():  # exec'd processes that never entered the pid namespace
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(cg.remove)
        self._info_file(cdir).unlink(missing_ok=True)

    # ------------------------------------------------------------------ exec

    async def _spawn_exec(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], process: dict[str, Any],
                          *, tty_fd: int | None, stdin: bool) -> tuple[asyncio.subprocess.Process, Any]:
        info = self._info(cdir, rec)
        if info is None:
            from turbok.runtime.errors import SandboxNotRunning

            raise SandboxNotRunning(f"container {cdir.name} of pod {pdir.id} is not running")
        envs = [e for e in process["env"]]
        user = process["user"]
        # nsenter's --wd resolves on the host: env -C changes directory inside.
        inner = ["env", "-i", f"--chdir={process['cwd']}", *envs, *process["args"]]
        if (cdir.rootfs / "usr" / "bin" / "setpriv").exists():
            # bwrap denies setgroups in its user namespace: supplementary groups cannot be set (a note says so).
            inner = ["setpriv", f"--reuid={user['uid']}", f"--regid={user['gid']}", "--keep-groups",
                     "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", *inner]
        cmd = [self.nsenter, f"--target={info['init']}", "--all", "--root", "--preserve-credentials",
               "--", *inner]
        groups_cg = [g for g in (self._container_cgroup(pdir, cdir),) if g.exists()]
        client = await asyncio.create_subprocess_exec(
            *self._join(groups_cg, cmd),
            stdin=tty_fd if tty_fd is not None else (asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL),
            stdout=tty_fd if tty_fd is not None else asyncio.subprocess.PIPE,
            stderr=tty_fd if tty_fd is not None else asyncio.subprocess.PIPE,
            start_new_session=True)
        return client, None

    async def _kill_exec(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], client: Any,
                         handle: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(client.pid, signal.SIGKILL)

    async def hibernate_pod_sandbox(self, id: str) -> None:
        raise HibernationUnsupported(f"pod {id}: bubblewrap cannot keep a pod's memory; stop it instead")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
