"""discovery.k8s.io/v1 EndpointSlices and coordination.k8s.io/v1 Leases as kube-apiserver 1.37 checks them.

EndpointSlice: ``addressType`` (FQDN, IPv4, IPv6; immutable), each endpoint's
addresses (one to 100, valid for the type), ports (named as DNS labels,
unique; ``protocol`` defaults to TCP). Lease: a positive
``leaseDurationSeconds``, non-negative ``leaseTransitions``.
Pure functions; ``turbok.store.strategy`` wires them to the kinds.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from turbok.api import validation as v
from turbok.api.status import Cause

__all__ = ["set_defaults", "validate", "validate_lease", "validate_lease_update", "validate_update"]

Obj = dict[str, Any]

_ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
_PROTOCOLS = ("SCTP", "TCP", "UDP")
_IP_MESSAGE = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
_MAX_ADDRESSES = 100


def set_defaults(slice_: Obj) -> None:
    for port in slice_.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("name", "")
            port.setdefault("protocol", "TCP")


def validate(slice_: Obj) -> list[Cause]:
    causes: list[Cause] = []
    kind = slice_.get("addressType")
    if not kind:
        causes.append(v.required("addressType"))
    elif kind not in _ADDRESS_TYPES:
        causes.append(v.not_supported("addressType", kind, _ADDRESS_TYPES))
    for i, endpoint in enumerate(slice_.get("endpoints") or []):
        if not isinstance(endpoint, dict):
            continue
        where = f"endpoints[{i}]"
        addresses = endpoint.get("addresses") or []
        if not addresses:
            causes.append(v.required(f"{where}.addresses"))
        elif len(addresses) > _MAX_ADDRESSES:
            causes.append(Cause(f"{where}.addresses", f"Too many: {len(addresses)}: must have at most "
                                                      f"{_MAX_ADDRESSES} items", "FieldValueTooMany"))
        for j, address in enumerate(addresses):
            causes += _address(kind, address, f"{where}.addresses[{j}]")
        hostname = endpoint.get("hostname")
        if isinstance(hostname, str) and hostname:
            causes += v.dns1123_label_causes(f"{where}.hostname", hostname)
        node = endpoint.get("nodeName")
        if isinstance(node, str) and node:
            causes += v.dns1123_subdomain_causes(f"{where}.nodeName", node)
    names: set[str] = set()
    for i, port in enumerate(slice_.get("ports") or []):
        if not isinstance(port, dict):
            continue
        where = f"ports[{i}]"
        name = port.get("name") or ""
        if name:
            causes += v.dns1123_label_causes(f"{where}.name", name)
        if name in names:
            causes.append(v.duplicate(f"{where}.name", name))
        names.add(name)
        protocol = port.get("protocol", "TCP")
        if protocol not in _PROTOCOLS:
            causes.append(v.not_supported(f"{where}.protocol", protocol, _PROTOCOLS))
    return causes


def _address(kind: Any, address: Any, path: str) -> list[Cause]:
    if kind == "FQDN":
        return v.dns1123_subdomain_causes(path, str(address))
    try:
        parsed = ipaddress.ip_address(address)
    except (ValueError, TypeError):
        return [v.invalid(path, address, _IP_MESSAGE)]
    if kind == "IPv4" and parsed.version != 4:
        return [v.invalid(path, address, "must be an IPv4 address")]
    if kind == "IPv6" and parsed.version != 6:
        return [v.invalid(path, address, "must be an IPv6 address")]
    return []


def validate_update(new: Obj, old: Obj) -> list[Cause]:
    causes = validate(new)
    if new.get("addressType") != old.get("addressType"):
        causes.append(v.invalid("addressType", new.get("addressType"), "field is immutable"))
    return causes


def validate_lease(lease: Obj) -> list[Cause]:
    spec = lease.get("spec") if isinstance(lease.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    causes: list[Cause] = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        causes.append(v.invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        causes.append(v.invalid("spec.leaseTransitions", transitions, "must be greater than or equal to 0"))
    return causes


def validate_lease_update(new: Obj, old: Obj) -> list[Cause]:
    return validate_lease(new)
