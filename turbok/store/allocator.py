"""ClusterIPs and node ports for Services, as kube-apiserver's allocators hand them out.

An address is drawn at random from the service range (``TURBOK_SERVICE_CIDR``,
default 127.96.0.0/16: loopback), skipping the network and broadcast
addresses, the first host address (kube keeps it for the ``kubernetes``
Service) and every address a stored Service holds; a node port likewise from
30000-32767. What is in use is read from the store at the moment of the write
(the registry writes on one event loop), so nothing leaks when a Service goes:
its addresses are simply no longer held. A requested address or port that is
taken is a 422, as in kube: ``provided IP is already allocated``.
"""

from __future__ import annotations

import ipaddress
import os
import random
from typing import Any

from turbok.api import validation as v
from turbok.api.kinds import SERVICE
from turbok.api.service import (
    DEFAULT_NODE_PORTS,
    DEFAULT_SERVICE_CIDR,
    go_list,
    wants_cluster_ip,
    wants_node_ports,
)
from turbok.api.status import Cause, Invalid
from turbok.settings import SettingError
from turbok.store.sqlite import SqliteStore

__all__ = ["SERVICE_CIDR_ENV", "ServiceAllocator", "service_cidr"]

Obj = dict[str, Any]

SERVICE_CIDR_ENV = "TURBOK_SERVICE_CIDR"


def service_cidr(environ: dict[str, str] | None = None) -> str:
    """The service range: ``TURBOK_SERVICE_CIDR`` when set, else 127.96.0.0/16; a bad one stops the start."""
    raw = (os.environ if environ is None else environ).get(SERVICE_CIDR_ENV, "").strip()
    if not raw:
        return DEFAULT_SERVICE_CIDR
    try:
        network = ipaddress.ip_network(raw)
    except ValueError:
        raise SettingError(f"{SERVICE_CIDR_ENV}={raw!r}: not a network such as 127.96.0.0/16") from None
    if network.num_addresses < 8:
        raise SettingError(f"{SERVICE_CIDR_ENV}={raw!r}: too small for Services (at least a /29)")
    return str(network)


class ServiceAllocator:
    def __init__(self, db: SqliteStore, cidr: str = DEFAULT_SERVICE_CIDR,
                 node_ports: tuple[int, int] = DEFAULT_NODE_PORTS) -> None:
        self.db = db
        self.cidr = cidr
        self.network = ipaddress.ip_network(cidr)
        self.node_ports = node_ports

    def _held(self, skip: tuple[str, str] | None) -> tuple[set[str], set[int]]:
        ips: set[str] = set()
        ports: set[int] = set()
        for ns, name, row in self.db.rows(SERVICE.key):
            if (ns, name) == skip:
                continue
            spec = row.object().get("spec") or {}
            ips.update(ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and ip != "None")
            ports.update(p["nodePort"] for p in spec.get("ports") or [] if isinstance(p, dict) and p.get("nodePort"))
        return ips, ports

    def allocate(self, svc: Obj, old: Obj | None = None) -> None:
        """Fill the Service's ClusterIPs and node ports (in place); 422 when a requested one is taken."""
        md = svc.get("metadata") or {}
        held_ips, held_ports = self._held((md.get("namespace", ""), md.get("name", "")))
        spec = svc.setdefault("spec", {})
        causes: list[Cause] = []
        old_spec = (old or {}).get("spec") or {}
        if wants_cluster_ip(svc):
            ip = self._free_ip(held_ips)
            spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
        elif spec.get("clusterIP") not in (None, "None") and spec.get("clusterIP") != old_spec.get("clusterIP"):
            ip = spec["clusterIP"]
            why = "provided IP is already allocated" if ip in held_ips else None
            try:
                if ipaddress.ip_address(ip) not in self.network:
                    why = "the provided network does not match the current range"
            except ValueError:
                why = None  # validation named it
            if why:
                causes.append(v.invalid("spec.clusterIPs", go_list(spec.get("clusterIPs") or [ip]),
                                        f"failed to allocate IP {ip}: {why}"))
        if wants_node_ports(svc):
            mine = {p.get("nodePort") for p in old_spec.get("ports") or [] if isinstance(p, dict)}
            for i, port in enumerate(spec.get("ports") or []):
                if not isinstance(port, dict):
                    continue
                if not port.get("nodePort"):
                    port["nodePort"] = self._free_port(held_ports)
                elif port["nodePort"] in held_ports and port["nodePort"] not in mine:
                    causes.append(v.invalid(f"spec.ports[{i}].nodePort", port["nodePort"],
                                            "provided port is already allocated"))
                held_ports.add(port["nodePort"])
        if causes:
            raise Invalid.of(kind="Service", group="", name=md.get("name", ""), causes=causes)

    def _free_ip(self, held: set[str]) -> str:
        first = int(self.network.network_address) + 2  # .0 is the network, .1 the kubernetes Service's
        last = int(self.network.broadcast_address) - 1
        size = last - first + 1
        start = random.randrange(size)
        for step in range(size):
            candidate = str(ipaddress.ip_address(first + (start + step) % size))
            if candidate not in held:
                return candidate
        raise Invalid.of(kind="Service", group="", name="", causes=[Cause(
            "spec.clusterIPs", f"Internal error: failed to allocate a serviceIP: range is full ({self.cidr}); "
                               f"delete Services or choose a larger {SERVICE_CIDR_ENV}")])

    def _free_port(self, held: set[int]) -> int:
        low, high = self.node_ports
        start = random.randrange(high - low + 1)
        for step in range(high - low + 1):
            candidate = low + (start + step) % (high - low + 1)
            if candidate not in held:
                return candidate
        raise Invalid.of(kind="Service", group="", name="", causes=[Cause(
            "spec.ports", f"Internal error: failed to allocate a nodePort: range is full ({low}-{high})")])
