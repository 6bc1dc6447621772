"""The local disk tier: blobs written with O_DIRECT and fsync, then manifest, then marker.

O_DIRECT because the page cache costs here: a buffered write plus fsync runs
about three times slower than an aligned O_DIRECT write plus fsync on the
development VM, and it would double the memory a save uses. Blobs are padded
to 4 KiB (manifest.ALIGN) and written straight from the memory tier's
page-aligned mapping in 32 MiB requests, one at a time (two in flight gained
nothing for writes). Unaligned input goes through a bounce buffer. File
systems without O_DIRECT (tmpfs, some overlays) fall back to buffered writes
with fsync.

A pool of retired files: a deleted part's data file moves to ``.pool/`` (at
most ``pool_files`` of them, one by default) and the next write overwrites it
in place. Writing a new file costs block allocation and unwritten-extent
conversion, and deleting an old one a discard of its blocks at the next
journal commit (this ext4 is mounted with ``discard``), all paid by the next
fsync: 1 GiB into a new file took 1.8-2.9 s here where overwriting a file
took 1.1-1.7 s. Disk usage at rest is the retained parts plus the pool, the
same peak as without it (a new part is written before retention drops the
oldest).

Reads for restore use O_DIRECT too (a cold read that does not pollute the
page cache), two 32 MiB reads in flight (15% faster than one here), and hand
each chunk, in order, to ``on_chunk`` so the restore checks it while the
next one is read.

Called by the agent (drain pipeline, replica receipt, restore) and the CLI.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from turbok.checkpoint.manifest import ALIGN, PartKey
from turbok.checkpoint.tiers.base import OnChunk
from turbok.checkpoint.tiers.files import DirectoryTier

__all__ = ["DiskTier", "is_aligned"]

_CHUNK = 32 << 20
_READS_IN_FLIGHT = 2


def is_aligned(buf: memoryview) -> bool:
    """Whether ``buf`` starts on a 4 KiB boundary and spans whole blocks (O_DIRECT-able)."""
    if buf.nbytes % ALIGN:
        return False
    if buf.nbytes == 0:
        return True
    addr = np.frombuffer(buf, dtype=np.uint8).ctypes.data
    return bool(addr % ALIGN == 0)


class _Bounce(threading.local):
    buf: mmap.mmap | None = None


class DiskTier(DirectoryTier):
    """Parts on a local file system; safe for concurrent use on distinct keys."""

    speed = 10

    def __init__(self, root: Path | str, *, name: str = "disk", pool_files: int = 1) -> None:
        super().__init__(root, name=name)
        self.pool = self.root / ".pool"  # made on first use: a restored directory stays clean
        self.pool_files = pool_files
        self._bounce = _Bounce()  # per thread, for unaligned input only
        self._reader_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _bounce_buf(self) -> mmap.mmap:
        if self._bounce.buf is None:
            self._bounce.buf = mmap.mmap(-1, _CHUNK)  # anonymous: page-aligned
        return self._bounce.buf

    def _open(self, path: Path, flags: int) -> tuple[int, bool]:
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644), True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            return os.open(path, flags, 0o644), False

    # -- the pool of retired files --------------------------------------------------------------
    def _drop_data(self, key: PartKey, data: Path) -> None:
        with self._pool_lock:
            self.pool.mkdir(exist_ok=True)
            pooled = sum(1 for _ in self.pool.iterdir())
            empty = True
            with contextlib.suppress(FileNotFoundError):
                empty = data.stat().st_size == 0
            if pooled < self.pool_files and not empty:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(data, self.pool / f"buf-{uuid.uuid4().hex}")
                    return
        data.unlink(missing_ok=True)

    def _reuse(self, data: Path, size: int) -> None:
        """Put a retired file at ``data`` (the closest in size), if there is one."""
        if not self.pool.is_dir():
            return
        with contextlib.suppress(FileNotFoundError):
            if data.stat().st_size:  # a previous copy of the same part is overwritten in place
                return
        with self._pool_lock:
            files = []
            for p in self.pool.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    files.append((abs(p.stat().st_size - size), p))
            if files:
                os.rename(min(files)[1], data)

    def largest_pooled(self) -> int:
        """Size of the largest retired file (the next write of that size costs no new space)."""
        if not self.pool.is_dir():
            return 0
        sizes = [0]
        for p in self.pool.iterdir():
            with contextlib.suppress(FileNotFoundError):
                sizes.append(p.stat().st_size)
        return max(sizes)

    def clear_pool(self) -> None:
        with self._pool_lock:
            for p in self.pool.glob("*"):
                p.unlink(missing_ok=True)

    # -- writing --------------------------------------------------------------------------------
    def writer(self, key: PartKey, size: int) -> _Writer:
        """Write a blob in sequential chunks (``size`` bytes, a multiple of 4 KiB)."""
        path = self._prepare(key)
        self._reuse(path, size)
        fd, direct = self._open(path, os.O_WRONLY | os.O_CREAT)
        return _Writer(self, fd, direct, size)

    def put(self, key: PartKey, data: memoryview | bytes) -> None:
        src = memoryview(data).cast("B")
        with self.writer(key, src.nbytes) as w:
            w.write(src)

    # -- reading --------------------------------------------------------------------------------
    def read_into(self, key: PartKey, offset: int, dest: memoryview, on_chunk: OnChunk | None = None) -> None:
        self._require(key)
        path = self.paths(key)[0]
        direct_ok = offset % ALIGN == 0 and is_aligned(dest)
        fd, direct = self._open(path, os.O_RDONLY) if direct_ok else (os.open(path, os.O_RDONLY), False)

        def read(pos: int) -> int:
            _pread_all(fd, offset + pos, dest[pos : pos + _CHUNK])
            return pos

        starts = range(0, dest.nbytes, _CHUNK)
        # Two reads in flight: 15% faster than one at a time here (a write gains nothing).
        pool = self._readers() if direct and len(starts) > 1 else None
        futures = [pool.submit(read, pos) for pos in starts] if pool is not None else []
        try:
            for i, pos in enumerate(starts):
                futures[i].result() if futures else read(pos)
                if on_chunk is not None:
                    on_chunk(offset + pos, dest[pos : pos + _CHUNK])
        finally:
            for f in futures:
                f.cancel()
            wait(futures)  # nothing may still read from ``fd`` once it is closed
            os.close(fd)

    def _readers(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._reader_pool is None:
                self._reader_pool = ThreadPoolExecutor(max_workers=_READS_IN_FLIGHT, thread_name_prefix="checkpoint-disk-read")
            return self._reader_pool


def _pread_all(fd: int, offset: int, dest: memoryview) -> None:
    done = 0
    while done < dest.nbytes:
        n = os.preadv(fd, [dest[done:]], offset + done)
        if n <= 0:
            raise EOFError("blob is shorter than expected")
        done += n


class _Writer:
    """Sequential writer; the last chunk may be short of 4 KiB only on the buffered path."""

    def __init__(self, tier: DiskTier, fd: int, direct: bool, size: int) -> None:
        self.tier, self.fd, self.direct, self.size, self.pos = tier, fd, direct, size, 0

    def __enter__(self) -> _Writer:
        return self

    def write(self, chunk: memoryview) -> None:
        """Write ``chunk`` at the current position; only unaligned input goes through the bounce buffer."""
        if not self.direct or is_aligned(chunk):
            for off in range(0, chunk.nbytes, _CHUNK):
                part = chunk[off : off + _CHUNK]
                self._pwrite(part, part.nbytes)
            return
        bounce = self.tier._bounce_buf()
        staging = np.frombuffer(bounce, dtype=np.uint8)
        for off in range(0, chunk.nbytes, _CHUNK):
            part = chunk[off : off + _CHUNK]
            n = part.nbytes
            padded = -(-n // ALIGN) * ALIGN
            np.copyto(staging[:n], np.frombuffer(part, dtype=np.uint8))
            if padded > n:
                staging[n:padded] = 0
            self._pwrite(memoryview(bounce)[:padded], n)

    def _pwrite(self, buf: memoryview, logical: int) -> None:
        done = 0
        while done < buf.nbytes:
            done += os.pwrite(self.fd, buf[done:], self.pos + done)
        self.pos += logical

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        try:
            if exc_type is None:
                if os.fstat(self.fd).st_size != self.size:
                    os.ftruncate(self.fd, self.size)  # a reused file of another size, or the padding
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
