"""Egress and ingress by policy on the pod network, in a stand-in host with a stand-in internet.

The pods here are namespaces with the kernel's own stack (a stronger adversary than
gVisor's netstack: raw sockets, any source address). Every address is inside
namespaces these tests make (tests/integration/runtime/internet.py); the stand-in host
starts with IPv4 forwarding off, so what a pod reaches is what turbok's rules open.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runtime.internet import (
    DNS,
    METADATA,
    OTHER_PUBLIC,
    PUBLIC,
    PUBLIC_2,
    DnsServer,
    Internet,
    ask,
    internet,
)
from tests.integration.runtime.podnet import (
    Networks,
    link_namespaces,
    listen,
    namespace,
    nft_counter,
    reach,
    require_root_network,
    run_in,
    unique_network_args,
    wait_clean,
)
from turbok.runtime import netns
from turbok.runtime.netlink import Netlink
from turbok.runtime.network import PodNetwork
from turbok.runtime.network_dns import PodResolver
from turbok.runtime.network_policy import Binding, Block, PeerSet, PortRange, Profile, Rule

pytestmark = pytest.mark.integration

EVERYWHERE = ipaddress.IPv4Network("0.0.0.0/0")


def net4(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def egress(*rules: Rule) -> Binding:
    return Binding(egress=Profile(rules))


def tcp(first: int, last: int | None = None) -> PortRange:
    return PortRange("tcp", first, first if last is None else last)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Internet, PodNetwork]]:
    require_root_network()
    args = unique_network_args()
    with internet(args["name"]) as inet:
        networks = Networks(tmp_path)
        net = networks.make(inside=inet.host, host_netns=inet.host, **args)
        net.ensure_host()
        try:
            yield inet, net
        finally:
            networks.cleanup()


def sysctl(inside: Path, key: str) -> str:
    return netns.call_in(inside, lambda: Path("/proc/sys", key).read_text().strip())


def peer_of(listener: socket.socket) -> str | None:
    """The source address of the connection waiting on ``listener`` (accepted and closed), or None."""
    listener.settimeout(0.5)
    try:
        conn, peer = listener.accept()
    except TimeoutError:
        return None
    conn.close()
    return str(peer[0])


def test_a_pod_reaches_the_allowed_cidr_and_port_and_nothing_else(world: tuple[Internet, PodNetwork]) -> None:
    inet, net = world
    assert sysctl(inet.host, "net/ipv4/ip_forward") == "0"
    net.bind("pod-a", egress(Rule(blocks=(Block(net4("203.0.113.0/24")),), ports=(tcp(443),))))
    a, b = net.setup("pod-a"), net.setup("pod-b")  # pod-b: no policy
    with listen(inet.outside, 443, PUBLIC) as allowed, listen(inet.outside, 80, PUBLIC) as other_port, \
            listen(inet.outside, 443, OTHER_PUBLIC) as other_net, listen(inet.outside, 443, inet.private) as lan:
        assert reach(a.netns, PUBLIC, 443) == "connected"
        # NAT, and only for this: the outside sees the host's address, never the pod's.
        assert peer_of(allowed) == inet.host_address
        assert reach(a.netns, PUBLIC, 80) == "no answer"
        assert reach(a.netns, OTHER_PUBLIC, 443) == "no answer"
        assert reach(a.netns, inet.private, 443) == "no answer"
        assert reach(b.netns, PUBLIC, 443) == "no answer"
        assert [peer_of(s) for s in (allowed, other_port, other_net, lan)] == [None] * 4
    assert nft_counter(net, "egress not allowed by policy", inside=inet.host) >= 3
    assert nft_counter(net, "no egress from pods", inside=inet.host) >= 1
    assert sysctl(inet.host, "net/ipv4/ip_forward") == "1"  # turned on for the first pod with egress


def test_metadata_and_private_ranges_are_refused_unless_listed(world: tuple[Internet, PodNetwork]) -> None:
    inet, net = world
    net.bind("pod-a", egress(Rule(blocks=(Block(EVERYWHERE),))))  # "everywhere": upstream's ipBlock 0.0.0.0/0
    a = net.setup("pod-a")
    with listen(inet.outside, 80, PUBLIC) as public, listen(inet.outside, 80, METADATA) as metadata, \
            listen(inet.outside, 443, inet.private) as lan:
        assert reach(a.netns, PUBLIC, 80) == "connected"
        assert reach(a.netns, METADATA, 80) == "no answer"
        assert reach(a.netns, inet.private, 443) == "no answer"
        assert reach(a.netns, str(net.gateway), 22) == "no answer"  # the host itself: not egress
        assert reach(a.netns, inet.host_address, 22) == "no answer"
        # Listed explicitly, they are reached.
        net.bind("pod-a", egress(Rule(blocks=(Block(EVERYWHERE), Block(net4(f"{METADATA}/32")),
                                              Block(inet.uplink)))))
        net.sync()
        assert reach(a.netns, METADATA, 80) == "connected"
        assert reach(a.netns, inet.private, 443) == "connected"
        assert [peer_of(s) for s in (public, metadata, lan)] == [inet.host_address] * 3


def test_exceptions_and_port_ranges(world: tuple[Internet, PodNetwork]) -> None:
    inet, net = world
    block = Block(net4("203.0.113.0/24"), excepts=(net4(f"{PUBLIC}/32"),))
    net.bind("pod-a", egress(Rule(blocks=(block,), ports=(tcp(8000, 8100), PortRange("udp", 53, 53)))))
    a = net.setup("pod-a")
    with listen(inet.outside, 8080, PUBLIC_2), listen(inet.outside, 8100, PUBLIC_2), \
            listen(inet.outside, 8200, PUBLIC_2), listen(inet.outside, 8080, PUBLIC):
        assert reach(a.netns, PUBLIC_2, 8080) == "connected"
        assert reach(a.netns, PUBLIC_2, 8100) == "connected"
        assert reach(a.netns, PUBLIC_2, 8200) == "no answer"
        assert reach(a.netns, PUBLIC, 8080) == "no answer"  # excepted


def test_policy_changes_reach_connections_already_open(world: tuple[Internet, PodNetwork]) -> None:
    inet, net = world
    net.bind("pod-a", egress(Rule(blocks=(Block(EVERYWHERE),), ports=(tcp(443),))))
    a = net.setup("pod-a")
    with listen(inet.outside, 443, PUBLIC) as server:
        client = run_in(a.netns, lambda: socket.create_connection((PUBLIC, 443), timeout=2))
        conn, _ = server.accept()
        conn.settimeout(1)
        client.sendall(b"before")
        assert conn.recv(16) == b"before"
        net.bind("pod-a", None)  # the policy goes
        net.sync()
        client.sendall(b"after")
        with pytest.raises(TimeoutError):
            conn.recv(16)  # the pod's packets of the open connection are dropped too
        conn.sendall(b"reply")  # the outside's are still let in: nothing the pod can use alone
        client.close()
        conn.close()
        assert reach(a.netns, PUBLIC, 443) == "no answer"
        net.bind("pod-a", egress(Rule(blocks=(Block(EVERYWHERE),), ports=(tcp(443),))))
        net.sync()
        assert reach(a.netns, PUBLIC, 443) == "connected"


def test_dns_through_the_hosts_resolver_only_where_egress_is_allowed(world: tuple[Internet, PodNetwork],
                                                                     tmp_path: Path) -> None:
    inet, net = world
    upstream = DnsServer(inet.outside, DNS, {"pypi.example": PUBLIC})
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"search corp.example\nnameserver {DNS}\n")
    # pod-a may reach one public address (not the DNS server itself); pod-b nothing at all.
    net.bind("pod-a", egress(Rule(blocks=(Block(net4(f"{PUBLIC}/32")),))))
    a, b = net.setup("pod-a"), net.setup("pod-b")
    gateway = str(net.gateway)

    async def scenario() -> None:
        resolver = PodResolver(gateway, resolv_conf=resolv, netns_path=inet.host)
        await resolver.start()
        try:
            found = await asyncio.to_thread(ask, a.netns, gateway, "pypi.example")
            assert found == (0, [PUBLIC])
            assert await asyncio.to_thread(ask, a.netns, gateway, "pypi.example", tcp=True) == (0, [PUBLIC])
            assert await asyncio.to_thread(ask, a.netns, gateway, "nothing.example") == (3, [])
            # Cluster names are answered here: the host's resolvers never see them.
            assert await asyncio.to_thread(ask, a.netns, gateway, "db.default.svc.cluster.local") == (3, [])
            assert "db.default.svc.cluster.local" not in upstream.asked
            # The resolver's own queries are the host's; the pod cannot reach the DNS server itself.
            assert await asyncio.to_thread(ask, a.netns, DNS, "pypi.example") is None
            assert await asyncio.to_thread(ask, b.netns, gateway, "pypi.example") is None  # no egress, no DNS
            assert await asyncio.to_thread(ask, b.netns, gateway, "pypi.example", tcp=True) is None
        finally:
            await resolver.stop()
            upstream.close()

    asyncio.run(scenario())
    assert upstream.asked.count("pypi.example") == 2


def test_pods_reach_each_other_only_where_both_policies_allow(world: tuple[Internet, PodNetwork]) -> None:
    inet, net = world
    a, b, c = net.setup("pod-a"), net.setup("pod-b"), net.setup("pod-c")
    net.set_peers({"s-0000aaaa": PeerSet(addresses=frozenset({b.ip})),
                   "s-0000bbbb": PeerSet(addresses=frozenset({a.ip}))})
    net.bind("pod-a", egress(Rule(sets=("s-0000aaaa",), ports=(tcp(8080),))))
    net.sync()
    with listen(b.netns, 8080), listen(b.netns, 9090), listen(c.netns, 8080):
        assert reach(a.netns, b.ip, 8080) == "no answer"  # b's ingress does not allow it yet
        net.bind("pod-b", Binding(ingress=Profile((Rule(sets=("s-0000bbbb",)),))))
        net.sync()
        assert reach(a.netns, b.ip, 8080) == "connected"
        assert reach(a.netns, b.ip, 9090) == "no answer"  # a's egress: port 8080 only
        assert reach(a.netns, c.ip, 8080) == "no answer"  # c is not in a's peers
        assert reach(c.netns, b.ip, 8080) == "no answer"  # c has no egress
        assert reach(b.netns, a.ip, 8080) == "no answer"  # b has no egress
        assert run_in(inet.host, lambda: reach(None, b.ip, 9090)) == "connected"  # the host always reaches pods


def test_a_pod_cannot_borrow_another_pods_address(world: tuple[Internet, PodNetwork]) -> None:
    inet, net = world
    net.bind("pod-b", egress(Rule(blocks=(Block(EVERYWHERE),))))
    a, b = net.setup("pod-a"), net.setup("pod-b")

    def forge() -> None:  # pod-a takes pod-b's address as its own (raw-socket power: the kernel's stack here)
        with Netlink() as nl:
            link = nl.link("eth0")
            assert link is not None
            nl.add_address(link.index, ipaddress.IPv4Interface(f"{b.ip}/32"))

    netns.call_in(a.netns, forge)

    def connect_as_b() -> str:
        s = socket.socket()
        s.settimeout(0.6)
        s.bind((b.ip, 0))
        try:
            s.connect((PUBLIC, 80))
            return "connected"
        except OSError:
            return "no answer"
        finally:
            s.close()

    with listen(inet.outside, 80, PUBLIC) as server:
        assert run_in(a.netns, connect_as_b) == "no answer"
        assert peer_of(server) is None
        assert reach(b.netns, PUBLIC, 80) == "connected"
    assert nft_counter(net, "not the port's own address", inside=inet.host, family="bridge") > 0


def test_the_hosts_other_interfaces_still_do_not_forward(world: tuple[Internet, PodNetwork]) -> None:
    inet, net = world
    tag = net.name
    with namespace(f"{tag}l") as lan:
        link_namespaces(inet.host, lan, left_ip="10.222.9.1/30", right_ip="10.222.9.2/30", name="lan0")
        net.bind("pod-a", egress(Rule(blocks=(Block(EVERYWHERE),))))
        a = net.setup("pod-a")
        with listen(lan, 22, "10.222.9.2") as lan_server, listen(inet.outside, 80, PUBLIC):
            assert reach(a.netns, PUBLIC, 80) == "connected"  # forwarding is on, for the pods
            assert sysctl(inet.host, "net/ipv4/ip_forward") == "1"
            # The internet side cannot use the host as a router into its LAN.
            route = ["ip", "netns", "exec", inet.outside.name, "ip", "route", "add", "10.222.9.0/30", "via",
                     inet.host_address]
            subprocess.run(route, check=True, capture_output=True)
            assert reach(inet.outside, "10.222.9.2", 22) == "no answer"
            assert nft_counter(net, "this host did not forward before turbok", inside=inet.host) > 0
            # A restarted control plane keeps it so (the mark in its state directory).
            again = PodNetwork(net.state_dir, str(net.network), name=net.name, host_netns=inet.host,
                               shared_dir=net.shared_dir)
            again.ensure_host()
            assert reach(inet.outside, "10.222.9.2", 22) == "no answer"
            assert lan_server is not None


def _table(net: PodNetwork, inside: Path) -> dict[str, Any]:
    out = subprocess.run(["ip", "netns", "exec", inside.name, "nft", "-j", "list", "ruleset"], check=True,
                         capture_output=True, text=True).stdout
    items = json.loads(out)["nftables"]
    chains = [i["chain"]["name"] for i in items if "chain" in i and i["chain"]["table"] == net.table]
    sets = {i.get("set", i.get("map", {})).get("name"): i.get("set", i.get("map", {})).get("elem", [])
            for i in items if ("set" in i or "map" in i) and i.get("set", i.get("map", {})).get("table") == net.table}
    return {"chains": chains, "sets": sets}


def test_two_hundred_pods_come_and_go_and_leave_nothing_behind(tmp_path: Path) -> None:
    require_root_network()
    args = {**unique_network_args(), "cidr": "10.77.0.0/22"}  # the stand-in host's own range
    with namespace(f"{args['name']}h") as host:
        networks = Networks(tmp_path)
        net = networks.make(inside=host, host_netns=host, **args)
        try:
            net.ensure_host()
            empty = _table(net, host)
            ids = [f"pod-{i}" for i in range(200)]
            profiles = [egress(Rule(blocks=(Block(EVERYWHERE),), ports=(tcp(443),))),
                        egress(Rule(sets=("s-00000001",))),
                        Binding(ingress=Profile((Rule(sets=("s-00000001",), ports=(tcp(8080),)),)))]
            net.set_peers({"s-00000001": PeerSet(addresses=frozenset({"10.77.0.9"}))})
            started = time.perf_counter()
            for i, id in enumerate(ids):
                net.bind(id, profiles[i % 3])
                net.setup(id)
            made = _table(net, host)
            assert net.bridge_ports() == 200  # its bridge's ports, read in the stand-in host (netlink)
            assert len(made["sets"]["sources"]) == 200
            assert len(made["sets"]["egress"]) == 134 and len(made["sets"]["ingress"]) == 66
            assert len([c for c in made["chains"] if c.startswith(("e-", "i-"))]) == 3
            for id in ids:
                net.teardown(id)
                net.bind(id, None)
            net.sync()
            elapsed = time.perf_counter() - started
            assert _table(net, host) == empty
            assert wait_clean(net, inside=host) == {}
            assert net.bridge_ports() == 0
            assert elapsed < 60, elapsed
        finally:
            networks.cleanup()


def test_a_restart_keeps_every_element_and_another_homes_start_leaves_them_alone(
        world: tuple[Internet, PodNetwork], tmp_path: Path) -> None:
    inet, net = world
    net.set_peers({"s-0000cccc": PeerSet(addresses=frozenset({"10.1.2.3"}))})
    net.bind("pod-a", egress(Rule(blocks=(Block(EVERYWHERE),), ports=(tcp(443),)), Rule(sets=("s-0000cccc",))))
    a = net.setup("pod-a")
    before = _table(net, inet.host)
    with listen(inet.outside, 443, PUBLIC):
        # A restarted control plane: the tables are taken as they are, nothing is rewritten, nothing lost.
        again = PodNetwork(net.state_dir, str(net.network), name=net.name, host_netns=inet.host,
                           shared_dir=net.shared_dir)
        again.ensure_host()
        assert _table(net, inet.host) == before
        assert reach(a.netns, PUBLIC, 443) == "connected"  # no gap: its egress never went
        again.bind("pod-a", egress(Rule(blocks=(Block(EVERYWHERE),), ports=(tcp(443),)), Rule(sets=("s-0000cccc",))))
        again.set_peers({"s-0000cccc": PeerSet(addresses=frozenset({"10.1.2.3"}))})
        again.sync()
        assert _table(net, inet.host) == before  # the node bound what was there: nothing to change
        # Another home's control plane starting on the same machine leaves pod-a's elements be (and its
        # address: one book for the bridge, tests/integration/runtime/test_pod_network.py).
        other = PodNetwork(tmp_path / "other-home", str(net.network), name=net.name, host_netns=inet.host,
                           shared_dir=net.shared_dir)
        other.ensure_host()
        other.sync()
        assert reach(a.netns, PUBLIC, 443) == "connected"
        assert _table(net, inet.host) == before
        # The first one's own changes still apply; the second's (none) never take them back.
        again.bind("pod-a", None)
        again.sync()
        assert reach(a.netns, PUBLIC, 443) == "no answer"


def test_a_home_with_other_rules_costs_the_others_their_policy_only_until_they_sync(
        world: tuple[Internet, PodNetwork], tmp_path: Path) -> None:
    # Another home with other rules (another turbok version, other TURBOK_POD_HOST_PORTS) makes the tables
    # anew. This home's pod stays reachable from the host and is denied, never opened, meanwhile; this home's
    # next sync finds the tables changed and puts its elements back (it used to fail on every sync after).
    inet, net = world
    for id in ("pod-a", "pod-c"):
        net.bind(id, egress(Rule(blocks=(Block(EVERYWHERE),), ports=(tcp(443),))))
    a, c = net.setup("pod-a"), net.setup("pod-c")
    with listen(inet.outside, 443, PUBLIC), listen(a.netns, 9000):
        assert reach(a.netns, PUBLIC, 443) == "connected"
        other = PodNetwork(tmp_path / "other-home", str(net.network), name=net.name, host_netns=inet.host,
                           shared_dir=net.shared_dir, host_ports=(9999,))
        assert other.rules_version() != net.rules_version()
        other.ensure_host()
        assert run_in(inet.host, lambda: reach(None, a.ip, 9000)) == "connected"  # its source check kept
        assert reach(a.netns, PUBLIC, 443) == "no answer"  # its policy went with the old tables
        # This home's next transaction (a teardown's) meets the new tables: it reads them and plans from
        # what is there: pod-c's elements go, pod-a's come back.
        net.bind("pod-c", None)
        net.teardown("pod-c")
        assert f'"{c.ip}"' not in json.dumps(_table(net, inet.host))
        assert reach(a.netns, PUBLIC, 443) == "connected"
        b = other.setup("pod-b")
        net.bind("pod-a", egress(Rule(blocks=(Block(EVERYWHERE),), ports=(tcp(443), tcp(8443)))))
        net.sync()  # and its later ones apply as they did
        assert reach(a.netns, PUBLIC, 443) == "connected"
        with listen(b.netns, 9001):
            assert run_in(inet.host, lambda: reach(None, b.ip, 9001)) == "connected"  # the other's untouched
        assert reach(b.netns, PUBLIC, 443) == "no answer"
        other.teardown("pod-b")


def test_check_puts_back_what_the_tables_lost_of_this_homes_pods(world: tuple[Internet, PodNetwork],
                                                                  tmp_path: Path) -> None:
    inet, net = world
    net.bind("pod-a", egress(Rule(blocks=(Block(EVERYWHERE),), ports=(tcp(443),))))
    a = net.setup("pod-a")
    before = _table(net, inet.host)
    assert net.check() == 0  # all as applied: nothing done
    with listen(inet.outside, 443, PUBLIC):
        # An element removed by hand.
        subprocess.run(["ip", "netns", "exec", inet.host.name, "nft", "delete", "element", "inet", net.table,
                        "egress", f"{{ {a.ip} }}"], check=True, capture_output=True)
        assert reach(a.netns, PUBLIC, 443) == "no answer"
        assert net.check() > 0
        assert reach(a.netns, PUBLIC, 443) == "connected" and _table(net, inet.host) == before
        # Another home with other rules made the tables anew, and nothing changed here since.
        other = PodNetwork(tmp_path / "other-home", str(net.network), name=net.name, host_netns=inet.host,
                           shared_dir=net.shared_dir, host_ports=(9999,))
        other.ensure_host()
        assert reach(a.netns, PUBLIC, 443) == "no answer"
        assert net.check() > 0
        assert reach(a.netns, PUBLIC, 443) == "connected"
        assert net.check() == 0
