"""networking.k8s.io/v1 NetworkPolicy as kube-apiserver 1.37 defaults and checks it.

Defaults (``SetDefaults_NetworkPolicy``): each port's ``protocol`` is TCP;
without ``policyTypes``, ``Ingress``, plus ``Egress`` when the policy has
egress rules. Checks (``ValidateNetworkPolicySpec``, ingress before egress):
label selectors, ports (a number 1-65535 or an IANA name; ``endPort`` only
after a numeric ``port``, not below it), peers (at least one of podSelector,
namespaceSelector, ipBlock; ipBlock alone), CIDRs in the strict form 1.37
wants (no leading zeros, no bits past the prefix, no IPv4-mapped IPv6) with
each ``except`` a strict subset, and at most the two policy types. Worded as
the real server words them (tests/data/differential). Pure functions;
``turbok.store.strategy`` wires them to the kind; the node enforces the
policies (``turbok.node.netpolicy``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from turbok.api import validation as v
from turbok.api.meta import label_value_problems, qualified_name_problems
from turbok.api.status import Cause

__all__ = ["cidr_problem", "label_selector_causes", "set_defaults", "validate", "validate_update"]

Obj = dict[str, Any]

_PROTOCOLS = ("TCP", "UDP", "SCTP")
_POLICY_TYPES = ("Ingress", "Egress")
_CIDR_EXAMPLE = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
_LEADING_ZERO = re.compile(r"(^|\.)0\d")


def set_defaults(policy: Obj) -> None:
    spec = policy.get("spec")
    if not isinstance(spec, dict):
        spec = policy["spec"] = {}
    spec.setdefault("podSelector", {})
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            for port in (rule.get("ports") or []) if isinstance(rule, dict) else []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def validate(policy: Obj) -> list[Cause]:
    spec = policy.get("spec") or {}
    causes = label_selector_causes(spec.get("podSelector"), "spec.podSelector")
    late: list[Cause] = []  # kube 1.37's declarative checks (a required cidr) come after the handwritten ones
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            if not isinstance(rule, dict):
                continue
            path = f"spec.{direction}[{i}]"
            for j, port in enumerate(rule.get("ports") or []):
                causes += _port(port, f"{path}.ports[{j}]") if isinstance(port, dict) else []
            for j, peer in enumerate(rule.get(peers) or []):
                causes += _peer(peer, f"{path}.{peers}[{j}]", late) if isinstance(peer, dict) else []
    types = spec.get("policyTypes") or []
    if len(types) > len(_POLICY_TYPES):
        rendered = "[" + ",".join(f'"{t}"' for t in types) + "]"
        causes.append(Cause("spec.policyTypes", f"Invalid value: {rendered}: may not specify more than two policyTypes"))
    else:
        causes += [v.not_supported(f"spec.policyTypes[{i}]", t, _POLICY_TYPES)
                   for i, t in enumerate(types) if t not in _POLICY_TYPES]
    return causes + late


def validate_update(new: Obj, old: Obj) -> list[Cause]:
    return validate(new)


def _port(port: Obj, path: str) -> list[Cause]:
    causes = []
    protocol = port.get("protocol")
    if protocol is not None and protocol not in _PROTOCOLS:
        causes.append(v.not_supported(f"{path}.protocol", protocol, _PROTOCOLS))
    number, end = port.get("port"), port.get("endPort")
    if number is None:
        if end is not None:
            causes.append(v.invalid(f"{path}.endPort", end, "may not be specified when `port` is not specified"))
    elif isinstance(number, int):
        causes += v.port_number_causes(f"{path}.port", number)
        if end is not None:
            if isinstance(end, int) and end < number:
                causes.append(v.invalid(f"{path}.endPort", end, "must be greater than or equal to `port`"))
            causes += v.port_number_causes(f"{path}.endPort", end)
    else:
        if end is not None:
            causes.append(v.invalid(f"{path}.endPort", end, "may not be specified when `port` is non-numeric"))
        causes += [v.invalid(f"{path}.port", number, p) for p in v.port_name_problems(str(number))]
    return causes


def _peer(peer: Obj, path: str, late: list[Cause]) -> list[Cause]:
    causes = []
    given = 0
    for key in ("podSelector", "namespaceSelector"):
        if peer.get(key) is not None:
            given += 1
            causes += label_selector_causes(peer[key], f"{path}.{key}")
    block = peer.get("ipBlock")
    if block is not None:
        given += 1
        causes += _ip_block(block if isinstance(block, dict) else {}, f"{path}.ipBlock", late)
    if given == 0:
        causes.append(v.required(path, "must specify a peer"))
    elif given > 1 and block is not None:
        causes.append(v.forbidden(path, "may not specify both ipBlock and another peer"))
    return causes


def _ip_block(block: Obj, path: str, late: list[Cause]) -> list[Cause]:
    cidr = block.get("cidr")
    if not cidr:
        late.append(v.required(f"{path}.cidr"))
        return []
    causes = []
    if problem := cidr_problem(str(cidr)):
        causes.append(v.invalid(f"{path}.cidr", cidr, problem))
    network = _sloppy(str(cidr))
    if network is None:
        return causes
    for i, text in enumerate(block.get("except") or []):
        where = f"{path}.except[{i}]"
        if problem := cidr_problem(str(text)):
            causes.append(v.invalid(where, text, problem))
        inner = _sloppy(str(text))
        if inner is None:
            continue
        if (inner.version != network.version or inner.network_address not in network
                or network.prefixlen >= inner.prefixlen):
            causes.append(v.invalid(where, text, "must be a strict subset of `cidr`"))
    return causes


def _sloppy(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network Go's ParseCIDRSloppy reads (leading zeros allowed, host bits dropped), or None."""
    address, _, prefix = text.partition("/")
    if not prefix.isdigit() or not address or address != address.strip():
        return None
    if "." in address and ":" not in address:
        octets = address.split(".")
        if len(octets) != 4 or not all(o.isdigit() and int(o) < 256 for o in octets):
            return None
        address = ".".join(str(int(o)) for o in octets)
    try:
        return ipaddress.ip_network(f"{address}/{int(prefix)}", strict=False)
    except ValueError:
        return None


def cidr_problem(text: str) -> str | None:
    """Why kube-apiserver 1.37 refuses ``text`` as a CIDR (IsValidCIDRForLegacyField, strict), or None."""
    network = _sloppy(text)
    if network is None:
        return _CIDR_EXAMPLE
    address, _, prefix = text.partition("/")
    if (":" not in address and _LEADING_ZERO.search(address)) or (len(prefix) > 1 and prefix.startswith("0")):
        return "must not have leading 0s in IP or prefix length"
    if isinstance(network, ipaddress.IPv6Network) and ipaddress.IPv6Address(address).ipv4_mapped is not None:
        return "must not have an IPv4-mapped IPv6 address"
    if ipaddress.ip_address(address) != network.network_address:
        return "must not have bits set beyond the prefix length"
    return None


def label_selector_causes(selector: Any, path: str) -> list[Cause]:
    """``ValidateLabelSelector`` of a metav1.LabelSelector (values checked, as on create)."""
    if not isinstance(selector, dict):
        return []
    causes = []
    for key, value in (selector.get("matchLabels") or {}).items():
        causes += [v.invalid(f"{path}.matchLabels", key, p) for p in qualified_name_problems(str(key))]
        causes += [v.invalid(f"{path}.matchLabels", value, p) for p in label_value_problems(str(value))]
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        if not isinstance(expr, dict):
            continue
        where = f"{path}.matchExpressions[{i}]"
        op, values = expr.get("operator"), expr.get("values") or []
        if op in ("In", "NotIn"):
            if not values:
                causes.append(v.required(f"{where}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist"):
            if values:
                causes.append(v.forbidden(f"{where}.values",
                                          "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
        else:
            causes.append(v.invalid(f"{where}.operator", op, "not a valid selector operator"))
        key = str(expr.get("key") or "")
        causes += [v.invalid(f"{where}.key", key, p) for p in qualified_name_problems(key)]
        for j, value in enumerate(values):
            causes += [v.invalid(f"{where}.values[{j}]", value, p) for p in label_value_problems(str(value))]
    return causes
