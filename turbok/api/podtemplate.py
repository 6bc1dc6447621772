"""Validation of pod templates, as kube-apiserver's PodSpec validation refuses them.

One validator for every place a pod spec is checked: admission of Sandboxes
and SandboxTemplates (``turbok.store.admission``: 422 with field causes,
nothing stored) and of Pods (``turbok.api.pod``). Messages and field paths are
kube-apiserver's (v1.37), so
``spec.podTemplate.spec.volumes[0].name: Invalid value: "Bad_Name": a lowercase
RFC 1123 label must ...`` reads the same as for a Pod.

``validate_pod_spec`` is kube's ``ValidatePodSpec`` in its order: volumes
(``turbok.api.volume``), containers and init containers
(``turbok.api.container``: names, images, ports, env and downward API, volume
mounts of a defined volume or a volumeClaimTemplate, resources, security
context, probes and lifecycle hooks), host ports, then the pod's own fields
(restartPolicy, dnsPolicy, nodeSelector, securityContext, serviceAccountName,
nodeName, activeDeadlineSeconds, hostname, tolerations). Pods get exactly
that (``turbok.api.pod``); templates also what this machine cannot run
(``runtime_checks``: runc refuses the same on a cluster, where the Pod fails
at start instead): a relative ``workingDir``, a memory limit under
``MIN_MEMORY_BYTES``; and turbok's pod template annotations
(``turbok.dev/pids-limit``, ``turbok.dev/network``).

Also here: the quantities of a container's resources (``container_resources``),
shared by LimitRange defaulting, quota usage, the scheduler and the container config
the node gives its runtime (``turbok.node.podspec``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from turbok.api import validation as v
from turbok.api.container import validate_container, validate_probes
from turbok.api.meta import label_value_problems, qualified_name_problems, validate_metadata
from turbok.api.quantity import QuantityError, format_quantity, parse_quantity
from turbok.api.status import Cause
from turbok.api.volume import validate_volumes

__all__ = [
    "MAX_PIDS_LIMIT",
    "MIN_MEMORY_BYTES",
    "MIN_PIDS_LIMIT",
    "NETWORK_ANNOTATION",
    "NETWORKS",
    "PIDS_LIMIT_ANNOTATION",
    "Resources",
    "as_dict",
    "claim_volume_names",
    "container_resources",
    "containers",
    "on_pod_network",
    "pids_limit",
    "pod_resources",
    "validate_pod_spec",
    "validate_pod_template",
    "validate_tolerations",
]

Obj = dict[str, Any]

#: Pod template annotation: host tasks (processes and threads) the sandbox may use. PodSpec has no
#: pids field; the kubelet's ``podPidsLimit`` is node-wide, so turbok takes it per template here.
PIDS_LIMIT_ANNOTATION = "turbok.dev/pids-limit"
#: An idle gVisor sandbox uses about 41 host tasks; below this it cannot boot and exec reliably.
MIN_PIDS_LIMIT = 64
#: The kernel's largest pid_max.
MAX_PIDS_LIMIT = 4_194_304
#: Pod annotation that keeps a sandbox off the pod network ("none" or "loopback": its own loopback only,
#: no address, no podIP); without it the Pod gets an address on the pod network.
NETWORK_ANNOTATION = "turbok.dev/network"
NETWORKS = ("none", "loopback")


def on_pod_network(annotations: Mapping[str, str]) -> bool:
    """Whether a Pod with these annotations gets an address on the pod network (and so a podIP)."""
    return annotations.get(NETWORK_ANNOTATION) not in NETWORKS

#: Below this memory limit a gVisor sandbox does not boot (the runtime refuses it too).
MIN_MEMORY_BYTES = 32 * 2**20

_RESTART_POLICIES = ("Always", "OnFailure", "Never")
_DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_MAX_INT32 = 2**31 - 1


def _q(value: Any) -> str:
    """A value as kube-apiserver quotes it in ``Invalid value: ...``."""
    return f'"{value}"' if isinstance(value, str) else str(value)


def _invalid(field: str, value: Any, why: str) -> Cause:
    return Cause(field, f"Invalid value: {_q(value)}: {why}")


def _required(field: str) -> Cause:
    return Cause(field, "Required value", "FieldValueRequired")


def as_dict(value: Any) -> Obj:
    """``value`` itself if it is a mapping (so writes to it stick), else a new empty one."""
    return value if isinstance(value, dict) else {}


def containers(pod_spec: Obj) -> Iterator[tuple[str, Obj]]:
    """``(field, container)`` for every container and init container of a pod spec, in order."""
    for key in ("containers", "initContainers"):
        items = pod_spec.get(key)
        if isinstance(items, list):
            for i, c in enumerate(items):
                if isinstance(c, dict):
                    yield f"{key}[{i}]", c


class Resources:
    """A container's requests and limits as numbers; a request left out defaults to the limit (API defaulting)."""

    def __init__(self, requests: dict[str, Decimal], limits: dict[str, Decimal]) -> None:
        self.limits = limits
        self.requests = {**limits, **requests}


def container_resources(container: Obj) -> Resources:
    """Quantities of ``container.resources``; values that do not parse are left out (validation names them)."""
    res = as_dict(container.get("resources"))
    out: list[dict[str, Decimal]] = []
    for part in ("requests", "limits"):
        values = as_dict(res.get(part))
        parsed: dict[str, Decimal] = {}
        for name, value in values.items():
            try:
                parsed[name] = parse_quantity(value)
            except (QuantityError, TypeError):
                continue
        out.append(parsed)
    return Resources(out[0], out[1])


def pod_resources(pod_spec: Obj) -> Resources:
    """What the whole pod asks for, as kube counts it: the sum over containers, or the largest init
    container where that is more (init containers run one at a time, before the others)."""
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    inits: list[Resources] = []
    for field, container in containers(pod_spec):
        res = container_resources(container)
        if field.startswith("initContainers"):
            inits.append(res)
            continue
        for total, part in ((requests, res.requests), (limits, res.limits)):
            for name, value in part.items():
                total[name] = total.get(name, Decimal(0)) + value
    for res in inits:
        for total, part in ((requests, res.requests), (limits, res.limits)):
            for name, value in part.items():
                total[name] = max(total.get(name, Decimal(0)), value)
    return Resources(requests, limits)


def pids_limit(template: Obj) -> int | None:
    """The template's ``turbok.dev/pids-limit``, or None when it sets none (validate first)."""
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(PIDS_LIMIT_ANNOTATION)
    return int(value) if isinstance(value, str) and value.strip().isdigit() else None


def claim_volume_names(spec: Obj) -> list[str]:
    """Names of an object's ``spec.volumeClaimTemplates``: volumes its Pod gets (as a StatefulSet's do)."""
    templates = spec.get("volumeClaimTemplates")
    return [str(as_dict(t.get("metadata")).get("name")) for t in templates if isinstance(t, dict)] \
        if isinstance(templates, list) else []


def validate_pod_template(template: Any, path: str, *, claim_volumes: Iterable[str] = (),
                          more_volumes: bool = False) -> list[Cause]:
    """Causes for everything wrong in a pod template found at ``path`` (e.g. ``spec.podTemplate``).

    ``claim_volumes``: names of volumes the Pod also gets from volumeClaimTemplates. ``more_volumes``:
    others may come later (a SandboxTemplate whose claims may add volume claim templates), so a mount
    of a volume not defined here is not refused.
    """
    if not isinstance(template, dict):
        return [_required(f"{path}.spec.containers")]
    causes = _annotations(template.get("metadata") or {}, f"{path}.metadata.annotations")
    spec = template.get("spec")
    if not isinstance(spec, dict):
        return [*causes, _required(f"{path}.spec.containers")]
    return causes + validate_pod_spec(spec, f"{path}.spec", claim_volumes=claim_volumes, more_volumes=more_volumes,
                                      runtime_checks=True)


def _annotations(md: Obj, path: str) -> list[Cause]:
    annotations = as_dict(md.get("annotations"))
    causes = []
    pids = annotations.get(PIDS_LIMIT_ANNOTATION)
    if pids is not None:
        ok = isinstance(pids, str) and pids.strip().isdigit() and MIN_PIDS_LIMIT <= int(pids) <= MAX_PIDS_LIMIT
        if not ok:
            causes.append(_invalid(f"{path}[{PIDS_LIMIT_ANNOTATION}]", pids,
                                   f"must be an integer from {MIN_PIDS_LIMIT} (what a sandbox needs to boot) "
                                   f"to {MAX_PIDS_LIMIT}"))
    network = annotations.get(NETWORK_ANNOTATION)
    if network is not None and network not in NETWORKS:
        causes.append(Cause(f"{path}[{NETWORK_ANNOTATION}]",
                            f"Unsupported value: {_q(network)}: supported values: "
                            + ", ".join(f'"{n}"' for n in NETWORKS), "FieldValueNotSupported"))
    return causes


def validate_pod_spec(spec: Any, path: str, *, claim_volumes: Iterable[str] = (), more_volumes: bool = False,
                      runtime_checks: bool = False) -> list[Cause]:
    """Causes for a pod spec found at ``path``, in kube-apiserver's order (``ValidatePodSpec``).

    ``runtime_checks`` adds what this machine cannot run (a memory limit under ``MIN_MEMORY_BYTES``, a
    relative ``workingDir``): refused in Sandbox templates; a Pod gets them from its node instead.
    """
    if not isinstance(spec, dict):
        return [_required(f"{path}.containers")]
    causes: list[Cause] = []
    given_grace = spec.get("terminationGracePeriodSeconds")
    grace = given_grace if isinstance(given_grace, int) and not isinstance(given_grace, bool) else 30
    volumes = validate_volumes(spec.get("volumes"), f"{path}.volumes", causes) | set(claim_volumes)
    mountable = None if more_volumes else volumes
    names: set[str] = set()

    def each(field: str, init: bool) -> list[Cause]:
        """One list of containers: each valid, runnable here, named once across both lists, its probes."""
        found: list[Cause] = []
        listed = spec.get(field)
        for i, c in enumerate(listed if isinstance(listed, list) else []):
            if not isinstance(c, dict):
                continue
            where = f"{path}.{field}[{i}]"
            found += validate_container(c, where, mountable)
            if runtime_checks:
                found += _runtime(c, where)
            name = c.get("name")
            if isinstance(name, str) and name:
                if name in names:
                    found.append(Cause(f"{where}.name", f"Duplicate value: {_q(name)}", "FieldValueDuplicate"))
                names.add(name)
            sidecar = init and c.get("restartPolicy") == "Always"
            found += validate_probes(c, where, init=init, sidecar=sidecar, grace=grace)
        return found

    causes += each("containers", init=False)
    causes += _host_ports(spec)
    if not spec.get("containers"):
        causes.append(_required(f"{path}.containers"))
    causes += each("initContainers", init=True)
    causes += _pod_fields(spec, path)
    return causes


def _runtime(c: Obj, path: str) -> list[Cause]:
    """What a gVisor sandbox on this machine cannot start (runc refuses the same when the Pod starts)."""
    causes = []
    limit = as_dict(as_dict(c.get("resources")).get("limits")).get("memory")
    number = v.quantity(limit) if limit is not None else None
    if number is not None and 0 < number < MIN_MEMORY_BYTES:
        least = format_quantity(Decimal(MIN_MEMORY_BYTES), binary=True)
        causes.append(_invalid(f"{path}.resources.limits[memory]", str(limit),
                               f"must be at least {least}: a gVisor sandbox does not boot with less"))
    workdir = c.get("workingDir")
    if isinstance(workdir, str) and workdir and not workdir.startswith("/"):
        causes.append(_invalid(f"{path}.workingDir", workdir, "must be an absolute path (the runtime cannot "
                                                              "start a process in a relative one)"))
    return causes


def _host_ports(spec: Obj) -> list[Cause]:
    """``AccumulateUniqueHostPorts``: one host port per protocol and address across the pod's containers."""
    causes: list[Cause] = []
    seen: set[str] = set()
    for field, c in containers(spec):
        if not field.startswith("containers"):
            continue
        for j, port in enumerate(c.get("ports") or []):
            if not isinstance(port, dict) or not port.get("hostPort"):
                continue
            key = f"{port.get('hostIP') or ''}/{port.get('protocol', 'TCP')}/{port['hostPort']}"
            if key in seen:
                causes.append(Cause(f"spec.{field}.ports[{j}].hostPort",
                                    f"Duplicate value: \"{port.get('protocol', 'TCP')}/{port.get('hostIP') or ''}/"
                                    f"{port['hostPort']}\"",
                                    "FieldValueDuplicate"))
            seen.add(key)
    return causes


def _pod_fields(spec: Obj, path: str) -> list[Cause]:
    """The pod-level fields after the containers, in kube-apiserver's order."""
    causes: list[Cause] = []
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in _RESTART_POLICIES:
        causes.append(v.not_supported(f"{path}.restartPolicy", policy, _RESTART_POLICIES))
    dns = spec.get("dnsPolicy")
    if dns is not None and dns not in _DNS_POLICIES:
        causes.append(v.not_supported(f"{path}.dnsPolicy", dns, _DNS_POLICIES))
    selector = spec.get("nodeSelector")
    if isinstance(selector, dict):
        causes += [Cause(f"{path}.nodeSelector", c.message, c.reason)
                   for c in validate_metadata({"labels": selector}, require_name=False)]
    causes += _pod_security_context(spec.get("securityContext"), f"{path}.securityContext")
    for i, ref in enumerate(spec.get("imagePullSecrets") or []):
        if isinstance(ref, dict) and not ref.get("name"):
            causes.append(_required(f"{path}.imagePullSecrets[{i}].name"))
    for key in ("serviceAccountName", "nodeName"):
        value = spec.get(key)
        if isinstance(value, str) and value:
            causes += v.dns1123_subdomain_causes(f"{path}.{key}", value)
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None:
        causes += v.range_causes(f"{path}.activeDeadlineSeconds", deadline, 1, _MAX_INT32)
    for key in ("hostname", "subdomain"):
        value = spec.get(key)
        if isinstance(value, str) and value:
            causes += v.dns1123_label_causes(f"{path}.{key}", value)
    causes += validate_tolerations(spec.get("tolerations"), f"{path}.tolerations")
    return causes


def _pod_security_context(ctx: Any, path: str) -> list[Cause]:
    if not isinstance(ctx, dict):
        return []
    causes: list[Cause] = []
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        if ctx.get(key) is not None:
            causes += v.range_causes(f"{path}.{key}", ctx[key], 0, _MAX_INT32)
    for i, group in enumerate(ctx.get("supplementalGroups") or []):
        causes += v.range_causes(f"{path}.supplementalGroups[{i}]", group, 0, _MAX_INT32)
    return causes


def validate_tolerations(tolerations: Any, path: str) -> list[Cause]:
    """``ValidateTolerations``."""
    causes: list[Cause] = []
    for i, t in enumerate(tolerations if isinstance(tolerations, list) else []):
        if not isinstance(t, dict):
            continue
        where = f"{path}[{i}]"
        key, op, value, effect = t.get("key", ""), t.get("operator", ""), t.get("value", ""), t.get("effect", "")
        if key:
            causes += [_invalid(f"{where}.key", key, p) for p in qualified_name_problems(str(key))]
        if not key and op != "Exists":
            causes.append(_invalid(f"{where}.operator", op, 'operator must be Exists when `key` is empty, which '
                                                             'means "match all values and all keys"'))
        if t.get("tolerationSeconds") is not None and effect != "NoExecute":
            causes.append(_invalid(f"{where}.effect", effect, "effect must be 'NoExecute' when `tolerationSeconds` "
                                                                "is set"))
        if op in ("Equal", ""):
            problems = label_value_problems(value) if isinstance(value, str) else ["must be a string"]
            if problems:
                causes.append(_invalid(f"{where}.operator", value, ";".join(problems)))
        elif op == "Exists":
            if value:
                causes.append(_invalid(f"{where}.operator", value, "value must be empty when `operator` is "
                                                                   "'Exists'"))
        else:
            causes.append(v.not_supported(f"{where}.operator", op, ["Equal", "Exists"]))
        if effect and effect not in _TAINT_EFFECTS:
            causes.append(v.not_supported(f"{where}.effect", effect, _TAINT_EFFECTS))
    return causes
