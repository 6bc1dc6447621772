"""The pod network's choices that need no root: the range, the names, the rules' shape, the settings."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from turbok.runtime.network import (
    DEFAULT_CIDR,
    SHARED_DIR,
    Attachment,
    NetworkUnavailable,
    PodNetwork,
)


@pytest.fixture(autouse=True)
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's address books in the test's directory, never /var/lib's."""
    monkeypatch.setenv("TURBOK_NETWORK_STATE", str(tmp_path / "machine"))


def test_the_default_range_is_private_and_clear_of_the_usual_ones(tmp_path: Path) -> None:
    net = PodNetwork(tmp_path).network
    assert str(net) == DEFAULT_CIDR and net.is_private
    for used in ("172.17.0.0/16", "10.244.0.0/16", "10.42.0.0/16", "10.96.0.0/12", "10.88.0.0/16",
                 "192.168.0.0/16", "10.0.2.0/24", "192.0.2.0/24"):
        assert not net.overlaps(ipaddress.IPv4Network(used)), used


@pytest.mark.parametrize("cidr, why", [
    ("8.8.0.0/16", "not a private range"),
    ("127.0.0.0/8", "not a private range"),
    ("169.254.0.0/16", "not a private range"),
    ("10.0.0.0/30", "/8 to /29"),
    ("10.0.0.0/7", "not a private range"),
    ("fd00::/64", "not an IPv4 network"),
    ("10.1.2.3/16", "not an IPv4 network"),  # host bits set: a typo, not a range
    ("banana", "not an IPv4 network"),
])
def test_a_bad_range_is_refused_with_the_reason(tmp_path: Path, cidr: str, why: str) -> None:
    with pytest.raises(NetworkUnavailable, match=why):
        PodNetwork(tmp_path, cidr)


def test_names_fit_linux_interface_names_and_the_mac_carries_the_address(tmp_path: Path) -> None:
    net = PodNetwork(tmp_path, "10.0.0.0/8", name="turbok")
    last = ipaddress.IPv4Address("10.255.255.254")
    assert net.bridge == "turbok0" and net.table == "turbok"
    assert net.veth(last) == "turbokv0afffffe" and len(net.veth(last)) <= 15
    assert net.mac(ipaddress.IPv4Address("10.213.0.2")) == "0a:58:0a:d5:00:02"
    assert net.netns_path("tk0123") == Path("/run/netns/turbok-tk0123")
    with pytest.raises(ValueError):
        PodNetwork(tmp_path, name="toolongname")
    with pytest.raises(ValueError):
        PodNetwork(tmp_path, name="Bad-Name")


def test_ids_that_could_escape_the_namespace_directory_are_refused(tmp_path: Path) -> None:
    from turbok.runtime.network import NetworkError

    net = PodNetwork(tmp_path)
    for bad in ("../x", "a/b", "", ".hidden", "x" * 65, "a b"):
        with pytest.raises(NetworkError, match="invalid id"):
            net.setup(bad)
        with pytest.raises(NetworkError, match="invalid id"):
            net.teardown(bad)
    assert not (tmp_path / "ipam").exists()  # nothing recorded


def test_the_rules_drop_egress_forwarding_and_unlisted_host_ports(tmp_path: Path) -> None:
    rules = PodNetwork(tmp_path, "10.213.0.0/16", host_ports=(8080, 53)).ruleset()
    # One atomic replacement of our own tables only: never a flush of the host's ruleset.
    assert rules.startswith("table inet turbok\ndelete table inet turbok\ntable bridge turbok\n"
                            "delete table bridge turbok\ntable inet turbok {")
    assert "flush ruleset" not in rules
    # Without a policy element, what a pod sends through the host is dropped, and nothing comes in.
    assert 'ip saddr vmap @egress\n\t\tcounter drop comment "no egress from pods"' in rules
    assert 'ip daddr vmap @ingress\n\t\tcounter drop comment "nothing forwarded into pods"' in rules
    # NAT only for what leaves the pods' network after the forward rules accepted it.
    assert 'ip saddr 10.213.0.0/16 ip saddr != 10.213.0.1 oifname != "turbok0" masquerade' in rules
    assert "ip saddr 10.213.0.0/16 ip daddr 10.213.0.1 meta l4proto { tcp, udp } th dport @host-ports accept" in rules
    assert "ip daddr 10.213.0.1 meta l4proto { tcp, udp } th dport 53 ip saddr @dns accept" in rules
    assert "elements = { 53, 8080 }" in rules
    assert 'iifname "turbokv*" jump from-port' in rules and "iifname . ip saddr @sources accept" in rules
    assert "elements" not in PodNetwork(tmp_path).ruleset()  # no host port open by default


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    net = PodNetwork.from_env(tmp_path, {"TURBOK_POD_CIDR": "10.77.0.0/20", "TURBOK_POD_HOST_PORTS": "53, 8080"})
    assert str(net.network) == "10.77.0.0/20" and str(net.gateway) == "10.77.0.1"
    assert net.host_ports == (53, 8080)
    assert str(PodNetwork.from_env(tmp_path, {}).network) == DEFAULT_CIDR
    with pytest.raises(NetworkUnavailable, match="TURBOK_POD_HOST_PORTS"):
        PodNetwork.from_env(tmp_path, {"TURBOK_POD_HOST_PORTS": "http"})
    with pytest.raises(NetworkUnavailable, match="65535"):
        PodNetwork.from_env(tmp_path, {"TURBOK_POD_HOST_PORTS": "70000"})
    with pytest.raises(NetworkUnavailable, match="TURBOK_POD_CIDR"):
        PodNetwork.from_env(tmp_path, {"TURBOK_POD_CIDR": "10.0.0.0/33"})


def test_addresses_are_the_machines_one_book_per_bridge_whatever_the_home(tmp_path: Path) -> None:
    a = PodNetwork.from_env(tmp_path / "home-a" / "network", {})
    b = PodNetwork.from_env(tmp_path / "home-b" / "network", {})
    assert a.shared_dir == b.shared_dir == SHARED_DIR == Path("/var/lib/turbok/network")
    assert a._ipam.directory == b._ipam.directory == SHARED_DIR / "turbok0" / "ipam"
    moved = PodNetwork.from_env(tmp_path / "home-a" / "network", {"TURBOK_NETWORK_STATE": str(tmp_path / "m")})
    assert moved._ipam.directory == tmp_path / "m" / "turbok0" / "ipam"
    assert not (tmp_path / "m").exists()  # nothing is read or made before the first use


def test_attachment_is_what_the_runtime_needs(tmp_path: Path) -> None:
    a = Attachment(Path("/run/netns/turbok-x"), "10.213.0.2", "10.213.0.1", 16)
    assert (a.netns, a.ip, a.gateway, a.prefix) == (Path("/run/netns/turbok-x"), "10.213.0.2", "10.213.0.1", 16)


async def test_connect_refuses_what_is_not_a_pod_before_any_traffic(tmp_path: Path) -> None:
    from turbok.runtime.network import NetworkError, NotAttached, PodUnreachable

    net = PodNetwork(tmp_path, "10.213.0.0/16")
    with pytest.raises(NotAttached, match="no address"):
        await net.connect("unknown-pod", 80)
    for ip in ("127.0.0.1", "10.213.0.1", "10.213.255.255", "10.214.0.2", "192.0.2.2"):
        with pytest.raises(PodUnreachable, match="not a pod address"):
            await net.connect(ip, 80)
    for port in (0, 65536):
        with pytest.raises(NetworkError, match="not a TCP port"):
            await net.connect("10.213.0.2", port)
