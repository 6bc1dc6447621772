"""NetworkPolicy through the node with real gVisor pods: egress by policy, DNS, changes followed.

The node runs ``GvisorPodRuntime`` on a pod network whose host side lives in a
stand-in host namespace routed to a stand-in internet
(tests/integration/runtime/internet.py): the pods' traffic never meets the
machine's own network. Policies and Pods are written to the registry as
kubectl would write them; the pods report what they reach in their logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runtime.conftest import images_dir
from tests.integration.runtime.internet import (
    DNS,
    METADATA,
    OTHER_PUBLIC,
    PUBLIC,
    DnsServer,
    Internet,
    internet,
)
from tests.integration.runtime.podnet import Networks, listen, require_root_network, unique_network_args
from tests.unit.node.conftest import NodeHarness, pod
from turbok.api.kinds import default_registry
from turbok.node.clock import MonotonicClock
from turbok.node.node import NodeSettings
from turbok.node.suspend import runtime_id
from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.runtime.network import PodNetwork
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

pytestmark = pytest.mark.integration

IMAGE = "python-runtime-sandbox"
# Every half second: which of these the pod reaches, and what pypi.example resolves to.
PROBE = """
import socket, sys, time
targets = [("public", "%(public)s", 443), ("other", "%(other)s", 443), ("metadata", "%(metadata)s", 80),
           ("private", "%(private)s", 443)]
while True:
    seen = []
    for name, host, port in targets:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            seen.append(name)
        except OSError:
            pass
    try:
        seen.append("dns=" + socket.gethostbyname("pypi.example"))
    except OSError:
        seen.append("dns=none")
    print("reach " + ",".join(seen), flush=True)
    time.sleep(0.5)
"""


class World:
    def __init__(self, harness: NodeHarness, inet: Internet, net: PodNetwork) -> None:
        self.h, self.inet, self.net = harness, inet, net

    def script(self) -> str:
        return PROBE % {"public": PUBLIC, "other": OTHER_PUBLIC, "metadata": METADATA, "private": self.inet.private}

    def lines(self, name: str) -> list[str]:
        """The pod's reports so far ("reach ..." lines, without the CRI log prefix)."""
        got = self.h.pod(name)
        if got is None:
            return []
        path: Path = self.h.runtime.log_path(runtime_id(got), "main", 0)
        text = path.read_text() if path.exists() else ""
        return [line.split(" ", 3)[-1] for line in text.splitlines() if line.split(" ", 3)[-1].startswith("reach ")]

    async def until(self, name: str, want: str, *, after: int = 0, timeout: float = 40) -> int:
        """Wait for a report ``want`` after the first ``after`` reports; the reports seen by then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            lines = self.lines(name)
            if want in lines[after:]:
                return len(lines)
            if loop.time() > deadline:
                raise AssertionError(f"{name}: no {want!r} after report {after}; last: {lines[-3:]}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    require_root_network()
    if shutil.which("runsc") is None:
        pytest.skip("runsc (gVisor) is not installed")
    from turbok.runtime.pods_gvisor import GvisorPodRuntime

    images = ImageStore(images_dir())
    if not (images.builtin_dir(BASE_IMAGE) / "rootfs").is_dir():
        pytest.skip(f"the base image is not built in {images_dir()} (scripts/setup.sh builds it)")
    args = unique_network_args()
    with internet(args["name"]) as inet:
        networks = Networks(tmp_path / "net")
        net = networks.make(inside=inet.host, host_netns=inet.host, **args)
        net.ensure_host()
        dns = DnsServer(inet.outside, DNS, {"pypi.example": PUBLIC})
        resolv = tmp_path / "resolv.conf"
        resolv.write_text(f"nameserver {DNS}\n")
        registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
        registry.ensure_namespace("default")
        runtime = GvisorPodRuntime(tmp_path / "pods", images, network=net)
        h = NodeHarness(tmp_path, registry, runtime, MonotonicClock())  # type: ignore[arg-type]
        await h.start(settings=NodeSettings(relist_seconds=0.2), network=net, resolv_conf=resolv)
        try:
            with listen(inet.outside, 443, PUBLIC), listen(inet.outside, 443, OTHER_PUBLIC), \
                    listen(inet.outside, 80, METADATA), listen(inet.outside, 443, inet.private):
                yield World(h, inet, net)
        finally:
            await h.stop()
            await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                                 return_exceptions=True)
            registry.db.close()
            dns.close()
            networks.cleanup()


def policy(name: str, selector: dict[str, str], egress: list[Any] | None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"podSelector": {"matchLabels": selector}, "policyTypes": ["Egress"], **spec}
    if egress is not None:
        body["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default"}, "spec": body}


def probe_pod(world: World, name: str, labels: dict[str, str]) -> dict[str, Any]:
    # One DNS try of a second: a pod without DNS reports quickly (a kubelet merges these options in).
    body = pod(name, node=None, containers=[{"name": "main", "image": IMAGE,
                                             "command": ["python3", "-c", world.script()]}],
               dnsConfig={"options": [{"name": "timeout", "value": "1"}, {"name": "attempts", "value": "1"}]})
    body["metadata"]["labels"] = labels
    return body


async def test_a_template_style_policy_opens_the_public_internet_and_dns_and_nothing_else(world: World) -> None:
    # Upstream's default for a template: everywhere but private and link-local ranges.
    world.h.create(policy("tpl-network-policy", {"app": "agent"}, [{"to": [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                     "169.254.0.0/16"]}},
        {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}}]}]))
    world.h.create(probe_pod(world, "agent", {"app": "agent"}))
    world.h.create(probe_pod(world, "stranger", {"app": "other"}))  # no policy selects it
    await world.until("agent", f"reach public,other,dns={PUBLIC}")
    await world.until("stranger", "reach dns=none")
    # The very first report: the pod's rules were in place before its first packet.
    assert world.lines("agent")[0] == f"reach public,other,dns={PUBLIC}"
    assert set(world.lines("stranger")) == {"reach dns=none"}
    got = world.h.pod("agent") or {}
    assert got["status"]["podIP"] == world.net.attachment(runtime_id(got)).ip  # type: ignore[union-attr]


async def test_listed_addresses_and_ports_only_and_policy_changes_follow(world: World) -> None:
    world.h.create(probe_pod(world, "worker", {"app": "worker"}))
    seen = await world.until("worker", "reach dns=none")
    # A user's policy: one public address on 443, the metadata address and the private one listed.
    world.h.create(policy("narrow", {"app": "worker"}, [
        {"to": [{"ipBlock": {"cidr": f"{PUBLIC}/32"}}], "ports": [{"port": 443}]},
        {"to": [{"ipBlock": {"cidr": f"{METADATA}/32"}}, {"ipBlock": {"cidr": str(world.inet.uplink)}}]}]))
    seen = await world.until("worker", f"reach public,metadata,private,dns={PUBLIC}", after=seen)
    # The policy goes: the pod is isolated again.
    kind = world.h.kinds.by_kind("networking.k8s.io/v1", "NetworkPolicy")
    world.h.registry.delete(kind, "default", "narrow")
    seen = await world.until("worker", "reach dns=none", after=seen)
    # Labels change: a policy selecting the new label applies (port 443 anywhere public).
    world.h.create(policy("by-label", {"tier": "open"}, [{"ports": [{"port": 443}]}]))
    world.h.registry.patch(world.h.pod_kind, "default", "worker", "application/merge-patch+json",
                           {"metadata": {"labels": {"tier": "open"}}})
    await world.until("worker", f"reach public,other,dns={PUBLIC}", after=seen)


HOSTILE = """
import socket
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=0.7).close()
        return "reached"
    except OSError:
        return "blocked"
def udp_dns(server):
    q = bytes.fromhex("abcd01000001000000000000") + b"\\x04pypi\\x07example\\x00\\x00\\x01\\x00\\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.7)
    try:
        s.sendto(q, (server, 53))
        s.recv(512)
        return "reached"
    except OSError:
        return "blocked"
def raw():
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        return "reached"
    except OSError:
        return "blocked"
def v6():
    try:
        socket.create_connection(("2001:db8::1", 443), timeout=0.7).close()
        return "reached"
    except OSError:
        return "blocked"
tries = {
    "allowed": lambda: tcp("%(public)s", 443),
    "metadata-tcp": lambda: tcp("%(metadata)s", 80),
    "metadata-dns": lambda: udp_dns("%(metadata)s"),
    "private": lambda: tcp("%(private)s", 443),
    "unlisted-public": lambda: tcp("%(other)s", 443),
    "unlisted-port": lambda: tcp("%(public)s", 80),
    "host-uplink": lambda: tcp("%(uplink)s", 22),
    "host-gateway-port": lambda: tcp("%(gateway)s", 8080),
    "upstream-dns-direct": lambda: udp_dns("%(dns)s"),
    "neighbour-pod": lambda: tcp("%(neighbour)s", 8080),
    "raw-socket": raw,
    "ipv6": v6,
}
for name, attempt in tries.items():
    print("hostile %%s=%%s" %% (name, attempt()), flush=True)
print("hostile done", flush=True)
import time
time.sleep(600)
"""


async def test_hostile_network_programs_stay_inside_the_policy(world: World) -> None:
    """The network part of the hostile battery: a pod allowed one public address:port tries everything else."""
    inet = world.inet
    world.h.create(pod("neighbour", node=None, containers=[{"name": "main", "image": IMAGE, "command": [
        "python3", "-m", "http.server", "8080"]}]))
    neighbour = await world.h.wait_pod("neighbour", lambda p: p.get("status", {}).get("podIP"), timeout=60)
    world.h.create(policy("one-door", {"app": "hostile"}, [
        {"to": [{"ipBlock": {"cidr": f"{PUBLIC}/32"}}], "ports": [{"port": 443}]}]))
    script = HOSTILE % {"public": PUBLIC, "metadata": METADATA, "private": inet.private, "other": OTHER_PUBLIC,
                        "uplink": inet.host_address, "gateway": str(world.net.gateway), "dns": DNS,
                        "neighbour": neighbour["status"]["podIP"]}
    body = pod("hostile", node=None, containers=[{"name": "main", "image": IMAGE, "command": ["python3", "-c", script]}])
    body["metadata"]["labels"] = {"app": "hostile"}
    # Something listens behind every door the program knocks on, so "blocked" is the rules' doing.
    metadata_dns = DnsServer(inet.outside, METADATA, {"pypi.example": PUBLIC})  # the DNS server is the fixture's
    with listen(inet.outside, 80, PUBLIC), listen(inet.host, 22, inet.host_address), \
            listen(inet.host, 8080, str(world.net.gateway)), contextlib.closing(metadata_dns):
        world.h.create(body)

        def results() -> dict[str, str] | None:
            got = world.h.pod("hostile")
            if got is None:
                return None
            path: Path = world.h.runtime.log_path(runtime_id(got), "main", 0)
            text = path.read_text() if path.exists() else ""
            if "hostile done" not in text:
                return None
            pairs = [line.split("hostile ", 1)[1] for line in text.splitlines() if "hostile " in line]
            return dict(p.split("=", 1) for p in pairs if "=" in p)

        found = await world.h.wait(results, timeout=90, what="the hostile program's results")
    assert found.pop("allowed") == "reached"  # the one door, to show the pod has a network at all
    assert found == dict.fromkeys(found, "blocked"), found
    assert len(found) == 11
