"""Container logs read as a kubelet reads them: CRI log files, tail, since, timestamps, limits, follow.

The runtime writes each container attempt's output to one file
(``PodRuntime.log_path``) in the CRI log format, one line per write or per
16 KiB piece of one::

    2016-10-06T00:17:09.669794202Z stdout F a whole line
    2016-10-06T00:17:10.113242941Z stderr P the first part of a long line, then
    2016-10-06T00:17:10.113242942Z stderr F the rest of it

``read_log`` turns that back into what the container wrote, as the kubelet's
``kuberuntime/logs.ReadLogs`` does: the ``<time> <stream> <tag>`` prefix goes,
a partial (``P``) line joins the next, ``timestamps`` puts the time (RFC 3339,
nanoseconds, UTC) before each line, ``since`` drops lines written before it,
``tail_lines`` starts at the N-th last line of the file (lines of the file,
partial ones included, as the kubelet counts), ``limit_bytes`` stops after
that many bytes. A malformed line is skipped. Only the live file is read, as
the kubelet reads only the live file: rotated ones (``NAME.1`` ...) are not.

Following: at the end of the file it waits for more (polling, ``POLL_SECONDS``
to ``IDLE_POLL_SECONDS``), yields ``b""`` every ``HEARTBEAT_SECONDS`` of
quiet, and ends once ``running()`` says the container attempt has stopped
and the file holds nothing more, as the kubelet ends ``-f`` when the container
exits. A rotation is followed either way it is done: a file renamed away and
replaced (read the old one to its end, go on with the new one), or copied to
``NAME.1`` and truncated in place (``turbok.runtime.logs``: what was written
after our last read is taken from ``NAME.1``, found after the last line we
read).

The work on the bytes is a couple of regular-expression passes over each
chunk of whole lines when every line is a complete ``F`` line and no
``since`` applies; per line otherwise. Chunks of ``CHUNK_BYTES``; large ones
are converted in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import os
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHUNK_BYTES", "LogConverter", "parse_timestamp", "read_log", "tail_offset"]

CHUNK_BYTES = 1024 * 1024
#: A line longer than this without a newline is not a CRI line: it is skipped.
MAX_LINE_BYTES = 1024 * 1024
POLL_SECONDS = 0.05
#: Once the container stopped, how long the file must stay quiet before a follow ends (the runtime
#: writes the log a moment after the container wrote its output).
ENDING_GRACE_SECONDS = 0.25
IDLE_POLL_SECONDS = 0.25
#: While following, how often the container is asked whether it still runs.
RUNNING_CHECK_SECONDS = 1.0
HEARTBEAT_SECONDS = 2.0
#: Chunks larger than this are converted in a worker thread.
THREAD_BYTES = 64 * 1024

_LINE = re.compile(rb"([^ \n]+) (stdout|stderr) ([^ \n]+) (.*)\n")
_WHOLE = rb"F(?::[^ \n]*)? "
# The fast passes match each prefix after a newline (the chunk gets one in front): a pattern that
# starts with a literal byte is scanned for it quickly, where ``(?m)^`` tries every position.
_PLAIN = re.compile(rb"\n[^ \n]+ std(?:out|err) " + _WHOLE)
#: A timestamp in UTC: written back as Go's RFC3339Nano (trailing zeros of the fraction trimmed).
_UTC_PREFIX = re.compile(rb"\n(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?Z std(?:out|err) " + _WHOLE)
_TIME = re.compile(rb"(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)")


@functools.lru_cache(maxsize=4096)
def _epoch(day: bytes, clock: bytes) -> int:
    return calendar.timegm(time.strptime((day + b" " + clock).decode(), "%Y-%m-%d %H:%M:%S"))


def parse_timestamp(raw: bytes) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time; ValueError if it is not one."""
    match = _TIME.fullmatch(raw)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {raw[:40]!r}")
    day, clock, fraction, zone = match.groups()
    seconds = _epoch(day, clock)
    if zone not in (b"Z", b"z"):
        sign = 1 if zone[:1] == b"+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int((fraction or b"").ljust(9, b"0"))


def format_timestamp(ns: int) -> bytes:
    """RFC 3339 with nanoseconds, UTC, trailing zeros trimmed: Go's ``time.RFC3339Nano``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return (text + "Z").encode()


@dataclass
class LogConverter:
    """CRI lines in, the container's bytes out; keeps what spans chunks (a partial line, the byte budget)."""

    timestamps: bool = False
    since_ns: int | None = None
    limit_bytes: int | None = None
    #: The previous line was partial: the next one continues it (no timestamp before it).
    partial: bool = False

    @property
    def exhausted(self) -> bool:
        return self.limit_bytes is not None and self.limit_bytes <= 0

    def convert(self, lines: bytes) -> bytes:
        """``lines``: whole CRI lines, each ending in a newline."""
        out = self._fast(lines) if not self.partial and self.since_ns is None else None
        if out is None:
            out = self._slow(lines)
        if self.limit_bytes is not None:
            out = out[:self.limit_bytes]
            self.limit_bytes -= len(out)
        return out

    def _fast(self, lines: bytes) -> bytes | None:
        if self.timestamps:
            out, n = _UTC_PREFIX.subn(_utc_prefix, b"\n" + lines)
        else:
            out, n = _PLAIN.subn(b"\n", b"\n" + lines)
        # Every line matched: all whole (F) lines, well formed. Else some need the careful path.
        return out[1:] if n == lines.count(b"\n") else None

    def _slow(self, lines: bytes) -> bytes:
        out: list[bytes] = []
        start = 0
        while start < len(lines):
            end = lines.index(b"\n", start) + 1
            match = _LINE.fullmatch(lines, start, end)
            start = end
            if match is None:
                continue  # the kubelet skips a line it cannot parse
            stamp, _stream, tags, content = match.groups()
            try:
                ns = parse_timestamp(stamp)
            except ValueError:
                continue
            partial = tags.split(b":", 1)[0] == b"P"
            prefix = self.timestamps and not self.partial
            self.partial = partial
            if self.since_ns is not None and ns < self.since_ns:
                continue
            if prefix:
                out.append(format_timestamp(ns) + b" ")
            out.append(content if partial else content + b"\n")
        return b"".join(out)


def _utc_prefix(match: re.Match[bytes]) -> bytes:
    fraction = (match.group(2) or b"").rstrip(b"0")
    return b"\n" + match.group(1) + (fraction if len(fraction) > 1 else b"") + b"Z "


def tail_offset(fd: int, lines: int, size: int | None = None) -> int:
    """Where the last ``lines`` lines of the file start (the kubelet's ``FindTailLineStartIndex``)."""
    size = os.fstat(fd).st_size if size is None else size
    block = 64 * 1024
    right, count, buf, left = size, 0, b"", size
    while right > 0 and count <= lines:
        left = max(0, right - block)
        buf = os.pread(fd, right - left, left) + buf
        count = buf.count(b"\n")
        right = left
    while count > lines:
        cut = buf.index(b"\n") + 1
        buf, left = buf[cut:], left + cut
        count -= 1
    return left


class _File:
    """The live log file, followed across rotations."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.offset = 0
        #: The last whole line handed on, to find our place again after a copy-and-truncate rotation.
        self.last_line = b""

    def close(self) -> None:
        os.close(self.fd)

    def read(self) -> bytes:
        """Whole lines from ``offset`` (at most ``CHUNK_BYTES``); what follows the last newline waits."""
        data = os.pread(self.fd, CHUNK_BYTES, self.offset)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) >= min(CHUNK_BYTES, MAX_LINE_BYTES):  # one line too long for the format: skip it
                self.offset += len(data)
            return b""
        data = data[:cut]
        self.offset += cut
        self.last_line = data[data.rfind(b"\n", 0, len(data) - 1) + 1:]
        return data

    def rotated(self) -> bytes | None:
        """After a rotation, what was written since our last read (b"" if nothing); None if no rotation."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None  # moved away and not (yet) replaced: keep reading the one we have
        if st.st_ino != os.fstat(self.fd).st_ino:
            rest = self._rest_of_old()
            os.close(self.fd)
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self.offset, self.last_line = 0, b""
            return rest
        if self._truncated(st.st_size):
            missed = self._from_rotated_copy()
            self.offset = 0
            return missed
        return None

    def _truncated(self, size: int) -> bool:
        if size < self.offset:
            return True
        # Truncated and written again past where we were: the line before our offset changed.
        n = len(self.last_line)
        return n > 0 and os.pread(self.fd, n, self.offset - n) != self.last_line

    def _rest_of_old(self) -> bytes:
        chunks = []
        while chunk := self.read():
            chunks.append(chunk)
        return b"".join(chunks)

    def _from_rotated_copy(self) -> bytes:
        try:
            copy = (self.path.parent / f"{self.path.name}.1").read_bytes()
        except OSError:
            return b""
        at = copy.rfind(self.last_line) if self.last_line else -1
        missed = copy[at + len(self.last_line):] if at >= 0 else copy
        return missed[:missed.rfind(b"\n") + 1]


async def read_log(path: Path, *, follow: bool = False, tail_lines: int | None = None, since: float | None = None,
                   timestamps: bool = False, limit_bytes: int | None = None,
                   running: Callable[[], Awaitable[bool]] | None = None) -> AsyncGenerator[bytes, None]:
    """The container's output from the CRI log at ``path`` (see the module docstring).

    ``running``: whether the followed container attempt still runs; without
    one, a follow ends at the end of the file. A file not there yet (the
    runtime makes it at the container's first output) is an empty log, or,
    when following a running container, one to wait for.
    """
    converter = LogConverter(timestamps=timestamps, limit_bytes=limit_bytes,
                             since_ns=None if since is None else int(since * 1_000_000_000))
    while not path.exists():
        if not follow or running is None or not await running():
            if not path.exists():
                return
            break
        yield b""  # nothing yet: lets the server check its client
        await asyncio.sleep(IDLE_POLL_SECONDS)
    file = _File(path)
    try:
        if tail_lines is not None:
            file.offset = tail_offset(file.fd, tail_lines)
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        checked = quiet_since - RUNNING_CHECK_SECONDS  # the first end of the file asks at once
        poll = POLL_SECONDS
        ending = not follow or running is None  # read to the end of the file once more, then stop
        grace_done = False
        while not converter.exhausted:
            lines = file.read()
            if not lines and follow:
                lines = file.rotated() or b""
            if lines:
                out = (await asyncio.to_thread(converter.convert, lines) if len(lines) > THREAD_BYTES
                       else converter.convert(lines))
                if out:
                    yield out
                quiet_since, poll = loop.time(), POLL_SECONDS
                continue
            if ending:
                if not follow or running is None or grace_done:
                    return
                grace_done = True
                await asyncio.sleep(ENDING_GRACE_SECONDS)
                continue
            now = loop.time()
            if now - checked >= RUNNING_CHECK_SECONDS:
                checked = now
                assert running is not None
                if not await running():
                    ending = True  # what it wrote before it stopped is read on the next turn
                    continue
            if now - quiet_since >= HEARTBEAT_SECONDS:
                quiet_since = now
                yield b""
            await asyncio.sleep(poll)
            poll = min(poll * 2, IDLE_POLL_SECONDS)
    finally:
        file.close()
