"""The on-disk layout of one sandbox, shared by every runtime.

``<root>/<id>/`` (``root`` is what the control plane passes:
``<TURBOK_HOME>/sandboxes``; both are 0700, tightened at every start)::

    config.json   OCI runtime spec; the directory is the OCI bundle (gvisor)
    spec.json     the SandboxSpec it was last started with (for humans and resume)
    disk.img      the sandbox's own disk: a sparse ext4 file (see turbok.runtime.disk)
    disk.json     the bounds it was made with; disk.loop: its loop device while mounted
    disk/         mount point of disk.img (nosuid,nodev; only while running). On it:
        upper/        the writable layer: everything the sandbox changed in its root fs
        ovwork/       overlayfs' scratch directory (same filesystem as upper/)
        app/          the work directory, ``/app`` inside; read and written by the host too
        volumes/NAME/ one directory per VolumeMount
        logs/         stdout.log, stderr.log (the main process' output: detached, files,
                      rotated: turbok.runtime.logs) and boot.log (runsc's boot log)
    rootfs/       mount point of the overlay: read-only image + upper/ (only while running)
    run/          bwrap.json (bubblewrap: pid of the init to enter)
    memory/       a hibernated sandbox's memory image; memory.json marks it complete

Everything a sandbox can write is on ``disk/``, so its ``ephemeral-storage``
bounds all of it and a setuid file made inside means nothing on the host.
Everything of a sandbox lives here, so ``remove`` is unmount + one ``rmtree``
and a restarted control plane finds all of it again. Ids are checked by
``validate_id`` before any path is built from them. Trees of older versions
kept ``LEGACY_ENTRIES`` directly in ``<id>/``; ``turbok.runtime.disk`` moves them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from turbok.runtime.base import ID_LENGTH, SandboxSpec, VolumeMount, validate_id
from turbok.runtime.errors import InvalidSandboxSpec

__all__ = ["DIR_MODE", "LEGACY_ENTRIES", "SandboxDir", "hostname_of", "list_ids", "validate_volumes"]

#: Mode of the sandboxes root and of every sandbox directory: no other user may traverse them.
DIR_MODE = 0o700
#: What older versions kept directly in ``<id>/`` and is now on ``disk/``.
LEGACY_ENTRIES = ("upper", "ovwork", "app", "volumes", "stdout.log", "stderr.log", "boot.log")

_VOLUME_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")
_HOSTNAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def hostname_of(spec: SandboxSpec) -> str:
    """The sandbox's hostname: its name, cut to 63 characters as Kubernetes does for pods."""
    name = spec.hostname[:63].rstrip("-.")
    if not _HOSTNAME.fullmatch(name):
        raise InvalidSandboxSpec(f"sandbox {spec.id}: hostname {spec.hostname!r} is not a DNS name")
    return name


class SandboxDir:
    """Paths of one sandbox's directory; ``create`` makes them."""

    def __init__(self, root: Path, id: str) -> None:
        self.id = validate_id(id)
        self.path = root / id

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def spec_file(self) -> Path:
        return self.path / "spec.json"

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
        """Mount point of the sandbox's disk: everything the sandbox can write is below."""
        return self.path / "disk"

    @property
    def upper(self) -> Path:
        return self.disk / "upper"

    @property
    def ovwork(self) -> Path:
        return self.disk / "ovwork"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def app(self) -> Path:
        return self.disk / "app"

    @property
    def run(self) -> Path:
        return self.path / "run"

    @property
    def logs(self) -> Path:
        return self.disk / "logs"

    @property
    def stdout_log(self) -> Path:
        return self.logs / "stdout.log"

    @property
    def stderr_log(self) -> Path:
        return self.logs / "stderr.log"

    @property
    def boot_log(self) -> Path:
        return self.logs / "boot.log"

    def volume(self, name: str) -> Path:
        return self.disk / "volumes" / name

    def exists(self) -> bool:
        return self.path.is_dir()

    def create(self, spec: SandboxSpec) -> bool:
        """Make the host-side directories (idempotent) and tighten their modes; True when the
        sandbox is new. What goes on its disk is made by ``populate``, once the disk is mounted."""
        validate_volumes(spec.volumes)
        fresh = not self.path.exists()
        self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.path, DIR_MODE)  # also a tree made by an older version (0755)
        for p in (self.rootfs, self.run, self.disk):
            p.mkdir(mode=0o755, exist_ok=True)
        return fresh

    def populate(self, spec: SandboxSpec) -> None:
        """Make every directory on the mounted disk (idempotent).

        A new writable layer gets ``/etc/hostname`` and ``/etc/hosts`` (the image's
        copies name no host), as a kubelet would mount them.
        """
        for p in (self.upper, self.ovwork, self.app, self.logs):
            p.mkdir(mode=0o755, exist_ok=True)
        for v in spec.volumes:
            self.volume(v.name).mkdir(mode=0o755, parents=True, exist_ok=True)
        etc = self.upper / "etc"
        if not os.path.lexists(etc / "hostname"):  # a whiteout (the sandbox deleted it) counts
            hostname = hostname_of(spec)
            etc.mkdir(mode=0o755, exist_ok=True)
            (etc / "hostname").write_text(hostname + "\n")
            (etc / "hosts").write_text(
                f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                f"127.0.1.1\t{hostname}\n"
            )

    def write_json(self, path: Path, data: Any) -> None:
        """Write ``data`` as JSON atomically (temp file + rename): a crash leaves the old file."""
        tmp = path.with_name(path.name + ".tmp")
        # Specs may carry any Mapping/Sequence (tuples, mapping proxies): write them as JSON's own.
        tmp.write_text(json.dumps(data, indent=1, default=lambda o: dict(o) if isinstance(o, Mapping) else list(o)))
        os.replace(tmp, path)

    def save_spec(self, spec: SandboxSpec) -> None:
        self.write_json(self.spec_file, asdict(spec))

    def open_logs(self) -> tuple[int, int]:
        """Descriptors appending to stdout.log and stderr.log, for a detached main process.

        Files, never pipes: a detached sandbox outlives whoever reads a pipe.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(self.stdout_log, flags, 0o644)
        try:
            return out, os.open(self.stderr_log, flags, 0o644)
        except BaseException:
            os.close(out)
            raise

    def clear_run(self) -> None:
        """Forget per-exec files of an earlier life of the sandbox."""
        if self.run.is_dir():
            for entry in os.scandir(self.run):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)


def validate_volumes(volumes: Sequence[VolumeMount]) -> None:
    seen: set[str] = set()
    for v in volumes:
        if not _VOLUME_NAME.fullmatch(v.name):
            raise InvalidSandboxSpec(f"invalid volume name {v.name!r}: want a DNS label")
        if v.name in seen:
            raise InvalidSandboxSpec(f"volume {v.name!r} is named twice")
        seen.add(v.name)
        parts = v.mount_path.split("/")
        if not v.mount_path.startswith("/") or ".." in parts or v.mount_path.rstrip("/") in ("", "/proc", "/dev", "/sys"):
            raise InvalidSandboxSpec(
                f"volume {v.name!r}: mount path {v.mount_path!r} must be absolute, without '..', "
                "and not /, /proc, /dev or /sys"
            )


def list_ids(root: Path) -> list[str]:
    """Ids of the sandbox directories under ``root`` (other entries are ignored)."""
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
