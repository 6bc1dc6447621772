"""The node running real Pods under gVisor: init order, shared volumes, back-off, grace, admission."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.unit.node.conftest import NodeHarness, condition, container_status, pod
from turbok.node.node import NodeSettings
from turbok.node.suspend import runtime_id

pytestmark = pytest.mark.integration

IMAGE = "python-runtime-sandbox"


def _c(name: str, script: str, **kw: object) -> dict[str, object]:
    return {"name": name, "image": IMAGE, "command": ["/bin/sh", "-c", script], **kw}


def _log(h: NodeHarness, pod_name: str, container: str, attempt: int = 0) -> str:
    got = h.pod(pod_name)
    assert got is not None
    path: Path = h.runtime.log_path(runtime_id(got), container, attempt)
    return path.read_text() if path.exists() else ""


async def test_a_pod_runs_under_gvisor_and_reports_running(real_node: NodeHarness) -> None:
    real_node.create(pod("hello", node=None, containers=[_c("main", "echo hello-from-gvisor; sleep 600")]))
    got = await real_node.wait_ready("hello", timeout=60)
    main = container_status(got, "main")
    assert main["containerID"].startswith("gvisor://") and main["started"]
    await real_node.wait(lambda: "hello-from-gvisor" in _log(real_node, "hello", "main"), timeout=10)


async def test_init_containers_run_in_order_on_a_shared_volume(real_node: NodeHarness) -> None:
    mount = [{"name": "work", "mountPath": "/work"}]
    real_node.create(pod("order", node=None, volumes=[{"name": "work", "emptyDir": {}}], initContainers=[
        _c("first", "echo first >> /work/order", volumeMounts=mount),
        _c("second", "echo second >> /work/order", volumeMounts=mount),
    ], containers=[_c("app", "echo app >> /work/order; cat /work/order; sleep 600", volumeMounts=mount)]))
    got = await real_node.wait_ready("order", timeout=60)
    for name in ("first", "second"):
        assert container_status(got, name, init=True)["state"]["terminated"]["reason"] == "Completed"
    await real_node.wait(lambda: "app" in _log(real_node, "order", "app"), timeout=10)
    lines = [line.split(" ", 3)[-1] for line in _log(real_node, "order", "app").splitlines()]
    assert lines == ["first", "second", "app"]


async def test_two_containers_share_a_volume(real_node: NodeHarness) -> None:
    mount = [{"name": "shared", "mountPath": "/shared"}]
    real_node.create(pod("pair", node=None, volumes=[{"name": "shared", "emptyDir": {}}], containers=[
        _c("writer", "echo written-by-writer > /shared/note; sleep 600", volumeMounts=mount),
        _c("reader", "while [ ! -s /shared/note ]; do sleep 0.1; done; cat /shared/note; sleep 600",
           volumeMounts=mount),
    ]))
    got = await real_node.wait_ready("pair", timeout=60)
    assert {c["name"] for c in got["status"]["containerStatuses"] if c["ready"]} == {"writer", "reader"}
    await real_node.wait(lambda: "written-by-writer" in _log(real_node, "pair", "reader"), timeout=20)


async def test_a_crash_loop_backs_off_ten_seconds_after_the_first_restart(real_node: NodeHarness) -> None:
    real_node.create(pod("crashy", node=None, containers=[_c("main", "sleep 0.5; exit 3")]))
    restarts: dict[int, float] = {}

    def seen() -> bool:
        p = real_node.pod("crashy") or {}
        for c in p.get("status", {}).get("containerStatuses") or []:
            if "running" in c["state"]:
                restarts.setdefault(c["restartCount"], time.monotonic())
        return 2 in restarts

    await real_node.wait(seen, timeout=60, what="two restarts")
    assert restarts[2] - restarts[1] >= 10.0, restarts  # the second restart waited out a 10 s back-off
    assert restarts[2] - restarts[1] < 16.0, restarts
    got = real_node.pod("crashy") or {}
    last = container_status(got, "main")["lastState"]["terminated"]
    assert last["exitCode"] == 3 and last["reason"] == "Error"


async def test_grace_periods_sigterm_then_sigkill(real_node: NodeHarness) -> None:
    # Ready once the shell has set its trap (a SIGTERM before that would end it at once, as on any kubelet).
    trapped = {"exec": {"command": ["cat", "/tmp/trapped"]}, "periodSeconds": 1}
    real_node.create(pod("polite", node=None, terminationGracePeriodSeconds=30, containers=[_c(
        "main", "trap 'exit 0' TERM; touch /tmp/trapped; while :; do sleep 0.1; done", readinessProbe=trapped)]))
    real_node.create(pod("stubborn", node=None, terminationGracePeriodSeconds=3, containers=[_c(
        "main", "trap '' TERM; touch /tmp/trapped; while :; do sleep 0.1; done", readinessProbe=trapped)]))
    await real_node.wait_ready("polite", timeout=60)
    await real_node.wait_ready("stubborn", timeout=60)
    start = time.monotonic()
    real_node.delete("polite")
    real_node.delete("stubborn")
    await real_node.wait_gone("polite", timeout=30)
    polite = time.monotonic() - start
    await real_node.wait_gone("stubborn", timeout=30)
    stubborn = time.monotonic() - start
    assert polite < 3.0, polite  # it left on SIGTERM, long before its 30 s
    assert 3.0 <= stubborn < 10.0, stubborn  # SIGKILL after its 3 s
    await real_node.reaped()
    assert await real_node.runtime.list_pod_sandboxes() == []


async def test_a_pod_that_does_not_fit_stays_pending(real_node: NodeHarness) -> None:
    real_node.create(pod("toobig", node=None, containers=[
        {"name": "main", "image": IMAGE, "resources": {"requests": {"cpu": "1000", "memory": "1Gi"}}}]))
    got = await real_node.wait_pod("toobig", lambda p: condition(p, "PodScheduled") == "False", timeout=10)
    cond = [c for c in got["status"]["conditions"] if c["type"] == "PodScheduled"][0]
    assert cond["reason"] == "Unschedulable" and cond["message"] == "0/1 nodes are available: 1 Insufficient cpu."
    await asyncio.sleep(0.5)
    assert (real_node.pod("toobig") or {})["status"]["phase"] == "Pending"
    assert await real_node.runtime.list_pod_sandboxes() == []


async def test_a_pod_deleted_while_it_boots_leaves_nothing_running(real_node: NodeHarness) -> None:
    in_flight = 0
    for attempt in range(3):  # the boot is ~0.2 s: catch it under way (almost always the first time)
        name = f"brief-{attempt}"
        real_node.create(pod(name, node=None))
        while not await real_node.runtime.list_pod_sandboxes():
            await asyncio.sleep(0.002)
        ready = condition(real_node.pod(name) or {}, "Ready") == "True"
        real_node.delete(name)
        await real_node.wait_gone(name, timeout=60)
        in_flight += not ready
        await real_node.reaped()
        assert await real_node.runtime.list_pod_sandboxes() == []
        proc = await asyncio.create_subprocess_exec("pgrep", "-f", "runsc.*" + str(real_node.tmp / "pods"),
                                                    stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert out == b"", f"runsc processes left: {out!r}"
        if in_flight:
            break
    assert in_flight, "never caught a boot in flight"


async def test_sandboxes_that_end_are_noticed_as_they_end_not_by_polling(real_node: NodeHarness) -> None:
    # The evented relist: with every look at all Pods an hour apart, only the end of a sandbox's processes
    # (watched with pidfds) can tell the node, for a Pod it started and for one it adopted from before a restart.
    real_node.create(pod("adopted", node=None, containers=[_c("main", "sleep 600")]))
    await real_node.wait_ready("adopted", timeout=60)
    await real_node.stop()
    await real_node.start(settings=NodeSettings(relist_seconds=3600, sweep_seconds=3600))
    real_node.create(pod("brief", node=None, restartPolicy="Never", containers=[_c("main", "sleep 1; exit 3")]))
    done = await real_node.wait_pod("brief", lambda p: p["status"].get("phase") == "Failed", timeout=30)
    assert container_status(done, "main")["state"]["terminated"]["exitCode"] == 3
    await asyncio.sleep(1.0)  # the adopted sandbox is watched from its worker's first look
    adopted = real_node.pod("adopted")
    assert adopted is not None
    started = time.monotonic()
    sandbox = await real_node.runtime.pod_sandbox_status(runtime_id(adopted))
    proc = await asyncio.create_subprocess_exec("pkill", "-KILL", "-f", f"runsc-sandbox.*{sandbox.id}")
    assert await proc.wait() == 0
    await real_node.wait_pod("adopted", lambda p: container_status(p, "main")["restartCount"] == 1, timeout=20)
    assert time.monotonic() - started < 10  # restarted: its end was seen
