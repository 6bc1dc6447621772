"""Commands that flood output, outlive their timeout, or leave children behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from turbok.runtime.errors import InvalidSandboxSpec, SandboxNotRunning
from turbok.runtime.gvisor import RunscRuntime

if TYPE_CHECKING:
    from .conftest import SpecFactory

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(runtime: RunscRuntime, make_spec: SpecFactory) -> AsyncIterator[str]:
    spec = make_spec("bad-input")
    await runtime.start(spec)
    yield spec.id
    await runtime.remove(spec.id)


async def processes(runtime: RunscRuntime, id: str) -> list[str]:
    r = await runtime.exec(id, ["ps", "-eo", "args="])
    return [line.strip() for line in r.stdout.decode().splitlines()]


async def test_flood_is_capped_and_drained(runtime: RunscRuntime, box: str) -> None:
    t = time.monotonic()
    r = await runtime.exec(box, ["sh", "-c", "head -c 50000000 /dev/zero; echo done >&2"], output_limit=1_000_000)
    assert r.exit_code == 0 and r.truncated
    assert len(r.stdout) == 1_000_000 and r.stderr == b"done\n"
    assert time.monotonic() - t < 30


async def test_endless_flood_ends_at_timeout(runtime: RunscRuntime, box: str) -> None:
    r = await runtime.exec(box, ["yes"], timeout=1, output_limit=10_000)
    assert (r.exit_code, r.timed_out, r.truncated) == (124, True, True)
    assert r.stdout.startswith(b"y\ny\n") and len(r.stdout) == 10_000
    assert not any(p.startswith("yes") for p in await processes(runtime, box))


async def test_timeout_kills_the_command_inside(runtime: RunscRuntime, box: str) -> None:
    t = time.monotonic()
    r = await runtime.exec(box, ["sleep", "30"], timeout=1)
    assert time.monotonic() - t < 2.5
    assert (r.exit_code, r.timed_out) == (124, True)
    assert "sleep 30" not in await processes(runtime, box)


async def test_timeout_kills_the_whole_tree_and_orphans(runtime: RunscRuntime, box: str) -> None:
    script = "sleep 31 & (sleep 32 &) ; setsid sleep 33 & python3 -c 'import time; time.sleep(34)' & echo up; wait"
    t = time.monotonic()
    r = await runtime.exec(box, ["sh", "-c", script], timeout=1.5)
    assert time.monotonic() - t < 4
    assert r.timed_out and r.stdout == b"up\n"
    left = [p for p in await processes(runtime, box) if "sleep 3" in p or "time.sleep" in p]
    assert left == []


async def test_background_child_holding_output_is_killed_at_timeout(runtime: RunscRuntime, box: str) -> None:
    # The shell exits at once; its orphan keeps stdout open.
    t = time.monotonic()
    r = await runtime.exec(box, ["sh", "-c", "sleep 40 & echo started"], timeout=1)
    assert time.monotonic() - t < 4
    assert r.timed_out and r.stdout == b"started\n"
    assert "sleep 40" not in await processes(runtime, box)


async def test_spawn_streams_and_kill(runtime: RunscRuntime, box: str) -> None:
    proc = await runtime.spawn(box, ["sh", "-c", "echo first; sleep 60"])
    assert await asyncio.wait_for(proc.stdout.readline(), 5) == b"first\n"
    await proc.kill()
    assert await asyncio.wait_for(proc.wait(), 5) != 0
    assert "sleep 60" not in await processes(runtime, box)


async def test_kill_right_after_spawn(runtime: RunscRuntime, box: str) -> None:
    proc = await runtime.spawn(box, ["sleep", "50"])
    await proc.kill()
    await asyncio.wait_for(proc.wait(), 5)
    await asyncio.sleep(0.2)
    assert "sleep 50" not in await processes(runtime, box)


async def test_bad_calls(runtime: RunscRuntime, box: str) -> None:
    with pytest.raises(InvalidSandboxSpec):
        await runtime.exec(box, [])
    with pytest.raises(InvalidSandboxSpec):
        await runtime.exec(box, ["true"], env={"A=B": "c"})
    with pytest.raises(SandboxNotRunning):
        await runtime.exec("tk" + "0" * 22, ["true"])
    with pytest.raises(InvalidSandboxSpec):
        await runtime.exec("../../etc", ["true"])


async def test_no_descriptor_leak_across_execs(runtime: RunscRuntime, box: str) -> None:
    import os

    await runtime.exec(box, ["true"])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        await runtime.exec(box, ["true"])
    await runtime.exec(box, ["sleep", "5"], timeout=0.2)
    assert len(os.listdir("/proc/self/fd")) <= before
