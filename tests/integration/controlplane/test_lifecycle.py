"""The kinds end to end on a real control plane: gVisor sandboxes, warm adoption, expiry, cleanup."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from turbok.runtime.base import sandbox_id

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


def test_suspend_and_resume_keep_the_disk(kube: Kube) -> None:
    kube.create(sandbox("keeper"))
    kube.wait_condition(kube.sandbox, "keeper", timeout=30)
    with kube.connect("keeper") as conn:
        conn.files.write("state.txt", b"v1")
        assert conn.commands.run("echo layer > /root/in-layer.txt").exit_code == 0
    kube.api.patch(kube.sandbox, "keeper", {"spec": {"operatingMode": "Suspended"}}, kube.ns)
    kube.wait_condition(kube.sandbox, "keeper", "Suspended", reason="PodTerminated", timeout=30)
    assert kube.condition(kube.sandbox, "keeper")["reason"] == "SandboxSuspended"
    kube.api.patch(kube.sandbox, "keeper", {"spec": {"operatingMode": "Running"}}, kube.ns)
    kube.wait_condition(kube.sandbox, "keeper", reason="DependenciesReady", timeout=30)
    with kube.connect("keeper") as conn:
        assert conn.files.read("state.txt") == b"v1"
        assert conn.commands.run("cat /root/in-layer.txt").stdout.strip() == "layer"


def test_unknown_image_is_reported_on_the_sandbox(kube: Kube) -> None:
    body = sandbox("ghost")
    body["spec"]["podTemplate"]["spec"]["containers"][0]["image"] = "registry.example/nothing:1"
    kube.create(body)
    obj = kube.wait_condition(kube.sandbox, "ghost", status="False", reason="InvalidConfiguration", timeout=30)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert "registry.example/nothing:1" in ready["message"]
