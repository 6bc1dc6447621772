"""A sandbox that dies (OOM, pids limit, crash, exit) says so: Ready reason, an Event, a restart count.

The fake runtime stands in for runsc here; tests/integration/controlplane/test_limits.py
does the same with real gVisor sandboxes.
"""

from __future__ import annotations

import json

import pytest

from turbok.api import meta as m
from turbok.controllers import restarts as rs
from turbok.runtime.base import Phase, RuntimeState, sandbox_id

from .conftest import Cluster, Obj, sandbox


def _rid(obj: Obj) -> str:
    return sandbox_id(obj["metadata"]["uid"])


def _events(cluster: Cluster, name: str) -> list[Obj]:
    kind = cluster.kinds.by_kind("v1", "Event")
    return [e for e in cluster.registry.list(kind, "default").items if e["involvedObject"]["name"] == name]


def _kill(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, rid: str, reason: str, code: int | None,
          message: str = "") -> None:
    """The sandbox ``rid`` dies as runsc reports it (until it is started again)."""
    rt = cluster.runtime
    plain = type(rt).state
    dead = {rid}

    async def start(spec):  # type: ignore[no-untyped-def]
        dead.discard(spec.id)
        return await type(rt).start(rt, spec)

    async def state(id: str) -> RuntimeState:
        if id in dead:
            return RuntimeState(id, Phase.STOPPED, rt.isolation, exit_code=code, reason=reason, message=message)
        return await plain(rt, id)

    rt._running.discard(rid)
    monkeypatch.setattr(rt, "state", state)
    monkeypatch.setattr(rt, "start", start)


@pytest.mark.parametrize(("runtime_reason", "code", "reason", "words"), [
    ("OOMKilled", 137, "OOMKilled", "memory limit (256Mi)"),
    ("PidsLimit", 137, "Error", "pids limit (100 host tasks)"),
    ("Crashed", None, "Error", "left no exit status"),
    ("Exited", 3, "Error", "exited with code 3"),
])
async def test_a_sandbox_that_dies_says_how_counts_the_restart_and_is_ready_again(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, runtime_reason: str, code: int | None, reason: str,
        words: str) -> None:
    spec = sandbox("dies")
    spec["spec"]["podTemplate"]["metadata"] = {"annotations": {"turbok.dev/pids-limit": "100"}}
    spec["spec"]["podTemplate"]["spec"]["containers"][0]["resources"] = {"limits": {"memory": "256Mi"}}
    rid = _rid(cluster.create(spec))
    await cluster.wait_condition(cluster.sandbox, "dies", "Ready", reason="DependenciesReady")
    seen: list[tuple[str, str]] = []  # every Ready written, in order
    original = cluster.registry._commit

    def commit(kind, obj, prev):  # type: ignore[no-untyped-def]
        if kind is cluster.sandbox:
            ready = m.condition(obj, "Ready") or {}
            seen.append((ready.get("status", ""), ready.get("reason", "")))
        return original(kind, obj, prev)

    monkeypatch.setattr(cluster.registry, "_commit", commit)
    message = "the sandbox ended and left no exit status" if runtime_reason == "Crashed" else ""
    _kill(cluster, monkeypatch, rid, runtime_reason, code, message)
    cluster.suite.sandboxes.enqueue(("default", "dies"), 0.0)

    def restarted() -> Obj | None:
        obj = cluster.get(cluster.sandbox, "dies")
        ready = m.condition(obj, "Ready") or {}
        annotations = obj["metadata"].get("annotations") or {} if obj else {}
        return obj if ready.get("status") == "True" and annotations.get(rs.RESTART_COUNT) == "1" else None

    obj = await cluster.wait(restarted, what="the sandbox back, restart counted")
    # Ready went False with the reason before it came back.
    assert ("False", reason) in seen, seen
    assert seen.index(("False", reason)) < len(seen) - 1 and seen[-1] == ("True", "DependenciesReady")
    last = json.loads(obj["metadata"]["annotations"][rs.LAST_TERMINATION])
    assert last["reason"] == reason and words in last["message"] and last.get("exitCode") == code
    events = [e for e in _events(cluster, "dies") if e["reason"] == reason]
    assert len(events) == 1 and events[0]["type"] == "Warning" and words in events[0]["message"]
    assert rid in cluster.runtime.running()


async def test_a_crash_loop_backs_off_and_ready_stays_false(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    rid = _rid(cluster.create(sandbox("loop")))
    await cluster.wait_condition(cluster.sandbox, "loop", "Ready")
    _kill(cluster, monkeypatch, rid, "Exited", 1)  # the first end restarts at once
    cluster.suite.sandboxes.enqueue(("default", "loop"), 0.0)
    await cluster.wait(lambda: rid in cluster.runtime.running(), what="an immediate restart")
    await cluster.wait_condition(cluster.sandbox, "loop", "Ready")
    attempts = cluster.runtime.attempts[rid]
    _kill(cluster, monkeypatch, rid, "Exited", 1)  # the second end in a row waits 10 s
    cluster.suite.sandboxes.enqueue(("default", "loop"), 0.0)
    obj = await cluster.wait_condition(cluster.sandbox, "loop", "Ready", "False", reason="Error")
    assert "back-off 10s" in m.condition(obj, "Ready")["message"]
    await cluster.wait(lambda: (cluster.get(cluster.sandbox, "loop")["metadata"].get("annotations") or {}).get(
        rs.RESTART_COUNT) == "2", what="the second restart counted")
    assert cluster.runtime.attempts[rid] == attempts, "restarted during its back-off"
    assert rid not in cluster.runtime.running()


async def test_restart_policy_never_reports_the_end_without_restarting(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = sandbox("once")
    spec["spec"]["podTemplate"]["spec"]["restartPolicy"] = "Never"
    rid = _rid(cluster.create(spec))
    await cluster.wait_condition(cluster.sandbox, "once", "Ready")
    _kill(cluster, monkeypatch, rid, "OOMKilled", 137)
    cluster.suite.sandboxes.enqueue(("default", "once"), 0.0)
    obj = await cluster.wait_condition(cluster.sandbox, "once", "Finished", reason="PodFailed")
    assert "OOMKilled" in m.condition(obj, "Finished")["message"]
    assert m.condition(obj, "Ready")["status"] == "False"
    await cluster.wait(lambda: [e for e in _events(cluster, "once") if e["reason"] == "OOMKilled"], what="event")
    annotations = cluster.get(cluster.sandbox, "once")["metadata"].get("annotations") or {}
    assert rs.RESTART_COUNT not in annotations and json.loads(annotations[rs.LAST_TERMINATION])["exitCode"] == 137


def test_back_off_doubles_to_five_minutes_and_resets_after_ten_minutes_of_running() -> None:
    r = rs.Restarts()
    ended = rs.Termination("Error", 1, "exit 1")
    delays = []
    now = 0.0
    for _ in range(8):
        delays.append(r.ended(ended, restart=True, now=now))
        r.running(now)
        now += 1
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    r.running(now)
    assert r.ended(ended, restart=True, now=now + rs.BACKOFF_RESET + 1) == 0
    assert r.count == 9
