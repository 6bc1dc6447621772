"""Limits with real gVisor sandboxes: defaults, LimitRanges and the pids annotation reach the host's cgroups;
a sandbox killed by OOM, by its pids limit or by a crash says so in its Pod (the container's
``lastState.terminated``, ``restartCount``), is restarted by the node and comes back.

Every hostile program here is bounded: the memory hog asks for 600 MiB once, the fork bomb stops at
2000 children that exit within two minutes, and each runs only on its first boot (a marker in /app).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from turbok.api.limitrange import BUILTIN_DEFAULT_LIMITS
from turbok.api.quantity import cpu_millis, to_bytes
from turbok.runtime.ids import sandbox_id

from .conftest import Kube, sandbox

pytestmark = pytest.mark.integration

CGROUP = Path("/sys/fs/cgroup")
Obj = dict[str, Any]


def cgroup_limits(rid: str) -> dict[str, int | None]:
    """The host's limits on one sandbox (cgroup v1 or v2): cpu quota per 100 ms period, memory, pids."""
    def read(*paths: Path) -> str:
        for p in paths:
            if p.exists():
                return p.read_text().split()[0]
        raise AssertionError(f"no cgroup file among {paths}")

    def number(text: str) -> int | None:
        return None if text in ("max", "-1") or int(text) >= 2**62 else int(text)

    v2 = CGROUP / "turbok" / rid
    return {
        "cpu_quota_us": number(read(CGROUP / "cpu/turbok" / rid / "cpu.cfs_quota_us", v2 / "cpu.max")),
        "memory": number(read(CGROUP / "memory/turbok" / rid / "memory.limit_in_bytes", v2 / "memory.max")),
        "pids": number(read(CGROUP / "pids/turbok" / rid / "pids.max", v2 / "pids.max")),
    }


def create_ready(kube: Kube, obj: Obj) -> str:
    created = kube.create(obj)
    kube.wait_condition(kube.sandbox, obj["metadata"]["name"], "Ready", reason="DependenciesReady", timeout=120)
    return sandbox_id(created["metadata"]["uid"])


def test_defaults_a_limit_range_and_the_pids_annotation_reach_the_cgroup(kube: Kube) -> None:
    rid = create_ready(kube, sandbox("plain"))
    assert cgroup_limits(rid) == {"cpu_quota_us": cpu_millis(BUILTIN_DEFAULT_LIMITS["cpu"]) * 100,
                                  "memory": to_bytes(BUILTIN_DEFAULT_LIMITS["memory"]), "pids": 2048}
    limit_range = kube.api.resource("limitranges")
    kube.api.create(limit_range, {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "small"},
                                  "spec": {"limits": [{"type": "Container",
                                                       "default": {"cpu": "250m", "memory": "300Mi"}}]}}, kube.ns)
    tuned = sandbox("tuned")
    tuned["spec"]["podTemplate"]["metadata"] = {"annotations": {"turbok.dev/pids-limit": "300"}}
    rid = create_ready(kube, tuned)
    assert cgroup_limits(rid) == {"cpu_quota_us": 25_000, "memory": 300 * 2**20, "pids": 300}
    parent = CGROUP / "memory/turbok/memory.limit_in_bytes"
    if parent.exists():  # all sandboxes together leave the control plane its reserve
        total = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal")).split()[1]) * 1024
        assert int(parent.read_text()) < total


def _first_boot_only(program: str) -> list[str]:
    """A main process that runs ``program`` on its first boot and idles after a restart (same /app)."""
    return ["/bin/sh", "-c", "if [ -e /app/ran ]; then exec sleep 3600; fi; touch /app/ran; sync; "
            f"exec python3 -c '{program}'"]


MEMORY_HOG = "b = b\"x\" * (600 * 2**20); import time; time.sleep(60)"
FORK_BOMB = ("import os, time\n"
             "n = 0\n"
             "while n < 2000:\n"
             "    try:\n"
             "        pid = os.fork()\n"
             "    except OSError:\n"
             "        time.sleep(0.05); n += 1; continue\n"
             "    if pid == 0:\n"
             "        time.sleep(120); os._exit(0)\n"
             "    n += 1\n"
             "time.sleep(120)\n")
CRASH = "import sys; sys.exit(3)"


class ReadyLog:
    """Every Ready condition a watch sees on one sandbox, in order (a background thread)."""

    def __init__(self, kube: Kube, name: str) -> None:
        from turbok.client.kubeconfig import load_kubeconfig
        from turbok.client.rest import RestClient

        self.seen: list[tuple[str, str]] = []
        self._api = RestClient(load_kubeconfig(kube.cp.kubeconfig))
        res = self._api.resource("sandboxes.agents.x-k8s.io")

        def run() -> None:
            try:
                for event in self._api.watch(res, kube.ns, field_selector=f"metadata.name={name}", timeout=170):
                    for cond in event["object"].get("status", {}).get("conditions", []):
                        if cond["type"] == "Ready":
                            self.seen.append((cond["status"], cond["reason"]))
            except Exception:  # the watch ends with the test
                return

        threading.Thread(target=run, daemon=True).start()


@pytest.mark.parametrize(("program", "annotations", "limits", "reason", "exit_code"), [
    (MEMORY_HOG, {}, {"memory": "256Mi"}, "OOMKilled", 137),
    (FORK_BOMB, {"turbok.dev/pids-limit": "128"}, {}, "Error", 137),
    (CRASH, {}, {}, "Error", 3),
], ids=["oom", "fork-bomb", "crash"])
def test_a_sandbox_that_dies_shows_why_counts_the_restart_and_comes_back(
        kube: Kube, program: str, annotations: dict[str, str], limits: dict[str, str], reason: str,
        exit_code: int) -> None:
    obj = sandbox("dies")
    obj["spec"]["podTemplate"]["metadata"] = {"annotations": annotations}
    container = obj["spec"]["podTemplate"]["spec"]["containers"][0]
    container["command"] = _first_boot_only(program)
    if limits:
        container["resources"] = {"limits": limits}
    log = ReadyLog(kube, "dies")
    kube.create(obj)
    pods = kube.api.resource("pods")

    def back() -> Obj | None:
        # How it ended and the restart count are the Pod's, where the kubelet keeps them (the node writes them).
        pod = kube.get(pods, "dies") or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        ready = kube.condition(kube.sandbox, "dies") or {}
        return pod if statuses[0].get("restartCount") == 1 and ready.get("status") == "True" else None

    pod = kube.wait(back, timeout=150, what="the container restarted once and the sandbox Ready again")
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert (last["reason"], last["exitCode"]) == (reason, exit_code), last
    # Ready was False (the Pod not Ready) until it was back, then True again.
    kube.wait(lambda: ("True", "DependenciesReady") in log.seen[log.seen.index(("False", "DependenciesNotReady")) + 1:]
              if ("False", "DependenciesNotReady") in log.seen else None, timeout=10,
              what="Ready False, then True")
    with kube.connect("dies") as conn:
        assert conn.commands.run("echo back").stdout.strip() == "back"
