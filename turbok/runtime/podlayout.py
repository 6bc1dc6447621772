"""The on-disk layout of one pod sandbox, shared by the pod runtimes (``turbok.runtime.pods``).

``<root>/<id>/`` (``root`` is what the node passes, 0700 like every pod directory)::

    pod.json          the PodSandboxConfig it runs with, and whether it is ready/stopped/hibernated
    disk.img disk.json disk.loop    the pod's own disk (``turbok.runtime.disk``: bounded, nosuid, nodev)
    disk/             mount point of disk.img (only while the pod is ready). On it:
        containers/NAME/upper ovwork   each container's writable layer (kept across its restarts)
        containers/NAME/app            its host-served work directory (images with SANDBOX_BASE_DIR)
        volumes/NAME/                  emptyDir volumes (disk medium)
        logs/NAME/ATTEMPT.out .err     what the container writes (files: a detached sandbox holds
                                       them), turned into CRI lines and hole-punched as they are read
        logs/NAME/ATTEMPT.boot         runsc's boot log of that attempt (single-container pods)
        logs/pause.boot                runsc's boot log of the pause sandbox (other pods)
    containers/NAME/  the container's host side: config.json (its OCI bundle), container.json (what
                      runs: config, attempt, runtime id, times), exit.json (how it ended), rootfs/
                      (overlay mount point), stdin (a FIFO), io.json (the process holding its
                      stdin/terminal), subpaths/N (bind mounts of checked subPaths)
    pause/config.json the pause container's bundle (its root: the base image, read-only)
    files/NAME/       ``files`` volumes (configMap, secret...): written atomically, mounted read-only
    memory-volumes/NAME/  ``memory`` volumes: a host tmpfs each, bounded by its size
    logs/NAME/ATTEMPT.log[.1-.4]   CRI logs (host side: readable after the pod stopped)
    run/              per-exec and per-start scratch (console sockets)
    memory/ memory.json   a hibernated pod's memory image; memory.json marks it complete

The writable layers, emptyDirs and raw output are on the pod's disk (its
``ephemeral-storage`` bounds them, and a setuid file made inside means nothing on
the host); the CRI logs are written by the runtime itself and bounded by their
rotation (``LOG_MAX_BYTES`` x ``LOG_MAX_FILES`` per attempt, two attempts kept per
container). Names are DNS labels (checked before any path is built).

``SandboxDir`` is the part every directory with a disk of its own shares (a pod's,
a local volume's: ``turbok.node.storage``; a sandbox of the old runtime taken over by
a pod: ``turbok.runtime.legacy``): ``<root>/<id>/`` with ``disk.img``, ``disk/``,
``memory/``. Ids are checked by ``validate_id`` before any path is built from them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.ids import ID_LENGTH, validate_id

__all__ = ["DIR_MODE", "RAW_STREAMS", "ContainerDir", "PodDir", "SandboxDir", "list_ids", "validate_name"]

#: Mode of a runtime's root and of every directory in it: no other user may traverse them.
DIR_MODE = 0o700

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: The raw output files of an attempt, by CRI stream name.
RAW_STREAMS = {"stdout": "out", "stderr": "err"}


def validate_name(kind: str, name: str) -> str:
    """``name`` if it is a DNS label (what Kubernetes allows for containers and volumes), else raise."""
    if not _NAME.fullmatch(name):
        raise InvalidSandboxSpec(f"invalid {kind} name {name!r}: want a DNS label (a-z, 0-9, '-', at most 63)")
    return name


class SandboxDir:
    """Paths of one directory named by a runtime id, with a disk of its own (``turbok.runtime.disk``)."""

    def __init__(self, root: Path, id: str) -> None:
        self.id = validate_id(id)
        self.path = root / id

    @property
    def memory_image(self) -> Path:
        """A hibernated sandbox's memory (``runsc checkpoint``); complete once ``memory.json`` exists."""
        return self.path / "memory"

    @property
    def memory_marker(self) -> Path:
        return self.path / "memory.json"

    @property
    def disk_image(self) -> Path:
        return self.path / "disk.img"

    @property
    def disk_device(self) -> Path:
        """The loop device of the mounted disk (to wait for it to go before mounting again)."""
        return self.path / "disk.loop"

    @property
    def disk(self) -> Path:
        """Mount point of the disk: everything the sandbox can write is below."""
        return self.path / "disk"

    @property
    def run(self) -> Path:
        return self.path / "run"

    @property
    def logs(self) -> Path:
        return self.disk / "logs"

    def volume(self, name: str) -> Path:
        return self.disk / "volumes" / name

    def exists(self) -> bool:
        return self.path.is_dir()

    def write_json(self, path: Path, data: Any) -> None:
        """Write ``data`` as JSON atomically (temp file + rename): a crash leaves the old file."""
        tmp = path.with_name(path.name + ".tmp")
        # Records may carry any Mapping/Sequence (tuples, mapping proxies): write them as JSON's own.
        tmp.write_text(json.dumps(data, indent=1, default=lambda o: dict(o) if isinstance(o, Mapping) else list(o)))
        os.replace(tmp, path)


def list_ids(root: Path) -> list[str]:
    """Ids of the directories under ``root`` named by runtime ids (other entries are ignored)."""
    try:
        entries = os.scandir(root)
    except FileNotFoundError:
        return []
    with entries:
        ids = []
        for e in entries:
            if len(e.name) == ID_LENGTH and e.is_dir(follow_symlinks=False):
                try:
                    ids.append(validate_id(e.name))
                except InvalidSandboxSpec:
                    continue
        return sorted(ids)


class PodDir(SandboxDir):
    """Paths of one pod sandbox's directory (the disk's paths are ``SandboxDir``'s)."""

    @property
    def pod_file(self) -> Path:
        return self.path / "pod.json"

    @property
    def launched(self) -> Path:
        """The runtime ids of every container launch tried in the pod, one per line, written before each."""
        return self.path / "launched"

    @property
    def containers(self) -> Path:
        return self.path / "containers"

    def container(self, name: str) -> ContainerDir:
        return ContainerDir(self, validate_name("container", name))

    def container_names(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.containers) if e.is_dir(follow_symlinks=False)
                          and _NAME.fullmatch(e.name))
        except FileNotFoundError:
            return []

    @property
    def pause(self) -> Path:
        return self.path / "pause"

    @property
    def pause_boot_log(self) -> Path:
        return self.logs / "pause.boot"

    def files_volume(self, name: str) -> Path:
        return self.path / "files" / validate_name("volume", name)

    def memory_volume(self, name: str) -> Path:
        return self.path / "memory-volumes" / validate_name("volume", name)

    @property
    def memory_volumes(self) -> Path:
        return self.path / "memory-volumes"

    @property
    def cri_logs(self) -> Path:
        return self.path / "logs"

    def cri_log(self, name: str, attempt: int) -> Path:
        return self.cri_logs / validate_name("container", name) / f"{int(attempt)}.log"

    def raw_log(self, name: str, attempt: int, stream: str) -> Path:
        return self.logs / validate_name("container", name) / f"{int(attempt)}.{RAW_STREAMS[stream]}"

    def boot_log_of(self, name: str, attempt: int) -> Path:
        return self.logs / validate_name("container", name) / f"{int(attempt)}.boot"

    def layer(self, name: str) -> Path:
        """The container's writable layer and work directory live here, on the disk."""
        return self.disk / "containers" / validate_name("container", name)

    def make(self) -> bool:
        """The host-side directories (idempotent, modes tightened); True when the pod is new."""
        fresh = not self.path.exists()
        self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.path, DIR_MODE)
        for p in (self.disk, self.containers, self.run, self.cri_logs):
            p.mkdir(mode=0o755, exist_ok=True)
        return fresh


class ContainerDir:
    """The host side of one container of a pod (its bundle, records, mount point, stdin)."""

    def __init__(self, pod: PodDir, name: str) -> None:
        self.pod = pod
        self.name = name
        self.path = pod.containers / name

    @property
    def bundle(self) -> Path:
        return self.path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def record(self) -> Path:
        return self.path / "container.json"

    @property
    def exit_file(self) -> Path:
        return self.path / "exit.json"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def stdin(self) -> Path:
        return self.path / "stdin"

    @property
    def io(self) -> Path:
        return self.path / "io.json"

    @property
    def subpaths(self) -> Path:
        return self.path / "subpaths"

    @property
    def upper(self) -> Path:
        return self.pod.layer(self.name) / "upper"

    @property
    def ovwork(self) -> Path:
        return self.pod.layer(self.name) / "ovwork"

    @property
    def app(self) -> Path:
        return self.pod.layer(self.name) / "app"

    def make(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.rootfs.mkdir(mode=0o755, exist_ok=True)
        for p in (self.upper, self.ovwork):
            p.mkdir(mode=0o755, parents=True, exist_ok=True)
