"""A sandbox's own disk: everything it can write, bounded in bytes and inodes, nosuid and nodev.

Each sandbox gets a sparse file ``<id>/disk.img`` holding an ext4 filesystem,
mounted (through a loop device, ``turbok.runtime.loopdev``) on ``<id>/disk``
while the sandbox runs, ``nosuid,nodev``. On it: everything the sandbox writes (a
pod's containers' writable layers and ``/app``, its emptyDirs, its raw output: see
``turbok.runtime.podlayout``; a local volume's files: ``turbok.node.storage``). So:

- a sandbox cannot write more than its ``ephemeral-storage`` bytes, nor make
  more files than its inode count: past them its writes fail with ``ENOSPC``
  (this kernel has no project quotas: ``CONFIG_QFMT_V2`` is off);
- a setuid program or a device node made inside means nothing on the host;
- the file is sparse: it takes on the host only what the sandbox wrote.

The filesystem: ext4 with 4 KiB blocks, no journal (a sandbox's scratch disk;
an unclean one is checked with ``e2fsck`` before its next mount instead, and
ext4 refuses writes after a write error: ``Disks.failed``), no reserved
blocks, one inode per ``BYTES_PER_INODE`` and inode tables taken as zeroed (the
file is new and sparse, so nothing zeroes them in the background). Mounted with
``discard``: what a sandbox deletes is given back to the host as holes.
``mkfs.ext4`` runs once per size in a process; a new disk is a copy of the
blocks of that fresh filesystem (0.1-1 ms, no process).

Sizes: ``bounds(ephemeral_storage)`` (default ``DEFAULT_EPHEMERAL_STORAGE``);
the file is that many bytes plus ext4's own overhead, so about that much is
usable. A changed limit resizes the filesystem at the next start.

Where loop devices, ext4 or ``mkfs.ext4`` are missing, ``disk/`` is a plain
directory bound onto itself ``nosuid,nodev``: nothing is bounded, and the
runtime says so (log, ``PodSandboxStatus.notes``). Trees made by older versions
(``upper/``, ``app/``... directly in ``<id>/``) are moved into ``disk/`` at their
next start, then copied onto a disk of their own if they fit; nothing is lost
on the way (see ``Disks.prepare``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from turbok.runtime import loopdev, mounts
from turbok.runtime.errors import InvalidSandboxSpec, SandboxStartFailed
from turbok.runtime.podlayout import SandboxDir

__all__ = [
    "BYTES_PER_INODE",
    "DEFAULT_EPHEMERAL_STORAGE",
    "MIN_EPHEMERAL_STORAGE",
    "MIN_INODES",
    "Bounds",
    "Disks",
    "bounds",
]

log = logging.getLogger("turbok.runtime.disk")

#: What versions before sandboxes had disks kept directly in ``<id>/`` and is now on ``disk/``.
LEGACY_ENTRIES = ("upper", "ovwork", "app", "volumes", "stdout.log", "stderr.log", "boot.log")

GiB = 1 << 30
MiB = 1 << 20
#: A sandbox's disk when its template sets no ``resources.limits.ephemeral-storage``.
DEFAULT_EPHEMERAL_STORAGE = 4 * GiB
#: The smallest disk a sandbox can be given (its layer, logs and /app need room).
MIN_EPHEMERAL_STORAGE = 16 * MiB
#: One inode (file, directory, link) per this many bytes of limit: ext4's own default ratio.
BYTES_PER_INODE = 16 * 1024
MIN_INODES = 4096
_INODE_SIZE = 256
_BLOCK = 4096
_EXT4_MAGIC = 0xEF53
_VALID_FS, _ERROR_FS = 1, 2
_MOUNT_OPTIONS = "discard,errors=remount-ro"
_STATE_FILE = "disk.json"
_TEMPLATES_KEPT = 8  # distinct sizes whose fresh filesystem a process keeps in memory
_UNMOUNT_WAIT = 2.0


@dataclass(frozen=True)
class Bounds:
    """What one sandbox may write: ``bytes`` (its ephemeral-storage) and ``inodes``."""

    bytes: int
    inodes: int

    @property
    def image_size(self) -> int:
        """Size of the sparse file: the limit plus ext4's inode tables and metadata."""
        size = self.bytes + 2 * self.inodes * _INODE_SIZE + self.bytes // 128 + MiB
        return -(-size // _BLOCK) * _BLOCK


def bounds(ephemeral_storage: int | None, default: int = DEFAULT_EPHEMERAL_STORAGE) -> Bounds:
    """The bounds of a sandbox with this limit (None: ``default``)."""
    limit = default if ephemeral_storage is None else ephemeral_storage
    if limit < MIN_EPHEMERAL_STORAGE:
        raise InvalidSandboxSpec(
            f"ephemeral-storage {limit} bytes is below the minimum of {MIN_EPHEMERAL_STORAGE // MiB}Mi"
        )
    return Bounds(bytes=limit, inodes=max(MIN_INODES, min(limit // BYTES_PER_INODE, 2**32 - 1)))


def _fs_state(image: Path) -> int | None:
    """``s_state`` of the ext4 superblock in ``image`` (None: not ext4)."""
    try:
        with open(image, "rb") as f:
            sb = os.pread(f.fileno(), 64, 1024)
    except OSError:
        return None
    if len(sb) < 60 or int.from_bytes(sb[56:58], "little") != _EXT4_MAGIC:
        return None
    return int.from_bytes(sb[58:60], "little")


def _run(argv: list[str], what: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode not in ok:
        output = (done.stderr or done.stdout).strip()
        why = output.splitlines()[-1] if output else "no message"
        code = errno.ENOSPC if os.strerror(errno.ENOSPC) in output else errno.EIO
        raise OSError(code, f"{what}: {argv[0]} exited {done.returncode}: {why}")
    return done


def _usage(root: Path) -> tuple[int, int]:
    """Bytes (allocated) and inodes under ``root``, hard links counted once."""
    seen: set[tuple[int, int]] = set()
    used = files = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                st = e.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                files += 1
                used += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
    return used, files


class Disks:
    """The disks of the sandboxes under one root.

    ``bounded=False`` (or a machine without loop devices, ``mkfs.ext4`` or ext4)
    keeps every disk a plain directory; ``unbounded_reason`` says why.
    """

    def __init__(self, *, bounded: bool = True, default: int = DEFAULT_EPHEMERAL_STORAGE,
                 loop_control: Path = loopdev.LOOP_CONTROL) -> None:
        self.default = default
        self.loop_control = loop_control
        self._mkfs = shutil.which("mkfs.ext4")
        self._fsck = shutil.which("e2fsck")
        self._resize = shutil.which("resize2fs")
        self.unbounded_reason: str | None = "bounded disks turned off" if not bounded else self._probe()
        if self.unbounded_reason:
            log.warning("sandbox disks are NOT bounded (ephemeral-storage is not enforced): %s",
                        self.unbounded_reason)
        self._tried_migration: set[str] = set()
        self._templates: dict[Bounds, list[tuple[int, bytes]]] = {}
        self._templates_lock = threading.Lock()  # starts prepare disks in worker threads
        self._errors_files: dict[int, str] = {}

    def _probe(self) -> str | None:
        if self._mkfs is None or self._fsck is None:
            return "mkfs.ext4/e2fsck not found (apt-get install -y e2fsprogs)"
        try:
            with open("/proc/filesystems") as f:
                if not any(line.split()[-1:] == ["ext4"] for line in f):
                    return "the kernel has no ext4"
        except OSError:
            pass
        return loopdev.unavailable(self.loop_control)

    # ---------------------------------------------------------------- state

    def bounded(self, sdir: SandboxDir) -> bool:
        return sdir.disk_image.exists()

    def note(self, sdir: SandboxDir) -> str:
        """A line for the state of a running sandbox whose disk is not bounded ("" when it is)."""
        if self.bounded(sdir):
            return ""
        why = self.unbounded_reason or "its data from an older version does not fit its limit"
        return f"disk not bounded (ephemeral-storage not enforced): {why}"

    def failed(self, sdir: SandboxDir) -> bool:
        """True when the sandbox's mounted disk had an error (ext4 then refuses every write: it is
        read-only, which newer kernels do not show in ``statvfs``, hence ext4's own error count)."""
        try:
            dev = os.stat(sdir.disk).st_dev
        except OSError:
            return False
        if os.major(dev) != loopdev.LOOP_MAJOR:
            return False  # not mounted, or a plain directory
        errors = self._errors_files.get(dev)
        if errors is None:
            try:
                name = os.path.basename(os.readlink(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
            except OSError:
                return False
            errors = self._errors_files[dev] = f"/sys/fs/ext4/{name}/errors_count"
        try:
            with open(errors, "rb") as f:
                count = int(f.read() or 0)
        except (OSError, ValueError):
            count = 0
        return count > 0 or mounts.read_only(sdir.disk)

    def mounted(self, sdir: SandboxDir) -> bool:
        return mounts.is_mount_root(sdir.disk)

    # ---------------------------------------------------------------- mount

    def prepare(self, sdir: SandboxDir, limit: Bounds) -> None:
        """Mount the sandbox's disk on ``sdir.disk`` (made if new, checked if unclean, resized if
        its limit changed); a no-op when it is mounted and healthy. Blocking: call off the loop.

        Raises ``OSError`` (ENOSPC when the home is full) or ``SandboxStartFailed``.
        """
        self._finish_migration(sdir)
        if self.mounted(sdir):
            if not self.failed(sdir):
                return
            log.warning("sandbox %s: its disk turned read-only after a write error; checking it", sdir.id)
            self.unmount(sdir)
        self._adopt_legacy(sdir)
        sdir.disk.mkdir(mode=0o755, exist_ok=True)
        if self.unbounded_reason is None and not self.bounded(sdir):
            if any(sdir.disk.iterdir()):
                self._migrate_plain(sdir, limit)
            else:
                self._make(sdir, limit)
        if not self.bounded(sdir):
            mounts.bind_onto_itself(sdir.disk)
            return
        self._wait_detached(sdir)  # never check an image a filesystem still lives on (a namespace going away)
        self._check(sdir)
        self._resize_to(sdir, limit)
        self._mount_image(sdir)

    def _make(self, sdir: SandboxDir, limit: Bounds) -> None:
        """A new disk: the sparse file, with the blocks of a fresh filesystem of these bounds written in."""
        extents = self._template(limit, sdir.path.parent)
        tmp = sdir.disk_image.with_name(sdir.disk_image.name + ".new")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, limit.image_size)
                for offset, data in extents:
                    os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            os.replace(tmp, sdir.disk_image)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._record(sdir, limit)

    def _template(self, limit: Bounds, scratch: Path) -> list[tuple[int, bytes]]:
        """The non-hole extents of a fresh filesystem of these bounds (about 100-250 KiB): ``mkfs.ext4``
        runs once per size in a process (3-20 ms); each new disk then costs a few writes (0.1 ms).
        Copies share the filesystem's UUID, which ext4 does not mind."""
        with self._templates_lock:
            extents = self._templates.get(limit)
            if extents is not None:
                return extents
        assert self._mkfs is not None
        fd, name = tempfile.mkstemp(prefix=".disk-template-", dir=scratch)
        try:
            os.ftruncate(fd, limit.image_size)
            _run([self._mkfs, "-q", "-F", "-b", str(_BLOCK), "-I", str(_INODE_SIZE), "-N", str(limit.inodes),
                  "-m", "0", "-O", "^has_journal,^resize_inode",
                  "-E", "lazy_itable_init=1,nodiscard,assume_storage_prezeroed=1", name],
                 f"making a {limit.bytes}-byte disk")
            extents = []
            offset = 0
            while True:
                try:
                    data = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError as e:
                    if e.errno != errno.ENXIO:  # ENXIO: no data past offset
                        raise
                    break
                offset = os.lseek(fd, data, os.SEEK_HOLE)
                extents.append((data, os.pread(fd, offset - data, data)))
        finally:
            os.close(fd)
            os.unlink(name)
        with self._templates_lock:
            if len(self._templates) >= _TEMPLATES_KEPT:
                self._templates.pop(next(iter(self._templates)))
            self._templates[limit] = extents
        return extents

    def _record(self, sdir: SandboxDir, limit: Bounds) -> None:
        sdir.write_json(sdir.path / _STATE_FILE, {"bytes": limit.bytes, "inodes": limit.inodes,
                                                  "image": limit.image_size})

    def _recorded(self, sdir: SandboxDir) -> Bounds | None:
        try:
            data = json.loads((sdir.path / _STATE_FILE).read_text())
            return Bounds(bytes=int(data["bytes"]), inodes=int(data["inodes"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _check(self, sdir: SandboxDir) -> None:
        """``e2fsck`` a disk that was not cleanly unmounted (a crash, a write error)."""
        state = _fs_state(sdir.disk_image)
        if state is None:
            raise SandboxStartFailed(f"sandbox {sdir.id}: {sdir.disk_image} holds no ext4 filesystem")
        if state & _VALID_FS and not state & _ERROR_FS:
            return
        assert self._fsck is not None
        log.warning("sandbox %s: its disk was not cleanly unmounted; checking it with e2fsck", sdir.id)
        done = _run([self._fsck, "-p", str(sdir.disk_image)], f"sandbox {sdir.id}: checking its disk",
                    ok=(0, 1, 2, 4))
        if done.returncode >= 4:  # preen would not fix it alone: repair (never deletes the image)
            _run([self._fsck, "-y", str(sdir.disk_image)], f"sandbox {sdir.id}: repairing its disk",
                 ok=(0, 1, 2))

    def _resize_to(self, sdir: SandboxDir, limit: Bounds) -> None:
        recorded = self._recorded(sdir)
        if recorded is not None and recorded.bytes == limit.bytes:
            return
        size = sdir.disk_image.stat().st_size
        if recorded is None and size == limit.image_size:
            self._record(sdir, limit)
            return
        if self._resize is None:
            log.warning("sandbox %s: its ephemeral-storage changed but resize2fs is missing; keeping %d bytes",
                        sdir.id, size)
            return
        assert self._fsck is not None
        try:
            if limit.image_size > size:
                os.truncate(sdir.disk_image, limit.image_size)
            _run([self._fsck, "-f", "-p", str(sdir.disk_image)], "checking before a resize", ok=(0, 1))
            _run([self._resize, str(sdir.disk_image), f"{limit.image_size // 1024}K"], "resizing")
            if limit.image_size < size:
                os.truncate(sdir.disk_image, limit.image_size)
        except OSError as e:
            if os.stat(sdir.disk_image).st_size < size:
                raise
            log.warning("sandbox %s: could not resize its disk to its new ephemeral-storage (%s); keeping "
                        "the old size", sdir.id, e)
            return
        log.info("sandbox %s: disk resized from %d to %d bytes", sdir.id, size, limit.image_size)
        self._record(sdir, limit)

    def _mount_image(self, sdir: SandboxDir) -> None:
        self._wait_detached(sdir)
        with loopdev.attached(sdir.disk_image, self.loop_control) as device:
            mounts.mount(device, sdir.disk, "ext4", mounts.SAFE, _MOUNT_OPTIONS)
            sdir.disk_device.write_text(device + "\n")

    def _wait_detached(self, sdir: SandboxDir) -> None:
        """Wait for an earlier mount of this image that is still going away (a lazy unmount):
        two filesystems on one image would corrupt it."""
        try:
            device = sdir.disk_device.read_text().strip()
        except FileNotFoundError:
            return
        image = str(sdir.disk_image)
        for _ in range(200):
            backing = loopdev.backing_file(device)
            if backing is None or backing.removesuffix(" (deleted)") != image:
                return
            time.sleep(0.01)
        held = ", ".join(loopdev.holders(device, sdir.path)[:8]) or "nobody found"
        raise SandboxStartFailed(f"sandbox {sdir.id}: its disk is still held by {device} from its last run "
                                 f"(mounted in or open by: {held}); retrying later")

    def unmount(self, sdir: SandboxDir) -> None:
        """Unmount the sandbox's disk (its overlay must be unmounted first). A namespace of the
        sandbox still being torn down may hold it a moment: wait for that rather than detach lazily,
        so the filesystem is cleanly closed when this returns."""
        mounts.unmount(sdir.disk, wait=_UNMOUNT_WAIT)

    # ------------------------------------------------------------ migration

    def _adopt_legacy(self, sdir: SandboxDir) -> None:
        """Move an older version's tree (``upper/``, ``app/``, logs... in ``<id>/``) into ``disk/``:
        renames on one filesystem, each atomic, so a crash midway only leaves fewer to move."""
        legacy = [name for name in LEGACY_ENTRIES if os.path.lexists(sdir.path / name)]
        if not legacy:
            return
        log.info("sandbox %s: moving its files from an older layout into %s", sdir.id, sdir.disk)
        sdir.disk.mkdir(mode=0o755, exist_ok=True)
        sdir.logs.mkdir(mode=0o755, exist_ok=True)
        for name in legacy:
            target = sdir.disk / (f"logs/{name}" if name.endswith(".log") else name)
            if os.path.lexists(target):
                target = target.with_name(target.name + ".old")
            os.rename(sdir.path / name, target)

    def _finish_migration(self, sdir: SandboxDir) -> None:
        """Complete or undo a copy onto a disk image that a crash interrupted."""
        done = sdir.path / "disk.migrated"
        if done.exists():
            shutil.rmtree(done)
        plain = sdir.path / "disk.plain"
        if plain.exists():  # the copy was not complete: back to the plain directory
            self.unmount(sdir)
            sdir.disk_image.unlink(missing_ok=True)
            (sdir.path / _STATE_FILE).unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError):
                sdir.disk.rmdir()
            os.rename(plain, sdir.disk)

    def _migrate_plain(self, sdir: SandboxDir, limit: Bounds) -> None:
        """Copy a plain ``disk/`` onto a new disk image, if it fits; else keep it plain (unbounded)."""
        if sdir.id in self._tried_migration:
            return
        self._tried_migration.add(sdir.id)
        used, files = _usage(sdir.disk)
        if used > limit.bytes or files > limit.inodes:
            log.warning("sandbox %s: its files from an older version (%d bytes, %d inodes) exceed its "
                        "ephemeral-storage (%d bytes, %d inodes): its disk stays unbounded", sdir.id, used,
                        files, limit.bytes, limit.inodes)
            return
        plain = sdir.path / "disk.plain"
        os.rename(sdir.disk, plain)
        sdir.disk.mkdir(mode=0o755)
        try:
            self._make(sdir, limit)
            self._mount_image(sdir)
            try:
                _run(["cp", "-a", "--sparse=always", f"{plain}/.", f"{sdir.disk}/"], "copying onto its disk")
            finally:
                self.unmount(sdir)
        except OSError as e:
            log.warning("sandbox %s: could not move its files onto a bounded disk (%s); it stays unbounded",
                        sdir.id, e)
            self._finish_migration(sdir)
            return
        os.rename(plain, sdir.path / "disk.migrated")
        self._finish_migration(sdir)
        log.info("sandbox %s: its files now live on a disk of %d bytes", sdir.id, limit.bytes)
