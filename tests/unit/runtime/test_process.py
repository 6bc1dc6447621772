"""collect: capped output, timeouts, kills, exit codes (no sandbox)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest

from turbok.runtime.process import TIMEOUT_EXIT_CODE, Process, collect, read_capped


class ScriptedProcess(Process):
    """Writes ``chunks`` then exits ``code``; ``hang`` keeps it (and its pipes) alive until killed."""

    def __init__(self, chunks: list[bytes], code: int = 0, hang: bool = False, pipes_survive_kill: bool = False) -> None:
        self._out = asyncio.StreamReader()
        self._err = asyncio.StreamReader()
        self._done = asyncio.Event()
        self.code = code
        self.kills = 0
        self.pipes_survive_kill = pipes_survive_kill
        for c in chunks:
            self._out.feed_data(c)
        self._err.feed_data(b"err")
        if not hang:
            self._finish()

    def _finish(self) -> None:
        self._out.feed_eof()
        self._err.feed_eof()
        self._done.set()

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._out

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._err

    async def wait(self) -> int:
        await self._done.wait()
        return self.code

    async def kill(self) -> None:
        self.kills += 1
        self.code = 137
        if self.pipes_survive_kill:
            self._done.set()  # the process died, an escaped child keeps the pipes
        elif not self._done.is_set():
            self._finish()


async def test_output_capped_and_flagged() -> None:
    p = ScriptedProcess([b"a" * 70_000, b"b" * 70_000], code=3)
    r = await collect(p, timeout=None, output_limit=100_000)
    assert r.exit_code == 3 and not r.timed_out
    assert r.stdout == b"a" * 70_000 + b"b" * 30_000
    assert r.truncated and r.stderr == b"err"


async def test_output_under_limit_is_not_truncated() -> None:
    r = await collect(ScriptedProcess([b"x" * 10]), timeout=5, output_limit=10)
    assert r.stdout == b"x" * 10 and not r.truncated


async def test_timeout_kills_and_reports_124_with_partial_output() -> None:
    p = ScriptedProcess([b"started\n"], hang=True)
    t = time.monotonic()
    r = await collect(p, timeout=0.2, output_limit=1000)
    assert time.monotonic() - t < 1.5
    assert (r.exit_code, r.timed_out, r.stdout, p.kills) == (TIMEOUT_EXIT_CODE, True, b"started\n", 1)


async def test_pipes_held_after_kill_do_not_hang_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("turbok.runtime.process.KILL_GRACE", 0.2)
    p = ScriptedProcess([b"partial"], hang=True, pipes_survive_kill=True)
    t = time.monotonic()
    r = await collect(p, timeout=0.1, output_limit=1000)
    assert time.monotonic() - t < 1.0
    assert r.timed_out and r.stdout == b"partial"


async def test_cancelled_collect_kills_its_process() -> None:
    p = ScriptedProcess([], hang=True)
    task = asyncio.ensure_future(collect(p, timeout=None, output_limit=10))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert p.kills == 1


async def test_read_capped_drains_everything() -> None:
    s = asyncio.StreamReader()
    s.feed_data(b"z" * 200_000)
    s.feed_eof()
    assert await read_capped(s, 5) == (b"zzzzz", True)


class HostSubprocess(Process):
    """A host subprocess as a ``Process``: ``kill`` ends its whole session, as a runtime's kill ends
    the command's tree inside the sandbox."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self._proc, self._stdout, self._stderr = proc, proc.stdout, proc.stderr

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
        code = await self._proc.wait()
        return 128 - code if code < 0 else code

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        await self.wait()


async def host(argv: list[str]) -> HostSubprocess:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    return HostSubprocess(proc)


async def test_a_kill_ends_orphans_holding_pipes() -> None:
    p = await host(["sh", "-c", "sleep 30 & echo started"])
    t = time.monotonic()
    r = await collect(p, timeout=0.5, output_limit=100)
    assert r.timed_out and r.stdout == b"started\n"
    assert time.monotonic() - t < 2.5


async def test_flood_grace_stops_reading_then_stops_the_flood() -> None:
    p = await host(["yes"])
    t = time.monotonic()
    r = await collect(p, timeout=30, output_limit=100_000, flood_grace=0.2)
    wall = time.monotonic() - t
    assert (r.exit_code, r.stopped, r.truncated, r.timed_out) == (137, True, True, False)
    assert len(r.stdout) == 100_000 and r.stdout.startswith(b"y\ny\n")
    assert wall < 2.5, wall  # stopped after its grace, not at its 30 s timeout
    assert p.returncode is not None and p.stdout.at_eof()  # the pipes were read to their end


async def test_flood_grace_lets_a_command_a_little_past_the_cap_end() -> None:
    p = await host(["sh", "-c", "head -c 100010 /dev/zero; echo bye >&2; exit 3"])
    r = await collect(p, timeout=30, output_limit=100_000, flood_grace=1.0)
    assert (r.exit_code, r.stopped, r.truncated, r.stderr) == (3, False, True, b"bye\n")


async def test_pace_is_charged_every_chunk_read() -> None:
    charged: list[int] = []

    async def pace(n: int) -> None:
        charged.append(n)

    r = await collect(ScriptedProcess([b"a" * 70_000, b"b" * 10]), timeout=5, output_limit=1_000_000, pace=pace)
    assert sum(charged) == 70_010 + len(r.stderr) and r.stdout == b"a" * 70_000 + b"b" * 10
