"""Execs into a pod (``PodRuntime.exec`` read with ``process.collect``, as the router reads them) that flood
output, outlive their timeout, or leave children behind; bad calls. Real runsc; one pod for the module."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from turbok.runtime.cri import ContainerConfig
from turbok.runtime.errors import InvalidSandboxSpec, RuntimeError_
from turbok.runtime.images import ImageStore
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.runtime.process import DEFAULT_OUTPUT_LIMIT, ExecResult, collect

from .podcheck import IMAGE, pod_config, settled_leftovers

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

Box = tuple[GvisorPodRuntime, str]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory, images: ImageStore) -> AsyncIterator[Box]:
    root = tmp_path_factory.mktemp("pods")
    rt = GvisorPodRuntime(root, images)
    cfg = pod_config("bad-input", single_container=True)
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig("main", IMAGE))
    try:
        yield rt, cfg.id
    finally:
        await rt.remove_pod_sandbox(cfg.id)
        found = await settled_leftovers(rt, [cfg.id])
        release_root(root)
    assert found == {}


async def ex(box: Box, argv: list[str], **kw: Any) -> ExecResult:
    rt, id = box
    s = await rt.exec(id, "main", argv)
    return await collect(s.process, **{"timeout": 30.0, "output_limit": DEFAULT_OUTPUT_LIMIT, **kw})


async def processes(box: Box) -> list[str]:
    r = await ex(box, ["ps", "-eo", "args="], timeout=30)
    return [line.strip() for line in r.stdout.decode().splitlines()]


async def test_flood_is_capped_and_drained(box: Box) -> None:
    t = time.monotonic()
    r = await ex(box, ["sh", "-c", "head -c 50000000 /dev/zero; echo done >&2"], output_limit=1_000_000)
    assert r.exit_code == 0 and r.truncated
    assert len(r.stdout) == 1_000_000 and r.stderr == b"done\n"
    assert time.monotonic() - t < 30


async def test_endless_flood_ends_at_timeout(box: Box) -> None:
    r = await ex(box, ["yes"], timeout=1, output_limit=10_000)
    assert (r.exit_code, r.timed_out, r.truncated) == (124, True, True)
    assert r.stdout.startswith(b"y\ny\n") and len(r.stdout) == 10_000
    assert not any(p.startswith("yes") for p in await processes(box))


async def test_timeout_kills_the_command_inside(box: Box) -> None:
    t = time.monotonic()
    r = await ex(box, ["sleep", "30"], timeout=1)
    assert time.monotonic() - t < 2.5
    assert (r.exit_code, r.timed_out) == (124, True)
    assert "sleep 30" not in await processes(box)


async def test_timeout_kills_the_whole_tree_and_orphans(box: Box) -> None:
    script = "sleep 31 & (sleep 32 &) ; setsid sleep 33 & python3 -c 'import time; time.sleep(34)' & echo up; wait"
    t = time.monotonic()
    r = await ex(box, ["sh", "-c", script], timeout=1.5)
    assert time.monotonic() - t < 4
    assert r.timed_out and r.stdout == b"up\n"
    assert [p for p in await processes(box) if "sleep 3" in p or "time.sleep" in p] == []


async def test_background_child_holding_output_is_killed_at_timeout(box: Box) -> None:
    # The shell exits at once; its orphan keeps stdout open.
    t = time.monotonic()
    r = await ex(box, ["sh", "-c", "sleep 40 & echo started"], timeout=1)
    assert time.monotonic() - t < 4
    assert r.timed_out and r.stdout == b"started\n"
    assert "sleep 40" not in await processes(box)


async def test_a_stream_is_killed_with_what_it_started(box: Box) -> None:
    rt, id = box
    s = await rt.exec(id, "main", ["sh", "-c", "echo first; sleep 60"])
    assert await asyncio.wait_for(s.process.stdout.readline(), 5) == b"first\n"
    await s.process.kill()
    assert await asyncio.wait_for(s.process.wait(), 5) != 0
    assert "sleep 60" not in await processes(box)
    s = await rt.exec(id, "main", ["sleep", "50"])  # killed right after it started
    await s.process.kill()
    await asyncio.wait_for(s.process.wait(), 5)
    await asyncio.sleep(0.2)
    assert "sleep 50" not in await processes(box)


async def test_bad_calls(box: Box) -> None:
    rt, id = box
    with pytest.raises(InvalidSandboxSpec):
        await rt.exec(id, "main", [])
    with pytest.raises(InvalidSandboxSpec):
        await rt.exec(id, "main", ["true"], env={"A=B": "c"})
    with pytest.raises(RuntimeError_):
        await rt.exec("tk" + "0" * 22, "main", ["true"])
    with pytest.raises(InvalidSandboxSpec):
        await rt.exec("../../etc", "main", ["true"])


async def test_no_descriptor_leak_across_execs(box: Box) -> None:
    await ex(box, ["true"])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        await ex(box, ["true"])
    await ex(box, ["sleep", "5"], timeout=0.2)
    await asyncio.sleep(0.5)  # the exec clients are reaped in the background
    assert len(os.listdir("/proc/self/fd")) <= before
