"""Pods under gVisor: one ``runsc`` sandbox per Pod holding all its containers.

Two shapes, chosen by the node through ``PodSandboxConfig.single_container``:

- **solo** (at most one container runs at a time: one regular container, init
  containers one by one before it). Each container is the root of its own runsc
  sandbox on the pod's disk, network namespace and cgroup (``<parent>/<pod id>``):
  no pause process, so a cold boot is one ``runsc run`` as before pods (the fast
  path; ``bench/runtime.py``), and ``hibernate_pod_sandbox`` works (``runsc
  checkpoint``; the next ``run_pod_sandbox`` of the same config restores it).
- **pause** (any other pod). ``run_pod_sandbox`` boots the pod's sandbox with an
  idle root container (``/bin/sleep infinity`` on the base image, read-only, no
  capabilities, uid 65534), and each container joins it with ``runsc create`` +
  ``runsc start`` (CRI annotations ``io.kubernetes.cri.container-type: container``
  and ``io.kubernetes.cri.sandbox-id``): its own root filesystem, mount and pid
  namespaces and gofer, the pod's network, IPC and memory. runsc 20221219 cannot
  restore such a sandbox ("doesn't restore the state of multiple containers"), so
  hibernating one raises ``HibernationUnsupported``; nor does it bound a
  subcontainer on its own (one host process runs them all), so per-container
  limits are notes and the pod's sum is what the cgroup enforces.

Every runsc container has a fixed-width id per attempt (``gvisor://<id>`` in the
status), so a restart never meets its predecessor's registration.

Cheap status (no subprocess): a solo container runs while its sandbox process
lives (``/proc/PID/cmdline`` names the id: pids are reused) and its boot log has
not logged the application's exit (that line also gives the exit code and time);
a pause-shaped one runs while its gofer lives (runsc's gofer of a subcontainer
ends with it). Its exit code then comes from one ``runsc wait`` (runsc keeps it
until the container is deleted), its time from the pause boot log. A sandbox
killed for memory takes every container with it: the pod cgroup's OOM counter
says ``OOMKilled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from turbok.runtime import bootns, orphans, spawn
from turbok.runtime.cgroups import Cgroup
from turbok.runtime.cri import (
    Capabilities,
    ContainerConfig,
    DeviceNode,
    Isolation,
    Mount,
    PodSandboxConfig,
    PodSandboxStatus,
    SecurityContext,
    SnapshotInfo,
    essence,
)
from turbok.runtime.errors import (
    HibernationUnsupported,
    RuntimeError_,
    SandboxNotRunning,
    SandboxStartFailed,
    SnapshotFailed,
    SnapshotIncompatible,
    SnapshotNotFound,
    SnapshotUnsupported,
)
from turbok.runtime.exits import EXITS, ExitWatch
from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.runtime.logs import ROTATOR
from turbok.runtime.podbundle import ContainerProcess, MountSpec, container_bundle, pause_bundle
from turbok.runtime.podio import receive_console
from turbok.runtime.podlayout import RAW_STREAMS, ContainerDir, PodDir
from turbok.runtime.pods import (
    DEFAULT_PIDS_LIMIT,
    LocalPodRuntime,
    PodNetworkLike,
    _config_from,
    _read_json,
    _restore_key,
    _write_json,
    canonical,
)
from turbok.runtime.runsc import Runsc, RunscSettings, command_lines
from turbok.runtime.runsc import choose as choose_runsc
from turbok.runtime.snapshotstore import (
    SnapshotDir,
    copy_image,
    copy_tree,
    list_snapshots,
    sync_filesystem,
    wait_released,
)
from turbok.runtime.teardown import in_teardown_thread

__all__ = ["BOOT_NICENESS", "GvisorPodRuntime", "snapshot_key"]

log = logging.getLogger("turbok.runtime.pods_gvisor")

#: Niceness of a background boot's ``runsc run``/``create``/``restore`` (``background`` in the pod's or the
#: container's config: a warm pool's refill), next to the control plane's requests. A boot somebody waits for
#: (a claim's cold start) runs at the control plane's own priority: it is the request.
BOOT_NICENESS = 10
_EXIT_RE = re.compile(
    rb"^I(\d{4} \d\d:\d\d:\d\d\.\d+)\s.*application exiting with (?:exit status (\d+)|killed by signal (\d+))", re.M)
_EXEC_RE = re.compile(rb"^I(\d{4} \d\d:\d\d:\d\d\.\d+)\s.*\] EXEC: ", re.M)
_GOFER_GONE = rb'^I(\d{4} \d\d:\d\d:\d\d\.\d+)\s.*Gofer socket disconnected, killing container "%s"'
_F_SETPIPE_SZ = 1031
#: How long a snapshot waits for the pod's disk to be released everywhere before copying it (the gofer's
#: namespace going away holds it a moment; the image is flushed either way).
_RELEASE_WAIT = 5.0


def _tail(path: Path, size: int = 8192) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read()
    except OSError:
        return b""


def _glog_time(stamp: bytes) -> float | None:
    """A glog line's ``MMDD hh:mm:ss.micro`` (local time, no year) as a Unix time."""
    now = datetime.datetime.now()
    try:
        t = datetime.datetime.strptime(f"{now.year}{stamp.decode()}", "%Y%m%d %H:%M:%S.%f")
    except ValueError:
        return None
    if t > now + datetime.timedelta(days=1):  # logged last year
        t = t.replace(year=now.year - 1)
    return t.timestamp()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
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


class GvisorPodRuntime(LocalPodRuntime):
    """Pods as gVisor sandboxes (see the module docstring); state under ``root``."""

    isolation = Isolation.GVISOR
    supports_hibernation = True
    supports_snapshots = True
    withheld_capabilities = frozenset({"CAP_NET_RAW"})
    adopts_orphans = True

    def __init__(self, root: Path, images: ImageStore | None = None, *, runsc: str | Runsc | None = None,
                 platform: str | None = None, network: PodNetworkLike | None = None,
                 pids_limit: int | None = DEFAULT_PIDS_LIMIT, cgroup_parent: str = "/turbok",
                 bounded_disks: bool = True, default_ephemeral_storage: int | None = None,
                 legacy_root: Path | None = None) -> None:
        """``runsc``: a chosen ``Runsc`` (``turbok.runtime.runsc.choose``), or the binary (a path or a name on
        PATH) with ``platform`` (``auto``...); either left None comes from ``TURBOK_RUNSC`` /
        ``TURBOK_RUNSC_PLATFORM`` (default ``runsc``, ``auto``)."""
        if not isinstance(runsc, Runsc):
            wanted = RunscSettings.from_env(binary=runsc, platform=platform)
            if shutil.which(wanted.binary) is None:
                raise SandboxStartFailed(
                    f"runsc not found at {wanted.binary!r}: install gVisor (apt-get install -y runsc)")
            runsc = choose_runsc(wanted)
        kw: dict[str, Any] = {}
        if default_ephemeral_storage is not None:
            kw["default_ephemeral_storage"] = default_ephemeral_storage
        super().__init__(root, images, network=network, pids_limit=pids_limit, cgroup_parent=cgroup_parent,
                         bounded_disks=bounded_disks, legacy_root=legacy_root, **kw)
        self.runsc_choice = runsc
        self.runsc = runsc.path
        #: the runsc version (the Node's ``containerRuntimeVersion`` is ``gvisor://<version>``)
        self.version = runsc.version
        self._global_flags = runsc.global_flags()
        self.state_dir = self.root / ".runsc"
        self.exits: ExitWatch = EXITS
        self.boot_namespace = bootns.BootNamespace(self.root)
        nice = shutil.which("nice")
        self._boot_prefix: tuple[str, ...] = (nice, "-n", str(BOOT_NICENESS)) if nice else ()

    # ------------------------------------------------------------------ runsc plumbing

    def _nice(self, background: bool) -> tuple[str, ...]:
        """The argv prefix of a boot: ``nice`` for a background one, nothing for one somebody waits for."""
        return self._boot_prefix if background else ()

    def _cmd(self, *args: str) -> list[str]:
        return [self.runsc, f"--root={self.state_dir}", *self._global_flags, *args]

    async def _runsc(self, *args: str, timeout: float = 60.0) -> tuple[int, bytes]:
        try:
            return await spawn.run(self._cmd(*args), timeout=timeout)
        except TimeoutError:
            raise RuntimeError_(f"runsc {' '.join(args)} did not finish in {timeout:.0f} s") from None

    def _state_file(self, sandbox: str, container: str) -> Path:
        return self.state_dir / f"{container}_sandbox:{sandbox}.state"

    def _registration(self, pdir: PodDir, rec: dict[str, Any]) -> Path:
        cid = rec["cid"]
        return self._state_file(cid if rec.get("shape") == "solo" else pdir.id, cid)

    def _sandbox_alive(self, sandbox: str, pod: str) -> bool:
        """Whether the sandbox runs; while it does, its end is watched for (``exits``, key: ``pod``)."""
        try:
            data = json.loads(self._state_file(sandbox, sandbox).read_bytes())
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            return True  # being rewritten by runsc
        pid = (data.get("sandbox") or {}).get("pid") if isinstance(data, dict) else None
        if not isinstance(pid, int) or data.get("status") not in ("running", "created", "paused"):
            return False
        cmd = _cmdline(pid)
        if not (cmd.startswith(b"runsc-sandbox") and sandbox.encode() in cmd):
            return False
        self.exits.watch(pid, pod)
        return True

    @staticmethod
    def _netflag(netns: Path | None) -> str:
        """``--network=...`` for a boot in ``netns`` (None: a private loopback only)."""
        return "--network=none" if netns is None else "--network=sandbox"

    async def _boot(self, argv: list[str], what: str, *, err_path: Path, background: bool, trees: Sequence[Path],
                    netns: Path | None = None, stdio: tuple[int, int, int] | None = None) -> None:
        """Run a runsc boot command (run/restore/create/start) to its end; raise with its error.

        It starts from the pristine mount namespace (``turbok.runtime.bootns``) holding ``trees`` (the pod's
        directory, the host paths its bundle reads) and ``netns``, or, where that cannot be, from the host's.
        Never pipes: a detached sandbox (or gofer) keeps the stdio it is given, so a pipe would never
        reach its end. ``stdio`` is the container's (its raw output files, which runsc's own error then
        goes to as well); without it runsc's output goes to ``err_path``."""
        own: list[int] = []
        if stdio is None:
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            own = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), err]
            stdio, err_at = (own[0], err, err), 0
        else:
            err_at = os.stat(err_path).st_size if err_path.exists() else 0
        try:
            proc = await self._start_boot(argv, stdio, background, trees, netns)
        finally:
            for fd in own:
                os.close(fd)
        if await spawn.wait(proc) != 0:
            raw = b""
            with contextlib.suppress(OSError), open(err_path, "rb") as f:
                f.seek(err_at)
                raw = f.read(4096)
            lines = raw.decode(errors="replace").strip().splitlines()
            raise SandboxStartFailed(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else 'no message'}")

    async def _start_boot(self, argv: list[str], stdio: tuple[int, int, int], background: bool,
                          trees: Sequence[Path], netns: Path | None) -> subprocess.Popen[bytes]:
        nice = self._nice(background)
        if trees and self.boot_namespace.unavailable is None:
            try:
                return await self.boot_namespace.start([*nice, *argv], stdin=stdio[0], stdout=stdio[1],
                                                       stderr=stdio[2], trees=trees, netns=netns)
            except bootns.Unavailable as e:
                log.info("%s: booting from the host's mount namespace (%s)", argv[-1], e)
        prefix: tuple[str, ...] = ()
        if netns is not None:
            from turbok.runtime.network import runsc_prefix

            prefix = runsc_prefix(netns)
        return await spawn.start([*nice, *prefix, *argv], stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])

    # ------------------------------------------------------------------ the pod

    async def _boot_pod(self, pdir: PodDir, pod: dict[str, Any], config: PodSandboxConfig,
                        netns: Path | None) -> None:
        image = self.images.resolve(BASE_IMAGE)
        state = self._state_file(pdir.id, pdir.id)
        if state.exists():
            await self._runsc("delete", "--force", pdir.id)
        spec = pause_bundle(config, rootfs=image.rootfs, cgroups_path=f"{self.cgroup_parent}/{pdir.id}",
                            pids_limit=self.pids_limit, netns=netns)

        def write() -> None:
            pdir.pause.mkdir(mode=0o700, exist_ok=True)
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_json(pdir.pause / "config.json", spec)
            pdir.pause_boot_log.unlink(missing_ok=True)

        await asyncio.to_thread(write)
        await self._boot(self._cmd(
            self._netflag(netns), *nvproxy_flags(config), "--cpu-num-from-quota",
            f"--debug-log={pdir.pause_boot_log}", "--debug-command=boot",
            "run", "--detach", f"--bundle={pdir.pause}", pdir.id), f"pod {pdir.id}: runsc run (pause)",
            err_path=pdir.logs / "pause.out", background=config.background, trees=boot_trees(pdir, spec),
            netns=netns)

    def _pod_alive(self, pdir: PodDir, pod: dict[str, Any]) -> tuple[bool, str, str]:
        if pod.get("shape") == "solo":
            return True, "", ""
        if self._sandbox_alive(pdir.id, pdir.id):
            return True, "", ""
        c = Cgroup(f"{self.cgroup_parent}/{pdir.id}").counters()
        if c.oom_kills:
            return False, "OOMKilled", "the pod's sandbox reached its memory limit and was killed"
        if c.pids_limit_hits:
            return False, "PidsLimit", "the pod's sandbox reached its limit of host tasks and was killed"
        return False, "Crashed", "the pod's sandbox ended"

    def _processes(self, sandbox: str) -> list[int]:
        """The sandbox's process, then its gofers (one per container), as runsc's state files name them."""
        sandboxes, gofers = [], []
        for state in self.state_dir.glob(f"*_sandbox:{sandbox}.state"):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                data = json.loads(state.read_bytes())
                sandboxes.append((data.get("sandbox") or {}).get("pid"))
                gofers.append(data.get("goferPid"))
        return [pid for pid in (*sandboxes, *gofers) if isinstance(pid, int)]

    async def _end(self, pdir: PodDir, sandbox: str) -> None:
        """Kill and reap the sandbox's processes where they are this process' (``orphans``), so that the
        ``runsc delete`` that follows finds them gone instead of waiting for PID 1 to reap them."""
        if orphans.adopted():
            owner = f"{pdir.path}/".encode()  # in their --bundle and log paths
            await in_teardown_thread(lambda: orphans.kill_and_reap(self._processes(sandbox), owner=owner))

    async def _stop_pod(self, pdir: PodDir, pod: dict[str, Any]) -> None:
        if self._state_file(pdir.id, pdir.id).exists():
            await self._end(pdir, pdir.id)
            code, out = await self._runsc("delete", "--force", pdir.id)
            if code != 0 and self._state_file(pdir.id, pdir.id).exists():
                raise RuntimeError_(f"pod {pdir.id}: runsc delete failed: {out.decode(errors='replace').strip()}")
        for cid in await asyncio.to_thread(self._strays, pdir):
            log.warning("pod %s: runsc container %s was running without a record of it (a start that failed "
                        "half way); deleting it", pdir.id, cid)
            await self._end(pdir, cid)  # a solo container's sandbox is its own
            await self._runsc("delete", "--force", cid)

    async def _reap_strays(self, pdir: PodDir) -> bool:
        pids = await asyncio.to_thread(self._stray_processes, pdir)
        for pid in pids:
            log.warning("pod %s: killing runsc process %d, left without runsc state (a start that failed half "
                        "way, e.g. on a full disk); it held the pod's disk", pdir.id, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for _ in range(100):  # their mount namespaces go with them, and the disk with those
            if not any(os.path.exists(f"/proc/{pid}") for pid in pids):
                break
            await asyncio.sleep(0.02)
        return bool(pids)

    def _stray_processes(self, pdir: PodDir) -> list[int]:
        """runsc sandbox and gofer processes of this pod still alive once runsc knows none of its containers:
        found by their command line (this runtime's ``--root`` and a log path in the pod's directory)."""
        root, mine = f"--root={self.state_dir}".encode(), f"{pdir.path}/".encode()
        return [pid for pid, argv in command_lines()
                if argv[0] in (b"runsc-sandbox", b"runsc-gofer") and root in argv
                and any(a.startswith(b"--debug-log=") and mine in a for a in argv)]

    def _strays(self, pdir: PodDir) -> list[str]:
        """runsc containers of this pod that no container record names (their start failed after ``runsc run``,
        e.g. on a full disk): their gofer would keep the pod's disk mounted."""
        known = {str(rec["cid"]) for name in pdir.container_names()
                 if (rec := self._rec(pdir.container(name))) is not None and rec.get("cid")}
        try:
            launched = set(pdir.launched.read_text().split())
        except FileNotFoundError:
            launched = None  # made before launches were written down: look at every state file
        if launched is not None:
            return sorted(cid for cid in launched - known - {pdir.id}
                          if self._state_file(cid, cid).exists() or self._state_file(pdir.id, cid).exists())
        found = []
        for state in self.state_dir.glob("*_sandbox:*.state"):
            try:
                data = json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            bundle, cid = str(data.get("bundleDir") or ""), str(data.get("id") or "")
            if cid and cid not in known and cid != pdir.id and bundle.startswith(f"{pdir.path}/"):
                found.append(cid)
        return found

    def _pod_notes(self, pdir: PodDir, pod: dict[str, Any]) -> list[str]:
        return []

    def _container_notes(self, config: PodSandboxConfig, container: ContainerConfig) -> list[str]:
        if config.single_container:
            if (container.memory_bytes is not None and config.memory_bytes is not None
                    and container.memory_bytes != config.memory_bytes):
                return [f"the pod's memory limit ({config.memory_bytes} bytes) bounds container "
                        f"{container.name}, which runs alone in the pod's sandbox"]
            return []
        notes = []
        if container.memory_bytes is not None:
            notes.append(f"memory limit of container {container.name} is not enforced on its own: gVisor runs "
                         "the pod's containers in one sandbox, bounded by the pod's total"
                         + (f" ({config.memory_bytes} bytes)" if config.memory_bytes else ""))
        if container.cpu_millis is not None:
            notes.append(f"cpu limit of container {container.name} is not enforced on its own: the pod's "
                         "containers share one sandbox, bounded by the pod's total"
                         + (f" ({config.cpu_millis}m)" if config.cpu_millis else ""))
        return notes

    # ------------------------------------------------------------------ containers

    async def _launch(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], container: ContainerConfig,
                      proc: ContainerProcess, container_mounts: list[MountSpec], netns: Path | None,
                      stdio: tuple[int, int, int] | None, console: Path | None) -> int | None:
        cid = rec["cid"]
        pod = _read_json(pdir.pod_file) or {}
        config = _config_from(pod["config"])
        solo = rec["shape"] == "solo"
        spec = container_bundle(
            config, container, proc, rootfs=cdir.rootfs, mounts=container_mounts,
            shape="solo" if solo else "sub",
            # A subcontainer gets no cgroup of its own: runsc 20221219 would make an empty one (nothing
            # bounds a subcontainer alone) that blocks removing the pod's when the sandbox goes first.
            cgroups_path=f"{self.cgroup_parent}/{pdir.id}" if solo else None,
            pids_limit=self.pids_limit, netns=netns)
        add_devices(spec, container.devices)
        registration = self._registration(pdir, rec)
        if registration.exists():
            await self._runsc("delete", "--force", cid)
        boot_log = pdir.boot_log_of(cdir.name, int(rec["attempt"]))

        def write() -> None:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_json(cdir.config, spec)
            boot_log.unlink(missing_ok=True)
            with open(pdir.launched, "a") as f:  # before runsc knows it: ``_strays`` looks here, not at every pod's
                f.write(f"{cid}\n")

        await asyncio.to_thread(write)
        sock = receive_console(console) if console is not None else None
        err_path = pdir.raw_log(cdir.name, int(rec["attempt"]), "stderr") if stdio else cdir.path / "runsc.err"
        what = f"container {cdir.name} of pod {pdir.id}"
        try:
            console_flag = (f"--console-socket={console}",) if console is not None else ()
            trees = boot_trees(pdir, spec)
            if solo:
                booting = self._boot(self._cmd(
                    self._netflag(netns), *nvproxy_flags(config), "--cpu-num-from-quota", f"--debug-log={boot_log}",
                    "--debug-command=boot", "run",
                    "--detach", *console_flag, f"--bundle={cdir.bundle}", cid), f"{what}: runsc run",
                    stdio=stdio, err_path=err_path, background=container.background, trees=trees, netns=netns)
            else:
                async def create_and_start() -> None:
                    await self._boot(self._cmd("create", *console_flag, f"--bundle={cdir.bundle}", cid),
                                     f"{what}: runsc create", err_path=cdir.path / "runsc.err",
                                     background=container.background, trees=trees)
                    await self._boot(self._cmd("start", cid), f"{what}: runsc start", stdio=stdio, err_path=err_path,
                                     background=container.background, trees=trees)  # it forks the gofer

                booting = create_and_start()
            if sock is None:
                await booting
                master = None
            else:
                task = asyncio.ensure_future(booting)
                got = asyncio.ensure_future(sock.master())
                done, _ = await asyncio.wait({task, got}, return_when=asyncio.FIRST_COMPLETED)
                if task in done and task.exception() is not None:
                    got.cancel()
                    with contextlib.suppress(BaseException):
                        await got
                    raise task.exception()  # type: ignore[misc]
                master = await got
                try:
                    await task
                except BaseException:
                    os.close(master)
                    raise
        except SandboxStartFailed:
            if registration.exists():
                with contextlib.suppress(RuntimeError_):
                    await self._runsc("delete", "--force", cid)
            raise
        finally:
            if sock is not None:
                sock.close()
        if solo:
            ROTATOR.watch(boot_log)
        return master

    def _started_at(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> float | None:
        if rec.get("shape") != "solo":
            return None
        with contextlib.suppress(OSError), open(pdir.boot_log_of(cdir.name, int(rec["attempt"])), "rb") as f:
            found = _EXEC_RE.search(f.read(256 * 1024))  # the boot's first lines: when the process began
            return _glog_time(found.group(1)) if found else None
        return None

    def _running(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> bool:
        if rec.get("started_at") is None:
            return False
        cid = rec["cid"]
        if rec.get("shape") == "solo":
            if not self._sandbox_alive(cid, pdir.id):
                return False
            return _EXIT_RE.search(_tail(pdir.boot_log_of(cdir.name, int(rec["attempt"])))) is None
        state = self._state_file(pdir.id, cid)
        try:
            data = json.loads(state.read_bytes())
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            return True
        gofer = data.get("goferPid") if isinstance(data, dict) else None
        if not isinstance(gofer, int) or not self._sandbox_alive(pdir.id, pdir.id):
            return False
        cmd = _cmdline(gofer)
        if not (cmd.startswith(b"runsc-gofer") and str(cdir.bundle).encode() in cmd):
            return False
        self.exits.watch(gofer, pdir.id)  # a container of a shared sandbox ends with its gofer
        return True

    async def _exit_of(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> dict[str, Any]:
        cid = rec["cid"]
        pod_cgroup = Cgroup(f"{self.cgroup_parent}/{pdir.id}")
        if rec.get("shape") == "solo":
            counters = pod_cgroup.counters()
            codes = _EXIT_RE.findall(_tail(pdir.boot_log_of(cdir.name, int(rec["attempt"]))))
            when = _glog_time(codes[-1][0]) if codes else None
            if counters.oom_kills:
                return {"exit_code": 137, "reason": "OOMKilled", "finished_at": when,
                        "message": "killed: the pod reached its memory limit"}
            if counters.pids_limit_hits:
                return {"exit_code": 137, "reason": "Error", "finished_at": when,
                        "message": "killed: the pod reached its limit of host tasks (pids limit)"}
            if codes:
                stamp, status, sig = codes[-1]
                return {"exit_code": int(status) if status else 128 + int(sig), "finished_at": when}
            return {"exit_code": None, "reason": "Error", "message": "the container's sandbox ended and left no "
                    "exit status"}
        alive, why, message = self._pod_alive(pdir, {"shape": "pause"})
        if not alive:
            if why == "OOMKilled":
                return {"exit_code": 137, "reason": "OOMKilled", "message": "killed: the pod reached its memory "
                        "limit (gVisor kills the whole pod's sandbox)"}
            return {"exit_code": 137 if why == "PidsLimit" else None, "reason": "Error", "message": message}
        code, out = await self._runsc("wait", cid, timeout=10)
        exit_code = None
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            exit_code = int(json.loads(out.decode().strip().splitlines()[-1])["exitStatus"])
        stamp = re.findall(_GOFER_GONE % cid.encode(), _tail(pdir.pause_boot_log, 256 * 1024), re.M)
        found: dict[str, Any] = {"exit_code": exit_code, "finished_at": _glog_time(stamp[-1]) if stamp else None}
        if exit_code is None:
            found.update(reason="Error", message=f"runsc wait: {out.decode(errors='replace').strip()[:200]}")
        return found

    async def _signal(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], sig: str) -> None:
        code, out = await self._runsc("kill", rec["cid"], sig, timeout=10)
        if code != 0:
            raise RuntimeError_(f"runsc kill {sig}: {out.decode(errors='replace').strip()}")

    async def _forget(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> None:
        if self._registration(pdir, rec).exists():
            if rec.get("shape") == "solo":
                await self._end(pdir, rec["cid"])
            await self._runsc("delete", "--force", rec["cid"])

    # ------------------------------------------------------------------ exec

    async def _spawn_exec(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], process: dict[str, Any],
                          *, tty_fd: int | None, stdin: bool) -> tuple[asyncio.subprocess.Process, Any]:
        data = json.dumps(process).encode()
        spec_r, spec_w = os.pipe()
        handle = _Exec()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(spec_w, _F_SETPIPE_SZ, 1024 * 1024)
            if len(data) > 1024 * 1024:
                raise SandboxStartFailed(f"exec in {cdir.name}: its environment is too large ({len(data)} bytes)")
            os.write(spec_w, data)
            os.close(spec_w)
            spec_w = -1
            client = await asyncio.create_subprocess_exec(
                *self._cmd("exec", f"--process=/dev/fd/{spec_r}", f"--internal-pid-file=/dev/fd/{handle.w}",
                           rec["cid"]),
                stdin=tty_fd if tty_fd is not None else (asyncio.subprocess.PIPE if stdin else
                                                         asyncio.subprocess.DEVNULL),
                stdout=tty_fd if tty_fd is not None else asyncio.subprocess.PIPE,
                stderr=tty_fd if tty_fd is not None else asyncio.subprocess.PIPE,
                start_new_session=True, pass_fds=(spec_r, handle.w))
        except BaseException:
            handle.close_write()
            handle.cleanup()
            raise
        finally:
            os.close(spec_r)
            if spec_w >= 0:
                os.close(spec_w)
        handle.close_write()
        asyncio.ensure_future(_cleanup_after(client, handle))
        return client, handle

    async def _kill_exec(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], client: Any,
                         handle: Any) -> None:
        pid = handle.read_pid()
        for _ in range(100):
            if pid is not None or client.returncode is not None:
                break
            await asyncio.sleep(0.01)
            pid = handle.read_pid()
        if pid is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)
            return
        cid = rec["cid"]
        code, out = await self._runsc("ps", cid)
        if code != 0:
            return
        targets = _descendants(_parse_ps(out), pid)
        if (cdir.rootfs / "bin" / "sh").exists():
            script = f"kill -9 -{pid} {' '.join(map(str, sorted(targets)))} 2>/dev/null; exit 0"
            await self._runsc("exec", cid, "/bin/sh", "-c", script)
        else:
            await asyncio.gather(*(self._runsc("kill", f"--pid={p}", cid, "KILL") for p in targets))

    # ------------------------------------------------------------------ hibernation and snapshots

    async def hibernate_pod_sandbox(self, id: str) -> None:
        pdir = PodDir(self.root, id)
        await self.run_hibernate_hooks(id)  # connections into the pod closed first: runsc cannot save them
        async with self._locks(id):
            pod = _read_json(pdir.pod_file)
            if pod is None:
                raise SandboxNotRunning(f"pod {id} does not exist")
            if pod.get("state") == "hibernated":
                return
            if pod.get("state") != "ready":
                raise SandboxNotRunning(f"pod {id} is not running")
            try:
                found = await self._checkpointable(pdir, pod, "hibernate")
            except SnapshotUnsupported as e:
                raise HibernationUnsupported(str(e).replace("snapshot", "hibernate")) from None
            if found is None:
                await self._stop_locked(pdir, pod, grace=0.0)  # nothing runs: nothing to keep but the disk
                return
            name, cdir, rec = found
            await asyncio.to_thread(self._drop_memory, pdir)
            pdir.memory_image.mkdir()
            try:
                await self._checkpoint(pdir, pod, cdir, rec, pdir.memory_image)
            except SnapshotFailed as e:
                await asyncio.to_thread(self._drop_memory, pdir)
                if "less than 60 s ago" in str(e):
                    raise HibernationUnsupported(str(e)) from None
                raise RuntimeError_(str(e)) from None
            await self._stop_locked(pdir, pod, grace=0.0, keep_memory=True)
            size = sum(f.stat().st_size for f in pdir.memory_image.rglob("*") if f.is_file())
            _write_json(pdir.memory_marker, {"key": _restore_key(_config_from(pod["config"])), "container": name,
                                             "cid": rec["cid"], "bytes": size})
            log.info("pod %s hibernated: %.1f MiB of memory image", id, size / 2**20)

    async def _checkpointable(self, pdir: PodDir, pod: dict[str, Any],
                              what: str) -> tuple[str, ContainerDir, dict[str, Any]] | None:
        """The one running container runsc can save (None: none runs), or ``SnapshotUnsupported`` saying
        why not, before anything is touched."""
        running = [n for n in pdir.container_names()
                   if (r := self._rec(pdir.container(n))) is not None and self._running(pdir, pdir.container(n), r)]
        if pod.get("shape") != "solo" and running:
            raise SnapshotUnsupported(
                f"pod {pdir.id}: runsc 20221219 restores one container per sandbox, and this pod's containers share "
                f"one; cannot {what} it (stop it instead: its disk is kept)")
        if not running:
            return None
        name = running[0]
        cdir = pdir.container(name)
        rec = self._rec(cdir)
        assert rec is not None
        if rec.get("tty") or rec.get("stdin"):
            raise SnapshotUnsupported(f"pod {pdir.id}: container {name} has a terminal or stdin, which a restore "
                                      f"cannot reconnect; cannot {what} it")
        if pod.get("netns") and await self._has_connections(cdir, rec):
            raise SnapshotUnsupported(
                f"pod {pdir.id}: it has TCP connections open, which runsc 20221219 cannot save; cannot {what} it now")
        return name, cdir, rec

    async def _checkpoint(self, pdir: PodDir, pod: dict[str, Any], cdir: ContainerDir, rec: dict[str, Any],
                          image: Path) -> None:
        """``runsc checkpoint`` of the container into ``image``: its sandbox ends. On failure (runsc 20221219
        then ends the sandbox too) the container's end is recorded and ``SnapshotFailed`` says why."""
        code, out = await self._runsc("checkpoint", f"--image-path={image}", rec["cid"], timeout=600)
        if code == 0:
            return
        why = out.decode(errors="replace").strip()
        for _ in range(200):
            if not self._running(pdir, cdir, rec):
                break
            await asyncio.sleep(0.05)
        ended = await self._record_exit(pdir, cdir, rec)
        _write_json(cdir.exit_file, {**ended, "exit_code": None, "reason": "Error",
                                     "message": f"a failed checkpoint ended it: {why.splitlines()[0][:300]}"
                                     if why else "a failed checkpoint ended it"})
        if "unsupported networking state" in why:
            # A TCP connection the sandbox closed in the last 60 s (TIME_WAIT), which /proc/net/tcp does not show.
            raise SnapshotFailed(
                f"pod {pdir.id}: runsc 20221219 cannot save a TCP connection closed less than 60 s ago, and its "
                f"failed checkpoint ended container {cdir.name}; stop the pod (its disk is kept)")
        raise SnapshotFailed(f"pod {pdir.id}: runsc checkpoint failed and ended container {cdir.name}: "
                             f"{why.splitlines()[0] if why else code}")

    async def snapshot_pod_sandbox(self, id: str, snapshot_id: str) -> SnapshotInfo:
        """Checkpoint the pod's one running container into the snapshot, copy the pod's disk while nothing
        runs, then restore the pod from that same memory image: it goes on where it was (its clients see a
        pause of a checkpoint plus a restore). Its status says Ready and Running throughout."""
        pdir = PodDir(self.root, id)
        sdir = SnapshotDir(self.root, snapshot_id)
        await self.run_hibernate_hooks(id)  # connections into the pod closed first: runsc cannot save them
        async with self._locks(id):
            pod = _read_json(pdir.pod_file)
            if pod is None or pod.get("state") != "ready" or not self._pod_alive(pdir, pod)[0]:
                raise SandboxNotRunning(f"pod {id} is not running")
            found = await self._checkpointable(pdir, pod, "snapshot")
            if found is None:
                raise SnapshotUnsupported(f"pod {id}: no container runs, so there is no memory to save")
            name, cdir, rec = found
            config = _config_from(pod["config"])
            await asyncio.to_thread(sdir.make)
            pod["snapshotting"] = True
            _write_json(pdir.pod_file, pod)
            started = time.monotonic()
            try:
                await self._checkpoint(pdir, pod, cdir, rec, sdir.memory)
            except BaseException:
                pod.pop("snapshotting", None)
                _write_json(pdir.pod_file, pod)
                await asyncio.to_thread(sdir.remove)
                raise
            complete = False
            try:
                if self.disks.mounted(pdir):  # nothing runs now: what it wrote (and the router) goes to the image
                    await asyncio.to_thread(sync_filesystem, pdir.disk)
                await asyncio.to_thread(self._drop_memory, pdir)
                await self._stop_locked(pdir, pod, grace=0.0, keep_memory=True)
                disk_bytes = await asyncio.to_thread(self._copy_out, pdir, sdir)
                memory_bytes = sum(f.stat().st_size for f in sdir.memory.rglob("*") if f.is_file())
                await asyncio.to_thread(_write_json, sdir.container, rec)
                info = SnapshotInfo(id=snapshot_id, pod=id, container=name, created_at=time.time(),
                                    memory_bytes=memory_bytes, disk_bytes=disk_bytes, key=snapshot_key(config))
                await asyncio.to_thread(sdir.commit, info)
                complete = True
            except OSError as e:  # the home full, a copy failing: said, and the pod runs on
                raise SnapshotFailed(f"pod {id}: saving its disk failed ({e}); it runs on, nothing was kept") from e
            finally:
                # The pod comes back from the image just taken, whatever happened to the copy.
                _write_json(pdir.memory_marker, {"key": _restore_key(config), "container": name, "cid": rec["cid"],
                                                 "image": str(sdir.memory)})
                try:
                    await self._run_locked(config, snapshotting=True)
                finally:
                    if not complete:
                        await asyncio.to_thread(sdir.remove)
            log.info("pod %s: snapshot %s taken in %.2f s (%.1f MiB of memory, %.1f MiB of disk)", id, snapshot_id,
                     time.monotonic() - started, memory_bytes / 2**20, disk_bytes / 2**20)
            return info

    def _copy_out(self, pdir: PodDir, sdir: SnapshotDir) -> int:
        """The stopped pod's disk and memory volumes into the snapshot; the disk's bytes on the host."""
        copy_tree(pdir.memory_image / "volumes", sdir.volumes)
        if not pdir.disk_image.exists():
            raise SnapshotUnsupported(f"pod {pdir.id}: its disk is not a bounded image (a plain directory), which "
                                      "a snapshot cannot copy consistently")
        if not wait_released(pdir.disk_image, pdir.disk_device, _RELEASE_WAIT):
            log.info("pod %s: its disk is still held after %.0f s; copying the flushed image", pdir.id, _RELEASE_WAIT)
        disk_bytes = copy_image(pdir.disk_image, sdir.disk_image)
        shutil.copy2(pdir.path / "disk.json", sdir.disk_state)
        return disk_bytes

    async def list_snapshots(self) -> list[str]:
        return await asyncio.to_thread(list_snapshots, self.root)

    def snapshot_info(self, snapshot_id: str) -> SnapshotInfo | None:
        return SnapshotDir(self.root, snapshot_id).info()

    async def remove_snapshot(self, snapshot_id: str) -> None:
        await asyncio.to_thread(SnapshotDir(self.root, snapshot_id).remove)

    async def restore_pod_sandbox(self, config: PodSandboxConfig, snapshot_id: str) -> PodSandboxStatus:
        """Make the pod ``config.id`` run from the snapshot: a copy of its disk, its memory restored into a new
        container id (so any number of pods restore from one snapshot, each independent). What the pod had
        (a running sandbox, a disk, hibernated memory, logs) is dropped first."""
        self._validate(config)
        sdir = SnapshotDir(self.root, snapshot_id)
        info = sdir.info()
        if info is None:
            raise SnapshotNotFound(f"snapshot {snapshot_id} is not on this machine")
        if info.key != snapshot_key(config):
            raise SnapshotIncompatible(
                f"pod {config.id} cannot start from snapshot {snapshot_id}: its limits, volumes or shape differ from "
                "those of the pod the snapshot was taken of")
        pdir = PodDir(self.root, config.id)
        async with self._locks(config.id):
            pod = _read_json(pdir.pod_file)
            if pod is not None and pod.get("state") == "ready":
                await self._stop_locked(pdir, pod, grace=0.0)
            for name in pdir.container_names():
                r = self._rec(pdir.container(name))
                if r is not None:
                    await self._forget(pdir, pdir.container(name), r)

            def prepare() -> None:
                self._release(pdir)
                self._drop_memory(pdir)
                with self._root_in_use():
                    pdir.make()
                shutil.rmtree(pdir.containers, ignore_errors=True)
                pdir.containers.mkdir(mode=0o755)
                shutil.rmtree(pdir.cri_logs, ignore_errors=True)
                pdir.cri_logs.mkdir(mode=0o755)
                copy_image(sdir.disk_image, pdir.disk_image)
                shutil.copy2(sdir.disk_state, pdir.path / "disk.json")
                rec = _read_json(sdir.container)
                if rec is None:
                    raise SnapshotNotFound(f"snapshot {snapshot_id} has no container record")
                cdir = pdir.container(info.container)
                cdir.path.mkdir(mode=0o700, parents=True)
                cdir.rootfs.mkdir(mode=0o755)
                rec.update(attempt=0, cid=self._cid(config.uid, pdir, info.container, 0), subpaths=[],
                           started_at=time.time(), created_at=time.time(), restored=True)
                _write_json(cdir.record, rec)
                pdir.memory_image.mkdir(mode=0o700)
                copy_tree(sdir.volumes, pdir.memory_image / "volumes")
                _write_json(pdir.memory_marker, {"key": _restore_key(config), "container": info.container,
                                                 "cid": rec["cid"], "image": str(sdir.memory), "rebundle": True})
                _write_json(pdir.pod_file, {"config": canonical(config), "state": "hibernated",
                                            "created_at": time.time(), "ip": "", "netns": None,
                                            "shape": "solo" if config.single_container else "pause",
                                            "snapshot": snapshot_id})

            try:
                await asyncio.to_thread(prepare)
            except OSError as e:
                await asyncio.to_thread(self._release, pdir)
                raise self._start_failed(pdir, e) from e
            return await self._run_locked(config)

    async def _has_connections(self, cdir: ContainerDir, rec: dict[str, Any]) -> bool:
        """Whether the container's netstack has a TCP connection (runsc cannot save one). A listening socket
        (0A) saves, and so does one in CLOSE (07): made or bound and not yet listening (a server starting up),
        or closed for good."""
        if not (cdir.rootfs / "bin" / "cat").exists():
            return False
        code, out = await self._runsc("exec", rec["cid"], "/bin/cat", "/proc/net/tcp", "/proc/net/tcp6", timeout=30)
        for line in out.decode(errors="replace").splitlines():
            cols = line.split()
            if len(cols) > 3 and cols[0].endswith(":") and cols[3] not in ("0A", "07"):
                return True
        return False

    def _rebundle(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], config: PodSandboxConfig,
                  netns: Path | None) -> None:
        """The container's bundle for this pod (its paths, network, hostname), from the record a snapshot kept:
        a fork's directories are not those the snapshot was taken in."""
        container = _container_from(rec["key"], attempt=int(rec["attempt"]))
        proc = ContainerProcess(**rec["process"])
        subpaths: list[dict[str, Any]] = []
        container_mounts = self._resolve_mounts(pdir, cdir, config, container, subpaths)
        if rec.get("workdir"):
            container_mounts.insert(0, MountSpec(rec["workdir"], cdir.app))
        if self.injection is not None and config.agent_container == cdir.name:  # as start_container mounts it
            container_mounts.extend(MountSpec(dest, src, read_only=True) for src, dest in self.injection.mounts)
        spec = container_bundle(config, container, proc, rootfs=cdir.rootfs, mounts=container_mounts, shape="solo",
                                cgroups_path=f"{self.cgroup_parent}/{pdir.id}", pids_limit=self.pids_limit,
                                netns=netns)
        rec["subpaths"] = subpaths
        _write_json(cdir.record, rec)
        _write_json(cdir.config, spec)

    async def _restore(self, pdir: PodDir, pod: dict[str, Any], config: PodSandboxConfig,
                       netns: Path | None) -> None:
        marker = _read_json(pdir.memory_marker) or {}
        cdir = pdir.container(str(marker.get("container")))
        rec = self._rec(cdir)
        # A hibernated pod's own image, or a snapshot's (never removed here: other pods restore from it too).
        image_path = Path(marker["image"]) if marker.get("image") else pdir.memory_image
        try:
            if rec is None or rec.get("cid") != marker.get("cid"):
                raise SandboxStartFailed("its container's record is gone")
            image = self.images.resolve(rec["image"])
            attempt = int(rec["attempt"])

            def prepare() -> tuple[int, int, int]:
                from turbok.runtime import overlay, podvolumes

                self._unmount_container(cdir)
                overlay.mount_overlay(lower=image.rootfs, upper=cdir.upper, work=cdir.ovwork, target=cdir.rootfs)
                if marker.get("rebundle"):
                    assert rec is not None
                    self._rebundle(pdir, cdir, rec, config, netns)
                else:
                    for sp in rec.get("subpaths") or ():
                        podvolumes.bind_subpath(Path(sp["source"]), sp["sub_path"], cdir.subpaths / str(sp["i"]),
                                                read_only=sp["read_only"])
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                (pdir.logs / cdir.name).mkdir(mode=0o755, parents=True, exist_ok=True)
                if marker.get("rebundle"):  # the snapshot's disk holds its source's raw output: not this pod's
                    for stream in RAW_STREAMS:
                        pdir.raw_log(cdir.name, attempt, stream).unlink(missing_ok=True)
                    pdir.boot_log_of(cdir.name, attempt).unlink(missing_ok=True)
                return (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC),
                        os.open(pdir.raw_log(cdir.name, attempt, "stdout"), flags, 0o644),
                        os.open(pdir.raw_log(cdir.name, attempt, "stderr"), flags, 0o644))

            stdio = await asyncio.to_thread(prepare)
            boot_log = pdir.boot_log_of(cdir.name, attempt)
            trees = [*boot_trees(pdir, _read_json(cdir.config) or {}), *outside(pdir, [image_path])]
            try:
                await self._boot(self._cmd(
                    self._netflag(netns), *nvproxy_flags(config), "--cpu-num-from-quota", f"--debug-log={boot_log}",
                    "--debug-command=boot", "restore",
                    f"--image-path={image_path}", "--detach", f"--bundle={cdir.bundle}", rec["cid"]),
                    f"pod {pdir.id}: runsc restore", stdio=stdio, err_path=pdir.raw_log(cdir.name, attempt, "stderr"),
                    background=config.background, trees=trees, netns=netns)
            finally:
                for fd in stdio:
                    os.close(fd)
            if marker.get("rebundle"):
                ROTATOR.watch(boot_log)
            self._arm_feed(pdir, cdir, rec)
        except (SandboxStartFailed, OSError, RuntimeError_) as e:
            log.warning("pod %s: could not restore its memory (%s); its container starts afresh", pdir.id, e)
            if rec is not None:
                with contextlib.suppress(RuntimeError_):
                    await self._forget(pdir, cdir, rec)
                rec.pop("restored", None)
                _write_json(cdir.record, rec)
                _write_json(cdir.exit_file, {"cid": rec["cid"], "attempt": rec["attempt"], "exit_code": None,
                                             "reason": "Error", "message": f"its saved memory could not be "
                                             f"restored: {e}", "finished_at": None})
        finally:
            await asyncio.to_thread(self._drop_memory, pdir)  # used or refused: never restored twice


def snapshot_key(config: PodSandboxConfig) -> Any:
    """What a pod config must share with the one a snapshot was taken of to start from it: its limits, its
    volumes' names, kinds and sizes, its network and shape. Not who it is (id, name, uid, hostname, labels),
    nor where its volumes' data lives (a fork has its own claims), nor files volumes' contents, nor how urgently
    it boots."""
    data = canonical(essence(config))
    for volatile in ("id", "name", "namespace", "uid", "hostname", "labels", "annotations"):
        data.pop(volatile, None)
    data["volumes"] = [{k: v.get(k) for k in ("name", "kind", "size_bytes")} for v in data.get("volumes") or []]
    return data


def _container_from(key: dict[str, Any], *, attempt: int) -> ContainerConfig:
    """The ``ContainerConfig`` a record's key describes (``pods._container_key``)."""
    data = dict(key)
    data["mounts"] = [Mount(**m) for m in data.get("mounts") or []]
    security = dict(data.get("security") or {})
    security["capabilities"] = Capabilities(**(security.get("capabilities") or {}))
    data["security"] = SecurityContext(**security)
    known = {f.name for f in dataclasses.fields(ContainerConfig)}
    return ContainerConfig(**{k: v for k, v in data.items() if k in known}, attempt=attempt)


def nvproxy_flags(config: PodSandboxConfig) -> tuple[str, ...]:
    """runsc's flags for a pod given NVIDIA GPUs: nvproxy passes the driver's ioctls through to the host
    driver for the device nodes the containers' specs list (runsc releases since 2023; not 20221219)."""
    return ("--nvproxy=true",) if config.nvproxy else ()


def add_devices(spec: dict[str, Any], devices: Sequence[DeviceNode]) -> None:
    """A container's device nodes into its OCI spec: ``linux.devices`` and an allow rule each."""
    if not devices:
        return
    linux = spec.setdefault("linux", {})
    nodes = linux.setdefault("devices", [])
    allow = linux.setdefault("resources", {}).setdefault("devices", [])
    for d in devices:
        node: dict[str, Any] = {"path": d.path, "type": d.type, "major": d.major, "minor": d.minor}
        for key, value in (("fileMode", d.file_mode), ("uid", d.uid), ("gid", d.gid)):
            if value is not None:
                node[key] = value
        nodes.append(node)
        allow.append({"allow": True, "type": d.type, "major": d.major, "minor": d.minor,
                      "access": d.permissions or "rwm"})


async def _cleanup_after(client: asyncio.subprocess.Process, handle: Any) -> None:
    with contextlib.suppress(Exception):
        await client.wait()
    handle.cleanup()


def outside(pdir: PodDir, paths: Sequence[Path]) -> list[Path]:
    """Those of ``paths`` not in the pod's directory (absolute, each once, in order)."""
    below = f"{pdir.path}/"
    found: dict[Path, None] = {}
    for p in paths:
        if p.is_absolute() and p != pdir.path and not str(p).startswith(below):
            found[p] = None
    return list(found)


def boot_trees(pdir: PodDir, spec: dict[str, Any]) -> list[Path]:
    """What a boot of the bundle ``spec`` reads of the host: the pod's directory, the bundle's root when it
    lies elsewhere (a pause pod's image), and the sources of its bind mounts (host volumes, the agent)."""
    paths = [Path((spec.get("root") or {}).get("path") or pdir.path)]
    for m in spec.get("mounts") or ():
        if m.get("type") == "bind" or "bind" in (m.get("options") or ()) or "rbind" in (m.get("options") or ()):
            paths.append(Path(str(m.get("source") or "")))
    return [pdir.path, *outside(pdir, paths)]
