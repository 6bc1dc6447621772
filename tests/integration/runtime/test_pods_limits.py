"""A pod's cpu limit and the pids limit are enforced on the host (real runsc): a busy loop gets its quota and the
host's throttling counter shows who enforces it; a fork bomb ends its own pod, never a neighbour."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from turbok.runtime.cgroups import Cgroup
from turbok.runtime.cri import ContainerConfig, ContainerState, PodSandboxState
from turbok.runtime.images import ImageStore
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import GvisorPodRuntime

from .podcheck import IMAGE, pod_config, settled_leftovers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

BUSY = """
import time
t = time.time()
while time.time() - t < 2.0:
    pass
"""

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


def cpu_seconds(id: str) -> float:
    """CPU the host charged to the pod's cgroup (the authority that enforces the quota)."""
    v1 = Path("/sys/fs/cgroup/cpuacct/turbok") / id / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for line in (Path("/sys/fs/cgroup/turbok") / id / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec"):
            return int(line.split()[1]) / 1e6
    raise AssertionError("no cpu accounting for the pod")


def throttled(id: str) -> int:
    """Periods in which the host held the pod back for exceeding its CPU quota."""
    for stat in (Path("/sys/fs/cgroup/cpu/turbok") / id / "cpu.stat", Path("/sys/fs/cgroup/turbok") / id / "cpu.stat"):
        if stat.exists():
            return int(stat.read_text().split("nr_throttled")[1].split()[0])
    raise AssertionError("no cpu.stat for the pod")


async def run(rt: GvisorPodRuntime, id: str, argv: list[str], timeout: float = 60) -> tuple[int, bytes]:
    s = await rt.exec(id, "main", argv)
    out, _ = await asyncio.wait_for(asyncio.gather(s.process.stdout.read(), s.process.stderr.read()), timeout)
    return await s.process.wait(), out


async def test_a_busy_loop_gets_its_cpu_quota(tmp_path: Path, images: ImageStore) -> None:
    # Other work may share this machine's cores, so the checks hold under contention: the quota is an
    # upper bound, and the host's own throttling counter shows who enforces it.
    rt = GvisorPodRuntime(tmp_path / "pods", images)
    cfg = pod_config("cpu-half", single_container=True, cpu_millis=500)
    try:
        await rt.run_pod_sandbox(cfg)
        await rt.start_container(cfg.id, ContainerConfig("main", IMAGE))
        before, c, t = throttled(cfg.id), cpu_seconds(cfg.id), time.monotonic()
        assert (await run(rt, cfg.id, ["python3", "-c", BUSY]))[0] == 0
        share = (cpu_seconds(cfg.id) - c) / (time.monotonic() - t)
        assert share < 0.6, share  # at most its quota of half a core, however idle the machine
        if share > 0.3:  # it got near its quota (a loaded machine may not give it that much)
            assert throttled(cfg.id) - before >= 5, share  # the host held it back: 2 s at 100 ms periods
        quota = Path("/sys/fs/cgroup/cpu/turbok") / cfg.id / "cpu.cfs_quota_us"
        if quota.exists():
            assert quota.read_text().strip() == "50000"
        assert await run(rt, cfg.id, ["nproc"]) == (0, b"2\n")  # nproc follows the quota (at least 2)
    finally:
        await rt.remove_pod_sandbox(cfg.id)
        found = await settled_leftovers(rt, [cfg.id])
        release_root(rt.root)
    assert found == {}


async def test_a_fork_bomb_ends_its_own_pod_and_no_other(tmp_path: Path, images: ImageStore) -> None:
    rt = GvisorPodRuntime(tmp_path / "pods", images, pids_limit=200)
    bomb, bystander = pod_config("forkbomb", single_container=True), pod_config("bystander", single_container=True)
    try:
        for cfg in (bomb, bystander):
            await rt.run_pod_sandbox(cfg)
            await rt.start_container(cfg.id, ContainerConfig("main", IMAGE))
        cg = Cgroup(f"/turbok/{bomb.id}")
        pids_max = cg.root / "pids" / cg.name / "pids.max"
        if pids_max.exists():
            assert pids_max.read_text().strip() == "200"
        _, out = await run(rt, bomb.id, ["python3", "-c", FORK_BOMB])

        async def ended() -> bool:
            return (await rt.container_status(bomb.id, "main")).state is ContainerState.EXITED

        try:
            await wait_for(ended, 10)
        except AssertionError:
            assert b"fork refused" in out  # the fork failed inside instead: contained either way
        else:
            # gVisor cannot fail one fork: the pod's sandbox dies at its task limit, the host does not notice.
            status = await rt.container_status(bomb.id, "main")
            assert status.exit_code == 137 and "pids limit" in status.message, status
        # Other pods are untouched.
        assert (await rt.pod_sandbox_status(bystander.id)).state is PodSandboxState.READY
        assert (await run(rt, bystander.id, ["true"]))[0] == 0
    finally:
        await asyncio.gather(rt.remove_pod_sandbox(bomb.id), rt.remove_pod_sandbox(bystander.id))
        found = await settled_leftovers(rt, [bomb.id, bystander.id])
        release_root(rt.root)
    assert found == {}


async def test_the_runtime_weighs_and_bounds_the_parent_cgroup_of_all_pods(
        tmp_path: Path, images: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """All pods together weigh less than the control plane and leave it memory (cgroup v1 on this machine)."""
    root = Path("/sys/fs/cgroup")
    if not (root / "cpu").is_dir() or not (root / "memory").is_dir():
        pytest.skip("needs cgroup v1 cpu and memory controllers on this machine")
    parent = f"turbok-test-{tmp_path.name[-12:]}"
    monkeypatch.setenv("TURBOK_SANDBOXES_MEMORY", "3Gi")
    try:
        GvisorPodRuntime(tmp_path / "pods", images, cgroup_parent=f"/{parent}")
        assert int((root / "memory" / parent / "memory.limit_in_bytes").read_text()) == 3 << 30
        idle = root / "cpu" / parent / "cpu.idle"
        if idle.exists():  # kernels from 5.15: sandboxes run only when the host does not want the CPU
            assert idle.read_text().strip() == "1"
            monkeypatch.setenv("TURBOK_SANDBOXES_CPU_IDLE", "0")  # a weight only
            GvisorPodRuntime(tmp_path / "pods", images, cgroup_parent=f"/{parent}")
            assert idle.read_text().strip() == "0"
        assert (root / "cpu" / parent / "cpu.shares").read_text().strip() == "256"
    finally:
        for controller in ("cpu", "memory"):
            if (root / controller / parent).is_dir():
                (root / controller / parent).rmdir()
