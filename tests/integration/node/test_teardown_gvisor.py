"""Teardown under real runsc and a real pod network: deletions return at once and never hold up boots, the
node's reaper finishes every removal (also one a stopped control plane cut short), and after create/delete
cycles nothing of the deleted Pods is left: runsc sandboxes, network namespaces, cgroups, mounts, pod
directories, processes, store rows."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runtime.podcheck import leftovers as pod_leftovers
from tests.integration.runtime.podnet import leftovers as net_leftovers
from tests.unit.node.conftest import NodeHarness, pod
from turbok.node.node import NodeSettings
from turbok.node.suspend import runtime_id
from turbok.runtime import orphans

pytestmark = pytest.mark.integration

IMAGE = "python-runtime-sandbox"
#: A container that leaves on SIGTERM, as the agent does: its teardown is the runtime's, not a grace period.
POLITE = {"name": "main", "image": IMAGE, "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]}


def _pod(name: str) -> dict[str, Any]:
    return pod(name, node=None, containers=[POLITE])


def _runsc_sandboxes(h: NodeHarness) -> list[str]:
    rt: Any = h.runtime
    out = subprocess.run([rt.runsc, f"--root={rt.state_dir}", "list", "--quiet"], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def _everything_left(h: NodeHarness, rids: list[str]) -> dict[str, list[str]]:
    """Each kind of leftover of the Pods ``rids``, counted on the host (empty lists dropped)."""
    rt: Any = h.runtime
    found = pod_leftovers(rt, rids)  # registrations, mounts, loop devices, cgroups, processes, directories
    found.update({k: v for k, v in net_leftovers(rt.network).items() if v})
    found["runsc list"] = _runsc_sandboxes(h)
    found["pod directories"] = [p.name for p in rt.root.iterdir() if not p.name.startswith(".")] + \
        [p.name for p in (rt.root / ".removing").glob("*")]
    found["store rows"] = [p["metadata"]["name"] for p in h.registry.list(h.pod_kind, "default").items]
    found["kept state"] = [p.name for p in (h.tmp / "node" / "kept").glob("*")]
    found["sandbox zombies"] = [str(p) for p in orphans.children()  # runsc's, named exe (orphans.py)
                                if Path(f"/proc/{p}/stat").read_text().startswith(f"{p} (exe) Z")]
    return {k: v for k, v in found.items() if v}


async def _settled(h: NodeHarness, rids: list[str], timeout: float = 30.0) -> dict[str, list[str]]:
    assert h.node is not None
    await h.node.ctx.reaper.drain()
    deadline = time.monotonic() + timeout  # a loop device or a veth goes a moment after its unmount
    while (left := _everything_left(h, rids)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return left


async def test_deletions_return_at_once_and_boots_go_on(networked: NodeHarness) -> None:
    h = networked
    names = [f"old-{i}" for i in range(6)]
    for name in names:
        h.create(_pod(name))
    for name in names:
        await h.wait_ready(name, timeout=120)
    rids = [runtime_id(h.pod(n) or {}) for n in names]
    start = time.monotonic()
    for name in names:
        h.delete(name)
    deleting = time.monotonic() - start
    assert deleting < 0.5, deleting  # the API's part: marked for deletion, nothing waited for
    h.create(_pod("new-0"))  # boots while six teardowns run
    h.create(_pod("new-1"))
    for name in names:
        await h.wait_gone(name, timeout=30)
    gone = time.monotonic() - start
    await h.wait_ready("new-0", timeout=60)
    await h.wait_ready("new-1", timeout=60)
    booted = time.monotonic() - start
    # A stop is about 0.2 s with this process as the sandboxes' reaper (raw runsc: 1.5-2 s each).
    assert gone < 10.0, gone
    assert booted < 60.0, booted
    for name in ("new-0", "new-1"):
        rids.append(runtime_id(h.pod(name) or {}))
        h.delete(name)
        await h.wait_gone(name, timeout=30)
    assert await _settled(h, rids) == {}


async def test_thirty_create_delete_cycles_leave_nothing(networked: NodeHarness) -> None:
    h = networked
    rids: list[str] = []
    for batch in range(6):
        names = [f"cycle-{batch}-{i}" for i in range(5)]
        for name in names:
            h.create(_pod(name))
        for name in names:
            got = await h.wait_ready(name, timeout=120)
            rids.append(runtime_id(got))
        for name in names:
            h.delete(name)
        for name in names:
            await h.wait_gone(name, timeout=60)
    assert len(set(rids)) == 30
    assert await _settled(h, rids) == {}
    assert h.node is not None and h.node.ctx.reaper.failed == {}


async def test_a_removal_cut_short_by_a_stop_is_finished_at_the_next_start(networked: NodeHarness) -> None:
    h = networked
    rt: Any = h.runtime
    h.create(_pod("cut"))
    rid = runtime_id(await h.wait_ready("cut", timeout=120))
    held = asyncio.Event()

    async def hanging(id: str) -> None:
        held.set()
        await asyncio.Event().wait()  # the control plane stops here

    rt.remove_pod_sandbox = hanging
    h.delete("cut")
    await h.wait_gone("cut", timeout=30)  # stopped, so the Pod went; its removal is under way
    await asyncio.wait_for(held.wait(), 10)
    assert rid in await rt.list_pod_sandboxes()
    assert _runsc_sandboxes(h) == []  # nothing of it runs
    await h.stop()
    del rt.remove_pod_sandbox  # the next control plane's runtime
    # A directory half deleted when the process died: moved out of the listing first, cleared at the next list.
    half = rt.root / ".removing" / f"{rid}.1"
    (half / "containers").mkdir(parents=True)
    await h.start(settings=NodeSettings(relist_seconds=0.2))
    assert h.node is not None
    deadline = time.monotonic() + 30
    while rid in await rt.list_pod_sandboxes() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await _settled(h, [rid]) == {}
