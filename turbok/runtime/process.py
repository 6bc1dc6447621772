"""Processes started in a sandbox, and the plumbing shared by every runtime: capped output, timeouts, exit 124.

``Process`` is a command started in a sandbox (``PodRuntime.exec``'s stream, the router's
commands), its output as streams; ``ExecResult`` is one run to completion, output capped at
``DEFAULT_OUTPUT_LIMIT`` unless told otherwise.

``collect`` reads a ``Process``'s stdout and stderr concurrently, keeps at most
``output_limit`` bytes of each, and kills the process when ``timeout`` passes.
Past the limit it does one of two things:

- by default it drains the rest (read and dropped), so the process never
  blocks on a full pipe; the caller pays for every byte it reads (about 4 ms
  of CPU per MB from a gVisor sandbox);
- with ``flood_grace`` (the router's choice) it stops reading that stream, so
  the pipe fills and the command blocks on its next write at no cost to us;
  a command still running ``flood_grace`` seconds later is killed and
  reported ``stopped`` (exit ``FLOOD_EXIT_CODE``). A command that writes a
  little past the limit and exits (less than a pipe's worth) ends normally.

After a kill it waits at most ``KILL_GRACE`` seconds for the pipes to close (a
process that escaped the kill and still holds them cannot hang the caller) and
returns what was read before. A cancelled ``collect`` kills its process too.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "FLOOD_EXIT_CODE",
    "KILL_GRACE",
    "TIMEOUT_EXIT_CODE",
    "CappedBuffer",
    "ExecResult",
    "Process",
    "collect",
    "discard",
    "read_capped",
]

#: Default cap on captured stdout and stderr, each (documented in docs/runtime.md).
DEFAULT_OUTPUT_LIMIT = 4 * 1024 * 1024
#: Exit code reported for a command killed at its timeout, as coreutils' timeout(1) does.
TIMEOUT_EXIT_CODE = 124
#: Exit code reported for a command stopped because its output passed the limit (128 + SIGKILL).
FLOOD_EXIT_CODE = 137
#: Seconds to wait for pipes and the process to end after a kill.
KILL_GRACE = 2.0

_CHUNK = 64 * 1024

#: Awaited with the size of each chunk read; may sleep to slow the reading down.
Pace = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool = False
    #: True when stdout or stderr was cut at the output limit.
    truncated: bool = False
    #: True when the command was killed because its output passed the limit
    #: (``collect`` with ``flood_grace``).
    stopped: bool = False


class Process(abc.ABC):
    """A command started in a sandbox, with its output as streams."""

    @property
    @abc.abstractmethod
    def stdout(self) -> asyncio.StreamReader: ...

    @property
    @abc.abstractmethod
    def stderr(self) -> asyncio.StreamReader: ...

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the process and return its exit code."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Kill the process and everything it started inside the sandbox."""


class CappedBuffer:
    """Keeps the first ``limit`` bytes written to it and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        #: True once ``drain`` stopped reading at the limit (its stream is left unread).
        self.stopped = False

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True

    async def drain(
        self, stream: asyncio.StreamReader, stop: asyncio.Event | None = None, pace: Pace | None = None
    ) -> None:
        """Read ``stream`` to EOF; with ``stop``, only until the limit is passed, then set ``stop``.
        ``pace`` is awaited with the size of every chunk read (it may sleep to slow the reading)."""
        while chunk := await stream.read(_CHUNK):
            self.add(chunk)
            if stop is not None and self.truncated:
                stop.set()  # stop reading: the pipe fills and the writer blocks
                self.stopped = True
                return
            if pace is not None:
                await pace(len(chunk))


async def read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read ``stream`` to EOF; keep the first ``limit`` bytes, drain the rest."""
    buf = CappedBuffer(limit)
    await buf.drain(stream)
    return bytes(buf.data), buf.truncated


async def _drop(streams: list[asyncio.StreamReader], within: float) -> None:
    async def drop(stream: asyncio.StreamReader) -> None:
        while await stream.read(_CHUNK):
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*map(drop, streams)), within)


async def discard(proc: Process, within: float = KILL_GRACE) -> None:
    """Read what is left on ``proc``'s pipes and drop it, until EOF or ``within`` seconds.

    For a process killed while its output was not being read: a pipe never read to its end
    keeps its transport, and its descriptors, open after the process is gone. Nothing else
    may be reading the pipes meanwhile.
    """
    await _drop([proc.stdout, proc.stderr], within)


async def _outcome(
    ending: asyncio.Future[int], flooded: asyncio.Event | None, timeout: float | None, grace: float
) -> str:
    """How the command ends: "done", "timeout", or "flood" (still running ``grace`` s after a flood)."""
    loop = asyncio.get_running_loop()
    deadline = math.inf if timeout is None else loop.time() + timeout
    stop_at = math.inf
    watcher = asyncio.ensure_future(flooded.wait()) if flooded is not None else None
    try:
        while not ending.done():
            if watcher is not None and watcher.done() and stop_at == math.inf:
                stop_at = loop.time() + grace
            now, until = loop.time(), min(deadline, stop_at)
            if now >= until:
                return "timeout" if deadline <= stop_at else "flood"
            waiting: set[asyncio.Future[Any]] = {ending}
            if watcher is not None and not watcher.done():
                waiting.add(watcher)
            await asyncio.wait(
                waiting, timeout=None if until == math.inf else until - now, return_when=asyncio.FIRST_COMPLETED
            )
        return "done"
    finally:
        if watcher is not None:
            watcher.cancel()


async def collect(
    proc: Process,
    *,
    timeout: float | None,
    output_limit: int,
    flood_grace: float | None = None,
    pace: Pace | None = None,
) -> ExecResult:
    """Run ``proc`` to its end, its timeout, or (with ``flood_grace``) its flood; see the module docstring.

    ``pace``, if given, is awaited with the size of each chunk read (a rate limit: while it
    sleeps, the pipes fill and the command waits).
    """
    out, err = CappedBuffer(output_limit), CappedBuffer(output_limit)
    flooded = asyncio.Event() if flood_grace is not None else None
    reading = asyncio.ensure_future(
        asyncio.gather(out.drain(proc.stdout, flooded, pace), err.drain(proc.stderr, flooded, pace))
    )

    async def finish() -> int:
        await asyncio.shield(reading)
        return await proc.wait()

    ending = asyncio.ensure_future(finish())
    timed_out = stopped = False
    try:
        how = await _outcome(ending, flooded, timeout, flood_grace or 0.0)
        # Streams left unread at the limit: their rest is dropped from here on. A writer blocked
        # on a full pipe may not die of a kill before the pipe moves (gVisor finishes the host
        # write first), and a pipe never read to EOF is never closed.
        unread = [s for buf, s in ((out, proc.stdout), (err, proc.stderr)) if buf.stopped]
        if how == "done":
            code = ending.result()
            await _drop(unread, KILL_GRACE)
        else:
            timed_out, stopped = how == "timeout", how == "flood"
            dropping = asyncio.ensure_future(_drop(unread, 2 * KILL_GRACE))
            try:
                await proc.kill()
                # After the kill the pipes close; keep what was written before the kill.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reading), KILL_GRACE)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), KILL_GRACE)
                await dropping
            finally:
                dropping.cancel()
            code = TIMEOUT_EXIT_CODE if timed_out else FLOOD_EXIT_CODE
    except asyncio.CancelledError:
        await asyncio.shield(proc.kill())
        raise
    finally:
        for task in (ending, reading):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return ExecResult(
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        exit_code=code,
        timed_out=timed_out,
        truncated=out.truncated or err.truncated,
        stopped=stopped,
    )
