"""Service ClusterIPs and node ports: drawn from the range, never twice, kept across updates, freed on delete."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from turbok.api.kinds import SERVICE, default_registry
from turbok.api.status import Invalid
from turbok.settings import SettingError
from turbok.store.allocator import ServiceAllocator, service_cidr
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore


def svc(name: str, **spec: object) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "default"}, "spec": {"ports": [{"port": 80}], **spec}}


@pytest.fixture
def small(tmp_path: Path) -> ObjectRegistry:
    """A registry whose service range has room for 4 ClusterIPs (a /29 less network, broadcast and .1)."""
    reg = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    reg.services = ServiceAllocator(reg.db, "127.96.0.0/29", node_ports=(30000, 30001))
    reg.ensure_namespace("default")
    return reg


def test_cluster_ips_are_unique_inside_the_range_until_it_is_full(small: ObjectRegistry) -> None:
    ips = {small.create(SERVICE, svc(f"s{i}"))["spec"]["clusterIP"] for i in range(5)}
    assert len(ips) == 5  # 127.96.0.2 .. .6: .0, .1 and .7 are never handed out
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("127.96.0.0/29") for ip in ips)
    assert "127.96.0.1" not in ips
    with pytest.raises(Invalid, match="range is full"):
        small.create(SERVICE, svc("full"))
    freed = small.get(SERVICE, "default", "s0")["spec"]["clusterIP"]
    small.delete(SERVICE, "default", "s0")  # its address is the only free one again
    assert small.create(SERVICE, svc("again"))["spec"]["clusterIP"] == freed


def test_a_requested_ip_must_be_free_and_in_range(small: ObjectRegistry) -> None:
    small.create(SERVICE, svc("a", clusterIP="127.96.0.3"))
    with pytest.raises(Invalid, match="provided IP is already allocated"):
        small.create(SERVICE, svc("b", clusterIP="127.96.0.3"))
    with pytest.raises(Invalid, match="the provided network does not match the current range"):
        small.create(SERVICE, svc("c", clusterIP="10.0.0.1"))
    assert small.try_get(SERVICE, "default", "b") is None and small.try_get(SERVICE, "default", "c") is None


def test_updates_keep_allocated_values_and_node_ports_come_and_stay(small: ObjectRegistry) -> None:
    created = small.create(SERVICE, svc("np", type="NodePort"))
    port = created["spec"]["ports"][0]["nodePort"]
    assert port in (30000, 30001)
    created["spec"].pop("clusterIP")
    created["spec"].pop("clusterIPs")
    created["spec"]["ports"][0].pop("nodePort")
    kept = small.update(SERVICE, created)
    assert kept["spec"]["ports"][0]["nodePort"] == port and kept["spec"]["clusterIP"]
    other = small.create(SERVICE, svc("np2", type="NodePort"))
    assert other["spec"]["ports"][0]["nodePort"] != port
    with pytest.raises(Invalid, match="range is full"):
        small.create(SERVICE, svc("np3", type="NodePort"))


def test_the_range_comes_from_the_environment() -> None:
    assert service_cidr({}) == "127.96.0.0/16"
    assert service_cidr({"TURBOK_SERVICE_CIDR": "127.80.0.0/24"}) == "127.80.0.0/24"
    with pytest.raises(SettingError, match="TURBOK_SERVICE_CIDR"):
        service_cidr({"TURBOK_SERVICE_CIDR": "nonsense"})
    with pytest.raises(SettingError, match="too small"):
        service_cidr({"TURBOK_SERVICE_CIDR": "127.80.0.0/30"})
