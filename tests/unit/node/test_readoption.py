"""A control plane that restarts finds its Pods' sandboxes again and cleans up what no Pod names."""

from __future__ import annotations

from tests.unit.node.conftest import NodeHarness, condition, container_status, pod
from turbok.node.suspend import IDENTITY, ON_DELETE, runtime_id
from turbok.node.testing import FakeSandbox
from turbok.runtime.cri import PodSandboxConfig


async def test_running_pods_are_adopted_with_their_status_kept(harness: NodeHarness) -> None:
    await harness.start()
    harness.create(pod("keep"))
    await harness.wait_ready("keep")
    rid = runtime_id(harness.pod("keep") or {})
    harness.runtime.exit(rid, "main", 1)
    await harness.clock.advance(1.0)
    before = await harness.wait_pod("keep", lambda p: container_status(p, "main")["restartCount"] == 1
                                    and condition(p, "Ready") == "True")
    await harness.stop()  # the control plane stops: the Pod keeps running
    assert harness.runtime.running(rid) == ["main"]
    calls = len(harness.runtime.calls)
    await harness.start()
    await harness.settle()
    after = harness.pod("keep") or {}
    assert not [c for c in harness.runtime.calls[calls:] if c[0] in ("run_pod_sandbox", "start_container",
                                                                      "remove_pod_sandbox", "stop_container")]
    assert condition(after, "Ready") == "True"
    assert container_status(after, "main")["restartCount"] == 1
    assert after["status"]["startTime"] == before["status"]["startTime"]
    # and it is looked after as before: the next end restarts it with its count going on
    harness.runtime.exit(rid, "main", 1)
    await harness.clock.advance(1.0)
    await harness.wait_pod("keep", lambda p: container_status(p, "main")["restartCount"] == 2)


async def test_sandboxes_without_a_pod_are_removed_but_kept_state_stays(harness: NodeHarness) -> None:
    await harness.start()
    harness.create(pod("kept", annotations={IDENTITY: "ident-1"}))
    await harness.wait_ready("kept")
    kept_rid = runtime_id(harness.pod("kept") or {})
    harness.registry.patch(harness.pod_kind, "default", "kept", "application/merge-patch+json",
                           {"metadata": {"annotations": {ON_DELETE: "hibernate"}}})
    harness.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other", "namespace": "default",
                                                                    "annotations": {IDENTITY: "ident-1"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}], "schedulerName": "elsewhere"}})
    harness.delete("kept")
    await harness.wait_gone("kept")
    await harness.stop()
    stray = "tk" + "0" * 22
    harness.runtime.sandboxes[stray] = FakeSandbox(PodSandboxConfig(id=stray, name="gone", namespace="default",
                                                                    uid="u", hostname="gone"))
    await harness.start()
    await harness.wait(lambda: stray not in harness.runtime.sandboxes, what="the stray sandbox removed")
    assert kept_rid in harness.runtime.sandboxes  # a Pod (unscheduled) still names its identity


async def test_a_pod_deleted_while_the_node_was_down_is_torn_down_at_start(harness: NodeHarness) -> None:
    await harness.start()
    harness.create(pod("late", terminationGracePeriodSeconds=9))
    await harness.wait_ready("late")
    rid = runtime_id(harness.pod("late") or {})
    await harness.stop()
    harness.delete("late")  # graceful: it waits for the node
    await harness.start()
    await harness.wait_gone("late")
    assert ("stop_container", rid, "main", "9") in harness.runtime.calls
    await harness.reaped()
    assert rid not in harness.runtime.sandboxes
