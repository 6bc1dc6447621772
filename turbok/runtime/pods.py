"""What both pod runtimes share: the pod's directory, disk, volumes, network, records, logs and streams.

``LocalPodRuntime`` implements ``turbok.runtime.cri.PodRuntime`` over a directory per
pod (``turbok.runtime.podlayout``); a backend (``pods_gvisor.GvisorPodRuntime``,
``pods_bubblewrap.BubblewrapPodRuntime``) says how a container is launched,
signalled, checked and forgotten. Everything a pod has is on disk, nothing in this
process' memory, so a control plane that restarts finds its pods and their
containers again (``list_pod_sandboxes``, ``*_status``), re-attaches their output
to the CRI logs and can exec and attach into them.

Records (JSON, written atomically): ``pod.json`` (the config, ``ready``/``stopped``/
``hibernated``, the address, the shape), per container ``container.json`` (the
config, its attempt and runtime id, the process as resolved: argv, env, user,
capabilities; start time) and ``exit.json`` (how it ended, once known: exit code,
reason, time). A container's state comes from these and from ``/proc``: no
subprocess per status call (a backend may run one command once, when it first
sees a container gone, to learn its exit code).

The pod's disk (``turbok.runtime.disk``) is mounted from ``run_pod_sandbox`` until
``stop_pod_sandbox``; it holds each container's writable layer (kept across its
restarts and across a stop/start of the pod: a turbok Sandbox is a stateful
machine, unlike a kubelet's containers), the emptyDirs and the raw output.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from turbok.runtime import cgroups, mounts, orphans, overlay, podvolumes
from turbok.runtime.cri import (
    ContainerConfig,
    ContainerState,
    ContainerStatus,
    DNSConfig,
    Isolation,
    PodRuntime,
    PodSandboxConfig,
    PodSandboxState,
    PodSandboxStatus,
    Stream,
    VolumeConfig,
    essence,
)
from turbok.runtime.crilog import PUMP, CriLogWriter, Feed, log_files
from turbok.runtime.disk import DEFAULT_EPHEMERAL_STORAGE, Disks, bounds
from turbok.runtime.errors import (
    InvalidSandboxSpec,
    RuntimeError_,
    SandboxNotRunning,
    SandboxStartFailed,
)
from turbok.runtime.ids import sandbox_id, validate_id
from turbok.runtime.images import ImageStore
from turbok.runtime.injection import Injection
from turbok.runtime.locks import KeyedLock
from turbok.runtime.logs import ROTATOR
from turbok.runtime.podbundle import ContainerProcess, MountSpec, container_process, hostname_of, validate_env
from turbok.runtime.podio import AttachProcess, Holder, PodStream, close_with_reset
from turbok.runtime.podlayout import DIR_MODE, RAW_STREAMS, ContainerDir, PodDir, list_ids, validate_name
from turbok.runtime.process import Process
from turbok.runtime.runsc import NULL_NETNS
from turbok.runtime.teardown import in_teardown_thread

__all__ = [
    "DEFAULT_PIDS_LIMIT",
    "HOME_RESERVE_BYTES",
    "KEPT_ATTEMPTS",
    "LocalPodRuntime",
    "PodNetworkLike",
    "canonical",
    "release_root",
]

log = logging.getLogger("turbok.runtime.pods")

#: Host tasks one pod may use (a gVisor sandbox uses about 41 idle; each process adds some).
DEFAULT_PIDS_LIMIT = 2048
#: No pod starts while the root's filesystem has less free than this.
HOME_RESERVE_BYTES = 64 * 1024 * 1024
#: Attempts whose logs are kept per container: the current one and the one before (``--previous``).
KEPT_ATTEMPTS = 2
#: How often ``stop_container`` looks whether the container has ended.
_POLL = 0.05
#: How long a container may take to die after SIGKILL before ``stop_container`` gives up waiting.
_KILL_WAIT = 10.0
#: Where a removed pod's directory is moved before it is deleted (not a runtime id: never listed as a pod), so
#: that a crash half way through deleting it leaves either a listed pod or a tree ``list_pod_sandboxes`` clears.
TRASH = ".removing"


class PodNetworkLike(Protocol):
    """What the runtime uses of ``turbok.runtime.network.PodNetwork``: ``setup`` (an attachment with
    ``netns`` and ``ip``; called before every boot) and ``teardown``. Thread-safe, blocking."""

    def setup(self, id: str) -> Any: ...

    def teardown(self, id: str) -> None: ...


def release_root(root: Path) -> bool:
    """Undo the nosuid,nodev bind of ``root`` (``LocalPodRuntime`` makes it at its first pod) once
    nothing is mounted below it but runsc's ``null-netns`` pin, which goes first (tests, uninstall); True
    when it was undone. A filesystem of its own mounted there is left alone."""
    root = root.absolute()
    if not mounts.is_mount_root(root):
        return False
    below = mounts.mounts_below(root)
    # runsc (2024 on) pins its gofers' network namespace in its state directory: no pod's, kept by
    # ``runsc delete``, made again by the next sandbox.
    if any(Path(p).name != NULL_NETNS for p in below):
        return False
    if os.stat(root).st_dev != os.stat(root.parent).st_dev:
        return False  # not our bind: a filesystem someone mounted there
    for pin in below:
        mounts.unmount(Path(pin))
    # Busy a moment while the loop device of a disk unmounted lazily lets go of its file.
    mounts.unmount(root, lazy=False, wait=2.0)
    return True


def canonical(obj: Any) -> Any:
    """JSON of a config, bytes as their hash: for records and to compare configs."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, bytes):
        return {"sha256": hashlib.sha256(obj).hexdigest(), "size": len(obj)}
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _restore_key(config: PodSandboxConfig) -> Any:
    """What must be equal for a hibernated pod's memory to be used: not the Pod object's identity, nor how
    urgently it boots (a warm pool's Pod, hibernated, resumes as somebody's once a claim has taken it)."""
    data = canonical(essence(config))
    for volatile in ("uid", "labels", "annotations"):
        data.pop(volatile, None)
    return data


def _container_key(container: ContainerConfig) -> Any:
    """What must be equal for a running container to be the one asked for (a claim taking a warm pool's Pod
    makes its starts urgent: not another container)."""
    data = canonical(essence(container))
    data.pop("attempt", None)
    return data


class LocalPodRuntime(PodRuntime):
    """Pods under ``root`` (see ``turbok.runtime.podlayout``); a backend fills in the hooks below."""

    #: Capabilities the backend withholds whatever a container asks (gVisor: NET_RAW).
    withheld_capabilities: frozenset[str] = frozenset()
    #: What goes into a Pod's ``agent_container`` besides its image (``turbok.runtime.injection``).
    injection: Injection | None = None
    #: The backend's sandboxes outlive the command that starts them: this process reaps them (``orphans``).
    adopts_orphans: bool = False

    def __init__(self, root: Path, images: ImageStore | None = None, *, network: PodNetworkLike | None = None,
                 pids_limit: int | None = DEFAULT_PIDS_LIMIT, cgroup_parent: str = "/turbok",
                 bounded_disks: bool = True, default_ephemeral_storage: int = DEFAULT_EPHEMERAL_STORAGE,
                 legacy_root: Path | None = None) -> None:
        self.root = root.absolute()
        self.images: ImageStore = images or ImageStore()
        self.network = network
        self.pids_limit = pids_limit
        self.cgroup_parent = cgroup_parent.rstrip("/") or "/turbok"
        self.disks = Disks(bounded=bounded_disks, default=default_ephemeral_storage)
        self.legacy_root = legacy_root.absolute() if legacy_root is not None else None
        self._locks = KeyedLock()
        #: Guards the root's bind and the count of pods preparing below it: without it, two first pods bound the
        #: root twice (the second bind hid the first pod's disk, which then could never be unmounted), and the
        #: last pod's release could undo the bind under a pod about to mount its disk.
        self._root_lock = threading.Lock()
        self._root_secured = False
        self._root_users = 0
        self._background: dict[str, set[asyncio.Future[Any]]] = {}
        if self.adopts_orphans:
            orphans.adopt()
        self._agent_starts: dict[str, asyncio.Future[bool]] = {}
        #: Solo pods whose namespace was set up by ``run_pod_sandbox`` and has not seen a boot since: their
        #: container's boot needs no second ``setup`` (only a boot takes the addresses away).
        self._unbooted: set[str] = set()
        # All pods together weigh less than the control plane when CPU is short, and leave it memory.
        cgroups.weigh_parent(self.cgroup_parent)
        if not cgroups.bound_parent_memory(self.cgroup_parent, cgroups.sandboxes_memory_limit()):
            log.info("could not bound the memory of all pods together (cgroup %s)", self.cgroup_parent)

    # ------------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    async def _boot_pod(self, pdir: PodDir, pod: dict[str, Any], config: PodSandboxConfig,
                        netns: Path | None) -> None:
        """Make the pod's sandbox where containers share one (gVisor's pause), else nothing."""

    @abc.abstractmethod
    def _pod_alive(self, pdir: PodDir, pod: dict[str, Any]) -> tuple[bool, str, str]:
        """(alive, reason, message) of a ready pod's shared sandbox (True where there is none)."""

    @abc.abstractmethod
    async def _launch(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], container: ContainerConfig,
                      proc: ContainerProcess, container_mounts: list[MountSpec], netns: Path | None,
                      stdio: tuple[int, int, int] | None, console: Path | None) -> int | None:
        """Start the container described by ``rec``; its terminal's master when it has one (``stdio`` is
        None then). Raise ``SandboxStartFailed`` if it cannot run."""

    @abc.abstractmethod
    def _running(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> bool:
        """Whether the container's process still runs: files and /proc only."""

    @abc.abstractmethod
    async def _exit_of(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> dict[str, Any]:
        """How a container that no longer runs ended: ``exit_code`` (or None), ``reason``, ``message``,
        ``finished_at`` (or None: now)."""

    @abc.abstractmethod
    async def _signal(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], sig: str) -> None:
        """Send ``TERM``/``KILL``/``WINCH`` to the container's main process."""

    @abc.abstractmethod
    async def _forget(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> None:
        """Release what the backend keeps of an ended container (runsc's registration)."""

    @abc.abstractmethod
    async def _stop_pod(self, pdir: PodDir, pod: dict[str, Any]) -> None:
        """End the pod's shared sandbox (after every container was forgotten)."""

    @abc.abstractmethod
    async def _spawn_exec(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], process: dict[str, Any],
                          *, tty_fd: int | None, stdin: bool) -> tuple[asyncio.subprocess.Process, Any]:
        """Start ``process`` (an OCI process) in the container; the host client and a kill handle."""

    @abc.abstractmethod
    async def _kill_exec(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], client: Any,
                         handle: Any) -> None:
        """Kill an exec'd command and what it started, inside the container."""

    def _pod_notes(self, pdir: PodDir, pod: dict[str, Any]) -> list[str]:
        return []

    async def _reap_strays(self, pdir: PodDir) -> bool:
        """Kill what a start that failed half way left running of this pod (it holds the pod's disk); whether
        there was anything. Called only when the disk is still held: finding them may be slow."""
        return False

    def _started_at(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> float | None:
        """When the container's process started, if the backend knows better than "when launch returned"."""
        return None

    # ------------------------------------------------------------------ records

    def _pod(self, pdir: PodDir) -> dict[str, Any] | None:
        return _read_json(pdir.pod_file)

    def _rec(self, cdir: ContainerDir) -> dict[str, Any] | None:
        return _read_json(cdir.record)

    def _exit(self, cdir: ContainerDir, rec: dict[str, Any]) -> dict[str, Any] | None:
        ex = _read_json(cdir.exit_file)
        return ex if ex is not None and ex.get("cid") == rec.get("cid") else None

    @staticmethod
    def feed_key(pdir: PodDir, name: str, attempt: int) -> str:
        return f"{pdir.id}/{name}/{attempt}"

    def _cid(self, config_uid: str, pdir: PodDir, name: str, attempt: int) -> str:
        """The runtime id of one attempt of a container: fixed width (runsc matches ids by prefix)."""
        return sandbox_id(f"{pdir.id}/{config_uid}/{name}/{attempt}")

    # ------------------------------------------------------------------ root and disk

    def _secure_root(self) -> None:
        """Bind the root onto itself nosuid,nodev, once, unless its filesystem already is (``_root_lock`` held)."""
        if self._root_secured:
            return
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, DIR_MODE)
        flags = os.statvfs(self.root).f_flag
        exposed = not (flags & os.ST_NOSUID and flags & os.ST_NODEV) and not mounts.is_mount_root(self.root)
        if exposed and not mounts.mounts_below(self.root):
            mounts.bind_onto_itself(self.root)
        self._root_secured = True

    @contextlib.contextmanager
    def _root_in_use(self) -> Iterator[None]:
        """The root secured, and kept bound while a pod prepares below it (until its disk is mounted)."""
        with self._root_lock:
            self._secure_root()
            self._root_users += 1
        try:
            yield
        finally:
            with self._root_lock:
                self._root_users -= 1

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _mount_disk(self, pdir: PodDir, config: PodSandboxConfig) -> None:
        with self._root_in_use():
            free = self._free_bytes()
            if free is not None and free < HOME_RESERVE_BYTES:
                raise OSError(errno.ENOSPC, "below the reserve kept free for the store and running pods")
            pdir.make()
            self.disks.prepare(pdir, bounds(config.ephemeral_storage_bytes, self.disks.default))
        for p in (pdir.disk / "containers", pdir.disk / "volumes", pdir.logs):
            p.mkdir(mode=0o755, exist_ok=True)

    def _start_failed(self, pdir: PodDir, err: OSError) -> SandboxStartFailed:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            free = self._free_bytes()
            left = f"{free / 2**20:.0f} MiB free" if free is not None else "free space unknown"
            return SandboxStartFailed(
                f"pod {pdir.id}: no space left for pods on the filesystem of {self.root} ({left}, "
                f"{HOME_RESERVE_BYTES // 2**20} MiB kept in reserve): {err}; it starts once space is freed")
        return SandboxStartFailed(f"pod {pdir.id}: preparing its disk failed: {err}")

    def _unmount_container(self, cdir: ContainerDir) -> None:
        if cdir.subpaths.is_dir():
            for entry in os.scandir(cdir.subpaths):
                mounts.unmount(Path(entry.path))
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
        overlay.unmount(cdir.rootfs)

    def _release(self, pdir: PodDir, *, keep_memory: Path | None = None) -> None:
        """Unmount everything of a pod (subPaths, overlays, memory volumes, disk); the disk's contents stay."""
        for name in pdir.container_names():
            self._unmount_container(pdir.container(name))
        if pdir.memory_volumes.is_dir():
            for entry in os.scandir(pdir.memory_volumes):
                path = Path(entry.path)
                if keep_memory is not None and mounts.is_mount_root(path):
                    podvolumes.save_memory(path, keep_memory / entry.name)
                podvolumes.unmount_memory(path)
        self.disks.unmount(pdir)
        # The last pod gone (runsc's null-netns pin is none's: see release_root), and none preparing.
        with self._root_lock, contextlib.suppress(OSError):
            if self._root_users == 0 and mounts.is_mount_root(self.root) and all(
                    Path(p).name == NULL_NETNS for p in mounts.mounts_below(self.root)):
                self._root_secured = False
                release_root(self.root)

    # ------------------------------------------------------------------ legacy trees

    def _adopt_legacy(self, pdir: PodDir) -> None:
        """Take over a sandbox directory of the old ``Runtime`` (issue 9 and before) with the same id:
        its disk becomes the pod's, its layer and ``/app`` the first container's (see ``_migrate_layer``)."""
        if pdir.pod_file.exists():
            return
        if not pdir.path.exists() and self.legacy_root is not None:
            old = self.legacy_root / pdir.id
            if (old / "spec.json").exists() or (old / "disk.img").exists():
                state = self.legacy_root / ".runsc" / f"{pdir.id}_sandbox:{pdir.id}.state"
                if state.exists():
                    raise SandboxStartFailed(f"pod {pdir.id}: its sandbox still runs under the old runtime "
                                             f"({old}); stop it first")
                self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                os.rename(old, pdir.path)
                log.info("pod %s: took over the disk of the old sandbox %s", pdir.id, old)
        if (pdir.path / "spec.json").exists():
            for stale in ("memory.json", "config.json"):
                (pdir.path / stale).unlink(missing_ok=True)  # an old memory image cannot become a pod's
            shutil.rmtree(pdir.memory_image, ignore_errors=True)
            (pdir.path / "legacy.json").write_text((pdir.path / "spec.json").read_text())
            (pdir.path / "spec.json").unlink()

    def _migrate_layer(self, pdir: PodDir, cdir: ContainerDir) -> None:
        """An old sandbox's writable layer and work directory go to the pod's first container."""
        if not (pdir.path / "legacy.json").exists():
            return
        layer = pdir.layer(cdir.name)
        for old, new in ((pdir.disk / "upper", layer / "upper"), (pdir.disk / "ovwork", layer / "ovwork"),
                         (pdir.disk / "app", layer / "app")):
            if old.exists() and not new.exists():
                new.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                os.rename(old, new)
        (pdir.path / "legacy.json").unlink()
        log.info("pod %s: the old sandbox's layer and /app now belong to container %s", pdir.id, cdir.name)

    # ------------------------------------------------------------------ network

    async def _attach_network(self, pdir: PodDir, config: PodSandboxConfig) -> tuple[Path | None, str]:
        """(netns, ip) of the pod: ``setup`` again before each boot (runsc takes the address away)."""
        if not config.network or self.network is None:
            return None, ""
        att = await asyncio.to_thread(self.network.setup, pdir.id)
        return Path(att.netns), str(att.ip)

    async def _prepare_pod(self, pdir: PodDir, config: PodSandboxConfig) -> tuple[Path | None, str]:
        """The pod's disk and volumes, and beside them its network: (netns, ip). Both are a few
        milliseconds of system calls on threads of their own, on every cold start's path."""
        attaching = asyncio.ensure_future(self._attach_network(pdir, config))
        try:
            try:
                await asyncio.to_thread(self._mount_disk, pdir, config)
            except SandboxStartFailed:
                if not await self._reap_strays(pdir):
                    raise
                await asyncio.to_thread(self._mount_disk, pdir, config)  # once more, now that they are gone
            await asyncio.to_thread(self._prepare_volumes, pdir, config)
        except OSError as e:
            await asyncio.gather(attaching, return_exceptions=True)  # kept: remove_pod_sandbox detaches it
            await asyncio.to_thread(self._release, pdir)
            raise self._start_failed(pdir, e) from e
        except BaseException:
            await asyncio.gather(attaching, return_exceptions=True)
            raise
        return await attaching

    # ------------------------------------------------------------------ pod sandbox

    def _validate(self, config: PodSandboxConfig) -> None:
        validate_id(config.id)
        hostname_of(config)
        seen: set[str] = set()
        for v in config.volumes:
            validate_name("volume", v.name)
            if v.name in seen:
                raise InvalidSandboxSpec(f"pod {config.id}: volume {v.name!r} is named twice")
            seen.add(v.name)
            if v.kind not in ("emptyDir", "memory", "files", "host"):
                raise InvalidSandboxSpec(f"pod {config.id}: volume {v.name!r} has unknown kind {v.kind!r}")
            if v.kind == "host" and (v.host_path is None or not Path(v.host_path).is_absolute()):
                raise InvalidSandboxSpec(f"pod {config.id}: host volume {v.name!r} needs an absolute host_path")
            if v.kind == "files":
                for path in v.files:
                    podvolumes.check_relative(f"volume {v.name!r} file", path)
        bounds(config.ephemeral_storage_bytes, self.disks.default)

    def _prepare_volumes(self, pdir: PodDir, config: PodSandboxConfig) -> None:
        for v in config.volumes:
            if v.kind == "emptyDir":
                path = pdir.volume(v.name)
                if not path.exists():
                    path.mkdir(mode=podvolumes.EMPTYDIR_MODE, parents=True)
                    os.chmod(path, podvolumes.EMPTYDIR_MODE)
            elif v.kind == "memory":
                path = pdir.memory_volume(v.name)
                podvolumes.mount_memory(path, v.size_bytes)
                podvolumes.load_memory(pdir.memory_image / "volumes" / v.name, path)
            elif v.kind == "files":
                if not (pdir.files_volume(v.name) / podvolumes.DATA_LINK).exists() or v.files:
                    podvolumes.write_files(pdir.files_volume(v.name), v.files)
            elif v.kind == "host":
                assert v.host_path is not None
                if not Path(v.host_path).is_dir():
                    raise InvalidSandboxSpec(f"pod {config.id}: host volume {v.name!r}: {v.host_path} is not a "
                                             "directory")

    async def run_pod_sandbox(self, config: PodSandboxConfig) -> PodSandboxStatus:
        self._validate(config)
        async with self._locks(config.id):
            return await self._run_locked(config)

    async def _run_locked(self, config: PodSandboxConfig, *, snapshotting: bool = False) -> PodSandboxStatus:
        """``run_pod_sandbox`` with the pod's lock held. ``snapshotting``: the pod is being put back after a
        snapshot (``pods_gvisor``): its status keeps saying ready meanwhile (``pod.json``'s ``snapshotting``)."""
        pdir = PodDir(self.root, config.id)
        await asyncio.to_thread(self._adopt_legacy, pdir)
        pod = self._pod(pdir)
        if pod is not None and pod.get("state") == "ready":
            alive, _, _ = self._pod_alive(pdir, pod)
            if alive and self.disks.mounted(pdir) and not self.disks.failed(pdir):
                return await self._status(pdir)
            # Its shared sandbox died (or its disk failed): everything starts again.
            await self._stop_locked(pdir, pod, grace=0.0)
            pod = self._pod(pdir)
        restore = pod is not None and pod.get("state") == "hibernated" and \
            (pdir.memory_marker.exists() and _read_json(pdir.memory_marker) or {}).get("key") == \
            _restore_key(config)
        if pod is not None and pod.get("state") == "hibernated" and not restore:
            log.warning("pod %s: its config changed while it hibernated; starting afresh on the kept disk",
                        config.id)
            await asyncio.to_thread(self._drop_memory, pdir)
        if pod is not None and pod.get("config", {}).get("uid") != config.uid and not restore:
            await asyncio.to_thread(self._drop_logs, pdir)  # a new Pod: its own logs
        self._unbooted.discard(config.id)
        netns, ip = await self._prepare_pod(pdir, config)
        record = {
            "config": canonical(config),
            "state": "booting",
            "created_at": time.time(),
            "ip": ip,
            "netns": str(netns) if netns else None,
            "shape": "solo" if config.single_container else "pause",
        }
        if snapshotting:
            record["snapshotting"] = True
        _write_json(pdir.pod_file, record)
        try:
            if restore:
                await self._restore(pdir, record, config, netns)
            elif not config.single_container:
                await self._boot_pod(pdir, record, config, netns)
        except BaseException:
            await asyncio.to_thread(self._release, pdir)
            record["state"] = "stopped"
            record.pop("snapshotting", None)
            _write_json(pdir.pod_file, record)
            raise
        record["state"] = "ready"
        record.pop("snapshotting", None)
        _write_json(pdir.pod_file, record)
        if netns is not None and config.single_container and not restore:
            self._unbooted.add(config.id)
        ROTATOR.watch(pdir.pause_boot_log)
        return await self._status(pdir)

    def _later(self, pdir: PodDir, work: Any) -> None:
        """Run ``work`` in the background; ``_settle`` waits for it before the pod stops."""
        task = asyncio.ensure_future(work)
        self._background.setdefault(pdir.id, set()).add(task)

        def done(t: asyncio.Future[Any]) -> None:
            pending = self._background.get(pdir.id, set())
            pending.discard(t)
            if not pending:
                self._background.pop(pdir.id, None)
            if not t.cancelled() and t.exception() is not None:
                log.warning("pod %s: %s", pdir.id, t.exception())

        task.add_done_callback(done)

    async def _settle(self, pdir: PodDir) -> None:
        tasks = self._background.pop(pdir.id, set())
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    async def _restore(self, pdir: PodDir, pod: dict[str, Any], config: PodSandboxConfig,
                       netns: Path | None) -> None:
        raise NotImplementedError

    def _drop_memory(self, pdir: PodDir) -> None:
        pdir.memory_marker.unlink(missing_ok=True)
        shutil.rmtree(pdir.memory_image, ignore_errors=True)

    def _drop_logs(self, pdir: PodDir) -> None:
        shutil.rmtree(pdir.cri_logs, ignore_errors=True)
        pdir.cri_logs.mkdir(mode=0o755, exist_ok=True)
        for name in pdir.container_names():
            cdir = pdir.container(name)
            cdir.exit_file.unlink(missing_ok=True)
            cdir.record.unlink(missing_ok=True)

    async def stop_pod_sandbox(self, id: str) -> None:
        pdir = PodDir(self.root, id)
        async with self._locks(id):
            pod = self._pod(pdir)
            if pod is None:
                if pdir.exists():
                    await in_teardown_thread(self._release, pdir)
                return
            await self._stop_locked(pdir, pod, grace=0.0)

    async def _stop_locked(self, pdir: PodDir, pod: dict[str, Any], *, grace: float,
                           keep_memory: bool = False) -> None:
        """Kill every container (recording how it ended), end the shared sandbox, unmount; the disk stays.
        ``keep_memory``: the containers were checkpointed (hibernation), not ended."""
        containers = [(cdir, rec) for cdir in map(pdir.container, pdir.container_names())
                      if (rec := self._rec(cdir)) is not None]
        if not keep_memory and pod.get("state") == "ready":
            async def end(cdir: ContainerDir, rec: dict[str, Any]) -> None:
                if self._running(pdir, cdir, rec):
                    await self._stop(pdir, cdir, rec, grace)
                elif self._exit(cdir, rec) is None and rec.get("started_at"):
                    await self._record_exit(pdir, cdir, rec)

            await asyncio.gather(*(end(cdir, rec) for cdir, rec in containers))
        await self._settle(pdir)
        # The shared sandbox first: forgetting its containers is quick once it is gone.
        await self._stop_pod(pdir, pod)
        for cdir, rec in containers:
            await self._forget(pdir, cdir, rec)
            await in_teardown_thread(PUMP.finish, self.feed_key(pdir, cdir.name, int(rec["attempt"])))
            Holder(cdir.io).kill()
        await in_teardown_thread(self._release, pdir,
                                 keep_memory=pdir.memory_image / "volumes" if keep_memory else None)
        if not keep_memory:
            await in_teardown_thread(self._drop_memory, pdir)
        pod["state"] = "hibernated" if keep_memory else "stopped"
        _write_json(pdir.pod_file, pod)

    async def remove_pod_sandbox(self, id: str) -> None:
        """Stop (``stop_pod_sandbox``), then the network, the mounts, the directory: each step idempotent, the
        directory moved out of the listing (``TRASH``) before it is deleted, so a crash at any point leaves
        either a pod ``list_pod_sandboxes`` names (the node's sweep removes it again) or a tree it clears."""
        pdir = PodDir(self.root, id)
        await self.stop_pod_sandbox(id)
        self._unbooted.discard(id)
        async with self._locks(id):
            if self.network is not None:
                await in_teardown_thread(self.network.teardown, id)
            if pdir.exists():
                await in_teardown_thread(self._release, pdir)
                for path in (pdir.disk, *[pdir.container(n).rootfs for n in pdir.container_names()]):
                    if mounts.is_mount_root(path):
                        raise RuntimeError_(f"pod {id}: {path} is still mounted; not deleting")
                await in_teardown_thread(self._delete_tree, pdir)

    def _delete_tree(self, pdir: PodDir) -> None:
        trash = self.root / TRASH
        gone = trash / f"{pdir.id}.{time.monotonic_ns()}"
        # The trash stays once made: removing it when empty would race with another removal's mkdir (which
        # fails with EEXIST when the directory it found is gone by the time it looks again).
        trash.mkdir(mode=DIR_MODE, exist_ok=True)
        try:
            os.rename(pdir.path, gone)
        except FileNotFoundError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def _empty_trash(self) -> None:
        try:
            left = [Path(e.path) for e in os.scandir(self.root / TRASH)]
        except FileNotFoundError:
            return
        if left and not mounts.mounts_below(self.root / TRASH):  # a mount there is a bug to see, not to delete
            for tree in left:
                shutil.rmtree(tree, ignore_errors=True)

    async def list_pod_sandboxes(self) -> list[str]:
        # What a removal cut short left (the node lists at every start): cleared here, never listed.
        await in_teardown_thread(self._empty_trash)
        return [id for id in list_ids(self.root) if (self.root / id / "pod.json").exists()]

    async def pod_sandbox_status(self, id: str) -> PodSandboxStatus:
        return await self._status(PodDir(self.root, id))

    async def _status(self, pdir: PodDir) -> PodSandboxStatus:
        pod = self._pod(pdir)
        if pod is None:
            return PodSandboxStatus(pdir.id, PodSandboxState.ABSENT, self.isolation, reason="Absent",
                                    message="no such pod sandbox")
        containers = [await self._container_status(pdir, name) for name in pdir.container_names()]
        notes = self._pod_notes(pdir, pod)
        note = self.disks.note(pdir) if self.disks.mounted(pdir) else ""
        if note:
            notes.append(note)
        cfg = pod.get("config", {})
        if cfg.get("network") and self.network is None:
            notes.append("no pod network on this machine: the pod has a private loopback and no address")
        state, reason, message = PodSandboxState.READY, "", ""
        if pod.get("snapshotting"):
            pass  # paused for a snapshot (pods_gvisor): it runs on in a moment, as it was
        elif pod.get("state") == "ready":
            alive, why, what = self._pod_alive(pdir, pod)
            if alive and not self.disks.mounted(pdir):
                alive, why, what = False, "Crashed", "its disk is not mounted (did the machine restart?)"
            if not alive:
                state, reason, message = PodSandboxState.NOT_READY, why, what
            elif self.disks.failed(pdir):
                reason, message = "DiskFailed", "its disk turned read-only after a write error"
        elif pod.get("state") == "hibernated":
            state, reason, message = PodSandboxState.NOT_READY, "Hibernated", "stopped with its memory saved"
        else:
            state, reason, message = PodSandboxState.NOT_READY, "Stopped", "not running; disk kept"
        return PodSandboxStatus(pdir.id, state, self.isolation, ip=pod.get("ip") or "", reason=reason,
                                message=message, containers=containers, notes=notes)

    # ------------------------------------------------------------------ containers

    def _resolve_mounts(self, pdir: PodDir, cdir: ContainerDir, config: PodSandboxConfig,
                        container: ContainerConfig, subpaths: list[dict[str, Any]]) -> list[MountSpec]:
        """Host sources of the container's mounts; checked subPaths bound (and listed in ``subpaths``)."""
        volumes = {v.name: v for v in config.volumes}
        out: list[MountSpec] = []
        for i, m in enumerate(container.mounts):
            v = volumes.get(m.volume)
            if v is None:
                raise InvalidSandboxSpec(f"container {container.name}: volume {m.volume!r} is not one of the pod's")
            dest = m.container_path
            if not dest.startswith("/") or ".." in dest.split("/") or dest.rstrip("/") in ("", "/proc", "/dev",
                                                                                            "/sys"):
                raise InvalidSandboxSpec(f"container {container.name}: mount path {dest!r} must be absolute, "
                                         "without '..', and not /, /proc, /dev or /sys")
            if v.kind == "emptyDir":
                source = pdir.volume(v.name)
            elif v.kind == "memory":
                source = pdir.memory_volume(v.name)
            elif v.kind == "files":
                source = pdir.files_volume(v.name)
            else:
                assert v.host_path is not None
                source = Path(v.host_path)
            read_only = m.read_only or v.kind == "files"
            if m.sub_path:
                target = cdir.subpaths / str(i)
                podvolumes.bind_subpath(source, m.sub_path, target, read_only=read_only)
                subpaths.append({"i": i, "source": str(source), "sub_path": m.sub_path, "read_only": read_only})
                source = target
            out.append(MountSpec(dest, source, read_only))
        return out

    def _populate_layer(self, pdir: PodDir, cdir: ContainerDir, config: PodSandboxConfig, ip: str) -> None:
        """``/etc/hostname`` and ``/etc/hosts`` in a new layer, and ``/etc/resolv.conf``, as a kubelet
        would mount them."""
        etc = cdir.upper / "etc"
        if config.dns is not None:  # the node's resolver settings (turbok.node.netpolicy), every start
            _write_resolv_conf(cdir.upper, config.dns.resolv_conf())
        hostname = hostname_of(config)
        hosts = cdir.upper / "etc" / "hosts"
        marker = "# Kubernetes-managed hosts file (turbok).\n"
        if os.path.lexists(etc / "hostname") and (not hosts.is_file() or not hosts.read_text().startswith(marker)):
            return  # the container's own (or a whiteout: it deleted them)
        etc.mkdir(mode=0o755, exist_ok=True)
        (etc / "hostname").write_text(hostname + "\n")
        own = f"{ip}\t{hostname}\n" if ip else f"127.0.1.1\t{hostname}\n"
        text = f"{marker}127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}"
        if not hosts.is_file() or hosts.read_text() != text:
            hosts.write_text(text)

    def _drop_old_attempts(self, pdir: PodDir, name: str, attempt: int) -> None:
        """Keep the logs of the last ``KEPT_ATTEMPTS`` attempts (the kubelet keeps one dead container)."""
        for base in (pdir.cri_logs / name, pdir.logs / name):
            if not base.is_dir():
                continue
            for entry in os.scandir(base):
                head = entry.name.split(".", 1)[0]
                if head.isdigit() and int(head) <= attempt - KEPT_ATTEMPTS:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _open_stdio(self, pdir: PodDir, cdir: ContainerDir, container: ContainerConfig,
                    attempt: int) -> tuple[tuple[int, int, int] | None, dict[str, int]]:
        """The container's stdin/stdout/stderr (None with a terminal: runsc makes it) and what the holder
        keeps. Raw output files are on the pod's disk; stdin is a FIFO whose writer the holder keeps."""
        held: dict[str, int] = {}
        (pdir.logs / cdir.name).mkdir(mode=0o755, parents=True, exist_ok=True)
        if container.tty:
            return None, held
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(pdir.raw_log(cdir.name, attempt, "stdout"), flags, 0o644)
        err = os.open(pdir.raw_log(cdir.name, attempt, "stderr"), flags, 0o644)
        if container.stdin:
            with contextlib.suppress(FileNotFoundError):
                cdir.stdin.unlink()
            os.mkfifo(cdir.stdin, 0o600)
            keep = os.open(cdir.stdin, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)  # a writer while we open
            inp = os.open(cdir.stdin, os.O_RDONLY | os.O_CLOEXEC)
            held["stdin"] = os.open(cdir.stdin, os.O_WRONLY | os.O_CLOEXEC)
            os.close(keep)
        else:
            inp = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return (inp, out, err), held

    def _arm_feed(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], tty_fd: int | None = None) -> None:
        """Move the container's output to its CRI log (again, after a control-plane restart)."""
        attempt = int(rec["attempt"])
        key = self.feed_key(pdir, cdir.name, attempt)
        if PUMP.feed(key) is not None:
            if tty_fd is not None:
                os.close(tty_fd)
            return
        tty = bool(rec.get("tty"))
        if tty and tty_fd is None:
            tty_fd = Holder(cdir.io).fd("master")
            if tty_fd is None:
                return
        path = pdir.cri_log(cdir.name, attempt)
        writer = CriLogWriter(path)
        raw = None if tty else {s: pdir.raw_log(cdir.name, attempt, s) for s in RAW_STREAMS}
        PUMP.add(Feed(key, writer, raw=raw, pos_file=path.with_name(f"{attempt}.pos"), tty_fd=tty_fd))

    async def start_container(self, id: str, container: ContainerConfig) -> ContainerStatus:
        validate_name("container", container.name)
        pdir = PodDir(self.root, id)
        async with self._locks(id):
            pod = self._pod(pdir)
            if pod is None or pod.get("state") != "ready" or not self.disks.mounted(pdir):
                # Never a layer on the host's own filesystem under an unmounted disk (after a reboot).
                raise SandboxNotRunning(f"pod {id} is not ready: run_pod_sandbox first")
            config = _config_from(pod["config"])
            cdir = pdir.container(container.name)
            rec = self._rec(cdir)
            if rec is not None and self._running(pdir, cdir, rec):
                if rec.get("key") == _container_key(container):
                    return await self._container_status(pdir, container.name)
                if rec.get("restored"):  # restored from a snapshot: the process is the snapshot's, kept as is
                    rec["key"] = _container_key(container)
                    rec.pop("restored")
                    _write_json(cdir.record, rec)
                    return await self._container_status(pdir, container.name)
                log.warning("pod %s: container %s runs with another config; restarting it", id, container.name)
                await self._stop(pdir, cdir, rec, 10.0)
            if config.single_container:
                for other in pdir.container_names():
                    if other == container.name:
                        continue
                    orec = self._rec(pdir.container(other))
                    if orec is not None and self._running(pdir, pdir.container(other), orec):
                        raise InvalidSandboxSpec(
                            f"pod {id} runs one container at a time (single_container) and {other} runs")
            image = self.images.resolve(container.image)
            proc = container_process(config, container, image, withheld=self.withheld_capabilities)
            notes = list(proc.notes) + self._container_notes(config, container)
            if rec is not None:
                if rec.get("started_at") and self._exit(cdir, rec) is None:
                    await self._record_exit(pdir, cdir, rec)
                if config.single_container:
                    await self._forget(pdir, cdir, rec)
                else:  # a new attempt has a new id: the old one is forgotten meanwhile (about 1.5 s)
                    self._later(pdir, self._forget(pdir, cdir, dict(rec)))
                await asyncio.to_thread(PUMP.finish, self.feed_key(pdir, container.name, int(rec["attempt"])))
                Holder(cdir.io).kill()
            cid = self._cid(config.uid, pdir, container.name, container.attempt)
            workdir = image.env.get("SANDBOX_BASE_DIR") if "SANDBOX_BASE_DIR" in image.env else None
            agent = self.injection if config.agent_container == container.name else None
            rec = {
                "name": container.name, "attempt": container.attempt, "cid": cid,
                "shape": "solo" if config.single_container else "sub",
                "key": _container_key(container), "image": image.reference, "image_id": image.digest or image.name,
                "process": dataclasses.asdict(proc), "tty": container.tty, "stdin": container.stdin,
                "stdin_once": container.stdin_once, "workdir": workdir, "notes": notes,
                "created_at": time.time(), "started_at": None, "subpaths": [],
            }

            def prepare() -> tuple[list[MountSpec], tuple[int, int, int] | None, dict[str, int]]:
                self._migrate_layer(pdir, cdir)  # before make(): an old sandbox's layer becomes this one
                cdir.make()
                if workdir:
                    cdir.app.mkdir(mode=0o755, exist_ok=True)
                self._populate_layer(pdir, cdir, config, pod.get("ip") or "")
                cdir.exit_file.unlink(missing_ok=True)
                self._drop_old_attempts(pdir, container.name, container.attempt)
                for old in (pdir.cri_log(container.name, container.attempt),
                            *(pdir.raw_log(container.name, container.attempt, s) for s in RAW_STREAMS)):
                    for p in (log_files(old) if old.suffix == ".log" else [old]):
                        p.unlink(missing_ok=True)  # a former incarnation's attempt of that number
                    old.with_name(f"{container.attempt}.pos").unlink(missing_ok=True)
                self._unmount_container(cdir)
                overlay.mount_overlay(lower=image.rootfs, upper=cdir.upper, work=cdir.ovwork, target=cdir.rootfs)
                container_mounts = self._resolve_mounts(pdir, cdir, config, container, rec["subpaths"])
                if workdir:
                    container_mounts.insert(0, MountSpec(workdir, cdir.app))
                if agent is not None:
                    container_mounts.extend(MountSpec(dest, src, read_only=True) for src, dest in agent.mounts)
                _write_json(cdir.record, rec)
                stdio, held = self._open_stdio(pdir, cdir, container, container.attempt)  # closed below, always
                return container_mounts, stdio, held

            try:
                container_mounts, stdio, held = await asyncio.to_thread(prepare)
            except OSError as e:
                raise self._start_failed(pdir, e) from e
            console = pdir.run / f"{container.name}.console" if container.tty else None
            netns, launching = None, False
            try:
                if config.single_container:
                    fresh = config.id in self._unbooted and pod.get("netns")
                    self._unbooted.discard(config.id)  # the boot below takes the addresses this pod was given
                    netns = Path(pod["netns"]) if fresh else (await self._attach_network(pdir, config))[0]
                else:
                    netns = Path(pod["netns"]) if pod.get("netns") else None
                launching = True
                master = await self._launch(pdir, cdir, rec, container, proc, container_mounts, netns, stdio,
                                            console)
            except BaseException as e:
                # Whatever ended the start (a failed boot, no network, a cancelled start): the output files are
                # on the pod's disk, and one left open here would keep that disk's filesystem alive after its
                # unmount (the next boot then finds the disk still held).
                for fd in (*(stdio or ()), *held.values()):
                    os.close(fd)
                if not (launching and isinstance(e, SandboxStartFailed)):
                    raise
                rec["started_at"] = None
                _write_json(cdir.record, rec)
                _write_json(cdir.exit_file, {"cid": cid, "attempt": container.attempt, "exit_code": 128,
                                             "reason": "ContainerCannotRun", "message": str(e),
                                             "finished_at": time.time()})
                return await self._container_status(pdir, container.name)
            if stdio is not None:
                for fd in stdio:
                    os.close(fd)
            if master is not None:
                held["master"] = master
            if held:
                await asyncio.to_thread(Holder(cdir.io).spawn, held)
                for name, fd in held.items():
                    if name != "master":
                        os.close(fd)
            rec["started_at"] = self._started_at(pdir, cdir, rec) or time.time()
            try:
                _write_json(cdir.record, rec)
            except OSError as e:  # a full home: a container nobody can account for must not run on
                with contextlib.suppress(RuntimeError_, OSError):
                    await self._stop(pdir, cdir, rec, 0.0)
                raise self._start_failed(pdir, e) from e
            self._arm_feed(pdir, cdir, rec, tty_fd=master)
            if agent is not None and not config.agent_on_demand:
                await self._start_agent(pdir, cdir, rec, agent, config.agent_ports)
            return await self._container_status(pdir, container.name)

    async def ensure_agent(self, id: str) -> bool:
        if self.injection is None:
            return False
        pending = self._agent_starts.get(id)
        if pending is None:
            pending = self._agent_starts[id] = asyncio.ensure_future(self._ensure_agent(PodDir(self.root, id)))
            pending.add_done_callback(lambda _: self._agent_starts.pop(id, None))
        return await asyncio.shield(pending)

    async def _ensure_agent(self, pdir: PodDir) -> bool:
        agent = self.injection
        async with self._locks(pdir.id):
            pod = self._pod(pdir)
            if agent is None or pod is None or pod.get("state") != "ready":
                return False
            config = _config_from(pod["config"])
            cdir = pdir.container(config.agent_container) if config.agent_container else None
            rec = self._rec(cdir) if cdir is not None else None
            if cdir is None or rec is None or not rec.get("started_at") or not self._running(pdir, cdir, rec):
                return False
            if agent.port is not None and pod.get("ip") and await _answers(str(pod["ip"]), agent.port):
                return True  # started meanwhile by another caller, or before a hibernation
            return await self._start_agent(pdir, cdir, rec, agent, config.agent_ports)

    async def _start_agent(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], agent: Injection,
                           ports: Sequence[int]) -> bool:
        """Exec the injected program in the container and wait for its ready line (see ``injection``)."""
        root = rec.get("workdir") or rec["process"]["cwd"]
        why = ""
        try:
            stream = await self.exec(pdir.id, cdir.name, agent.argv(root, ports))
            try:
                line = await asyncio.wait_for(stream.process.stdout.readline(), agent.timeout)
                code = await asyncio.wait_for(stream.process.wait(), agent.timeout)
                if line.strip() != agent.ready or code != 0:
                    err = await asyncio.wait_for(stream.process.stderr.read(2048), 1.0)
                    why = f"exit {code}: {(err or line).decode(errors='replace').strip()[:300]}"
                # Read both pipes to their end, so the exec's transport is closed here and not left to the
                # garbage collector (which fails once its event loop is closed).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(stream.process.stdout.read(), stream.process.stderr.read()),
                                           1.0)
            except TimeoutError:
                why = f"not ready within {agent.timeout:g} s"
                await stream.close()
        except RuntimeError_ as e:
            why = str(e)
        if why:
            log.warning("pod %s: the sandboxd agent did not start in container %s: %s", pdir.id, cdir.name, why)
            rec["notes"] = [*rec.get("notes", []), f"the sandboxd agent did not start in container {cdir.name} "
                            f"({why}): the router reaches it through runsc exec"]
            _write_json(cdir.record, rec)
        return not why

    def _container_notes(self, config: PodSandboxConfig, container: ContainerConfig) -> list[str]:
        return []

    async def container_status(self, id: str, name: str) -> ContainerStatus:
        return await self._container_status(PodDir(self.root, id), validate_name("container", name))

    async def _container_status(self, pdir: PodDir, name: str) -> ContainerStatus:
        cdir = pdir.container(name)
        rec = self._rec(cdir)
        if rec is None:
            return ContainerStatus(name, ContainerState.UNKNOWN, message="no such container")
        ex = self._exit(cdir, rec)
        if ex is None:
            pod = self._pod(pdir) or {}
            if pod.get("state") == "hibernated" or pod.get("snapshotting"):  # its memory is kept: it goes on
                return self._as_status(rec, None, state=ContainerState.RUNNING)
            if rec.get("started_at") is None:
                return self._as_status(rec, None, state=ContainerState.CREATED)
            if self._running(pdir, cdir, rec):
                self._arm_feed(pdir, cdir, rec)
                return self._as_status(rec, None, state=ContainerState.RUNNING)
            ex = await self._record_exit(pdir, cdir, rec)
        return self._as_status(rec, ex, state=ContainerState.EXITED)

    async def _record_exit(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any]) -> dict[str, Any]:
        """How the container ended, found once and kept in ``exit.json``; its output drained to its log."""
        ex = self._exit(cdir, rec)
        if ex is not None:
            return ex
        found = await self._exit_of(pdir, cdir, rec)
        code = found.get("exit_code")
        reason = found.get("reason") or ("Completed" if code == 0 else "Error")
        finished = max(found.get("finished_at") or time.time(), rec.get("started_at") or 0.0)
        ex = {"cid": rec["cid"], "attempt": rec["attempt"], "exit_code": code, "reason": reason,
              "message": found.get("message", ""), "finished_at": finished}
        await asyncio.to_thread(PUMP.finish, self.feed_key(pdir, cdir.name, int(rec["attempt"])))
        Holder(cdir.io).kill()
        _write_json(cdir.exit_file, ex)
        return ex

    def _as_status(self, rec: dict[str, Any], ex: dict[str, Any] | None, *, state: ContainerState) -> ContainerStatus:
        kind = "gvisor" if self.isolation is Isolation.GVISOR else "bubblewrap"
        return ContainerStatus(
            name=rec["name"], state=state, attempt=int(rec["attempt"]), container_id=f"{kind}://{rec['cid']}",
            image=rec.get("image", ""), image_id=rec.get("image_id", ""), started_at=rec.get("started_at"),
            finished_at=ex.get("finished_at") if ex else None, exit_code=ex.get("exit_code") if ex else None,
            reason=ex.get("reason", "") if ex else "", message=ex.get("message", "") if ex else "",
            notes=tuple(rec.get("notes") or ()),
        )

    async def stop_container(self, id: str, name: str, grace: float) -> ContainerStatus:
        pdir = PodDir(self.root, id)
        async with self._locks(id):
            cdir = pdir.container(validate_name("container", name))
            rec = self._rec(cdir)
            if rec is None:
                return ContainerStatus(name, ContainerState.UNKNOWN, message="no such container")
            if self._running(pdir, cdir, rec):
                await self._stop(pdir, cdir, rec, grace)
            return await self._container_status(pdir, name)

    async def _stop(self, pdir: PodDir, cdir: ContainerDir, rec: dict[str, Any], grace: float) -> None:
        """SIGTERM, up to ``grace`` seconds, then SIGKILL; records how it ended."""
        loop = asyncio.get_running_loop()
        if grace > 0:
            with contextlib.suppress(RuntimeError_):
                await self._signal(pdir, cdir, rec, "TERM")
            deadline = loop.time() + grace
            while loop.time() < deadline and self._running(pdir, cdir, rec):
                await asyncio.sleep(_POLL)
        if self._running(pdir, cdir, rec):
            with contextlib.suppress(RuntimeError_):
                await self._signal(pdir, cdir, rec, "KILL")
            deadline = loop.time() + _KILL_WAIT
            while loop.time() < deadline and self._running(pdir, cdir, rec):
                await asyncio.sleep(_POLL)
        await self._record_exit(pdir, cdir, rec)

    # ------------------------------------------------------------------ streams

    def _running_container(self, id: str, name: str) -> tuple[PodDir, ContainerDir, dict[str, Any]]:
        pdir = PodDir(self.root, id)
        cdir = pdir.container(validate_name("container", name))
        rec = self._rec(cdir)
        pod = self._pod(pdir)
        if rec is None or pod is None or pod.get("state") != "ready" or self._exit(cdir, rec) is not None \
                or not self._running(pdir, cdir, rec):
            raise SandboxNotRunning(f"container {name} of pod {id} is not running")
        return pdir, cdir, rec

    async def exec(self, id: str, name: str, argv: Sequence[str], *, tty: bool = False, stdin: bool = False,
                   env: Mapping[str, str] | None = None, cwd: str | None = None) -> Stream:
        if not argv:
            raise InvalidSandboxSpec(f"pod {id}: exec needs a command")
        pdir, cdir, rec = self._running_container(id, name)
        p = rec["process"]
        envs = dict(p["env"])
        envs.update(env or {})
        validate_env(name, envs)
        caps = p["capabilities"]
        effective = caps if p["uid"] == 0 else []
        process = {
            "terminal": tty, "args": list(argv), "env": [f"{k}={v}" for k, v in envs.items()],
            "cwd": cwd or p["cwd"],
            "user": {"uid": p["uid"], "gid": p["gid"], **({"additionalGids": p["groups"]} if p["groups"] else {})},
            "capabilities": {"bounding": caps, "effective": effective, "inheritable": effective,
                             "permitted": effective},
            "noNewPrivileges": p["no_new_privileges"],
        }
        master = replica = None
        if tty:
            master, replica = os.openpty()
            os.set_inheritable(master, False)
        try:
            client, handle = await self._spawn_exec(pdir, cdir, rec, process, tty_fd=replica, stdin=stdin)
        except BaseException:
            for fd in (master, replica):
                if fd is not None:
                    os.close(fd)
            raise
        if replica is not None:
            os.close(replica)

        async def kill_inside() -> None:
            await self._kill_exec(pdir, cdir, rec, client, handle)

        proc = _ExecProcess(client, kill_inside, master)
        return PodStream(proc, writer=client.stdin if stdin and not tty else None, tty_fd=master,
                         on_close=proc.close)

    async def attach(self, id: str, name: str) -> Stream:
        pdir, cdir, rec = self._running_container(id, name)
        self._arm_feed(pdir, cdir, rec)
        feed = PUMP.feed(self.feed_key(pdir, name, int(rec["attempt"])))
        if feed is None:
            raise SandboxNotRunning(f"container {name} of pod {id} has no output to attach to")
        loop = asyncio.get_running_loop()
        readers = {"stdout": asyncio.StreamReader(), "stderr": asyncio.StreamReader()}

        def on_output(stream: str, data: bytes | None) -> None:
            reader = readers[stream]

            def deliver() -> None:
                if reader.at_eof():
                    return
                if data is None:
                    reader.feed_eof()
                else:
                    reader.feed_data(data)

            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
                loop.call_soon_threadsafe(deliver)

        token = feed.subscribe(on_output)
        tty = bool(rec.get("tty"))
        if tty:
            readers["stderr"].feed_eof()

        def detach() -> None:
            feed.unsubscribe(token)
            for r in readers.values():
                if not r.at_eof():
                    r.feed_eof()

        async def wait() -> int:
            while True:
                st = await self.container_status(id, name)
                if st.state is not ContainerState.RUNNING or st.attempt != int(rec["attempt"]):
                    return st.exit_code if st.exit_code is not None else 137
                await asyncio.sleep(0.2)

        write_fd = tty_fd = None
        if rec.get("stdin") and not tty:
            with contextlib.suppress(OSError):
                write_fd = os.open(cdir.stdin, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if tty:
            tty_fd = Holder(cdir.io).fd("master")
            if tty_fd is not None:
                os.set_blocking(tty_fd, False)

        def stdin_done() -> None:
            if rec.get("stdin_once"):
                Holder(cdir.io).kill()  # the FIFO's last writer: the container reads EOF

        async def resize() -> None:
            with contextlib.suppress(RuntimeError_):
                await self._signal(pdir, cdir, rec, "WINCH")

        async def close() -> None:
            detach()
            if tty_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(tty_fd)
            stdin_done()

        return PodStream(AttachProcess(readers["stdout"], readers["stderr"], wait, detach), write_fd=write_fd,
                         tty_fd=tty_fd, on_resize=resize, on_close_stdin=stdin_done, on_close=close)

    def log_path(self, id: str, name: str, attempt: int) -> Path:
        return PodDir(self.root, id).cri_log(name, attempt)

    def workdir(self, id: str, name: str) -> Path | None:
        pdir = PodDir(self.root, id)
        rec = self._rec(pdir.container(validate_name("container", name)))
        if rec is None or not rec.get("workdir") or not self.disks.mounted(pdir):
            return None
        return pdir.container(name).app

    async def update_volume(self, id: str, volume: VolumeConfig) -> None:
        pdir = PodDir(self.root, id)
        if volume.kind != "files":
            raise InvalidSandboxSpec(f"pod {id}: only files volumes are updated (volume {volume.name!r} is "
                                     f"{volume.kind})")
        async with self._locks(id):
            await asyncio.to_thread(podvolumes.write_files, pdir.files_volume(volume.name), volume.files)


async def _answers(ip: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts a TCP connection at ``ip:port`` (closed at once with a reset: no TIME_WAIT is
    left in the pod, which would keep it from hibernating)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
    except (OSError, TimeoutError):
        return False
    close_with_reset(writer)
    return True


def _config_from(data: dict[str, Any]) -> PodSandboxConfig:
    """The pod config a record holds (volume file contents are not kept: only what containers need)."""
    from turbok.runtime.cri import VolumeConfig as V

    vols = [V(name=v["name"], kind=v["kind"], size_bytes=v.get("size_bytes"),
              host_path=Path(v["host_path"]) if v.get("host_path") else None) for v in data.get("volumes", [])]
    keep = {f.name for f in dataclasses.fields(PodSandboxConfig)} - {"volumes", "dns"}
    dns = DNSConfig(**data["dns"]) if data.get("dns") else None
    return PodSandboxConfig(**{k: v for k, v in data.items() if k in keep}, volumes=vols, dns=dns)


class _ExecProcess(Process):
    """A command run by exec: pipes, or a terminal's master read into ``stdout``."""

    def __init__(self, client: asyncio.subprocess.Process, kill_inside: Any, master: int | None) -> None:
        self._client = client
        self._kill_inside = kill_inside
        self._master = master
        if master is None:
            assert client.stdout is not None and client.stderr is not None
            self._stdout, self._stderr = client.stdout, client.stderr
        else:
            self._stdout, self._stderr = asyncio.StreamReader(), asyncio.StreamReader()
            self._stderr.feed_eof()
            os.set_blocking(master, False)
            asyncio.get_running_loop().add_reader(master, self._read_master)
        self._code: int | None = None

    def _read_master(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: the command's side of the terminal closed
        if data:
            self._stdout.feed_data(data)
        else:
            self._end_master()

    def _end_master(self) -> None:
        if self._master is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._master)
            self._stdout.feed_eof()

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._stderr

    async def wait(self) -> int:
        code = await self._client.wait()
        if self._master is not None:
            for _ in range(100):  # what the command wrote just before it ended
                if self._stdout.at_eof():
                    break
                await asyncio.sleep(0.01)
            self._end_master()
        return 128 - code if code < 0 else code

    async def kill(self) -> None:
        # Inside first, even when the runsc client is gone: an orphan the command left behind
        # (`sh -c 'sleep 40 &'`) still holds its output and is part of what this exec started.
        await self._kill_inside()
        if self._client.returncode is None:
            try:
                await asyncio.wait_for(self._client.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._client.kill()
        await self.wait()

    async def close(self) -> None:
        if self._client.returncode is None:
            await self.kill()
        if self._master is not None:
            self._end_master()
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None


def _write_resolv_conf(upper: Path, text: str) -> None:
    """``upper/etc/resolv.conf`` := ``text``, never following a link the container left in its layer."""
    try:
        os.makedirs(upper / "etc", mode=0o755, exist_ok=True)
        fd = os.open(upper / "etc", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:  # /etc made a symlink by the container: it keeps its own
        log.warning("pod layer %s: /etc/resolv.conf not written (%s)", upper, e)
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(".resolv.conf.turbok", dir_fd=fd)
        tmp = os.open(".resolv.conf.turbok", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o644, dir_fd=fd)
        with os.fdopen(tmp, "w") as f:
            f.write(text)
        os.rename(".resolv.conf.turbok", "resolv.conf", src_dir_fd=fd, dst_dir_fd=fd)  # replaces a link too
    except OSError as e:  # a directory in its place: the container keeps it
        log.warning("pod layer %s: /etc/resolv.conf not written (%s)", upper, e)
    finally:
        os.close(fd)
