"""The node's side of the Pod Snapshot API (podsnapshot.gke.io/v1): a PodSnapshotManualTrigger taken as a PodSnapshot
(or refused, saying why in the conditions), Pods that start from one (PodRestored), and snapshot data that goes with
its PodSnapshot. The fake runtime below keeps a snapshot as the containers it had."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.unit.node.conftest import NodeHarness, condition, pod
from turbok.api.kinds import default_registry
from turbok.node import snapshots as node_snapshots
from turbok.node.snapshots import ORIGIN_POD, PS_NAME, RESTORE_FROM, RESTORED
from turbok.node.suspend import IDENTITY, ON_DELETE, runtime_id
from turbok.node.testing import FakeClock, FakePodRuntime, FakeSandbox
from turbok.runtime.cri import PodSandboxConfig, PodSandboxStatus
from turbok.runtime.errors import SandboxNotRunning, SnapshotNotFound, SnapshotUnsupported
from turbok.runtime.ids import sandbox_id
from turbok.runtime.snapshotstore import SnapshotInfo
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

Obj = dict[str, Any]
API = "podsnapshot.gke.io/v1"
HASH = "agents.x-k8s.io/sandbox-name-hash"


class SnapshotRuntime(FakePodRuntime):
    """A fake runtime that takes snapshots: the containers a pod had, given to pods restored from them."""

    supports_snapshots = True

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.snapshots: dict[str, tuple[SnapshotInfo, FakeSandbox]] = {}
        #: snapshot_pod_sandbox raises these in turn while any are left
        self.snapshot_errors: list[Exception] = []

    async def snapshot_pod_sandbox(self, id: str, snapshot_id: str) -> SnapshotInfo:
        self.calls.append(("snapshot_pod_sandbox", id, snapshot_id))
        if self.snapshot_errors:
            raise self.snapshot_errors.pop(0)
        sb = self.sandboxes.get(id)
        if sb is None or not self.running(id):
            raise SandboxNotRunning(f"pod {id} is not running")
        info = SnapshotInfo(id=snapshot_id, pod=id, container="main", created_at=time.time(), memory_bytes=3 << 20,
                            disk_bytes=1 << 20)
        self.snapshots[snapshot_id] = (info, replace(sb, containers=dict(sb.containers)))
        return info

    async def restore_pod_sandbox(self, config: PodSandboxConfig, snapshot_id: str) -> PodSandboxStatus:
        self.calls.append(("restore_pod_sandbox", config.id, snapshot_id))
        if snapshot_id not in self.snapshots:
            raise SnapshotNotFound(f"snapshot {snapshot_id} is not on this machine")
        _, saved = self.snapshots[snapshot_id]
        self.sandboxes[config.id] = FakeSandbox(config, ip=f"10.213.1.{len(self.sandboxes) + 2}",
                                                containers=dict(saved.containers), configs=dict(saved.configs))
        return await self.pod_sandbox_status(config.id)

    async def list_snapshots(self) -> list[str]:
        return sorted(self.snapshots)

    def snapshot_info(self, snapshot_id: str) -> SnapshotInfo | None:
        found = self.snapshots.get(snapshot_id)
        return found[0] if found else None

    async def remove_snapshot(self, snapshot_id: str) -> None:
        self.calls.append(("remove_snapshot", snapshot_id))
        self.snapshots.pop(snapshot_id, None)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[NodeHarness]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    h = NodeHarness(tmp_path, registry, SnapshotRuntime(tmp_path / "pods"), FakeClock())
    await h.start()
    yield h
    await h.stop()
    registry.db.close()


def _runtime(h: NodeHarness) -> SnapshotRuntime:
    assert isinstance(h.runtime, SnapshotRuntime)
    return h.runtime


def _kind(h: NodeHarness, kind: str) -> Any:
    return h.kinds.by_kind(API, kind)


def _trigger(h: NodeHarness, name: str, target: str) -> Obj:
    return h.create({"apiVersion": API, "kind": "PodSnapshotManualTrigger",
                     "metadata": {"name": name, "namespace": "default"}, "spec": {"targetPod": target}})


def _get(h: NodeHarness, kind: str, name: str) -> Obj | None:
    return h.registry.try_get(_kind(h, kind), "default", name)


def _cond(obj: Obj | None, type_: str) -> Obj:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


async def _triggered(h: NodeHarness, name: str) -> Obj:
    obj: Obj = await h.wait(lambda: _cond(_get(h, "PodSnapshotManualTrigger", name), "Triggered")
                            and _get(h, "PodSnapshotManualTrigger", name), what=f"trigger {name} answered")
    return obj


def _box(name: str, identity: str = "id-0000-0001", **annotations: str) -> Obj:
    body = pod(name, annotations={IDENTITY: identity, **annotations})
    body["metadata"]["labels"] = {HASH: "abcd1234"}
    return body


async def test_a_trigger_on_a_running_pod_makes_a_ready_podsnapshot_and_the_pod_runs_on(node: NodeHarness) -> None:
    node.create(_box("box"))
    await node.wait_ready("box")
    starts = node.runtime.started()
    _trigger(node, "snap-1", "box")
    trigger = await _triggered(node, "snap-1")
    assert _cond(trigger, "Triggered")["status"] == "True" and _cond(trigger, "Triggered")["reason"] == "Complete"
    assert trigger["status"]["snapshotCreated"] == {"name": "snap-1"}
    ps = _get(node, "PodSnapshot", "snap-1")
    assert ps is not None and _cond(ps, "Ready")["status"] == "True"
    # What the official client reads: the sandbox's name-hash label and the origin-pod annotation.
    assert ps["metadata"]["labels"] == {HASH: "abcd1234"}
    assert ps["metadata"]["annotations"][ORIGIN_POD] == "box"
    assert (ps["status"]["memoryBytes"], ps["status"]["nodeName"]) == (3 << 20, "node1")
    assert sandbox_id(ps["metadata"]["uid"]) in _runtime(node).snapshots, "data keyed by the PodSnapshot's uid"
    assert node.runtime.started() == starts and condition(node.pod("box") or {}, "Ready") == "True"
    await node.settle()
    assert "Snapshotted" in node.reasons("box")


async def test_an_open_connection_is_retried_then_the_refusal_is_said_in_both_conditions(
        node: NodeHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_snapshots, "CONNECTION_WAIT", 0.0)
    why = "pod x: it has TCP connections open, which runsc 20221219 cannot save; cannot snapshot it now"
    node.create(_box("box"))
    await node.wait_ready("box")
    _runtime(node).snapshot_errors = [SnapshotUnsupported(why) for _ in range(node_snapshots.CONNECTION_TRIES)]
    _trigger(node, "snap-1", "box")
    trigger = await _triggered(node, "snap-1")
    tries = [c for c in node.runtime.calls if c[0] == "snapshot_pod_sandbox"]
    assert len(tries) == node_snapshots.CONNECTION_TRIES
    assert (_cond(trigger, "Triggered")["status"], _cond(trigger, "Triggered")["reason"]) == ("False", "Failed")
    assert _cond(trigger, "Triggered")["message"] == why
    ps = _get(node, "PodSnapshot", "snap-1")
    assert (_cond(ps, "Ready")["status"], _cond(ps, "Ready")["reason"], _cond(ps, "Ready")["message"]) == \
        ("False", "Failed", why)
    await node.settle()
    assert "SnapshotFailed" in node.reasons("box")
    assert condition(node.pod("box") or {}, "Ready") == "True", "the pod runs on"


async def test_an_open_connection_that_closes_is_saved_on_a_later_try(node: NodeHarness,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_snapshots, "CONNECTION_WAIT", 0.0)
    node.create(_box("box"))
    await node.wait_ready("box")
    _runtime(node).snapshot_errors = [SnapshotUnsupported("pod x: it has TCP connections open, ...")]
    _trigger(node, "snap-1", "box")
    trigger = await _triggered(node, "snap-1")
    assert _cond(trigger, "Triggered")["status"] == "True"


async def test_what_cannot_ever_be_saved_is_refused_at_once(node: NodeHarness) -> None:
    why = "pod x: runsc 20221219 restores one container per sandbox, and this pod's containers share one"
    node.create(_box("box"))
    await node.wait_ready("box")
    _runtime(node).snapshot_errors = [SnapshotUnsupported(why)]
    _trigger(node, "snap-1", "box")
    trigger = await _triggered(node, "snap-1")
    assert [c[0] for c in node.runtime.calls].count("snapshot_pod_sandbox") == 1
    assert _cond(trigger, "Triggered")["message"] == why
    _trigger(node, "snap-2", "nobody")
    trigger = await _triggered(node, "snap-2")
    assert _cond(trigger, "Triggered")["message"] == 'pod "nobody" not found'
    assert _get(node, "PodSnapshot", "snap-2") is None


async def test_pods_naming_a_snapshot_start_from_it_and_say_so(node: NodeHarness) -> None:
    node.create(_box("src", identity="id-src"))
    await node.wait_ready("src")
    _trigger(node, "snap-1", "src")
    await _triggered(node, "snap-1")
    ps = _get(node, "PodSnapshot", "snap-1")
    assert ps is not None
    starts = len(node.runtime.started())
    for name in ("fork-a", "fork-b"):  # forks: new identities, the same spec
        node.create(_box(name, identity=f"id-{name}", **{PS_NAME: "snap-1"}))
    for name in ("fork-a", "fork-b"):
        got = await node.wait_ready(name)
        restored = _cond(got, RESTORED)
        assert restored["status"] == "True" and "snap-1" in restored["message"]
    assert len(node.runtime.started()) == starts, "their containers came from the snapshot, none started"
    restores = [c for c in node.runtime.calls if c[0] == "restore_pod_sandbox"]
    assert {c[1] for c in restores} == {runtime_id(node.pod("fork-a") or {}), runtime_id(node.pod("fork-b") or {})}
    assert {c[2] for c in restores} == {sandbox_id(ps["metadata"]["uid"])}


@pytest.mark.parametrize(("case", "reason"), [("missing", "SnapshotNotFound"), ("spec", "SpecMismatch"),
                                              ("data", "SnapshotDataMissing")])
async def test_a_snapshot_that_cannot_be_used_is_said_and_the_pod_starts_afresh(node: NodeHarness, case: str,
                                                                              reason: str) -> None:
    node.create(_box("src", identity="id-src"))
    await node.wait_ready("src")
    _trigger(node, "snap-1", "src")
    await _triggered(node, "snap-1")
    body = _box("fork", identity="id-fork", **{PS_NAME: "nope" if case == "missing" else "snap-1"})
    if case == "spec":
        body["spec"]["containers"][0]["env"] = [{"name": "NEW", "value": "1"}]
    if case == "data":
        _runtime(node).snapshots.clear()
    node.create(body)
    got = await node.wait_ready("fork")
    restored = _cond(got, RESTORED)
    assert (restored["status"], restored["reason"]) == ("False", reason)
    assert restored["message"].endswith("the Pod started afresh")
    assert "main" in node.runtime.running(runtime_id(got))
    await node.settle()
    assert "RestoreFailed" in node.reasons("fork")


async def test_a_resume_starts_from_the_newest_snapshot_of_its_own_or_from_the_one_asked(node: NodeHarness) -> None:
    node.create(_box("box"))
    await node.wait_ready("box")
    for name in ("old", "new"):
        _trigger(node, name, "box")
        await _triggered(node, name)
    newest = _get(node, "PodSnapshot", "new")
    assert newest is not None
    # Suspended the way a Sandbox controller suspends: the node hibernates it; the next Pod resumes.
    node.registry.patch(node.pod_kind, "default", "box", "application/merge-patch+json",
                        {"metadata": {"annotations": {ON_DELETE: "stop"}}})
    node.delete("box")
    await node.wait_gone("box")
    node.create(_box("box"))
    got = await node.wait_ready("box")
    assert "new" in _cond(got, RESTORED)["message"], "GKE's resume: the newest Ready snapshot of its own"
    assert ("restore_pod_sandbox", runtime_id(got), sandbox_id(newest["metadata"]["uid"])) in node.runtime.calls
    # A restore asked for once (turbok sandbox restore) wins over the newest.
    node.registry.patch(node.pod_kind, "default", "box", "application/merge-patch+json",
                        {"metadata": {"annotations": {ON_DELETE: "hibernate"}}})
    node.delete("box")
    await node.wait_gone("box")
    node.create(_box("box", **{RESTORE_FROM: "old"}))
    got = await node.wait_ready("box")
    assert "old" in _cond(got, RESTORED)["message"]


async def test_a_deleted_podsnapshot_takes_its_data_along_and_orphans_go_at_start(node: NodeHarness) -> None:
    node.create(_box("box"))
    await node.wait_ready("box")
    _trigger(node, "snap-1", "box")
    await _triggered(node, "snap-1")
    ps = _get(node, "PodSnapshot", "snap-1")
    assert ps is not None
    sid = sandbox_id(ps["metadata"]["uid"])
    node.registry.delete(_kind(node, "PodSnapshot"), "default", "snap-1")
    await node.wait(lambda: sid not in _runtime(node).snapshots, what="its data removed")
    # Data no PodSnapshot names (deleted while the node was down) goes when the node starts.
    runtime = _runtime(node)
    runtime.snapshots["tkorphanorphanorphan0001"] = (SnapshotInfo(
        id="tkorphanorphanorphan0001", pod="x", container="main", created_at=0.0, memory_bytes=1, disk_bytes=1),
        FakeSandbox(PodSandboxConfig(id="tkorphanorphanorphan0001", name="x", namespace="default", uid="u", hostname="x")))
    await node.stop()
    await node.start()
    await node.wait(lambda: "tkorphanorphanorphan0001" not in runtime.snapshots, what="the orphan removed")


async def test_an_unexpected_failure_still_answers_the_trigger(node: NodeHarness) -> None:
    node.create(_box("box"))
    await node.wait_ready("box")
    _runtime(node).snapshot_errors = [OSError(28, "No space left on device")]
    _trigger(node, "snap-1", "box")
    trigger = await _triggered(node, "snap-1")
    triggered = _cond(trigger, "Triggered")
    assert (triggered["status"], triggered["reason"]) == ("False", "Failed")
    assert "No space left on device" in triggered["message"]
