"""A Sandbox's headless Service, as upstream's ``reconcileService`` makes it.

Created when ``spec.service`` is true: named like the Sandbox, labelled and
selecting ``agents.x-k8s.io/sandbox-name-hash=NameHash(name)``,
``clusterIP: None``, controlled by the Sandbox. Its ports are the pod
template's container ports (and those of sidecar init containers, ``restartPolicy:
Always``), one per (port, protocol), in port order, named by the first
explicit container port name, else ``p-<port>-<protocol>`` (suffixed ``-2``,
``-3``... if that name is taken); ``targetPort`` is the port number.
"""

from __future__ import annotations

from typing import Any

from turbok.controllers import labels as lb

__all__ = ["desired_service", "ports_equal", "service_ports"]

Obj = dict[str, Any]


def _generated_name(port: int, protocol: str, reserved: set[str]) -> str:
    base = f"p-{port}-{protocol.lower()}"
    if base not in reserved:
        return base
    suffix = 2
    while f"{base}-{suffix}" in reserved:
        suffix += 1
    return f"{base}-{suffix}"


def service_ports(sandbox: Obj) -> list[Obj]:
    pod_spec = ((sandbox.get("spec") or {}).get("podTemplate") or {}).get("spec") or {}
    names: dict[tuple[int, str], str] = {}
    reserved: set[str] = set()
    containers = list(pod_spec.get("containers") or [])
    containers += [c for c in pod_spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    for container in containers:
        for cport in container.get("ports") or []:
            number = cport.get("containerPort") or 0
            if not number:
                continue
            key = (int(number), cport.get("protocol") or "TCP")
            names.setdefault(key, "")
            name = cport.get("name") or ""
            # The first explicit name of a (port, protocol) keeps it, unless another port took it first.
            if not name or names[key] or name in reserved:
                continue
            names[key] = name
            reserved.add(name)
    ports = []
    for (number, protocol) in sorted(names):
        name = names[(number, protocol)] or _generated_name(number, protocol, reserved)
        reserved.add(name)
        ports.append({"name": name, "protocol": protocol, "port": number, "targetPort": number})
    return ports


def ports_equal(current: list[Obj], wanted: list[Obj]) -> bool:
    """Upstream's servicePortsEqual: name, protocol, port and targetPort, in order."""
    if len(current) != len(wanted):
        return False
    for a, b in zip(current, wanted, strict=True):
        if (a.get("name", ""), a.get("protocol", "TCP"), a.get("port"), a.get("targetPort", a.get("port"))) != (
                b["name"], b["protocol"], b["port"], b["targetPort"]):
            return False
    return True


def desired_service(sandbox: Obj) -> Obj:
    md = sandbox["metadata"]
    selector = {lb.SANDBOX_NAME_HASH: lb.name_hash(md["name"])}
    spec: Obj = {"clusterIP": "None", "selector": dict(selector)}
    ports = service_ports(sandbox)
    if ports:
        spec["ports"] = ports
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": md["name"], "namespace": md["namespace"], "labels": dict(selector),
                         "ownerReferences": [lb.owner_ref(sandbox)]},
            "spec": spec}
