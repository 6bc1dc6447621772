"""Services as kube-apiserver 1.37 defaults and validates them.

Pure functions over dicts; the registry calls them (``turbok.store.strategy``)
and allocates ClusterIPs and node ports (``turbok.store.allocator``) between
defaulting and validation, as kube's service REST storage does.

- Defaults: ``type: ClusterIP``, ``sessionAffinity: None`` (ClientIP gets a
  10800 s timeout), ports' ``protocol: TCP`` and ``targetPort`` = ``port``,
  and for every type but ExternalName ``ipFamilies: [IPv4]``,
  ``ipFamilyPolicy: SingleStack``, ``internalTrafficPolicy: Cluster``;
  NodePort and LoadBalancer ``externalTrafficPolicy: Cluster``;
  LoadBalancer ``allocateLoadBalancerNodePorts: true``.
- ClusterIPs are allocated from the service range (``SERVICE_CIDR``, default
  127.96.0.0/16: loopback, so nothing ever leaves the machine); ``None``
  makes a headless Service. They cannot change once set; an update that
  leaves them out keeps them.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from turbok.api import validation as v
from turbok.api.meta import label_value_problems, qualified_name_problems
from turbok.api.status import Cause

__all__ = ["DEFAULT_NODE_PORTS", "DEFAULT_SERVICE_CIDR", "go_list", "keep_allocated", "prepare_create",
           "set_defaults", "validate", "validate_update", "wants_cluster_ip", "wants_node_ports"]

Obj = dict[str, Any]

#: Where ClusterIPs come from unless ``TURBOK_SERVICE_CIDR`` says otherwise (the range the kube assets' README
#: gives its real clusters: loopback, never routed off the machine).
DEFAULT_SERVICE_CIDR = "127.96.0.0/16"
#: kube-apiserver's default ``--service-node-port-range``.
DEFAULT_NODE_PORTS = (30000, 32767)

_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
_AFFINITIES = ("ClientIP", "None")
_PROTOCOLS = ("SCTP", "TCP", "UDP")
_TRAFFIC_POLICIES = ("Cluster", "Local")
_IP_MESSAGE = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"


def _spec(svc: Obj) -> Obj:
    spec = svc.get("spec")
    return spec if isinstance(spec, dict) else {}


def set_defaults(svc: Obj) -> None:
    spec = svc.get("spec")
    if not isinstance(spec, dict):
        spec = svc["spec"] = {}
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "ClientIP":
        config = spec.setdefault("sessionAffinityConfig", {})
        if isinstance(config, dict):
            client = config.setdefault("clientIP", {})
            if isinstance(client, dict) and not client.get("timeoutSeconds"):
                client["timeoutSeconds"] = 10800
    for port in spec.get("ports") or []:
        if not isinstance(port, dict):
            continue
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    if spec["type"] == "ExternalName":
        return
    if spec.get("clusterIP") and not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]
    if not spec.get("ipFamilies"):
        spec["ipFamilies"] = ["IPv4"]
    if not spec.get("ipFamilyPolicy"):
        spec["ipFamilyPolicy"] = "SingleStack"
    if not spec.get("internalTrafficPolicy"):
        spec["internalTrafficPolicy"] = "Cluster"
    if spec["type"] in ("NodePort", "LoadBalancer") and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if spec["type"] == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True


def wants_cluster_ip(svc: Obj) -> bool:
    spec = _spec(svc)
    return spec.get("type") != "ExternalName" and not spec.get("clusterIP")


def wants_node_ports(svc: Obj) -> bool:
    spec = _spec(svc)
    return spec.get("type") == "NodePort" or (spec.get("type") == "LoadBalancer"
                                              and spec.get("allocateLoadBalancerNodePorts") is not False)


def keep_allocated(new: Obj, old: Obj) -> None:
    """An update that leaves out the ClusterIPs or node ports keeps those allocated (``patchAllocatedValues``)."""
    new_spec, old_spec = _spec(new), _spec(old)
    if new_spec.get("type") != "ExternalName" and old_spec.get("clusterIP"):
        if not new_spec.get("clusterIP"):
            new_spec["clusterIP"] = old_spec["clusterIP"]
        if not new_spec.get("clusterIPs"):
            new_spec["clusterIPs"] = list(old_spec.get("clusterIPs") or [old_spec["clusterIP"]])
    if wants_node_ports(new):
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                     for p in old_spec.get("ports") or [] if isinstance(p, dict)}
        for port in new_spec.get("ports") or []:
            if isinstance(port, dict) and not port.get("nodePort"):
                kept = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
                if kept:
                    port["nodePort"] = kept


def prepare_create(svc: Obj) -> None:
    svc["status"] = {"loadBalancer": {}}


def validate(svc: Obj, *, node_ports: tuple[int, int] = DEFAULT_NODE_PORTS) -> list[Cause]:
    """``ValidateService`` (after defaulting, before allocation): 422 causes in kube's order; whether a
    requested ClusterIP is in the range and free is the allocator's (``turbok.store.allocator``)."""
    causes = _name(svc)
    spec = _spec(svc)
    kind = spec.get("type")
    headless = spec.get("clusterIP") == "None"
    given = spec.get("ports")
    ports: list[Any] = given if isinstance(given, list) else []
    if kind == "ExternalName":
        name = spec.get("externalName")
        if not name:
            causes.append(v.required("spec.externalName"))
        else:
            causes += v.dns1123_subdomain_causes("spec.externalName", str(name).rstrip("."))
    elif not ports and not headless:
        causes.append(v.required("spec.ports"))
    names: set[str] = set()
    keys: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        if not isinstance(port, dict):
            continue
        causes += _port(port, f"spec.ports[{i}]", len(ports) > 1, names)
        port_key = (port.get("port"), port.get("protocol"))
        if port_key in keys:
            shown = json.dumps({"Name": "", "Protocol": port.get("protocol"), "AppProtocol": None,
                                "Port": port.get("port"), "TargetPort": 0, "NodePort": 0}, separators=(",", ":"))
            causes.append(Cause(f"spec.ports[{i}]", f"Duplicate value: {shown}", "FieldValueDuplicate"))
        keys.add(port_key)
    selector = spec.get("selector")
    if isinstance(selector, dict):
        for key, value in selector.items():
            causes += [v.invalid("spec.selector", key, p) for p in qualified_name_problems(str(key))]
            problems = label_value_problems(value) if isinstance(value, str) else ["must be a string"]
            causes += [v.invalid("spec.selector", value, p) for p in problems]
    affinity = spec.get("sessionAffinity")
    if affinity not in _AFFINITIES:
        causes.append(v.not_supported("spec.sessionAffinity", affinity, _AFFINITIES))
    if kind not in _TYPES:
        causes.append(v.not_supported("spec.type", kind, _TYPES))
    for i, port in enumerate(ports):
        if not isinstance(port, dict) or not port.get("nodePort"):
            continue
        where = f"spec.ports[{i}].nodePort"
        if kind in ("ClusterIP", "ExternalName"):
            causes.append(v.forbidden(where, f"may not be used when `type` is '{kind}'"))
        elif not node_ports[0] <= port["nodePort"] <= node_ports[1]:
            causes.append(v.invalid(where, port["nodePort"], "provided port is not in the valid range. The range "
                                                             f"of valid ports is {node_ports[0]}-{node_ports[1]}"))
    for policy in ("externalTrafficPolicy", "internalTrafficPolicy"):
        value = spec.get(policy)
        if value is not None and value not in _TRAFFIC_POLICIES:
            causes.append(v.not_supported(f"spec.{policy}", value, _TRAFFIC_POLICIES))
    causes += _cluster_ips(spec)
    return causes


def _name(svc: Obj) -> list[Cause]:
    """Service names are DNS-1123 labels (relaxed from DNS-1035 in 1.37): no dots."""
    name = (svc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        return []
    if "." in name:
        return [v.invalid("metadata.name", name, "must not contain dots")]
    return []  # the rest is the metadata check's (a label, for Services)


def _port(port: Obj, path: str, named: bool, names: set[str]) -> list[Cause]:
    causes: list[Cause] = []
    name = port.get("name")
    if named and not name:
        causes.append(v.required(f"{path}.name"))
    elif name:
        causes += v.dns1123_label_causes(f"{path}.name", name)
        if name in names:
            causes.append(v.duplicate(f"{path}.name", name))
        names.add(name)
    protocol = port.get("protocol")
    if protocol not in _PROTOCOLS:
        causes.append(v.not_supported(f"{path}.protocol", protocol, _PROTOCOLS))
    causes += v.port_number_causes(f"{path}.port", port.get("port"))
    target = port.get("targetPort")
    if isinstance(target, str):
        causes += [v.invalid(f"{path}.targetPort", target, p) for p in v.port_name_problems(target)]
    else:
        causes += v.port_number_causes(f"{path}.targetPort", target)
    return causes


def _cluster_ips(spec: Obj) -> list[Cause]:
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    causes: list[Cause] = []
    if spec.get("type") == "ExternalName" or not ips:
        return causes
    for i, ip in enumerate(ips):
        if ip == "None":
            continue
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            causes.append(v.invalid(f"spec.clusterIPs[{i}]", ip, _IP_MESSAGE))
    if spec.get("clusterIP") and ips and spec["clusterIP"] != ips[0]:
        causes.append(v.invalid("spec.clusterIPs", go_list(ips), "element [0] must match clusterIP"))
    return causes


class _GoList(list[str]):
    """A list that ``validation.quote`` prints as Go's %v of a []string in a cause: ``["a"]``."""

    def __str__(self) -> str:
        return json.dumps(list(self))


def go_list(values: list[str]) -> list[str]:
    """``values`` as a cause prints a Go []string: ``["10.0.0.10"]``."""
    return _GoList(values)


def validate_update(new: Obj, old: Obj) -> list[Cause]:
    """``ValidateServiceUpdate``: ClusterIPs may not change once set (but to or from ExternalName)."""
    new_spec, old_spec = _spec(new), _spec(old)
    causes = validate(new)
    if "ExternalName" not in (new_spec.get("type"), old_spec.get("type")):
        old_ips = old_spec.get("clusterIPs") or []
        new_ips = new_spec.get("clusterIPs") or []
        for i, ip in enumerate(new_ips[:len(old_ips)]):
            if ip != old_ips[i]:
                causes.append(v.invalid(f"spec.clusterIPs[{i}]", go_list(new_ips), "may not change once set"))
    return causes
