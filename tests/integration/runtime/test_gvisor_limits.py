"""The template's cpu/memory limits and the pids limit are enforced on the host."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from turbok.runtime.base import Phase, RuntimeState
from turbok.runtime.cgroups import Cgroup
from turbok.runtime.gvisor import RunscRuntime
from turbok.runtime.images import ImageStore

if TYPE_CHECKING:
    from .conftest import SpecFactory

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

BUSY = """
import time
t = time.time()
while time.time() - t < 2.0:
    pass
"""


def cpu_seconds(id: str) -> float:
    """CPU the host charged to the sandbox's cgroup (the authority that enforces the quota)."""
    v1 = Path("/sys/fs/cgroup/cpuacct/turbok") / id / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for line in (Path("/sys/fs/cgroup/turbok") / id / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec"):
            return int(line.split()[1]) / 1e6
    raise AssertionError("no cpu accounting for the sandbox")


async def busy_share(runtime: RunscRuntime, id: str) -> float:
    c, t = cpu_seconds(id), time.monotonic()
    r = await runtime.exec(id, ["python3", "-c", BUSY])
    assert r.exit_code == 0
    return (cpu_seconds(id) - c) / (time.monotonic() - t)


async def wait_stopped(runtime: RunscRuntime, id: str, seconds: float = 10) -> RuntimeState:
    for _ in range(int(seconds / 0.05)):
        state = await runtime.state(id)
        if state.phase is not Phase.RUNNING:
            return state
        await asyncio.sleep(0.05)
    return await runtime.state(id)


def throttled(id: str) -> int:
    """Periods in which the host held the sandbox back for exceeding its CPU quota."""
    for stat in (Path("/sys/fs/cgroup/cpu/turbok") / id / "cpu.stat", Path("/sys/fs/cgroup/turbok") / id / "cpu.stat"):
        if stat.exists():
            return int(stat.read_text().split("nr_throttled")[1].split()[0])
    raise AssertionError("no cpu.stat for the sandbox")


async def test_cpu_quota(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    # Other work may share this machine's cores, so the checks hold under contention: the quota
    # is an upper bound, and the host's own throttling counter shows who enforces it.
    limited = make_spec("cpu-half", cpu_millis=500)
    await runtime.start(limited)
    try:
        before = throttled(limited.id)
        share = await busy_share(runtime, limited.id)
        assert 0.1 < share < 0.6, share  # at most its quota of half a core
        assert throttled(limited.id) - before >= 5  # 2 s of busy loop at 100 ms periods
        cg = Path("/sys/fs/cgroup/cpu/turbok") / limited.id / "cpu.cfs_quota_us"
        if cg.exists():
            assert cg.read_text().strip() == "50000"
        # nproc follows the quota (at least 2, as runsc does)
        assert (await runtime.exec(limited.id, ["nproc"])).stdout.strip() == b"2"
    finally:
        await runtime.remove(limited.id)


async def test_no_cpu_limit_is_not_throttled(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    free = make_spec("cpu-free")
    await runtime.start(free)
    try:
        before = throttled(free.id)
        assert await busy_share(runtime, free.id) > 0.3
        assert throttled(free.id) == before
    finally:
        await runtime.remove(free.id)


async def test_memory_limit(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("memory", memory_bytes=256 * 2**20)
    await runtime.start(spec)
    try:
        meminfo = (await runtime.exec(spec.id, ["head", "-1", "/proc/meminfo"])).stdout.decode()
        assert meminfo.split()[1] == str(256 * 1024)  # the sandbox sees its limit as its RAM
        ok = await runtime.exec(spec.id, ["python3", "-c", "b = bytearray(64 * 2**20); print(len(b))"])
        assert ok.stdout.strip() == str(64 * 2**20).encode()
        # Past the limit the host kills the sandbox (gVisor's memory is the sandbox's, not a process's).
        r = await runtime.exec(spec.id, ["python3", "-c", "b = bytearray(400 * 2**20); print('survived')"],
                               timeout=30)
        assert r.exit_code != 0 and b"survived" not in r.stdout
        state = await wait_stopped(runtime, spec.id)
        assert (state.phase, state.reason, state.exit_code) == (Phase.STOPPED, "OOMKilled", 137), state
        assert "memory limit" in state.message
        # Disk survives; the sandbox starts again.
        assert (await runtime.start(spec)).phase is Phase.RUNNING
    finally:
        await runtime.remove(spec.id)


FORK_BOMB = """
import os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as e:
    print("fork refused after", children, e)
"""


async def test_fork_bomb_is_contained(root: Path, images: ImageStore, make_spec: SpecFactory) -> None:
    runtime = RunscRuntime(root, images, pids_limit=200)
    spec = make_spec("forkbomb")
    await runtime.start(spec)
    bystander = make_spec("bystander")
    await runtime.start(bystander)
    try:
        cg = Cgroup(f"/turbok/{spec.id}")
        pids_max = cg.root / "pids" / cg.name / "pids.max"
        if pids_max.exists():
            assert pids_max.read_text().strip() == "200"
        r = await runtime.exec(spec.id, ["python3", "-c", FORK_BOMB], timeout=60)
        assert not r.timed_out
        state = await wait_stopped(runtime, spec.id)
        if state.phase is Phase.STOPPED:
            # gVisor cannot fail one fork: the sandbox dies at its task limit, the host does not notice.
            assert state.reason == "PidsLimit", state
        else:
            assert b"fork refused" in r.stdout
        # Other sandboxes are untouched.
        assert (await runtime.exec(bystander.id, ["true"])).exit_code == 0
    finally:
        await asyncio.gather(runtime.remove(spec.id), runtime.remove(bystander.id))
