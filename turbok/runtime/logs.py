"""Output logs capped and rotated as a kubelet does (``containerLogMaxSize``/``MaxFiles``).

``LOG_MAX_BYTES`` and ``LOG_MAX_FILES`` bound every log a pod has: its CRI logs
(``turbok.runtime.crilog``, written by the runtime itself) and the files a detached
sandbox writes through descriptors opened ``O_APPEND``, runsc's boot logs, where
nothing of turbok sits between the sandbox and the file, so a restarted control plane
loses nothing. ``LogRotator`` (``ROTATOR``, what the pod runtimes watch their boot logs
with) keeps each such file near ``LOG_MAX_BYTES``: it watches the files with inotify
from one thread, and when one passes the cap, copies its newest ``LOG_MAX_BYTES`` to
``NAME.1`` (older ones shift to ``NAME.2`` ... ``NAME.<LOG_MAX_FILES - 1>``, the oldest
goes) and truncates it in place, so the writer's descriptor stays valid and carries on
at the new end (copy-and-truncate, as logrotate's ``copytruncate``: what is written
during the copy, milliseconds, is lost; a kubelet renames and asks the runtime to
reopen, which needs a process between the sandbox and the file).

Bounds: each rotated file holds at most ``LOG_MAX_BYTES`` (under a flood faster
than the rotation, the oldest part of the excess is dropped); the live file
passes the cap only for as long as the rotation takes to notice (milliseconds).
The files live on the pod's own disk, so they count against its
``ephemeral-storage``, as Kubernetes counts container logs; that is also the
hard bound while no control plane runs to rotate them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import threading
import time
from pathlib import Path

__all__ = ["LOG_MAX_BYTES", "LOG_MAX_FILES", "ROTATOR", "LogRotator", "rotate"]

log = logging.getLogger("turbok.runtime.logs")

#: Cap on one log file (kubelet's containerLogMaxSize default, 10Mi).
LOG_MAX_BYTES = 10 * 1024 * 1024
#: Files kept per log, the live one included (kubelet's containerLogMaxFiles default).
LOG_MAX_FILES = 5
#: After handling a burst of events the thread waits this long, so a flood's events coalesce.
SETTLE_SECONDS = 0.005

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_IN_MODIFY = 0x2
_IN_IGNORED = 0x8000
_IN_Q_OVERFLOW = 0x4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


def rotate(path: Path, max_bytes: int = LOG_MAX_BYTES, max_files: int = LOG_MAX_FILES) -> bool:
    """Rotate ``path`` if it is larger than ``max_bytes``; True when it did."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False  # gone (a removed sandbox) or not a file of ours
    try:
        size = os.fstat(fd).st_size
        if size <= max_bytes:
            return False
        if max_files > 1:
            for i in range(max_files - 1, 1, -1):
                older = path.with_name(f"{path.name}.{i - 1}")
                if older.exists():
                    os.replace(older, path.with_name(f"{path.name}.{i}"))
            tmp = path.with_name(f"{path.name}.1.tmp")
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                offset = max(0, size - max_bytes)  # the newest bytes; a flood's excess goes
                while offset < size:
                    n = os.copy_file_range(fd, out, size - offset, offset)
                    if n == 0:
                        break
                    offset += n
            finally:
                os.close(out)
        # The writer appends (O_APPEND): it carries on at the new end. What it wrote during the
        # copy is lost (copy-and-truncate; milliseconds of a flood).
        os.ftruncate(fd, 0)
        if max_files > 1:
            os.replace(tmp, path.with_name(f"{path.name}.1"))
        return True
    finally:
        os.close(fd)


class LogRotator:
    """Watches log files and rotates each that passes the cap; one thread, started on first use."""

    def __init__(self, max_bytes: int = LOG_MAX_BYTES, max_files: int = LOG_MAX_FILES) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._rotating = threading.Lock()  # the thread and ``watch`` may both rotate one file
        self._fd = -1
        self._paths: dict[int, Path] = {}
        self.rotations = 0

    def _start(self) -> None:
        fd = _libc.inotify_init1(_IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        threading.Thread(target=self._loop, name="turbok-log-rotator", daemon=True).start()

    def watch(self, *paths: Path) -> None:
        """Keep these files rotated from now on (idempotent; a file replaced or remounted is
        watched anew). A file already over the cap is rotated at once."""
        with self._lock:
            if self._fd < 0:
                try:
                    self._start()
                except OSError as e:
                    log.warning("log rotation is off: %s", e)
                    return
            for path in paths:
                wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), _IN_MODIFY)
                if wd >= 0:
                    self._paths[wd] = path
                elif ctypes.get_errno() == errno.ENOSPC:  # fs.inotify.max_user_watches
                    log.warning("not rotating %s: no inotify watch left (raise fs.inotify.max_user_watches); "
                                "the sandbox's disk still bounds it", path)
        for path in paths:
            self._rotate(path)

    def _rotate(self, path: Path) -> None:
        try:
            with self._rotating:
                if rotate(path, self.max_bytes, self.max_files):
                    self.rotations += 1
        except OSError as e:  # a full disk, a file removed meanwhile: the next write tries again
            log.debug("rotating %s: %s", path, e)

    def _loop(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except InterruptedError:
                continue
            due: set[Path] = set()
            overflow = False
            with self._lock:
                for offset in _offsets(data):
                    wd, mask, _, _ = _EVENT.unpack_from(data, offset)
                    if mask & _IN_Q_OVERFLOW:
                        overflow = True
                    elif mask & _IN_IGNORED:
                        self._paths.pop(wd, None)  # unmounted or deleted
                    elif wd in self._paths:
                        due.add(self._paths[wd])
                if overflow:
                    due.update(self._paths.values())
            for path in due:
                self._rotate(path)
            time.sleep(SETTLE_SECONDS)


def _offsets(data: bytes) -> list[int]:
    offsets, offset = [], 0
    while offset + _EVENT.size <= len(data):
        offsets.append(offset)
        offset += _EVENT.size + _EVENT.unpack_from(data, offset)[3]
    return offsets


#: The one rotator of this process (every runtime's sandboxes share its thread).
ROTATOR = LogRotator()
