"""Process plumbing shared by every runtime: capped output, timeouts, exit 124.

``collect`` reads a ``Process``'s stdout and stderr concurrently, keeps at most
``output_limit`` bytes of each (draining the rest so the process never blocks
on a full pipe), and kills it when ``timeout`` passes. After a kill it waits
at most ``KILL_GRACE`` seconds for the pipes to close (a process that escaped
the kill and still holds them cannot hang the caller) and returns what was
read before. A cancelled ``collect`` kills its process too.

``HostProcess`` is the ``Process`` of both runtimes: a host subprocess (the
``runsc exec`` client, or ``nsenter``) whose ``kill`` is delegated to the
runtime, which knows how to reach the command's tree inside the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from turbok.runtime.base import ExecResult, Process

__all__ = ["KILL_GRACE", "TIMEOUT_EXIT_CODE", "CappedBuffer", "HostProcess", "collect", "read_capped"]

#: Exit code reported for a command killed at its timeout, as coreutils' timeout(1) does.
TIMEOUT_EXIT_CODE = 124
#: Seconds to wait for pipes and the process to end after a kill.
KILL_GRACE = 2.0

_CHUNK = 64 * 1024


class CappedBuffer:
    """Keeps the first ``limit`` bytes written to it and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_CHUNK):
            self.add(chunk)


async def read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read ``stream`` to EOF; keep the first ``limit`` bytes, drain the rest."""
    buf = CappedBuffer(limit)
    await buf.drain(stream)
    return bytes(buf.data), buf.truncated


async def collect(proc: Process, *, timeout: float | None, output_limit: int) -> ExecResult:
    out, err = CappedBuffer(output_limit), CappedBuffer(output_limit)
    reading = asyncio.ensure_future(asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr)))

    async def finish() -> int:
        await asyncio.shield(reading)
        return await proc.wait()

    timed_out = False
    try:
        code = await asyncio.wait_for(finish(), timeout)
    except TimeoutError:
        timed_out = True
        await proc.kill()
        # After the kill the pipes close; keep what was written before the deadline.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading), KILL_GRACE)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), KILL_GRACE)
        code = TIMEOUT_EXIT_CODE
    except asyncio.CancelledError:
        await asyncio.shield(proc.kill())
        raise
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    return ExecResult(
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        exit_code=code,
        timed_out=timed_out,
        truncated=out.truncated or err.truncated,
    )


class HostProcess(Process):
    """A ``Process`` backed by a host subprocess whose pipes carry the command's output.

    ``kill_inside`` ends the command's tree inside the sandbox (the runtime
    knows how); afterwards the host subprocess ends by itself, or is killed
    after ``KILL_GRACE``. ``cleanup`` runs once, when the process has ended.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        *,
        stdin: bytes | None,
        kill_inside: Callable[[], Awaitable[None]],
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self._proc = proc
        self._stdout = proc.stdout
        self._stderr = proc.stderr
        self._kill_inside = kill_inside
        self._cleanup = cleanup
        self._feeder = asyncio.ensure_future(self._feed(stdin)) if proc.stdin is not None else None

    async def _feed(self, data: bytes | None) -> None:
        # A separate task: a command that writes before reading cannot deadlock us.
        assert self._proc.stdin is not None
        try:
            if data:
                self._proc.stdin.write(data)
                await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command did not read all of its stdin
        finally:
            self._proc.stdin.close()

    @property
    def pid(self) -> int:
        """Host pid of the subprocess (not of the command inside the sandbox)."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._stderr

    async def wait(self) -> int:
        """Exit code of the command; killed by signal N reads 128+N, as a shell says it."""
        code = await self._proc.wait()
        if code < 0:
            code = 128 - code
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()
        if self._cleanup is not None:
            cleanup, self._cleanup = self._cleanup, None
            cleanup()
        return code

    async def kill(self) -> None:
        if self._proc.returncode is None:
            await self._kill_inside()
            try:
                await asyncio.wait_for(self._proc.wait(), KILL_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
        else:
            # The client is gone but orphans of the command may still hold its pipes.
            await self._kill_inside()
        await self.wait()
