"""The node's NetworkPolicy enforcer over a fake pod network, and the pods' resolv.conf."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.unit.node.conftest import NodeHarness, pod
from turbok.api.kinds import default_registry
from turbok.embedded.client import EmbeddedClient
from turbok.node.netpolicy import NetworkPolicies, dns_config
from turbok.node.suspend import IDENTITY, runtime_id
from turbok.runtime.network_policy import Binding, Block, PeerSet, PortRange, Rule
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

Obj = dict[str, Any]
NODE = "node1"
net4 = ipaddress.IPv4Network


class FakeNetwork:
    """Records what the enforcer tells the pod network."""

    def __init__(self) -> None:
        self.bound: dict[str, Binding] = {}
        self.peers: dict[str, PeerSet] = {}
        self.syncs = 0
        self.checks = 0
        self.log: list[str] = []
        self.history: list[tuple[str, Binding | None]] = []
        self.addresses: dict[str, str] = {}
        self.gateway = ipaddress.IPv4Address("10.213.0.1")
        self.host_netns = None

    def bind(self, id: str, binding: Binding | None) -> None:
        self.log.append(f"bind {id}")
        self.history.append((id, binding))
        if binding is None or (binding.egress is None and binding.ingress is None):
            self.bound.pop(id, None)
        else:
            self.bound[id] = binding

    def set_peers(self, sets: Mapping[str, PeerSet]) -> None:
        self.peers = dict(sets)

    def sync(self) -> None:
        self.syncs += 1

    def check(self) -> int:
        self.checks += 1
        if self.checks == 1:
            raise RuntimeError("nft: the first check fails")
        return 0

    def attachment(self, id: str) -> Any:
        ip = self.addresses.get(id)
        return None if ip is None else type("A", (), {"ip": ip})()


class World:
    def __init__(self, registry: ObjectRegistry, enforcer: NetworkPolicies, network: FakeNetwork) -> None:
        self.registry, self.enforcer, self.network = registry, enforcer, network
        self.policy_kind = registry.kinds.by_kind("networking.k8s.io/v1", "NetworkPolicy")

    def policy(self, name: str, spec: Obj, namespace: str = "default") -> Obj:
        obj = self.registry.create(self.policy_kind, {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                                      "metadata": {"name": name, "namespace": namespace},
                                                      "spec": spec}, namespace=namespace)
        self.enforcer.object_changed(self.policy_kind.key, obj, False)
        return obj

    def pod(self, name: str, labels: dict[str, str], *, ip: str | None = None, namespace: str = "default",
            **spec: Any) -> Obj:
        body = pod(name, **spec)
        body["metadata"].update({"labels": labels, "namespace": namespace, "uid": f"uid-{namespace}-{name}"})
        if ip:
            self.network.addresses[runtime_id(body)] = ip
        self.enforcer.pod_changed(body, False)
        return body

    def binding(self, body: Obj) -> Binding | None:
        return self.network.bound.get(runtime_id(body))

    async def settle(self) -> None:
        await self.enforcer.settled()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    for ns in ("default", "agent-sandbox-system", "other"):
        registry.ensure_namespace(ns)
    network = FakeNetwork()
    enforcer = NetworkPolicies(EmbeddedClient(registry), network, node_name=NODE)
    await enforcer.start()
    yield World(registry, enforcer, network)
    await enforcer.stop()
    registry.db.close()


UPSTREAM_DEFAULT = {
    "podSelector": {"matchLabels": {"agents.x-k8s.io/sandbox-template-ref-hash": "abcd1234"}},
    "policyTypes": ["Ingress", "Egress"],
    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                                 "agent-sandbox-system"}},
                           "podSelector": {"matchLabels": {"app": "sandbox-router"}}}]}],
    "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                                    "169.254.0.0/16"]}},
                       {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}}]}],
}


async def test_a_pod_no_policy_selects_gets_nothing(world: World) -> None:
    world.policy("others", {"podSelector": {"matchLabels": {"app": "x"}}, "egress": [{}],
                            "policyTypes": ["Egress"]})
    assert world.binding(world.pod("lonely", {"app": "y"})) is None


async def test_upstreams_default_policy_compiles_to_public_egress_and_router_ingress(world: World) -> None:
    world.policy("tpl-network-policy", UPSTREAM_DEFAULT)
    router = world.pod("router", {"app": "sandbox-router"}, ip="10.213.0.50", namespace="agent-sandbox-system")
    sandbox = world.pod("sb", {"agents.x-k8s.io/sandbox-template-ref-hash": "abcd1234"}, ip="10.213.0.2")
    await world.settle()
    binding = world.binding(sandbox)
    assert binding is not None and binding.egress is not None and binding.ingress is not None
    everywhere = Block(net4("0.0.0.0/0"), tuple(net4(n) for n in ("10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                                                                   "192.168.0.0/16")))
    assert binding.egress.rules == (Rule(blocks=(everywhere,)),)  # the IPv6 block: no IPv6 for pods
    [ingress] = binding.ingress.rules
    assert ingress.blocks == () and not ingress.any_pod and len(ingress.sets) == 1
    assert world.network.peers[ingress.sets[0]].addresses == {"10.213.0.50"}
    assert world.binding(router) is None


async def test_ports_ranges_and_names(world: World) -> None:
    world.policy("ports", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                           "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                                       "ports": [{"port": 443}, {"protocol": "UDP", "port": 1000, "endPort": 2000},
                                                 {"protocol": "SCTP"}, {"port": "https"}]},
                                      {"to": [{"podSelector": {"matchLabels": {"role": "db"}}}],
                                       "ports": [{"port": "postgres"}]}],
                           "ingress": [{"ports": [{"port": "web"}, {"port": "absent"}]}]})
    db = world.pod("db", {"role": "db"}, ip="10.213.0.9",
                   containers=[{"name": "pg", "image": "x", "ports": [{"name": "postgres", "containerPort": 5432}]}])
    web = world.pod("web", {"role": "web"}, ip="10.213.0.8",
                    containers=[{"name": "w", "image": "x", "ports": [{"name": "web", "containerPort": 8080}]}])
    await world.settle()
    binding = world.binding(web)
    assert binding is not None and binding.egress is not None and binding.ingress is not None
    block_rule, named_rule = binding.egress.rules
    assert block_rule.blocks == (Block(net4("203.0.113.0/24")),)
    assert block_rule.ports == (PortRange("sctp"), PortRange("tcp", 443, 443), PortRange("udp", 1000, 2000))
    # Named ports: never an ipBlock's ("https" above adds nothing); the destination pods' own numbers.
    [port_set] = named_rule.port_sets
    assert world.network.peers[port_set].ports == {("10.213.0.9", "tcp", 5432)}
    # Ingress by name: this pod's own "web"; an unknown name allows nothing (no rule for it).
    [ingress] = binding.ingress.rules
    assert ingress.ports == (PortRange("tcp", 8080, 8080),) and ingress.any_pod
    assert world.binding(db) is not None


async def test_namespace_selectors_and_changes_are_followed(world: World) -> None:
    client = world.pod("client", {"app": "c"}, ip="10.213.0.2")
    other = world.pod("peer", {"app": "p"}, ip="10.213.0.3", namespace="other")
    world.policy("to-other", {"podSelector": {"matchLabels": {"app": "c"}}, "policyTypes": ["Egress"],
                              "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]})
    await world.settle()
    binding = world.binding(client)
    assert binding is not None and binding.egress is not None
    [name] = binding.egress.rules[0].sets
    assert world.network.peers[name].addresses == set()  # "other" is not labelled blue yet
    ns_kind = world.registry.kinds.by_kind("v1", "Namespace")
    ns = world.registry.patch(ns_kind, "", "other", "application/merge-patch+json",
                              {"metadata": {"labels": {"team": "blue"}}})
    world.enforcer.object_changed(ns_kind.key, ns, False)
    await world.settle()
    assert world.network.peers[name].addresses == {"10.213.0.3"}
    # The peer goes: out of the set. The policy goes: the client is isolated again.
    world.enforcer.pod_changed(other, True)
    await world.settle()
    assert world.network.peers[name].addresses == set()
    deleted = world.registry.get(world.policy_kind, "default", "to-other")
    world.enforcer.object_changed(world.policy_kind.key, deleted, True)
    await world.settle()
    assert world.binding(client) is None


async def test_an_old_pods_deletion_leaves_its_successors_binding(world: World) -> None:
    world.policy("all", {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]})
    first = world.pod("sb-1", {}, annotations={IDENTITY: "sandbox-uid"})
    second = world.pod("sb-2", {}, annotations={IDENTITY: "sandbox-uid"})  # a resumed Sandbox: same runtime id
    assert runtime_id(first) == runtime_id(second)
    world.enforcer.pod_changed(first, True)
    assert world.binding(second) is not None
    world.enforcer.pod_changed(second, True)
    assert world.binding(second) is None


async def test_an_adopted_warm_pool_pod_keeps_its_templates_policy_and_gains_its_claims(world: World) -> None:
    # A claim adopting a warm pool's Sandbox relabels its running Pod, as upstream's completeAdoption does (the
    # pool's labels go; the claim's identity and additionalPodMetadata come): nothing reboots, so the binding
    # follows the labels, and the template's policy never lapses meanwhile.
    from turbok.controllers import labels as lb

    template = {lb.TEMPLATE_REF_HASH: "abcd1234", lb.SANDBOX_NAME_HASH: "5b0c1a2e"}
    world.policy("tpl-network-policy", UPSTREAM_DEFAULT)
    world.policy("data-team-db", {"podSelector": {"matchLabels": {"team": "data"}}, "policyTypes": ["Egress"],
                                  "egress": [{"to": [{"ipBlock": {"cidr": "10.50.0.0/16"}}],
                                              "ports": [{"port": 5432}]}]})
    warm = world.pod("pool-abcde", {**template, lb.WARM_POOL_SANDBOX: "9f8e7d6c"}, ip="10.213.0.2")
    await world.settle()
    rid = runtime_id(warm)
    before = world.binding(warm)
    assert before is not None and before.egress is not None and len(before.egress.rules) == 1
    world.network.history.clear()
    adopted = {**warm, "metadata": {**warm["metadata"], "labels": {**template, lb.CLAIM_UID: "claim-uid-1",
                                                                   "team": "data"}}}
    world.enforcer.pod_changed(adopted, False)
    await world.settle()
    after = world.binding(adopted)
    assert after is not None and after.egress is not None and after.ingress == before.ingress
    assert set(after.egress.rules) == {*before.egress.rules, Rule(blocks=(Block(net4("10.50.0.0/16")),),
                                                                  ports=(PortRange("tcp", 5432, 5432),))}
    assert [b for i, b in world.network.history if i == rid] and all(
        b is not None and b.egress is not None for i, b in world.network.history if i == rid)
    # Released by its claim (labels back to the template's alone): the claim's policy goes with them.
    world.enforcer.pod_changed({**warm, "metadata": {**warm["metadata"], "labels": template}}, False)
    await world.settle()
    assert world.binding(warm) == before


async def test_the_tables_are_checked_every_few_seconds_until_the_node_stops(tmp_path: Path) -> None:
    # Another home's control plane may make the tables anew: the node has the pod network compare them with
    # what it applied (PodNetwork.check) on a timer, and goes on after a check fails.
    import asyncio

    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    network = FakeNetwork()
    enforcer = NetworkPolicies(EmbeddedClient(registry), network, node_name=NODE)
    enforcer.check_seconds = 0.02
    await enforcer.start()
    for _ in range(200):
        if network.checks >= 3:
            break
        await asyncio.sleep(0.01)
    await enforcer.stop()
    assert network.checks >= 3  # the first raised; the next ones still ran
    stopped = network.checks
    await asyncio.sleep(0.1)
    assert network.checks == stopped
    registry.db.close()


async def test_the_node_binds_a_pod_before_it_boots_it(harness: NodeHarness) -> None:
    network = FakeNetwork()
    await harness.start(network=network, resolv_conf=Path("/nonexistent"), serve_dns=False)
    harness.create({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "open", "namespace": "default"},
                    "spec": {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}})
    harness.create(pod("p1"))
    await harness.wait(lambda: ("run_pod_sandbox", runtime_id(harness.pod("p1") or {})) in harness.runtime.calls,
                       what="the pod booted")
    rid = runtime_id(harness.pod("p1") or {})
    assert f"bind {rid}" in network.log
    assert network.bound[rid].egress is not None
    # Its resolv.conf: the pods' resolver, the kubelet's search path.
    config = harness.runtime.sandboxes[rid].config
    assert config.dns is not None and config.dns.servers == ("10.213.0.1",)
    assert config.dns.searches == ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")


def test_resolv_conf_as_a_kubelet_writes_it(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 127.0.0.53\nsearch corp.example lab.example\noptions edns0 trust-ad\n")
    p = pod("p", annotations=None)
    p["metadata"]["namespace"] = "team"
    first = dns_config(p, "10.213.0.1", resolv_conf=host)
    assert first.resolv_conf() == ("nameserver 10.213.0.1\n"
                                   "search team.svc.cluster.local svc.cluster.local cluster.local corp.example "
                                   "lab.example\noptions ndots:5\n")
    p["spec"]["dnsPolicy"] = "Default"
    assert dns_config(p, "10.213.0.1", resolv_conf=host).resolv_conf() == (
        "nameserver 10.213.0.1\nsearch corp.example lab.example\noptions edns0 trust-ad\n")
    # Upstream's secure default for sandboxes: public resolvers only, reached by the pod's own egress.
    p["spec"].update({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["8.8.8.8", "1.1.1.1"]}})
    assert dns_config(p, "10.213.0.1", resolv_conf=host).resolv_conf() == "nameserver 8.8.8.8\nnameserver 1.1.1.1\n"
    p["spec"] = {"dnsConfig": {"nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3"], "searches": ["x.example"],
                               "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}
    got = dns_config(p, "10.213.0.1", resolv_conf=host)
    assert got.servers == ("10.213.0.1", "192.0.2.1", "192.0.2.2")  # three at most, as the kubelet keeps
    assert got.searches[-1] == "x.example" and got.options == ("ndots:2", "rotate")


async def test_peer_sets_kept_pod_by_pod_match_a_fresh_enforcers(world: World) -> None:
    """Peer sets are kept up to date one pod's change at a time (a claim or a refill among thousands of pods
    must not match every pod again): after any sequence of changes they hold what an enforcer that saw only
    the end state computes."""
    import random

    world.policy("in-from-db", {"podSelector": {}, "policyTypes": ["Ingress"],
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "db"}}}]}]})
    world.policy("to-blue", {"podSelector": {"matchLabels": {"app": "c"}}, "policyTypes": ["Egress"],
                             "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]},
                                        {"to": [{"podSelector": {"matchLabels": {"role": "db"}}}],
                                         "ports": [{"port": "postgres"}]}]})
    ns_kind = world.registry.kinds.by_kind("v1", "Namespace")
    world.enforcer.object_changed(ns_kind.key, world.registry.patch(
        ns_kind, "", "other", "application/merge-patch+json", {"metadata": {"labels": {"team": "blue"}}}), False)
    rng = random.Random(7)
    pods: dict[str, Obj] = {}
    for step in range(120):
        name = f"p{rng.randrange(25)}"
        if name in pods and rng.random() < 0.2:
            world.enforcer.pod_changed(pods.pop(name), True)
        else:
            ports = [{"name": "postgres", "containerPort": 5432 + rng.randrange(2)}] if rng.random() < 0.5 else []
            body = world.pod(name, {"role": rng.choice(["db", "web"]), "app": rng.choice(["c", "s"])},
                             ip=f"10.213.0.{10 + int(name[1:])}" if rng.random() < 0.8 else None,
                             namespace="other" if int(name[1:]) % 3 == 0 else "default",
                             containers=[{"name": "m", "image": "x", "ports": ports}])
            if rng.random() < 0.1:
                body["status"] = {"phase": "Succeeded"}
                world.enforcer.pod_changed(body, False)
            pods[name] = body
        if step % 10 == 9:
            await world.settle()
            fresh_network = FakeNetwork()
            fresh_network.addresses = dict(world.network.addresses)
            fresh = NetworkPolicies(EmbeddedClient(world.registry), fresh_network, node_name=NODE)
            await fresh.start()
            for body in pods.values():
                fresh.pod_changed(body, False)
            await fresh.settled()
            await fresh.stop()
            assert world.network.peers == fresh_network.peers, step
            assert any(s.addresses for s in fresh_network.peers.values())
            assert any(s.ports for s in fresh_network.peers.values())
