"""The pod network with real namespaces, veths, a bridge and nftables (no gVisor: see test_pod_network_gvisor).

A pod here is the namespace ``setup`` makes, with the kernel's own stack in it:
a stronger adversary than gVisor's netstack (it could use raw sockets). Egress is
tested inside a stand-in host namespace with forwarding switched on, so the
rules, and not the host's ``ip_forward``, are what stops it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.runtime.podnet import (
    Networks,
    accepted,
    leftovers,
    link_namespaces,
    listen,
    namespace,
    nft_counter,
    reach,
    require_root_network,
    run_in,
    unique_network_args,
    wait_clean,
    write_sysctl,
)
from turbok.runtime import netlink, netns
from turbok.runtime.network import NotAttached, PodNetwork, PodUnreachable, PortNotListening

pytestmark = pytest.mark.integration


@pytest.fixture
def networks(tmp_path: Path) -> Iterator[Networks]:
    require_root_network()
    made = Networks(tmp_path)
    yield made
    made.cleanup()


def eth0_ipv4(path: Path) -> list[str]:
    def read() -> list[str]:
        with netlink.Netlink() as nl:
            link = nl.link("eth0")
            assert link is not None
            return [str(a.ip) for a in nl.addresses(link.index) if isinstance(a.ip, ipaddress.IPv4Interface)]

    return netns.call_in(path, read)


def test_a_pod_gets_a_namespace_an_address_on_the_bridge_and_the_host_reaches_it(networks: Networks) -> None:
    net = networks.make()
    net.ensure_host()
    assert net.bridge_ports() == 0
    a = net.setup("pod-a")
    assert net.bridge_ports() == 1  # sysfs of this namespace: the bridge's one port, pod-a's veth
    assert a.netns == net.netns_path("pod-a") and netns.exists(a.netns)
    assert ipaddress.IPv4Address(a.ip) in net.network and a.gateway == str(net.gateway)
    assert a.prefix == net.network.prefixlen
    assert eth0_ipv4(a.netns) == [f"{a.ip}/{a.prefix}"]
    with listen(a.netns, 8080) as server:
        assert reach(None, a.ip, 8080) == "connected"
        assert accepted(server) == 1
    assert reach(None, a.ip, 8081) == "refused"  # the pod answers: nothing listens there
    assert net.attachment("pod-a") == a and net.ids() == ["pod-a"]
    # The bridge's port: isolated, no learning, no unknown-unicast flooding; the pod's MAC fixed on the host.
    detail = subprocess.run(["bridge", "-d", "link", "show", "dev", net.veth(ipaddress.IPv4Address(a.ip))],
                            capture_output=True, text=True, check=True).stdout
    assert "isolated on" in detail and "learning off" in detail and " flood off" in detail
    neigh = subprocess.run(["ip", "neigh", "show", a.ip, "dev", net.bridge], capture_output=True, text=True).stdout
    assert net.mac(ipaddress.IPv4Address(a.ip)) in neigh and "PERMANENT" in neigh


def test_every_pod_keeps_its_static_arp_entry_as_pods_come_and_go(networks: Networks) -> None:
    # The bridge has a fixed MAC: were it to take its ports' lowest, a new port could change it, and the
    # kernel flushes a device's ARP table (permanent entries too) when its MAC changes.
    net = networks.make()
    pods = [net.setup(f"pod-{i}") for i in range(8)]
    net.teardown("pod-3")
    pods.append(net.setup("pod-8"))
    with netlink.Netlink() as nl:
        bridge = nl.link(net.bridge)
        assert bridge is not None
        held = {n.ip: n.mac for n in nl.neighbours(bridge.index) if n.state & netlink.NUD_PERMANENT}
    want = {p.ip: net.mac(ipaddress.IPv4Address(p.ip)) for p in pods if p.netns != net.netns_path("pod-3")}
    assert held == want
    assert bridge.mac == net.mac(net.gateway)


def test_setup_is_idempotent_and_restores_what_runsc_takes_away(networks: Networks) -> None:
    net = networks.make()
    a = net.setup("pod-a")  # makes the host part itself on first use
    assert net.setup("pod-a") == a

    def steal() -> None:  # what runsc --network=sandbox does when it boots: addresses and routes leave the kernel
        with netlink.Netlink() as nl:
            link = nl.link("eth0")
            assert link is not None
            nl.delete_address(link.index, ipaddress.IPv4Interface(f"{a.ip}/{a.prefix}"))

    netns.call_in(a.netns, steal)
    assert eth0_ipv4(a.netns) == []
    assert net.setup("pod-a") == a
    assert eth0_ipv4(a.netns) == [f"{a.ip}/{a.prefix}"]
    with listen(a.netns, 9000):
        assert reach(None, a.ip, 9000) == "connected"


def test_the_address_is_kept_across_restarts_and_released_by_teardown(networks: Networks) -> None:
    net = networks.make()
    a = net.setup("pod-a")
    b = net.setup("pod-b")
    assert a.ip != b.ip
    # A new control plane process:
    restarted = PodNetwork(net.state_dir, str(net.network), name=net.name, shared_dir=net.shared_dir)
    assert restarted.setup("pod-b") == b and restarted.setup("pod-a") == a
    restarted.teardown("pod-a")
    restarted.teardown("pod-a")  # idempotent
    assert restarted.attachment("pod-a") is None and restarted.ids() == ["pod-b"]
    assert not netns.exists(a.netns)
    c = restarted.setup("pod-c")
    assert c.ip not in (a.ip, b.ip)  # round robin: a released address is not reused at once


def test_two_homes_on_one_bridge_get_their_own_addresses_and_keep_their_own_pods(networks: Networks,
                                                                                 tmp_path: Path) -> None:
    # The bug: the book of addresses was per home, the bridge per machine: two control planes handed out
    # the same addresses on one bridge. Now one book per bridge for the machine, each entry with its owner.
    import shutil

    net = networks.make()
    other_home = tmp_path / "other-home"
    other = PodNetwork(other_home / "network", str(net.network), name=net.name, shared_dir=net.shared_dir)
    a, b = net.setup("pod-a"), other.setup("pod-b")
    assert a.ip != b.ip
    for att in (a, b):
        with listen(att.netns, 9000):
            assert reach(None, att.ip, 9000) == "connected"
    assert net.ids() == ["pod-a"] and other.ids() == ["pod-b"]
    # A home whose control plane died and which was then deleted, its pod's namespace gone with the sandbox:
    # nothing can use its address any more, and the next home to open the book collects it.
    c = other.setup("pod-c")
    netns.remove(c.netns)
    crashed = PodNetwork(tmp_path / "crashed" / "network", str(net.network), name=net.name,
                         shared_dir=net.shared_dir)
    d = crashed.setup("pod-d")
    crashed._ipam.close()  # its process ends
    netns.remove(d.netns)
    shutil.rmtree(tmp_path / "crashed")
    restarted = PodNetwork(net.state_dir, str(net.network), name=net.name, shared_dir=net.shared_dir)
    assert restarted.ids() == ["pod-a"]
    book = net.shared_dir / net.bridge / "ipam"
    held = {p.name for p in book.iterdir() if p.is_symlink()}
    assert held == {a.ip, b.ip, c.ip}  # d's collected; c's kept (its home's control plane runs)
    # Uninstalling one home keeps the bridge while the other's pods are on it.
    assert net.remove_host() is False and restarted.remove_host() is False
    assert not netns.exists(a.netns) and netns.exists(b.netns)
    with listen(b.netns, 9000):
        assert reach(None, b.ip, 9000) == "connected"
    assert other.remove_host() is True
    assert not netns.exists(b.netns)


def test_an_address_in_use_outside_the_book_is_never_taken_over(networks: Networks, tmp_path: Path) -> None:
    # A home still on its own book of before (its control plane not restarted since the upgrade) has a pod
    # on the bridge the machine's book does not know: a new pod skips its address instead of cutting it off.
    net = networks.make()
    old_style = PodNetwork(tmp_path / "old-home" / "network", str(net.network), name=net.name,
                           shared_dir=tmp_path / "its-own-book")
    x = old_style.setup("pod-x")
    a = net.setup("pod-a")  # the machine's book is empty: its first free address is x's
    assert a.ip != x.ip
    for att in (a, x):
        with listen(att.netns, 9000):
            assert reach(None, att.ip, 9000) == "connected"
    old_style.teardown("pod-x")


def test_pods_do_not_reach_each_other_or_the_host_outside_its_listed_ports(networks: Networks) -> None:
    host_port, closed_port = 18700 + os.getpid() % 1000, 19700 + os.getpid() % 1000
    net = networks.make(host_ports=(host_port,))
    a, b = net.setup("pod-a"), net.setup("pod-b")
    with listen(b.netns, 8080), listen(None, host_port, net.gateway.compressed) as open_port, \
            listen(None, closed_port, net.gateway.compressed) as other_port:
        assert reach(a.netns, b.ip, 8080) == "no answer"  # pod to pod: isolated
        assert reach(None, b.ip, 8080) == "connected"  # the host still reaches b
        assert reach(a.netns, a.gateway, host_port) == "connected"  # a listed host port
        assert accepted(open_port) == 1
        assert reach(a.netns, a.gateway, closed_port) == "no answer"  # an unlisted one, though it listens
        assert accepted(other_port) == 0
    assert nft_counter(net, "pods reach the host only on host-ports") > 0


def test_egress_is_dropped_even_where_the_host_forwards(networks: Networks, tmp_path: Path) -> None:
    """In a stand-in host with ip_forward=1 and a route to an 'outside' namespace, only the rules stop a pod."""
    tag = unique_network_args()["name"]
    with namespace(f"{tag}-host") as host, namespace(f"{tag}-out") as outside:
        net = networks.make(inside=host)
        run_in(host, net.ensure_host)
        up_net = ipaddress.IPv4Network(f"10.223.{os.getpid() % 250}.0/30")  # the stand-in host's uplink
        link_namespaces(host, outside, left_ip=f"{up_net[1]}/30", right_ip=f"{up_net[2]}/30", name="up0")
        write_sysctl(host, "net/ipv4/ip_forward", "1")
        a = run_in(host, lambda: net.setup("pod-a"))
        with listen(outside, 443) as server:
            # Control: without turbok's table the stand-in host forwards the pod's packets out.
            subprocess.run(["ip", "netns", "exec", host.name, "nft", "delete", "table", "inet", net.table],
                           check=True, capture_output=True)
            assert reach(a.netns, str(up_net[2]), 443) == "connected"
            assert accepted(server) == 1
            run_in(host, net.ensure_host)
            assert reach(a.netns, str(up_net[2]), 443) == "no answer"
            assert reach(a.netns, str(up_net[1]), 22) == "no answer"  # the host's other address: not for pods
            assert accepted(server) == 0
            assert nft_counter(net, "no egress from pods", inside=host) > 0
            # Nor is anything forwarded in: the outside cannot open a connection to the pod.
            with listen(a.netns, 8080) as pod_server:
                assert reach(outside, a.ip, 8080) == "no answer"
                assert accepted(pod_server) == 0
            assert nft_counter(net, "nothing forwarded into pods", inside=host) > 0
        run_in(host, net.remove_host)
        assert wait_clean(net, inside=host) == {}


def test_ensure_host_is_idempotent_and_rebuilds_after_a_reboot(networks: Networks) -> None:
    net = networks.make()
    net.ensure_host()
    net.ensure_host()
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert tables.count(f"table inet {net.table}\n") == 1
    a = net.setup("pod-a")
    # A reboot: /run (the namespaces), the bridge and the rules are gone; the home (IPAM) is not.
    netns.remove(a.netns)
    with netlink.Netlink() as nl:
        nl.delete_link(net.bridge)
    subprocess.run(["nft", "delete", "table", "inet", net.table], check=True)
    after = PodNetwork(net.state_dir, str(net.network), name=net.name, shared_dir=net.shared_dir)
    assert after.setup("pod-a") == a  # rebuilds the host part by itself, same address
    assert subprocess.run(["nft", "list", "table", "inet", net.table], capture_output=True).returncode == 0
    with listen(a.netns, 8080):
        assert reach(None, a.ip, 8080) == "connected"


def test_a_range_in_use_on_the_host_is_refused(networks: Networks) -> None:
    first = networks.make()
    first.ensure_host()
    clash = networks.make(cidr=str(first.network))
    with pytest.raises(Exception, match=r"overlaps .* on " + first.bridge):
        clash.ensure_host()
    with netlink.Netlink() as nl:
        assert nl.link(clash.bridge) is None  # nothing made


class Crash(BaseException):
    """Stands for the process dying at that point: no handler runs."""


@pytest.mark.parametrize("step", ["add_veth", "set_bridge_port", "add_address", "set_default_route"])
def test_a_crash_mid_setup_is_repaired_by_the_next_setup(networks: Networks, monkeypatch: pytest.MonkeyPatch,
                                                         step: str) -> None:
    net = networks.make()
    net.ensure_host()

    def crash(*args: object, **kw: object) -> None:
        raise Crash(step)

    with monkeypatch.context() as m:
        m.setattr(netlink.Netlink, step, crash)
        with pytest.raises(Crash):
            net.setup("pod-a")
    restarted = PodNetwork(net.state_dir, str(net.network), name=net.name, shared_dir=net.shared_dir)
    a = restarted.setup("pod-a")
    with listen(a.netns, 8080):
        assert reach(None, a.ip, 8080) == "connected"
    restarted.teardown("pod-a")
    assert wait_clean(restarted) == {}


def test_a_crash_mid_teardown_is_finished_by_the_next_teardown(networks: Networks,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    net = networks.make()
    a = net.setup("pod-a")
    with monkeypatch.context() as m:
        m.setattr(netns, "remove", lambda path: (_ for _ in ()).throw(Crash("remove")))
        with pytest.raises(Crash):
            net.teardown("pod-a")
    assert net.attachment("pod-a") == a  # the address stays until everything else is gone
    PodNetwork(net.state_dir, str(net.network), name=net.name, shared_dir=net.shared_dir).teardown("pod-a")
    assert wait_clean(net) == {}


def test_a_namespace_file_left_without_its_mount_is_reused(networks: Networks) -> None:
    net = networks.make()
    net.ensure_host()
    path = net.netns_path("pod-a")
    path.touch()  # a crash between creating the file and binding the namespace on it
    a = net.setup("pod-a")
    assert netns.exists(path)
    with listen(a.netns, 8080):
        assert reach(None, a.ip, 8080) == "connected"


def test_200_setups_and_teardowns_leave_nothing_behind(networks: Networks) -> None:
    net = networks.make()
    net.ensure_host()
    setups, teardowns = [], []
    for i in range(200):
        t0 = time.perf_counter()
        a = net.setup(f"pod-{i % 7}-{i}")
        setups.append(time.perf_counter() - t0)
        # Usable at once: the kernel enables a bridge port from a work queue unless made to now, and
        # until then drops what the host sends (a first SYN lost costs a connection 1 s).
        veth = net.veth(ipaddress.IPv4Address(a.ip))
        assert Path(f"/sys/class/net/{veth}/brport/state").read_text().strip() == "3", i  # forwarding
        assert Path(f"/sys/class/net/{net.bridge}/operstate").read_text().strip() == "up", i
        if i % 50 == 0:  # now and then, check the pod is really there
            with listen(a.netns, 8080):
                assert reach(None, a.ip, 8080) == "connected"
        t0 = time.perf_counter()
        net.teardown(f"pod-{i % 7}-{i}")
        teardowns.append(time.perf_counter() - t0)
    assert wait_clean(net) == {}
    assert leftovers(net) == {"veths": [], "addresses": [], "neighbours": [], "netns files": [],
                              "netns mounts": [], "ipam entries": []}
    setups.sort()
    teardowns.sort()
    # A budget of a few ms per pod on a 2-core machine (bench/network.py measures it properly).
    assert setups[100] < 0.02 and teardowns[100] < 0.02, (setups[100], teardowns[100])


async def test_connect_reaches_a_pods_port_and_says_when_nothing_listens(networks: Networks) -> None:
    net = networks.make()
    a = net.setup("pod-a")

    with listen(a.netns, 7000) as server:
        reader, writer = await net.connect("pod-a", 7000)
        conn, _ = server.accept()
        writer.write(b"ping")
        await writer.drain()
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        assert await reader.readexactly(4) == b"pong"
        writer.close()
        conn.close()
        reader, writer = await net.connect(a.ip, 7000)  # by address too
        writer.close()
    with pytest.raises(PortNotListening, match=f"pod pod-a \\({a.ip}\\): nothing listens on port 7001"):
        await net.connect("pod-a", 7001)
    net.teardown("pod-a")
    with pytest.raises(NotAttached):
        await net.connect("pod-a", 7000)
    with pytest.raises(PodUnreachable):
        await net.connect(a.ip, 7000, timeout=0.5)  # its namespace is gone: nothing answers


def test_teardown_cuts_the_pod_off_even_while_something_holds_its_namespace(networks: Networks) -> None:
    net = networks.make()
    a = net.setup("pod-a")
    holder = os.open(a.netns, os.O_RDONLY)  # as a sandbox not yet dead would
    try:
        with listen(a.netns, 8080):
            net.teardown("pod-a")
            assert reach(None, a.ip, 8080, timeout=0.5) == "no answer"
    finally:
        os.close(holder)
    assert wait_clean(net) == {}


def test_sockets_of_the_helpers_stay_in_their_namespace() -> None:
    # call_in never leaves a thread of ours in another namespace: the caller's stays the host's.
    require_root_network()
    before = os.readlink("/proc/thread-self/ns/net")
    with namespace(f"{unique_network_args()['name']}-x") as other:
        inside = netns.call_in(other, lambda: os.readlink("/proc/thread-self/ns/net"))
        assert inside != before
    assert os.readlink("/proc/thread-self/ns/net") == before
    assert socket.gethostname()  # the process is unharmed


def test_netlink_errors_say_what_failed_with_the_kernels_errno() -> None:
    require_root_network()
    with netlink.Netlink() as nl:
        assert nl.link("no-such-link0") is None
        assert nl.delete_link("no-such-link0") is False
        with pytest.raises(OSError, match=r"RTNETLINK: add address 10\.9\.9\.9/32 to link 999999") as e:
            nl.add_address(999999, ipaddress.IPv4Interface("10.9.9.9/32"))
        assert e.value.errno == 19  # ENODEV
        lo = nl.link("lo")
        assert lo is not None and lo.index == 1 and lo.flags & 1
