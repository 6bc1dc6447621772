"""What ``kubectl get`` prints for the built-in kinds: kube-apiserver 1.37's table printers.

The columns (names, types, priorities, descriptions) are the real server's,
recorded in ``api/schemas/core.json`` (``tables``, by scripts/core_schemas.py);
the cells are computed as ``pkg/printers/internalversion`` computes them:
a Pod's READY, STATUS (Pending, ContainerCreating, CrashLoopBackOff,
Completed, Init:0/1, Terminating...) and RESTARTS (``2 (5m ago)``), a
Service's EXTERNAL-IP and PORT(S), a Node's STATUS and ROLES, and so on.
Every column is sent, wide ones (priority 1) too; kubectl shows those with
``-o wide``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from turbok.api.meta import parse_time
from turbok.api.quantity import QuantityError, format_quantity, parse_quantity

__all__ = ["PRINTERS", "columns", "human_duration", "since"]

Obj = dict[str, Any]
Cells = list[Any]


@functools.cache
def _tables() -> dict[str, list[dict[str, Any]]]:
    text = (resources.files("turbok.api") / "schemas" / "core.json").read_text()
    tables: dict[str, list[dict[str, Any]]] = json.loads(text).get("tables", {})
    return tables


def columns(kind: str) -> list[dict[str, Any]] | None:
    """kube-apiserver's column definitions for a built-in kind, or None when it has no printer here."""
    return _tables().get(kind) if kind in PRINTERS else None


def human_duration(seconds: float) -> str:
    """``duration.HumanDuration``: 45s, 2m30s, 3h5m, 2d4h, 1y30d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def since(value: Any) -> str:
    """``translateTimestampSince``: the age of a timestamp, ``<unknown>`` without one."""
    when = _time(value)
    if when is None:
        return "<unknown>"
    return human_duration((dt.datetime.now(dt.UTC) - when).total_seconds())


def _d(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _age(obj: Obj) -> str:
    return since(_d(obj.get("metadata")).get("creationTimestamp"))


def _labels(values: Any) -> str:
    pairs = sorted(f"{k}={v}" for k, v in _d(values).items())
    return ",".join(pairs) if pairs else "<none>"


# ---------------------------------------------------------------- pods


def _condition_true(status: Obj, type_: str) -> bool:
    return any(_d(c).get("type") == type_ and _d(c).get("status") == "True" for c in _l(status.get("conditions")))


def _pod(pod: Obj) -> Cells:
    spec, status, md = _d(pod.get("spec")), _d(pod.get("status")), _d(pod.get("metadata"))
    restarts = sidecar_restarts = 0
    total = len(_l(spec.get("containers")))
    ready = 0
    last_restart: dt.datetime | None = None
    last_sidecar_restart: dt.datetime | None = None
    phase = status.get("phase") or ""
    reason = status.get("reason") or phase
    for cond in _l(status.get("conditions")):
        if _d(cond).get("type") == "PodScheduled" and _d(cond).get("reason") == "SchedulingGated":
            reason = "SchedulingGated"
    inits = {c.get("name"): c for c in _l(spec.get("initContainers")) if isinstance(c, dict)}
    total += sum(1 for c in inits.values() if c.get("restartPolicy") == "Always")

    def later(current: dt.datetime | None, state: Obj) -> dt.datetime | None:
        finished = _time(_d(_d(state.get("lastState")).get("terminated")).get("finishedAt"))
        return finished if finished and (current is None or finished > current) else current

    initializing = False
    for i, cs in enumerate(_l(status.get("initContainerStatuses"))):
        cs = _d(cs)
        restarts += int(cs.get("restartCount") or 0)
        last_restart = later(last_restart, cs)
        sidecar = _d(inits.get(cs.get("name"))).get("restartPolicy") == "Always"
        if sidecar:
            sidecar_restarts += int(cs.get("restartCount") or 0)
            last_sidecar_restart = later(last_sidecar_restart, cs)
        state = _d(cs.get("state"))
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if isinstance(terminated, dict) and terminated.get("exitCode") == 0:
            continue
        if sidecar and cs.get("started"):
            if cs.get("ready"):
                ready += 1
            continue
        if isinstance(terminated, dict):
            if terminated.get("reason"):
                reason = f"Init:{terminated['reason']}"
            elif terminated.get("signal"):
                reason = f"Init:Signal:{terminated['signal']}"
            else:
                reason = f"Init:ExitCode:{terminated.get('exitCode', 0)}"
        elif isinstance(waiting, dict) and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = f"Init:{waiting['reason']}"
        else:
            reason = f"Init:{i}/{len(inits)}"
        initializing = True
        break
    if not initializing or _condition_true(status, "Initialized"):
        restarts, last_restart = sidecar_restarts, last_sidecar_restart
        running = False
        for cs in reversed(_l(status.get("containerStatuses"))):
            cs = _d(cs)
            restarts += int(cs.get("restartCount") or 0)
            last_restart = later(last_restart, cs)
            state = _d(cs.get("state"))
            waiting, terminated = _d(state.get("waiting")), state.get("terminated")
            if waiting.get("reason"):
                reason = waiting["reason"]
            elif isinstance(terminated, dict) and terminated.get("reason"):
                reason = terminated["reason"]
            elif isinstance(terminated, dict):
                reason = (f"Signal:{terminated['signal']}" if terminated.get("signal")
                          else f"ExitCode:{terminated.get('exitCode', 0)}")
            elif cs.get("ready") and state.get("running") is not None:
                running = True
                ready += 1
        if reason == "Completed" and running:
            reason = "Running" if _condition_true(status, "Ready") else "NotReady"
    if md.get("deletionTimestamp") and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif md.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"
    shown = str(restarts)
    if restarts and last_restart is not None:
        shown = f"{restarts} ({human_duration((dt.datetime.now(dt.UTC) - last_restart).total_seconds())} ago)"
    ips = _l(status.get("podIPs"))
    ip = _d(ips[0]).get("ip") if ips else status.get("podIP")
    gates = _l(spec.get("readinessGates"))
    readiness = "<none>"
    if gates:
        conditions = {_d(c).get("type"): _d(c).get("status") for c in _l(status.get("conditions"))}
        true = sum(1 for g in gates if conditions.get(_d(g).get("conditionType")) == "True")
        readiness = f"{true}/{len(gates)}"
    return [md.get("name"), f"{ready}/{total}", reason, shown, _age(pod), ip or "<none>",
            spec.get("nodeName") or "<none>", status.get("nominatedNodeName") or "<none>", readiness]


def pod_conditions(pod: Obj) -> list[Obj] | None:
    """The row conditions kube sets for finished Pods (``Completed``)."""
    phase = _d(pod.get("status")).get("phase")
    if phase == "Succeeded":
        return [{"type": "Completed", "status": "True", "reason": "Succeeded",
                 "message": "The pod has completed successfully."}]
    if phase == "Failed":
        return [{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]
    return None


# ---------------------------------------------------------------- services and endpoints


def _ports(ports: Any) -> str:
    pieces = []
    for p in _l(ports):
        p = _d(p)
        protocol = p.get("protocol") or "TCP"
        pieces.append(f"{p.get('port')}:{p['nodePort']}/{protocol}" if p.get("nodePort")
                      else f"{p.get('port')}/{protocol}")
    return ",".join(pieces)


def _service(svc: Obj) -> Cells:
    spec, status = _d(svc.get("spec")), _d(svc.get("status"))
    ips = _l(spec.get("clusterIPs"))
    kind = spec.get("type") or "ClusterIP"
    external = ",".join(_l(spec.get("externalIPs")))
    if kind == "LoadBalancer":
        ingress = [_d(i).get("ip") or _d(i).get("hostname") for i in _l(_d(status.get("loadBalancer")).get("ingress"))]
        shown = ",".join([i for i in ingress if i] + _l(spec.get("externalIPs")))
        external = shown or "<pending>"
    elif kind == "ExternalName":
        external = spec.get("externalName") or ""
    elif kind not in ("ClusterIP", "NodePort"):
        external = "<unknown>"
    return [_d(svc.get("metadata")).get("name"), kind, ips[0] if ips else spec.get("clusterIP") or "<none>",
            external or "<none>", _ports(spec.get("ports")) or "<none>", _age(svc), _labels(spec.get("selector"))]


def _endpoints(ep: Obj) -> Cells:
    shown: list[str] = []
    for subset in _l(ep.get("subsets")):
        subset = _d(subset)
        ports = [_d(p).get("port") for p in _l(subset.get("ports"))] or [None]
        for address in _l(subset.get("addresses")):
            for port in ports:
                ip = _d(address).get("ip")
                shown.append(f"{ip}:{port}" if port is not None else str(ip))
    text = ",".join(shown[:3]) + (f" + {len(shown) - 3} more..." if len(shown) > 3 else "")
    return [_d(ep.get("metadata")).get("name"), text or "<none>", _age(ep)]


def _endpoint_slice(es: Obj) -> Cells:
    ports = [str(_d(p).get("port")) if _d(p).get("port") is not None else "<unset>" for p in _l(es.get("ports"))]
    addresses = [a for e in _l(es.get("endpoints")) for a in _l(_d(e).get("addresses"))]
    port_text = ",".join(ports[:3]) + (f" + {len(ports) - 3} more..." if len(ports) > 3 else "")
    address_text = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")
    return [_d(es.get("metadata")).get("name"), es.get("addressType"), port_text or "<unset>",
            address_text or "<unset>", _age(es)]


# ---------------------------------------------------------------- storage

_MODES = (("ReadWriteOnce", "RWO"), ("ReadOnlyMany", "ROX"), ("ReadWriteMany", "RWX"), ("ReadWriteOncePod", "RWOP"))


def _access_modes(modes: Any) -> str:
    given = _l(modes)
    return ",".join(short for mode, short in _MODES if mode in given)


def _quantity(value: Any) -> str:
    if value is None:
        return ""
    try:
        number = parse_quantity(value)
    except (QuantityError, TypeError):
        return str(value)
    return format_quantity(number, binary=isinstance(value, str) and "i" in value)


def _class(obj: Obj) -> str:
    annotation = _d(_d(obj.get("metadata")).get("annotations")).get("volume.beta.kubernetes.io/storage-class")
    return str(annotation or _d(obj.get("spec")).get("storageClassName") or "")


def _pvc(pvc: Obj) -> Cells:
    spec, status, md = _d(pvc.get("spec")), _d(pvc.get("status")), _d(pvc.get("metadata"))
    phase = "Terminating" if md.get("deletionTimestamp") else status.get("phase") or ""
    capacity = modes = ""
    if spec.get("volumeName"):
        modes = _access_modes(status.get("accessModes"))
        capacity = _quantity(_d(status.get("capacity")).get("storage"))
    return [md.get("name"), phase, spec.get("volumeName") or "", capacity, modes, _class(pvc),
            spec.get("volumeAttributesClassName") or "<unset>", _age(pvc), spec.get("volumeMode") or "<unset>"]


def _pv(pv: Obj) -> Cells:
    spec, status, md = _d(pv.get("spec")), _d(pv.get("status")), _d(pv.get("metadata"))
    claim = _d(spec.get("claimRef"))
    claim_text = f"{claim.get('namespace', '')}/{claim.get('name', '')}" if claim else ""
    phase = "Terminating" if md.get("deletionTimestamp") else status.get("phase") or ""
    return [md.get("name"), _quantity(_d(spec.get("capacity")).get("storage")), _access_modes(spec.get("accessModes")),
            spec.get("persistentVolumeReclaimPolicy") or "", phase, claim_text, _class(pv),
            spec.get("volumeAttributesClassName") or "<unset>", status.get("reason") or "", _age(pv),
            spec.get("volumeMode") or "<unset>"]


def _storage_class(sc: Obj) -> Cells:
    # kubectl, not the server, marks the default class "(default)".
    return [_d(sc.get("metadata")).get("name"), sc.get("provisioner"), sc.get("reclaimPolicy") or "Delete",
            sc.get("volumeBindingMode") or "Immediate", bool(sc.get("allowVolumeExpansion")), _age(sc)]


# ---------------------------------------------------------------- cluster


def _node(node: Obj) -> Cells:
    spec, status, md = _d(node.get("spec")), _d(node.get("status")), _d(node.get("metadata"))
    states = []
    for cond in _l(status.get("conditions")):
        if _d(cond).get("type") == "Ready":
            states = ["Ready" if _d(cond).get("status") == "True" else "NotReady"]
    states = states or ["Unknown"]
    if spec.get("unschedulable"):
        states.append("SchedulingDisabled")
    roles = set()
    for key, value in _d(md.get("labels")).items():
        if key.startswith("node-role.kubernetes.io/") and key != "node-role.kubernetes.io/":
            roles.add(key.removeprefix("node-role.kubernetes.io/"))
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    info = _d(status.get("nodeInfo"))

    def address(kind: str) -> str:
        return next((_d(a).get("address") for a in _l(status.get("addresses")) if _d(a).get("type") == kind),
                    None) or "<none>"

    kernel = info.get("kernelVersion") or "<unknown>"
    if info.get("architecture"):
        kernel = f"{kernel} ({info['architecture']})"
    return [md.get("name"), ",".join(states), ",".join(sorted(roles)) or "<none>", _age(node),
            info.get("kubeletVersion") or "", address("InternalIP"), address("ExternalIP"),
            info.get("osImage") or "<unknown>", kernel, info.get("containerRuntimeVersion") or "<unknown>"]


def _lease(lease: Obj) -> Cells:
    return [_d(lease.get("metadata")).get("name"), _d(lease.get("spec")).get("holderIdentity") or "<unknown>",
            _age(lease)]


def _namespace(ns: Obj) -> Cells:
    return [_d(ns.get("metadata")).get("name"), _d(ns.get("status")).get("phase") or "", _age(ns)]


def _secret(secret: Obj) -> Cells:
    return [_d(secret.get("metadata")).get("name"), secret.get("type") or "", len(_d(secret.get("data"))),
            _age(secret)]


def _configmap(cm: Obj) -> Cells:
    return [_d(cm.get("metadata")).get("name"), len(_d(cm.get("data"))) + len(_d(cm.get("binaryData"))), _age(cm)]


def _name_age(obj: Obj) -> Cells:
    return [_d(obj.get("metadata")).get("name"), _age(obj)]


def _event(ev: Obj) -> Cells:
    obj = _d(ev.get("involvedObject"))
    series = _d(ev.get("series"))
    first = since(ev.get("firstTimestamp")) if ev.get("firstTimestamp") else since(ev.get("eventTime"))
    last = since(ev.get("lastTimestamp")) if ev.get("lastTimestamp") else first
    count = ev.get("count") or 1
    if series:
        last, count = since(series.get("lastObservedTime")), series.get("count") or count
    kind = str(obj.get("kind") or "").lower()
    target = f"{kind}/{obj['name']}" if obj.get("name") else kind
    source = _d(ev.get("source"))
    if source.get("component"):
        origin = source["component"] + (f", {source['host']}" if source.get("host") else "")
    else:
        origin = str(ev.get("reportingComponent") or "") + (
            f", {ev['reportingInstance']}" if ev.get("reportingInstance") else "")
    return [last, ev.get("type") or "", ev.get("reason") or "", target, obj.get("fieldPath") or "", origin,
            str(ev.get("message") or "").strip(), first, count, _d(ev.get("metadata")).get("name")]


def _quota(quota: Obj) -> Cells:
    hard, used = _d(_d(quota.get("status")).get("hard")) or _d(_d(quota.get("spec")).get("hard")), \
        _d(_d(quota.get("status")).get("used"))
    requests: list[str] = []
    limits: list[str] = []
    for name in sorted(hard):
        text = f"{name}: {used.get(name, '0')}/{hard[name]}"
        (limits if name.startswith("limits.") else requests).append(text)
    return [_d(quota.get("metadata")).get("name"), ", ".join(requests), ", ".join(limits), _age(quota)]


def _limit_range(lr: Obj) -> Cells:
    created = _d(lr.get("metadata")).get("creationTimestamp")
    when = _time(created)
    return [_d(lr.get("metadata")).get("name"), when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else "<unknown>"]


def _network_policy(np: Obj) -> Cells:
    return [_d(np.get("metadata")).get("name"), _selector(_d(_d(np.get("spec")).get("podSelector"))), _age(np)]


def _selector(selector: Obj) -> str:
    """metav1.FormatLabelSelector: requirements sorted by key, ``<none>`` for an empty selector."""
    reqs = [(str(k), f"{k}={v}") for k, v in _d(selector.get("matchLabels")).items()]
    ops = {"In": "in", "NotIn": "notin"}
    for e in _l(selector.get("matchExpressions")):
        e = _d(e)
        key, op = str(e.get("key", "")), e.get("operator")
        values = ",".join(sorted(str(v) for v in _l(e.get("values"))))
        reqs.append((key, f"{key} {ops[op]} ({values})" if op in ops else key if op == "Exists" else f"!{key}"))
    return ",".join(text for _, text in sorted(reqs, key=lambda r: r[0])) or "<none>"


def _resource_claim(claim: Obj) -> Cells:
    """kube's resourceClaimState: deleted, pending or allocated, then reserved or deallocating."""
    md, status = _d(claim.get("metadata")), _d(claim.get("status"))
    states = ["deleted"] if md.get("deletionTimestamp") else []
    if status.get("allocation") is None:
        if not md.get("deletionTimestamp"):
            states.append("pending")
    else:
        states.append("allocated")
        if _l(status.get("reservedFor")):
            states.append("reserved")
        elif md.get("deletionTimestamp"):
            states.append("deallocating")
    return [md.get("name"), ",".join(states), _age(claim)]


def _resource_slice(rs: Obj) -> Cells:
    spec = _d(rs.get("spec"))
    return [_d(rs.get("metadata")).get("name"), spec.get("nodeName") or "<none>", spec.get("driver") or "",
            _d(spec.get("pool")).get("name") or "", _age(rs)]


#: Kind name -> the cells of one object's row, one per column of ``columns(kind)``.
PRINTERS: dict[str, Callable[[Obj], Cells]] = {
    "Pod": _pod, "Service": _service, "Endpoints": _endpoints, "EndpointSlice": _endpoint_slice,
    "PersistentVolumeClaim": _pvc, "PersistentVolume": _pv, "StorageClass": _storage_class, "Node": _node,
    "Lease": _lease, "Namespace": _namespace, "Secret": _secret, "ConfigMap": _configmap,
    "ServiceAccount": _name_age, "Event": _event, "ResourceQuota": _quota, "LimitRange": _limit_range,
    "NetworkPolicy": _network_policy, "DeviceClass": _name_age, "ResourceClaim": _resource_claim,
    "ResourceClaimTemplate": _name_age, "ResourceSlice": _resource_slice,
}
