"""The Node object and its Lease, as the kubelet registers and renews them."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.node.conftest import NodeHarness, condition, machine, pod
from turbok.api.limitrange import BUILTIN_DEFAULT_REQUESTS, apply_builtin_defaults
from turbok.api.quantity import parse_quantity
from turbok.node.node import NodeSettings
from turbok.node.nodeinfo import EVICTION_MEMORY, IDLE_POD_TASKS, node_name, pods_capacity


async def test_the_node_registers_with_capacity_conditions_and_info(node: NodeHarness) -> None:
    obj = node.registry.get(node.kinds.by_kind("v1", "Node"), "", "node1")
    labels = obj["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "node1" and labels["kubernetes.io/os"] == "linux"
    status = obj["status"]
    assert status["capacity"]["cpu"] == "4" and status["capacity"]["pods"] == str(pods_capacity(machine()))
    assert status["capacity"]["memory"] == f"{8 * 2**20}Ki"
    assert status["capacity"]["ephemeral-storage"] == f"{100 * 2**20}Ki"
    assert status["allocatable"]["memory"] == f"{8 * 2**20 - 100 * 2**10}Ki"  # less the 100Mi eviction threshold
    assert int(status["allocatable"]["ephemeral-storage"]) == 90 * 2**30
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["reason"] == "KubeletReady"
    for type_ in ("MemoryPressure", "DiskPressure", "PIDPressure"):
        assert conditions[type_]["status"] == "False"
    assert {"type": "InternalIP", "address": "10.0.0.5"} in status["addresses"]
    info = status["nodeInfo"]
    assert info["containerRuntimeVersion"] == "gvisor://release-20221219.0"
    assert info["kubeletVersion"] == "v1.34.0" and info["operatingSystem"] == "linux"
    assert info["kernelVersion"] == "6.1.0-test"


async def test_the_lease_is_renewed_every_ten_seconds(node: NodeHarness) -> None:
    lease_kind = node.kinds.by_kind("coordination.k8s.io/v1", "Lease")
    lease = node.registry.get(lease_kind, "kube-node-lease", "node1")
    assert lease["spec"]["holderIdentity"] == "node1" and lease["spec"]["leaseDurationSeconds"] == 40
    assert lease["metadata"]["ownerReferences"][0]["kind"] == "Node"
    first = lease["spec"]["renewTime"]
    await node.clock.advance(10.0)
    await node.settle()
    assert node.registry.get(lease_kind, "kube-node-lease", "node1")["spec"]["renewTime"] != first


async def test_node_status_is_written_only_when_it_changes_or_every_five_minutes(
        node: NodeHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    node_kind = node.kinds.by_kind("v1", "Node")
    rv = node.registry.get(node_kind, "", "node1")["metadata"]["resourceVersion"]
    await node.clock.advance(10.0)
    await node.settle()
    assert node.registry.get(node_kind, "", "node1")["metadata"]["resourceVersion"] == rv
    monkeypatch.setattr("turbok.api.meta.now", lambda: "2099-01-01T00:05:00Z")  # wall time moved on too
    await node.clock.advance(300.0)
    await node.settle()
    assert node.registry.get(node_kind, "", "node1")["metadata"]["resourceVersion"] != rv


def test_node_names_are_dns_subdomains() -> None:
    assert node_name("My_Host.Example") == "my-host.example"
    assert node_name("-") == "localhost"


def test_pods_capacity_is_what_the_machine_holds_of_idle_sandboxes() -> None:
    idle_memory = int(parse_quantity(BUILTIN_DEFAULT_REQUESTS["memory"]))
    roomy = dataclasses.replace(machine(), cpus=2, memory_bytes=24 * 2**30)
    pods = pods_capacity(roomy)
    # Memory binds here: as many idle sandboxes as its allocatable holds, far more than the kubelet's 110.
    assert pods * idle_memory <= roomy.memory_bytes - EVICTION_MEMORY < (pods + 1) * idle_memory
    assert pods > 600
    # Few pids bind before memory; one CPU's worth of idle requests bind before either.
    few_pids = dataclasses.replace(roomy, pid_max=32768)
    assert pods_capacity(few_pids) == int(32768 * 0.9) // IDLE_POD_TASKS
    assert pods_capacity(dataclasses.replace(roomy, cpus=0)) == 1


async def test_pods_with_the_builtin_defaults_fill_the_node_to_its_pods_capacity(harness: NodeHarness) -> None:
    idle_memory = int(parse_quantity(BUILTIN_DEFAULT_REQUESTS["memory"]))
    small = dataclasses.replace(machine(), cpus=2, memory_bytes=EVICTION_MEMORY + 6 * idle_memory + 2**20)
    assert pods_capacity(small) == 6
    await harness.start(machine=lambda: small)
    for i in range(7):
        spec = {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}
        apply_builtin_defaults(spec)  # what admission gives a Sandbox's pod template that sets nothing
        harness.create(pod(f"p{i}", node=None, **spec))
    for i in range(6):  # the built-in limits are 1 cpu each: before, a request equal to it let 2 in
        await harness.wait_pod(f"p{i}", lambda p: p["spec"].get("nodeName") == "node1")
    got = await harness.wait_pod("p6", lambda p: condition(p, "PodScheduled") == "False")
    assert "Too many pods" in next(c for c in got["status"]["conditions"] if c["type"] == "PodScheduled")["message"]


async def test_max_pods_given_overrides_what_the_machine_holds(harness: NodeHarness) -> None:
    assert NodeSettings().max_pods == 0  # TURBOK_NODE_MAX_PODS unset: the machine's own
    await harness.start(settings=NodeSettings(relist_seconds=1.0, max_pods=50))
    status = harness.registry.get(harness.kinds.by_kind("v1", "Node"), "", "node1")["status"]
    assert status["capacity"]["pods"] == status["allocatable"]["pods"] == "50"


async def test_cpu_is_overcommitted_by_default_and_memory_never(harness: NodeHarness) -> None:
    two = dataclasses.replace(machine(), cpus=2)
    await harness.start(machine=lambda: two, settings=NodeSettings(relist_seconds=1.0))
    status = harness.registry.get(harness.kinds.by_kind("v1", "Node"), "", "node1")["status"]
    assert status["capacity"]["cpu"] == "2" and status["allocatable"]["cpu"] == "32"  # 16 x the CPUs
    assert status["allocatable"]["memory"] == f"{two.memory_bytes // 1024 - 100 * 2**10}Ki"
    for i in range(5):  # five sandboxes of `cpu: 1` on 2 CPUs: the kubelet's accounting would let in two
        harness.create(pod(f"c{i}", node=None, containers=[
            {"name": "main", "image": "python-runtime-sandbox", "resources": {"limits": {"cpu": "1"}}}]))
    for i in range(5):
        await harness.wait_pod(f"c{i}", lambda p: p["spec"].get("nodeName") == "node1")


def test_cpu_overcommit_comes_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURBOK_NODE_CPU_OVERCOMMIT", "1.5")
    assert NodeSettings.from_env().cpu_overcommit == 1.5
