"""The kinds end to end on a real control plane: gVisor sandboxes, warm adoption, expiry, cleanup."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from turbok.runtime.ids import sandbox_id

from .conftest import Kube, claim, pool, sandbox, template


def _runtime_dir(kube: Kube, obj: dict) -> Path:
    return kube.cp.home / "sandboxes" / sandbox_id(obj["metadata"]["uid"])


def test_warm_pool_claim_exec_and_cleanup(kube: Kube) -> None:
    kube.create(template("py"))
    kube.create(pool("py-pool", "py", 2))
    kube.wait(lambda: (kube.get(kube.pool, "py-pool") or {}).get("status", {}).get("readyReplicas") == 2,
              what="two warm sandboxes")
    warm = {s["metadata"]["name"] for s in kube.api.list(kube.sandbox, kube.ns)["items"]}
    kube.create(claim("work", "py-pool"))
    bound = kube.wait_condition(kube.claim, "work", reason="DependenciesReady", timeout=30)
    name = bound["status"]["sandbox"]["name"]
    assert name in warm, "a warm sandbox was adopted, not a new one started"
    with kube.connect(name) as conn:
        result = conn.commands.run("python3 -c 'print(6*7)'; uname -r; hostname")
        assert result.exit_code == 0
        out = result.stdout.splitlines()
        assert out[0] == "42"
        assert out[1] != os.uname().release, "the sandbox sees gVisor's kernel, not the host's"
        assert out[2] == name
        conn.files.write("notes/a.txt", b"hello")
        assert conn.commands.run("cat /app/notes/a.txt").stdout == "hello"
    kube.wait(lambda: (kube.get(kube.pool, "py-pool") or {}).get("status", {}).get("readyReplicas") == 2,
              what="pool refilled")
    sb = kube.get(kube.sandbox, name)
    assert sb is not None
    kube.api.delete(kube.claim, "work", kube.ns)
    kube.wait(lambda: kube.get(kube.sandbox, name) is None, what="claimed sandbox collected")
    kube.wait(lambda: not _runtime_dir(kube, sb).exists(), timeout=30, what="runtime sandbox removed")


def test_claim_shutdown_time_deletes_claim_and_sandbox(kube: Kube) -> None:
    kube.create(template("py"))
    kube.create(pool("py-pool", "py", 0))
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.create(claim("short", "py-pool", lifecycle={"shutdownTime": soon, "shutdownPolicy": "Delete"}))
    bound = kube.wait_condition(kube.claim, "short", timeout=30)
    assert bound["status"]["sandbox"]["name"] == "short", "an empty pool means a cold start"
    sb = kube.get(kube.sandbox, "short")
    assert sb is not None
    kube.wait(lambda: kube.get(kube.claim, "short") is None, timeout=20, what="claim expired and deleted")
    kube.wait(lambda: kube.get(kube.sandbox, "short") is None, what="its sandbox collected")
    kube.wait(lambda: not _runtime_dir(kube, sb).exists(), timeout=30, what="runtime sandbox removed")


# State a sandbox holds in memory only (its tmpfs, a running process), and on its disk.
REMEMBER = ("echo in-memory > /dev/shm/note; echo layer > /root/in-layer.txt; "
            "(python3 -c 'import time; time.sleep(100000)' >/dev/null 2>&1 &); sleep 0.3")
RECALL = "cat /dev/shm/note /root/in-layer.txt 2>/dev/null; ps -eo args | grep -q '[t]ime.sleep(100000)' && echo alive"


def _suspend_and_resume(kube: Kube, name: str) -> tuple[str, str]:
    """Suspend and resume a sandbox; the Suspended condition's message and what it recalls after."""
    kube.wait_condition(kube.sandbox, name, timeout=30)
    with kube.connect(name) as conn:
        conn.files.write("state.txt", b"v1")
        assert conn.commands.run(REMEMBER).exit_code == 0
    kube.api.patch(kube.sandbox, name, {"spec": {"operatingMode": "Suspended"}}, kube.ns)
    suspended = kube.wait_condition(kube.sandbox, name, "Suspended", reason="PodTerminated", timeout=30)
    assert kube.condition(kube.sandbox, name)["reason"] == "SandboxSuspended"
    message = next(c for c in suspended["status"]["conditions"] if c["type"] == "Suspended")["message"]
    kube.api.patch(kube.sandbox, name, {"spec": {"operatingMode": "Running"}}, kube.ns)
    kube.wait_condition(kube.sandbox, name, reason="DependenciesReady", timeout=30)
    with kube.connect(name) as conn:
        assert conn.files.read("state.txt") == b"v1"
        return message, conn.commands.run(RECALL).stdout


def test_suspend_and_resume_keep_memory_processes_and_disk(kube: Kube) -> None:
    kube.create(sandbox("keeper"))
    message, recalled = _suspend_and_resume(kube, "keeper")
    assert message == "Pod has been terminated. Sandbox is suspended"  # upstream's words; what was kept shows below
    assert recalled.split() == ["in-memory", "layer", "alive"]


def test_suspend_to_disk_only_keeps_the_disk(kube: Kube) -> None:
    body = sandbox("disk-only")
    body["metadata"]["annotations"] = {"turbok.dev/suspend": "disk"}
    kube.create(body)
    message, recalled = _suspend_and_resume(kube, "disk-only")
    assert message == "Pod has been terminated. Sandbox is suspended"
    assert recalled.split() == ["layer"]


def test_unknown_image_is_reported_on_the_sandbox(kube: Kube) -> None:
    # A registry on loopback where nothing listens: the pull fails at once and nothing leaves the machine.
    body = sandbox("ghost")
    body["spec"]["podTemplate"]["spec"]["containers"][0]["image"] = "127.0.0.1:9/nothing:1"
    kube.create(body)
    obj = kube.wait(lambda: (s := kube.get(kube.sandbox, "ghost")) and any(
        c["type"] == "Ready" and c["status"] == "False" and "ImagePull" in c["message"]
        for c in (s.get("status") or {}).get("conditions") or []) and s, timeout=60,
        what="Sandbox ghost saying its image cannot be pulled")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "DependenciesNotReady" and "127.0.0.1:9/nothing:1" in ready["message"]
