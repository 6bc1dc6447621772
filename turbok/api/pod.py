"""Pod semantics of kube-apiserver's pod registry: what happens to a Pod on create, delete, bind and evict.

Pure functions over dicts; the registry (``turbok.store.registry``) calls them.

- Defaults (``set_defaults``) and validation (``validate``, ``validate_update``)
  as kube-apiserver 1.37: the spec is checked by ``turbok.api.podtemplate``
  (the one pod spec validator) and is immutable after create but for what
  kube lets change (images, a shorter activeDeadlineSeconds, added
  tolerations).
- Create: status starts as ``{"phase": "Pending", "qosClass": ...}`` whatever
  the body says (kube's ``PrepareForCreate``); QoS as kubelet computes it.
- Graceful deletion (``grace_period``): a Pod bound to a node and not
  finished is deleted gracefully, ``metadata.deletionTimestamp`` set to now
  plus the period (the request's ``gracePeriodSeconds``, else
  ``spec.terminationGracePeriodSeconds``, else 30) and
  ``deletionGracePeriodSeconds`` to the period; the node kills its
  containers and deletes it again with ``gracePeriodSeconds=0``. An unbound
  or finished Pod, or a period of 0, goes at once.
- ``pods/binding`` (``bind``): sets ``spec.nodeName`` once and the
  ``PodScheduled`` condition; 409 when already bound or being deleted.
- ``pods/eviction`` (``check_eviction``): a policy/v1 Eviction is a delete
  with its ``deleteOptions`` (turbok has no PodDisruptionBudgets to refuse it).
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

from turbok.api import dra
from turbok.api import validation as v
from turbok.api.container import set_container_defaults
from turbok.api.meta import now
from turbok.api.podtemplate import as_dict, container_resources, validate_pod_spec, validate_tolerations
from turbok.api.status import BadRequest, Cause, Conflict
from turbok.api.volume import set_volume_defaults

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "bind",
    "check_binding",
    "check_eviction",
    "grace_period",
    "initial_status",
    "prepare_create",
    "qos_class",
    "set_defaults",
    "validate",
    "prepare_status_update",
    "validate_status_update",
    "validate_update",
]

Obj = dict[str, Any]

#: What kube defaults ``spec.terminationGracePeriodSeconds`` to.
DEFAULT_GRACE_SECONDS = 30
_TERMINAL = ("Succeeded", "Failed")
_QOS_RESOURCES = ("cpu", "memory")


def qos_class(pod: Obj) -> str:
    """Guaranteed, Burstable or BestEffort, as ``qos.ComputePodQOS`` computes it from cpu and memory
    (requests default to limits, as API defaulting does before it runs)."""
    spec = as_dict(pod.get("spec"))
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    guaranteed = True
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if not isinstance(c, dict):
                continue
            res = container_resources(c)
            for total, part in ((requests, res.requests), (limits, res.limits)):
                for name in _QOS_RESOURCES:
                    if part.get(name, Decimal(0)) > 0:
                        total[name] = total.get(name, Decimal(0)) + part[name]
            if not all(res.limits.get(n, Decimal(0)) > 0 for n in _QOS_RESOURCES):
                guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and all(limits.get(n) == v for n, v in requests.items()) and len(requests) == len(limits):
        return "Guaranteed"
    return "Burstable"


def prepare_create(pod: Obj) -> None:
    """kube's ``PrepareForCreate``: status reset, and a negative grace period taken as 1 second."""
    pod["status"] = initial_status(pod)
    spec = as_dict(pod.get("spec"))
    grace = spec.get("terminationGracePeriodSeconds")
    if isinstance(grace, int) and grace < 0:
        spec["terminationGracePeriodSeconds"] = 1


def initial_status(pod: Obj) -> Obj:
    """What a new Pod's status is, whatever the create asked for."""
    return {"phase": "Pending", "qosClass": qos_class(pod)}


def grace_period(pod: Obj, requested: int | None) -> int:
    """The grace period a delete gives this (not yet terminating) Pod: 0 means remove it at once."""
    spec = as_dict(pod.get("spec"))
    if requested is not None:
        period = requested
    else:
        default = spec.get("terminationGracePeriodSeconds")
        period = default if isinstance(default, int) else DEFAULT_GRACE_SECONDS
    if not spec.get("nodeName") or as_dict(pod.get("status")).get("phase") in _TERMINAL:
        return 0
    return max(period, 0)


def check_binding(name: str, binding: Any) -> str:
    """The node a ``pods/binding`` body binds ``name`` to; 400 for a malformed Binding."""
    if not isinstance(binding, dict):
        raise BadRequest("the body must be a v1 Binding")
    if binding.get("kind") not in (None, "Binding") or binding.get("apiVersion") not in (None, "v1"):
        raise BadRequest(f"the body must be a v1 Binding, not {binding.get('apiVersion')}/{binding.get('kind')}")
    md = as_dict(binding.get("metadata"))
    if md.get("name") and md["name"] != name:
        raise BadRequest("name in URL does not match name in Binding object", kind="Binding")
    target = as_dict(binding.get("target"))
    if target.get("kind") not in (None, "", "Node"):
        raise BadRequest(f"invalid binding target kind {target.get('kind')!r}: only Node is supported",
                         kind="Binding")
    node = target.get("name")
    if not isinstance(node, str) or not node:
        raise BadRequest("a binding needs target.name, the node", kind="Binding")
    return node


def bind(pod: Obj, node: str, annotations: dict[str, str] | None = None) -> Obj:
    """The Pod bound to ``node`` (a new dict), as ``BindingREST.assignPod`` writes it; 409 when it cannot be."""
    md = pod["metadata"]
    name = md.get("name", "")
    if md.get("deletionTimestamp"):
        raise Conflict(f"Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is being deleted, "
                       "cannot be assigned to a host", kind="pods/binding", name=name)
    bound = as_dict(pod.get("spec")).get("nodeName")
    if bound:
        raise Conflict(f"Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already "
                       f"assigned to node \"{bound}\"", kind="pods/binding", name=name)
    out = {**pod, "metadata": dict(md), "spec": {**pod["spec"], "nodeName": node}}
    if annotations:
        out["metadata"]["annotations"] = {**(md.get("annotations") or {}), **annotations}
    status = dict(as_dict(pod.get("status")))
    conditions = [c for c in status.get("conditions") or [] if as_dict(c).get("type") != "PodScheduled"]
    conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                       "lastTransitionTime": now()})
    status["conditions"] = conditions
    out["status"] = status
    return out


def check_eviction(name: str, namespace: str, eviction: Any) -> Obj:
    """The ``deleteOptions`` of a policy/v1 (or v1beta1) Eviction of ``name``; 400 for a malformed one."""
    if not isinstance(eviction, dict):
        raise BadRequest("the body must be a policy/v1 Eviction")
    if eviction.get("kind") not in (None, "Eviction") or \
            eviction.get("apiVersion") not in (None, "policy/v1", "policy/v1beta1"):
        raise BadRequest(f"the body must be a policy/v1 Eviction, not {eviction.get('apiVersion')}/"
                         f"{eviction.get('kind')}")
    md = as_dict(eviction.get("metadata"))
    if md.get("name") and md["name"] != name:
        raise BadRequest("name in URL does not match name in Eviction object", kind="Eviction")
    if md.get("namespace") and md["namespace"] != namespace:
        raise BadRequest("namespace in URL does not match namespace in Eviction object", kind="Eviction")
    options = eviction.get("deleteOptions")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("deleteOptions must be an object", kind="Eviction")
    return dict(options or {})


# ---------------------------------------------------------------- defaults and validation

#: Tolerations the DefaultTolerationSeconds admission plugin gives every Pod (kube's defaults: 300 s).
_DEFAULT_TOLERATIONS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def set_defaults(pod: Obj) -> None:
    """What kube-apiserver fills in a new Pod: API defaulting plus the ServiceAccount, Priority and
    DefaultTolerationSeconds admission plugins (not the service account token volume: turbok issues none)."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return
    for key, value in (("restartPolicy", "Always"), ("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS),
                       ("dnsPolicy", "ClusterFirst"), ("schedulerName", "default-scheduler"),
                       ("enableServiceLinks", True), ("priority", 0),
                       ("preemptionPolicy", "PreemptLowerPriority")):
        if spec.get(key) is None:
            spec[key] = value
    if not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = spec.get("serviceAccount") or "default"
    spec["serviceAccount"] = spec["serviceAccountName"]
    if not isinstance(spec.get("securityContext"), dict):
        spec["securityContext"] = {}
    host_network = spec.get("hostNetwork") is True
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                set_container_defaults(c, host_network=host_network)
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict):
            set_volume_defaults(volume)
    tolerations = spec.setdefault("tolerations", [])
    if isinstance(tolerations, list):
        for key in _DEFAULT_TOLERATIONS:
            if not any(isinstance(t, dict) and t.get("key") == key and t.get("effect") in ("NoExecute", None, "")
                       for t in tolerations):
                tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                    "tolerationSeconds": 300})


def validate(pod: Obj) -> list[Cause]:
    """``ValidatePodCreate``: the pod spec as kube-apiserver 1.37 checks it."""
    return validate_pod_spec(pod.get("spec"), "spec") + dra.pod_claim_causes(pod.get("spec"), "spec")


#: What a Pod update may change in the spec, as kube-apiserver's message lists them.
UPDATABLE = ("`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
             "`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
             "(allow it to be set to 1 if it was previously negative)")
_MAX_INT32 = 2**31 - 1


def validate_update(new: Obj, old: Obj) -> list[Cause]:
    """``ValidatePodUpdate``: the spec is immutable but for images, a shorter activeDeadlineSeconds,
    added tolerations and a negative terminationGracePeriodSeconds raised to 1."""
    new_spec, old_spec = as_dict(new.get("spec")), as_dict(old.get("spec"))
    causes: list[Cause] = []
    for key in ("containers", "initContainers"):
        new_items, old_items = new_spec.get(key) or [], old_spec.get(key) or []
        if len(new_items) != len(old_items):
            return [v.forbidden(f"spec.{key}", "pod updates may not add or remove containers")]
        for i, c in enumerate(new_items):
            if isinstance(c, dict) and not c.get("image"):
                causes.append(v.required(f"spec.{key}[{i}].image"))
    deadline, old_deadline = new_spec.get("activeDeadlineSeconds"), old_spec.get("activeDeadlineSeconds")
    if deadline is not None:
        if not isinstance(deadline, int) or not 0 <= deadline <= _MAX_INT32:
            return [*causes, v.invalid("spec.activeDeadlineSeconds", deadline,
                                       f"must be between 0 and {_MAX_INT32}, inclusive")]
        if isinstance(old_deadline, int) and old_deadline < deadline:
            return [*causes, v.invalid("spec.activeDeadlineSeconds", deadline,
                                       "must be less than or equal to previous value")]
    elif old_deadline is not None:
        causes.append(v.invalid("spec.activeDeadlineSeconds", None, "must not update from a positive integer to "
                                                                     "nil value"))
    causes += _added_tolerations(new_spec.get("tolerations"), old_spec.get("tolerations"))
    causes += validate_tolerations(new_spec.get("tolerations"), "spec.tolerations")
    if new_spec == old_spec:
        return causes
    # The old spec with what may change taken from the new one: anything else that differs is refused.
    munged = copy.deepcopy(old_spec)
    for key in ("containers", "initContainers"):
        for c, n in zip(munged.get(key) or [], new_spec.get(key) or [], strict=False):
            if isinstance(c, dict) and isinstance(n, dict):
                c["image"] = n.get("image")
    for key in ("activeDeadlineSeconds", "tolerations"):
        if key in new_spec:
            munged[key] = new_spec[key]
        else:
            munged.pop(key, None)
    old_grace, new_grace = old_spec.get("terminationGracePeriodSeconds"), new_spec.get("terminationGracePeriodSeconds")
    if isinstance(old_grace, int) and old_grace < 0 and new_grace == 1:
        munged["terminationGracePeriodSeconds"] = 1
    if munged != new_spec:
        causes.append(v.forbidden("spec", f"pod updates may not change fields other than {UPDATABLE}\n"
                                          + _spec_diff(munged, new_spec)))
    return causes


def _added_tolerations(new: Any, old: Any) -> list[Cause]:
    """``validateOnlyAddedTolerations``: every old toleration is still there (tolerationSeconds may shrink)."""
    causes: list[Cause] = []
    new_items = [t for t in new or [] if isinstance(t, dict)]
    for t in old or []:
        if not isinstance(t, dict):
            continue
        same = [n for n in new_items if {k: x for k, x in n.items() if k != "tolerationSeconds"}
                == {k: x for k, x in t.items() if k != "tolerationSeconds"}]
        if not same:
            causes.append(v.forbidden("spec.tolerations", "existing toleration can not be modified except its "
                                                          "tolerationSeconds"))
            continue
        seconds, new_seconds = t.get("tolerationSeconds"), same[0].get("tolerationSeconds")
        if seconds is not None and (new_seconds is None or new_seconds > seconds) and seconds > 0:
            causes.append(v.forbidden("spec.tolerations", "existing toleration can not be modified except its "
                                                          "tolerationSeconds"))
    return causes


def _spec_diff(old: Any, new: Any, path: str = "spec") -> str:
    """The fields that differ, one line each (kube prints a Go struct diff here)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return "".join(_spec_diff(old.get(k), new.get(k), f"{path}.{k}") for k in sorted(set(old) | set(new)))
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return "".join(_spec_diff(o, n, f"{path}[{i}]") for i, (o, n) in enumerate(zip(old, new, strict=True)))
    if old == new:
        return ""
    return f"  {path}: {json.dumps(old)} -> {json.dumps(new)}\n"


def validate_status_update(new: Obj, old: Obj) -> list[Cause]:
    """What ``pods/status`` checks besides the schema: a nominated node's name."""
    nominated = as_dict(new.get("status")).get("nominatedNodeName")
    if not isinstance(nominated, str) or not nominated:
        return []
    if as_dict(old.get("spec")).get("nodeName") and nominated != as_dict(old.get("status")).get("nominatedNodeName"):
        return [v.forbidden("status.nominatedNodeName", "may not be set on pods that are already bound to a node")]
    return v.dns1123_subdomain_causes("status.nominatedNodeName", nominated)


def prepare_status_update(new: Obj, old: Obj) -> None:
    """The QoS class is set once, at create: a status write keeps it."""
    qos = as_dict(old.get("status")).get("qosClass")
    if qos and isinstance(new.get("status"), dict):
        new["status"]["qosClass"] = qos
