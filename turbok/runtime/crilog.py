"""Container output as CRI logs: ``<RFC3339Nano> <stdout|stderr> <F|P> <text>``, rotated, per attempt.

A container's stdout and stderr are files on its pod's disk (``logs/NAME/ATTEMPT.out``
and ``.err``), opened ``O_APPEND`` and held by the detached sandbox: nothing of
turbok sits between a container and its output, so a control plane that stops or
restarts loses nothing and never blocks a container. The runtime turns those raw
files into the CRI log a kubelet keeps (``PodDir.cri_log``) as they grow: one
thread (``PUMP``) waits on inotify, reads what was appended, stamps each line with
the time it read it (milliseconds after the write), writes it to the CRI log and
hands the bytes to whoever is attached, then punches the read part of the raw file
out (``FALLOC_FL_PUNCH_HOLE``), so the raw file takes no room once read. Where it
got to is kept in ``ATTEMPT.pos`` beside the CRI log: a restarted control plane
goes on from there (output written while none ran gets the time it is read).

A terminal (``tty: true``) has no files: the pump reads the pty's master instead.

Lines: a complete line is ``F``; a line longer than ``MAX_LINE`` is cut into ``P``
parts and a final ``F`` (containerd's rule); an unterminated last line is written
``F`` when the container ends. The CRI log rotates at ``LOG_MAX_BYTES`` into
``NAME.1`` ... ``NAME.<LOG_MAX_FILES - 1>`` (renames: the runtime is its only
writer), as ``turbok.runtime.logs`` rotates the old runtime's files.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from turbok.runtime.logs import LOG_MAX_BYTES, LOG_MAX_FILES

__all__ = [
    "MAX_LINE",
    "PUMP",
    "CriLine",
    "CriLogWriter",
    "Feed",
    "OutputPump",
    "log_files",
    "parse_line",
    "read_lines",
    "timestamp",
]

log = logging.getLogger("turbok.runtime.crilog")

#: A line longer than this is written as partial (``P``) records, as containerd does.
MAX_LINE = 16 * 1024
#: At most this much is read from one feed before others get their turn.
_SLICE = 4 * 1024 * 1024
_PUNCH_EVERY = 1024 * 1024
_BLOCK = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_IN_MODIFY = 0x2
_IN_IGNORED = 0x8000
_IN_Q_OVERFLOW = 0x4000
_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")
_FALLOC_FL_KEEP_SIZE = 0x1
_FALLOC_FL_PUNCH_HOLE = 0x2
_POS = struct.Struct("<QQ")


def timestamp(t: float) -> str:
    """RFC 3339 with nanoseconds in UTC, as the CRI log wants: ``2024-05-01T12:00:00.123456789Z``."""
    ns = int(round(t * 1e9))
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


@dataclass(frozen=True)
class CriLine:
    time: str
    stream: str
    partial: bool
    text: bytes


def parse_line(line: bytes) -> CriLine | None:
    """One record of a CRI log (with or without its newline); None if it is not one."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
        return None
    return CriLine(parts[0].decode(), parts[1].decode(), parts[2] == b"P", parts[3] if len(parts) > 3 else b"")


def log_files(path: Path, max_files: int = LOG_MAX_FILES) -> list[Path]:
    """The files of one CRI log, oldest first (rotated ones, then the live one), those that exist."""
    found = [path.with_name(f"{path.name}.{i}") for i in range(max_files - 1, 0, -1)]
    return [p for p in [*found, path] if p.exists()]


def read_lines(path: Path) -> Iterator[CriLine]:
    """Every record of one CRI log, rotated files included, oldest first."""
    for p in log_files(path):
        with contextlib.suppress(FileNotFoundError), open(p, "rb") as f:
            for raw in f:
                rec = parse_line(raw)
                if rec is not None:
                    yield rec


class CriLogWriter:
    """Writes one attempt's CRI log; partial lines wait per stream. Not thread-safe (a ``Feed`` locks)."""

    def __init__(self, path: Path, *, max_bytes: int = LOG_MAX_BYTES, max_files: int = LOG_MAX_FILES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._fd = -1
        self._size = 0

    def _open(self) -> None:
        if self._fd < 0:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, data: bytes, when: float) -> None:
        """Add ``data`` of ``stream``; complete lines are written at once, the rest waits."""
        buf = self._pending[stream] + data
        ts = timestamp(when).encode()
        out = bytearray()
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0 or nl - start > MAX_LINE:
                if len(buf) - start > MAX_LINE:  # a long line: its head goes out as a partial record
                    out += b"%s %s P %s\n" % (ts, stream.encode(), buf[start:start + MAX_LINE])
                    start += MAX_LINE
                    continue
                break
            out += b"%s %s F %s\n" % (ts, stream.encode(), buf[start:nl])
            start = nl + 1
        self._pending[stream] = buf[start:]
        if out:
            self._emit(bytes(out))

    def flush(self, when: float) -> None:
        """Write what waits for a newline (the container ended) as final records."""
        ts = timestamp(when).encode()
        for stream, rest in self._pending.items():
            if rest:
                self._emit(b"%s %s F %s\n" % (ts, stream.encode(), rest))
                self._pending[stream] = b""

    def _emit(self, data: bytes) -> None:
        self._open()
        os.write(self._fd, data)
        self._size += len(data)
        if self._size > self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self.max_files > 1:
            for i in range(self.max_files - 1, 1, -1):
                older = self.path.with_name(f"{self.path.name}.{i - 1}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.truncate(self.path, 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


#: A reader attached to a feed: called with (stream, bytes) for output and (stream, None) at the end.
Subscriber = Callable[[str, bytes | None], None]

_FEEDS: weakref.WeakSet[Feed] = weakref.WeakSet()


@atexit.register
def _finish_at_exit() -> None:
    """Let every pull under way finish (its slice written and its position recorded) and start no other:
    the pump's daemon thread would otherwise be stopped between the two, and the next control plane would
    write that slice again."""
    for feed in list(_FEEDS):
        with feed.lock:
            feed.done = True


class Feed:
    """One container attempt's output on its way from raw files (or a terminal) to its CRI log and readers.

    A slice is appended to the CRI log, then its position recorded: a process killed between the two
    writes it again on the next start (at least once). A process that exits finishes the slice first
    (``_finish_at_exit``), so a normal exit loses and doubles nothing.
    """

    def __init__(self, key: str, writer: CriLogWriter, *, raw: dict[str, Path] | None = None,
                 pos_file: Path | None = None, tty_fd: int | None = None) -> None:
        self.key = key
        self.writer = writer
        self.raw = dict(raw or {})
        self.pos_file = pos_file
        self.tty_fd = tty_fd
        self.lock = threading.Lock()
        self.done = False
        self._fds: dict[str, int] = {}
        self._offsets = {"stdout": 0, "stderr": 0}
        self._punched = {"stdout": 0, "stderr": 0}
        self._subscribers: dict[int, Subscriber] = {}
        self._next_token = 0
        _FEEDS.add(self)
        if pos_file is not None:
            with contextlib.suppress(OSError, struct.error):
                self._offsets["stdout"], self._offsets["stderr"] = _POS.unpack(pos_file.read_bytes()[:_POS.size])
        for stream, path in self.raw.items():
            with contextlib.suppress(OSError):
                self._fds[stream] = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)

    def subscribe(self, callback: Subscriber) -> int:
        with self.lock:
            self._next_token += 1
            self._subscribers[self._next_token] = callback
            if self.done:
                for stream in ("stdout", "stderr"):
                    callback(stream, None)
            return self._next_token

    def unsubscribe(self, token: int) -> None:
        with self.lock:
            self._subscribers.pop(token, None)

    def _notify(self, stream: str, data: bytes | None) -> None:
        for cb in list(self._subscribers.values()):
            try:
                cb(stream, data)
            except Exception:  # a reader gone wrong must not stop the logs
                log.exception("attached reader of %s failed", self.key)

    def pull(self) -> bool:
        """Read what was appended to the raw files (up to a slice); True when more is left."""
        with self.lock:
            return self._pull()

    def _pull(self) -> bool:
        if self.done:
            return False
        more = False
        for stream, fd in self._fds.items():
            off = self._offsets[stream]
            end = off + _SLICE
            while off < end:
                try:
                    data = os.pread(fd, min(1024 * 1024, end - off), off)
                except OSError as e:
                    log.debug("reading %s of %s: %s", stream, self.key, e)
                    break
                if not data:
                    break
                off += len(data)
                now = time.time()
                self.writer.write(stream, data, now)
                self._notify(stream, data)
            else:
                more = True
            if off != self._offsets[stream]:
                self._offsets[stream] = off
                if off - self._punched[stream] >= _PUNCH_EVERY:
                    self._punch(stream)
        if self.pos_file is not None and self._fds:
            with contextlib.suppress(OSError):
                fd = os.open(self.pos_file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    os.pwrite(fd, _POS.pack(self._offsets["stdout"], self._offsets["stderr"]), 0)
                finally:
                    os.close(fd)
        return more

    def _punch(self, stream: str) -> None:
        """Give the read part of a raw file back to its disk (a hole: offsets stay valid for the writer)."""
        upto = self._offsets[stream] // _BLOCK * _BLOCK
        if upto <= self._punched[stream]:
            return
        path = self.raw[stream]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, upto) == 0:
                self._punched[stream] = upto
        finally:
            os.close(fd)

    def read_tty(self) -> bool:
        """Read the terminal's output (the pump calls it when the master is readable); False at its end."""
        with self.lock:
            if self.tty_fd is None:
                return False
            try:
                data = os.read(self.tty_fd, 65536)
            except BlockingIOError:
                return True
            except OSError as e:
                if e.errno != errno.EIO:  # EIO: the terminal's other side is closed (the container ended)
                    log.debug("reading the terminal of %s: %s", self.key, e)
                return False
            if not data:
                return False
            self.writer.write("stdout", data, time.time())
            self._notify("stdout", data)
            return True

    def finish(self) -> None:
        """The container ended: read the rest, write unterminated lines, close everything, tell readers."""
        with self.lock:
            if self.done:
                return
            while self._pull():
                pass
            for stream in list(self._fds):
                self._punch(stream)
            self.writer.flush(time.time())
            self.writer.close()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            if self.tty_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self.tty_fd)
                self.tty_fd = None
            self.done = True
            for stream in ("stdout", "stderr"):
                self._notify(stream, None)


class OutputPump:
    """The thread that moves every running container's output: inotify on raw files, epoll on terminals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = False
        self._inotify = -1
        self._epoll: select.epoll | None = None
        self._watches: dict[int, Feed] = {}
        self._ttys: dict[int, Feed] = {}
        self._feeds: dict[str, Feed] = {}
        self._wake_r = self._wake_w = -1
        self._due: set[str] = set()

    def _start(self) -> None:
        fd = _libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._inotify = fd
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(fd, select.EPOLLIN)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        threading.Thread(target=self._loop, name="turbok-cri-logs", daemon=True).start()
        self._started = True

    def feed(self, key: str) -> Feed | None:
        with self._lock:
            return self._feeds.get(key)

    def add(self, feed: Feed) -> Feed:
        """Start moving ``feed``'s output (once per key; a second add of a live key returns the first)."""
        with self._lock:
            live = self._feeds.get(feed.key)
            if live is not None and not live.done:
                return live
            if not self._started:
                self._start()
            self._feeds[feed.key] = feed
            for path in feed.raw.values():
                wd = _libc.inotify_add_watch(self._inotify, os.fsencode(path), _IN_MODIFY)
                if wd >= 0:
                    self._watches[wd] = feed
                elif ctypes.get_errno() == errno.ENOSPC:
                    log.warning("no inotify watch left for %s (raise fs.inotify.max_user_watches): its CRI log "
                                "is written when the container ends", path)
            if feed.tty_fd is not None:
                os.set_blocking(feed.tty_fd, False)
                self._ttys[feed.tty_fd] = feed
                assert self._epoll is not None
                self._epoll.register(feed.tty_fd, select.EPOLLIN)
            self._due.add(feed.key)  # what was written before the watch
        self._wake()
        return feed

    def finish(self, key: str) -> None:
        """The container ended: drain its feed and stop watching it (blocking: call off the event loop)."""
        with self._lock:
            feed = self._feeds.pop(key, None)
            if feed is None:
                return
            for wd in [wd for wd, f in self._watches.items() if f is feed]:
                _libc.inotify_rm_watch(self._inotify, wd)
                self._watches.pop(wd, None)
            if feed.tty_fd is not None and feed.tty_fd in self._ttys:
                del self._ttys[feed.tty_fd]
                assert self._epoll is not None
                with contextlib.suppress(OSError):
                    self._epoll.unregister(feed.tty_fd)
        feed.finish()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _loop(self) -> None:
        assert self._epoll is not None
        while True:
            with self._lock:
                timeout = 0 if self._due else -1
            try:
                events = self._epoll.poll(timeout)
            except InterruptedError:
                continue
            due: set[str] = set()
            readable: list[Feed] = []
            with self._lock:
                due, self._due = self._due, set()
                for fd, _ in events:
                    if fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    elif fd == self._inotify:
                        due.update(self._inotify_events())
                    elif fd in self._ttys:
                        readable.append(self._ttys[fd])
                feeds = [self._feeds[k] for k in due if k in self._feeds]
            for feed in readable:
                if not feed.read_tty():
                    with self._lock:
                        if feed.tty_fd is not None and self._ttys.pop(feed.tty_fd, None) is not None:
                            with contextlib.suppress(OSError):
                                self._epoll.unregister(feed.tty_fd)
            for feed in feeds:
                try:
                    more = feed.pull()
                except Exception:
                    log.exception("moving the output of %s", feed.key)
                    more = False
                if more:
                    with self._lock:
                        self._due.add(feed.key)

    def _inotify_events(self) -> set[str]:
        keys: set[str] = set()
        while True:
            try:
                data = os.read(self._inotify, 64 * 1024)
            except (BlockingIOError, InterruptedError):
                return keys
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    keys.update(self._feeds)
                elif mask & _IN_IGNORED:
                    self._watches.pop(wd, None)
                elif wd in self._watches:
                    keys.add(self._watches[wd].key)


#: The one pump of this process (every pod runtime's containers share its thread).
PUMP = OutputPump()
