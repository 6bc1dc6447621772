"""What the memory and disk tiers share: a directory layout and its commit protocol.

Layout under the tier's root::

    <job>/<step:012d>/rank-<rank:05d>.data            the blob
    <job>/<step:012d>/rank-<rank:05d>.manifest.json   written after the data is durable
    <job>/<step:012d>/rank-<rank:05d>.commit          the manifest's digest, written last
    <job>/<step:012d>/rank-<rank:05d>.corrupt         instead of .commit: quarantined (why, as text)

Manifest and marker are each written to a temporary name, fsync'd (on a
durable tier), renamed into place, and the directory fsync'd, so a crash at
any point leaves either a committed part or a partial one that ``list`` shows
as partial and the agent deletes on start. Subclasses decide how the blob is
written and read (memory.py: shared-memory mappings; disk.py: O_DIRECT).

Directories: ``_prepare`` makes the step directory and, under the same lock,
an (empty) data file in it, and ``delete`` removes empty directories under
that lock; so a delete of one rank's part never removes the directory another
rank's writer has just made (issue 12, bug 3: a replica's delete raced the
local writer).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from turbok.checkpoint.errors import ManifestError, StepNotFoundError
from turbok.checkpoint.manifest import Manifest, PartKey
from turbok.checkpoint.tiers.base import PartState, Tier

__all__ = ["DirectoryTier", "write_atomic"]


def write_atomic(path: Path, data: bytes, *, durable: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryTier(Tier):
    """A tier that keeps parts as files under ``root``; safe for concurrent use on distinct keys."""

    durable = True

    def __init__(self, root: Path | str, *, name: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._dirs = threading.Lock()  # making a step directory and its first file vs removing it

    def used(self) -> int:
        """Bytes of every file under the root, pool included, each inode once (a rename during
        the walk would otherwise count a buffer twice)."""
        sizes: dict[tuple[int, int], int] = {}
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(os.path.join(dirpath, f))
                    sizes[(st.st_dev, st.st_ino)] = st.st_size
        return sum(sizes.values())

    def paths(self, key: PartKey) -> tuple[Path, Path, Path]:
        d = self.root / key.job / key.step_dir
        return d / f"{key.stem}.data", d / f"{key.stem}.manifest.json", d / f"{key.stem}.commit"

    def data_path(self, key: PartKey) -> Path:
        return self.paths(key)[0]

    def corrupt_path(self, key: PartKey) -> Path:
        return self.paths(key)[2].with_suffix(".corrupt")

    def staged_path(self, key: PartKey) -> Path:
        """The layout of a staged, not yet committed part (memory tier: what a restarted agent adopts)."""
        return self.paths(key)[2].with_suffix(".staged.json")

    def write_staged(self, manifest: Manifest) -> None:
        write_atomic(self.staged_path(manifest.key), manifest.to_json(), durable=self.durable)

    def staged_manifest(self, key: PartKey) -> Manifest | None:
        try:
            raw = self.staged_path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return Manifest.from_json(raw, where=f"{self.name} staged layout of {key}")
        except ManifestError:
            return None

    def _prepare(self, key: PartKey) -> Path:
        """Uncommit ``key`` and make sure its data file exists (empty if new); returns its path."""
        data, _, marker = self.paths(key)
        with self._dirs:
            data.parent.mkdir(parents=True, exist_ok=True)
            marker.unlink(missing_ok=True)  # an overwrite uncommits first
            self.corrupt_path(key).unlink(missing_ok=True)
            self.staged_path(key).unlink(missing_ok=True)
            os.close(os.open(data, os.O_WRONLY | os.O_CREAT, 0o644))
        return data

    def commit(self, manifest: Manifest) -> None:
        data, man, marker = self.paths(manifest.key)
        try:
            size = data.stat().st_size
        except FileNotFoundError:
            raise StepNotFoundError(f"{self.name}: cannot commit {manifest.key}: no data was put") from None
        if size < manifest.data_size:
            raise ManifestError(f"{self.name}: {manifest.key} holds {size} bytes, manifest says {manifest.data_size}")
        write_atomic(man, manifest.to_json(), durable=self.durable)
        write_atomic(marker, manifest.digest().encode(), durable=self.durable)
        self.staged_path(manifest.key).unlink(missing_ok=True)

    def uncommit(self, key: PartKey) -> None:
        self.paths(key)[2].unlink(missing_ok=True)

    def quarantine(self, key: PartKey, reason: str) -> None:
        _, _, marker = self.paths(key)
        if not marker.exists():
            return
        write_atomic(self.corrupt_path(key), reason.encode(), durable=self.durable)
        marker.unlink(missing_ok=True)
        if self.durable:
            _fsync_dir(marker.parent)

    def is_corrupt(self, key: PartKey) -> bool:
        return self.corrupt_path(key).exists()

    def committed_manifest(self, key: PartKey) -> Manifest | None:
        """The manifest, if a marker matching it exists; None otherwise."""
        _, man, marker = self.paths(key)
        try:
            digest = marker.read_text()
            raw = man.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        manifest = Manifest.from_json(raw, where=f"{self.name} {man}")
        if manifest.digest() != digest.strip() or manifest.key != key:
            return None
        return manifest

    def manifest(self, key: PartKey) -> Manifest | None:
        return self.committed_manifest(key)

    def exists(self, key: PartKey) -> bool:
        try:
            return self.committed_manifest(key) is not None
        except ManifestError:
            return False

    def _require(self, key: PartKey) -> Manifest:
        manifest = self.committed_manifest(key)
        if manifest is None:
            raise StepNotFoundError(f"{self.name}: {key} is not committed here")
        return manifest

    def get(self, key: PartKey, offset: int = 0, length: int | None = None) -> memoryview | bytes:
        manifest = self._require(key)
        if length is None:
            length = manifest.data_size - offset
        with open(self.paths(key)[0], "rb") as f:
            return os.pread(f.fileno(), length, offset)

    def list(self, job: str | None = None) -> list[PartState]:
        out: list[PartState] = []
        jobs = [self.root / job] if job is not None else sorted(p for p in self.root.iterdir() if not p.name.startswith("."))
        for jdir in jobs:
            for sdir in _entries(jdir):
                if not sdir.name.isdigit():
                    continue
                for data in _entries(sdir):
                    if not (data.name.startswith("rank-") and data.name.endswith(".data")):
                        continue
                    try:
                        key = PartKey(jdir.name, int(sdir.name), int(data.name[5:10]))
                    except (ValueError, ManifestError):
                        continue
                    try:
                        manifest = self.committed_manifest(key)
                    except ManifestError:
                        manifest = None  # a malformed manifest is never offered
                    with contextlib.suppress(FileNotFoundError):
                        size = data.stat().st_size
                        corrupt = manifest is None and self.corrupt_path(key).exists()
                        out.append(PartState(key, self.name, manifest is not None, manifest, size, corrupt))
        return out

    def delete(self, key: PartKey) -> None:
        data, man, marker = self.paths(key)
        marker.unlink(missing_ok=True)
        self.corrupt_path(key).unlink(missing_ok=True)
        self.staged_path(key).unlink(missing_ok=True)
        man.unlink(missing_ok=True)
        self._drop_data(key, data)
        with self._dirs:
            for d in (data.parent, data.parent.parent):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when empty

    def _drop_data(self, key: PartKey, data: Path) -> None:
        data.unlink(missing_ok=True)

    def read_uncommitted(self, key: PartKey) -> bytes:
        """The blob as written so far, committed or not (to verify a replica before committing it)."""
        return self.paths(key)[0].read_bytes()


def _entries(directory: Path) -> list[Path]:
    """``directory``'s entries, sorted; none when it is gone (deleted by retention or a delete
    while we list: a step directory goes as soon as its last part does)."""
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
