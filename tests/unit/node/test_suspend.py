"""Suspend and resume through the Pod: ``turbok.dev/on-delete`` keeps the pod sandbox for the next Pod."""

from __future__ import annotations

from typing import Any

from tests.unit.node.conftest import NodeHarness, container_status, pod
from turbok.node.suspend import IDENTITY, ON_DELETE, runtime_id

IDENT = "3b8f7e2a-0000-4000-8000-000000000001"


def _sandbox_pod(name: str, mode: str | None = None, owner: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    annotations = {IDENTITY: IDENT}
    if mode:
        annotations[ON_DELETE] = mode
    body = pod(name, annotations=annotations, **spec)
    if owner:
        body["metadata"]["ownerReferences"] = [{**owner, "controller": True}]
    return body


async def _suspend(h: NodeHarness, name: str, mode: str) -> str:
    """Annotate and delete, as a controller suspending a Sandbox does; the runtime id."""
    got = h.pod(name)
    assert got is not None
    h.registry.patch(h.pod_kind, "default", name, "application/merge-patch+json",
                     {"metadata": {"annotations": {ON_DELETE: mode}}})
    h.delete(name)
    await h.wait_gone(name)
    return runtime_id(got)


async def test_hibernate_keeps_memory_and_the_next_pod_of_the_identity_resumes_it(node: NodeHarness) -> None:
    node.create(_sandbox_pod("sb-1"))
    await node.wait_ready("sb-1")
    rid = await _suspend(node, "sb-1", "hibernate")
    assert rid == runtime_id({"metadata": {"uid": "x", "annotations": {IDENTITY: IDENT}}})
    assert ("hibernate_pod_sandbox", rid) in node.runtime.calls
    assert ("remove_pod_sandbox", rid) not in node.runtime.calls
    assert (node.tmp / "node" / "kept" / f"{rid}.json").exists()
    starts = len(node.runtime.started(rid))
    node.create(_sandbox_pod("sb-1"))  # the Sandbox's Pod again: same name, same identity
    got = await node.wait_ready("sb-1")
    assert len(node.runtime.started(rid)) == starts  # restored with its memory: nothing started again
    assert "running" in container_status(got, "main")["state"]
    assert not (node.tmp / "node" / "kept" / f"{rid}.json").exists()
    await node.settle()
    reasons = node.reasons("sb-1")
    assert reasons.index("Suspended") < reasons.index("Resumed")


async def test_stop_keeps_the_disk_and_the_next_pod_boots_on_it(node: NodeHarness) -> None:
    node.create(_sandbox_pod("sb-1", terminationGracePeriodSeconds=4))
    await node.wait_ready("sb-1")
    rid = await _suspend(node, "sb-1", "stop")
    assert ("stop_container", rid, "main", "4") in node.runtime.calls
    assert ("stop_pod_sandbox", rid) in node.runtime.calls
    assert ("remove_pod_sandbox", rid) not in node.runtime.calls
    assert rid in node.runtime.sandboxes
    node.create(_sandbox_pod("sb-2"))
    await node.wait_ready("sb-2")
    assert node.runtime.started(rid) == ["main", "main"]  # booted again, on the kept sandbox


async def test_a_changed_spec_resumes_without_the_memory(node: NodeHarness) -> None:
    node.create(_sandbox_pod("sb-1"))
    await node.wait_ready("sb-1")
    rid = await _suspend(node, "sb-1", "hibernate")
    node.create(_sandbox_pod("sb-2", containers=[{"name": "main", "image": "python-runtime-sandbox",
                                                  "env": [{"name": "NEW", "value": "1"}]}]))
    await node.wait_ready("sb-2")
    calls = node.runtime.calls
    assert calls.index(("stop_pod_sandbox", rid)) < len(calls) - 1
    assert node.runtime.started(rid) == ["main", "main"]
    await node.settle()
    assert "HibernationDiscarded" in node.reasons("sb-2")


async def test_a_new_pod_waits_for_the_old_one_to_hibernate(node: NodeHarness) -> None:
    node.create(_sandbox_pod("sb-1"))
    await node.wait_ready("sb-1")
    node.registry.patch(node.pod_kind, "default", "sb-1", "application/merge-patch+json",
                        {"metadata": {"annotations": {ON_DELETE: "hibernate"}}})
    rid = runtime_id(node.pod("sb-1") or {})
    node.delete("sb-1")
    node.create(_sandbox_pod("sb-2"))  # the Sandbox resumes at once
    await node.wait_ready("sb-2")
    await node.wait_gone("sb-1")
    names = [c[0] for c in node.runtime.calls if c[1] == rid]
    assert names.index("hibernate_pod_sandbox") < len(names) - 1 - names[::-1].index("run_pod_sandbox")


async def test_kept_state_goes_when_its_owner_goes(node: NodeHarness) -> None:
    owner = node.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner",
                                                                              "namespace": "default"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    node.create(_sandbox_pod("sb-1", owner=ref))
    await node.wait_ready("sb-1")
    rid = await _suspend(node, "sb-1", "hibernate")
    await node.clock.advance(61.0)  # a collection pass: the owner is still there
    await node.settle()
    assert rid in node.runtime.sandboxes
    node.registry.delete(node.kinds.by_kind("v1", "ConfigMap"), "default", "owner")
    await node.wait(lambda: rid not in node.runtime.sandboxes, what="kept state removed")
    assert not (node.tmp / "node" / "kept" / f"{rid}.json").exists()


async def test_deleting_without_the_annotation_removes_the_state_even_if_kept_before(node: NodeHarness) -> None:
    node.create(_sandbox_pod("sb-1"))
    await node.wait_ready("sb-1")
    rid = await _suspend(node, "sb-1", "hibernate")
    node.create(_sandbox_pod("sb-2"))
    await node.wait_ready("sb-2")
    node.delete("sb-2")
    await node.wait_gone("sb-2")
    await node.reaped()
    assert rid not in node.runtime.sandboxes


async def test_memory_that_cannot_be_kept_is_said_by_an_event_and_the_next_pods_condition(node: NodeHarness) -> None:
    from turbok.runtime.errors import HibernationUnsupported

    why = ("pod x: runsc 20221219 restores one container per sandbox, and this pod's containers share one; cannot "
           "hibernate it (stop it instead: its disk is kept)")

    async def refuse(id: str) -> None:
        raise HibernationUnsupported(why)

    node.runtime.hibernate_pod_sandbox = refuse  # type: ignore[method-assign]
    node.create(_sandbox_pod("sb-1"))
    await node.wait_ready("sb-1")
    rid = await _suspend(node, "sb-1", "hibernate")
    assert ("stop_pod_sandbox", rid) in node.runtime.calls
    await node.settle()
    failed = node.events("sb-1", "HibernationFailed")
    assert failed and failed[0]["type"] == "Warning" and why in failed[0]["message"]
    node.create(_sandbox_pod("sb-1"))
    got = await node.wait_ready("sb-1")
    restored = next(c for c in got["status"]["conditions"] if c["type"] == "PodRestored")
    assert (restored["status"], restored["reason"]) == ("False", "HibernationFailed")
    assert why in restored["message"] and restored["message"].endswith("the Pod started on its kept disk")
    assert node.runtime.started(rid) == ["main", "main"]
    # A suspend that asked to keep the disk only (turbok.dev/suspend: disk) says nothing of the kind.
    rid = await _suspend(node, "sb-1", "stop")
    node.create(_sandbox_pod("sb-1"))
    got = await node.wait_ready("sb-1")
    assert not [c for c in got["status"]["conditions"] if c["type"] == "PodRestored"]
