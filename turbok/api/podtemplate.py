"""Validation of pod templates, as kube-apiserver's PodSpec validation refuses them.

One validator for every place a pod template is checked: admission of
Sandboxes and SandboxTemplates (``turbok.store.admission``: 422 with field
causes, nothing stored) and the sandbox controller's last check before a start
(``turbok.controllers.podspec``, for objects stored before this validation
existed). Messages and field paths are kube-apiserver's (v1.37), so
``spec.podTemplate.spec.volumes[0].name: Invalid value: "Bad_Name": a lowercase
RFC 1123 label must ...`` reads the same as for a Pod.

Checked, as upstream: volume names (required, DNS label, unique), emptyDir
``sizeLimit``, containers present, container names (DNS label, unique across
containers and initContainers), images, ports, env names, volume mounts (name
of a defined volume, or of a volumeClaimTemplate; mountPath given and unique), resource names, quantities
non-negative, requests not above limits, restartPolicy. Checked because this
machine cannot run them (runc refuses the same on a cluster, where the Pod
fails at start instead): a relative ``workingDir``, a memory limit under
``MIN_MEMORY_BYTES``; and turbok's pod template annotations
(``turbok.dev/pids-limit``, ``turbok.dev/network``).

Also here: the quantities of a container's resources (``container_resources``),
shared by LimitRange defaulting, quota usage and the runtime plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from turbok.api.quantity import QuantityError, format_quantity, parse_quantity
from turbok.api.status import Cause

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
    "pids_limit",
    "pod_resources",
    "validate_pod_template",
]

Obj = dict[str, Any]

#: Pod template annotation: host tasks (processes and threads) the sandbox may use. PodSpec has no
#: pids field; the kubelet's ``podPidsLimit`` is node-wide, so turbok takes it per template here.
PIDS_LIMIT_ANNOTATION = "turbok.dev/pids-limit"
#: An idle gVisor sandbox uses about 41 host tasks; below this it cannot boot and exec reliably.
MIN_PIDS_LIMIT = 64
#: The kernel's largest pid_max.
MAX_PIDS_LIMIT = 4_194_304
#: Pod template annotation that gives a sandbox a private loopback interface ("loopback"); default "none".
NETWORK_ANNOTATION = "turbok.dev/network"
NETWORKS = ("none", "loopback")
#: Below this memory limit a gVisor sandbox does not boot (the runtime refuses it too).
MIN_MEMORY_BYTES = 32 * 2**20

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_MESSAGE = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                  "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
                  "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
_ENV_NAME_MESSAGE = "a valid environment variable name must consist only of printable ASCII characters other than '='"
_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_RESTART_POLICIES = ("Always", "OnFailure", "Never")


def _q(value: Any) -> str:
    """A value as kube-apiserver quotes it in ``Invalid value: ...``."""
    return f'"{value}"' if isinstance(value, str) else str(value)


def _invalid(field: str, value: Any, why: str) -> Cause:
    return Cause(field, f"Invalid value: {_q(value)}: {why}")


def _required(field: str) -> Cause:
    return Cause(field, "Required value", "FieldValueRequired")


def _label_causes(field: str, name: Any) -> list[Cause]:
    if not isinstance(name, str) or not name:
        return [_required(field)]
    causes = []
    if len(name) > 63:
        causes.append(_invalid(field, name, "must be no more than 63 characters"))
    if not _DNS1123_LABEL.match(name):
        causes.append(_invalid(field, name, _LABEL_MESSAGE))
    return causes


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
    return causes + _pod_spec(spec, f"{path}.spec", set(claim_volumes), more_volumes)


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


def _pod_spec(spec: Obj, path: str, claim_volumes: set[str], more_volumes: bool) -> list[Cause]:
    causes: list[Cause] = []
    volumes = _volumes(spec.get("volumes"), f"{path}.volumes", causes) | claim_volumes
    if not spec.get("containers"):
        causes.append(_required(f"{path}.containers"))
    names: set[str] = set()
    for field, container in containers(spec):
        _container(container, f"{path}.{field}", None if more_volumes else volumes, names, causes)
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in _RESTART_POLICIES:
        causes.append(Cause(f"{path}.restartPolicy", f"Unsupported value: {_q(policy)}: supported values: "
                            + ", ".join(f'"{p}"' for p in _RESTART_POLICIES), "FieldValueNotSupported"))
    return causes


def _volumes(volumes: Any, path: str, causes: list[Cause]) -> set[str]:
    """Validate ``volumes``; the names of the valid ones (mounts may refer only to those)."""
    valid: set[str] = set()
    seen: set[str] = set()
    for i, volume in enumerate(volumes if isinstance(volumes, list) else []):
        if not isinstance(volume, dict):
            continue
        name = volume.get("name")
        bad = _label_causes(f"{path}[{i}].name", name)
        if not bad and name in seen:
            bad = [Cause(f"{path}[{i}].name", f"Duplicate value: {_q(name)}", "FieldValueDuplicate")]
        size = as_dict(volume.get("emptyDir")).get("sizeLimit")
        if size is not None and not _non_negative(size):  # kube's words for a negative or malformed one
            bad.append(Cause(f"{path}[{i}].emptyDir.sizeLimit", "Forbidden: SizeLimit field must be a valid "
                             "resource quantity", "FieldValueForbidden"))
        causes.extend(bad)
        if isinstance(name, str):
            seen.add(name)
            if not bad:
                valid.add(name)
    return valid


def _non_negative(value: Any) -> bool:
    try:
        return parse_quantity(value) >= 0
    except (QuantityError, TypeError):
        return False


def _container(c: Obj, path: str, volumes: set[str] | None, names: set[str], causes: list[Cause]) -> None:
    name = c.get("name")
    bad = _label_causes(f"{path}.name", name)
    causes.extend(bad)
    if not c.get("image"):
        causes.append(_required(f"{path}.image"))
    for j, port in enumerate(c.get("ports") or []):
        number = port.get("containerPort") if isinstance(port, dict) else None
        if not number:
            causes.append(_required(f"{path}.ports[{j}].containerPort"))
        elif not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(_invalid(f"{path}.ports[{j}].containerPort", number, "must be between 1 and 65535, "
                                   "inclusive"))
    for j, var in enumerate(c.get("env") or []):
        env_name = var.get("name") if isinstance(var, dict) else None
        if not env_name:
            causes.append(_required(f"{path}.env[{j}].name"))
        elif not isinstance(env_name, str) or "=" in env_name or not all(" " <= ch <= "~" for ch in env_name):
            causes.append(_invalid(f"{path}.env[{j}].name", env_name, _ENV_NAME_MESSAGE))
    _mounts(c.get("volumeMounts"), f"{path}.volumeMounts", volumes, causes)
    _resources(c.get("resources"), f"{path}.resources", causes)
    workdir = c.get("workingDir")
    if isinstance(workdir, str) and workdir and not workdir.startswith("/"):
        causes.append(_invalid(f"{path}.workingDir", workdir, "must be an absolute path (the runtime cannot "
                               "start a process in a relative one)"))
    if isinstance(name, str) and name:
        if name in names:
            causes.append(Cause(f"{path}.name", f"Duplicate value: {_q(name)}", "FieldValueDuplicate"))
        names.add(name)


def _mounts(mounts: Any, path: str, volumes: set[str] | None, causes: list[Cause]) -> None:
    paths: set[str] = set()
    for j, mount in enumerate(mounts if isinstance(mounts, list) else []):
        if not isinstance(mount, dict):
            continue
        name, mount_path = mount.get("name"), mount.get("mountPath")
        if not name:
            causes.append(_required(f"{path}[{j}].name"))
        if volumes is not None and name not in volumes:
            causes.append(Cause(f"{path}[{j}].name", f"Not found: {_q(name or '')}", "FieldValueNotFound"))
        if not mount_path:
            causes.append(_required(f"{path}[{j}].mountPath"))
        elif mount_path in paths:
            causes.append(_invalid(f"{path}[{j}].mountPath", mount_path, "must be unique"))
        else:
            paths.add(mount_path)


def _resource_name_causes(field: str, name: str) -> list[Cause]:
    if "/" in name or name in _CONTAINER_RESOURCES or name.startswith("hugepages-"):
        return []
    return [_invalid(field, name, "must be a standard resource type or fully qualified"),
            _invalid(field, name, "must be a standard resource for containers")]


def _resources(res: Any, path: str, causes: list[Cause]) -> None:
    if not isinstance(res, dict):
        return
    parsed: dict[str, dict[str, Decimal]] = {}
    for part in ("limits", "requests"):
        values = as_dict(res.get(part))
        parsed[part] = {}
        for name, value in values.items():
            field = f"{path}.{part}[{name}]"
            causes.extend(_resource_name_causes(field, name))
            try:
                number = parse_quantity(value)
            except (QuantityError, TypeError):
                causes.append(_invalid(field, str(value), "must be a quantity, such as 500m, 1.5 or 256Mi"))
                continue
            if number < 0:
                causes.append(_invalid(field, str(value), "must be greater than or equal to 0"))
            elif part == "limits" and name == "memory" and 0 < number < MIN_MEMORY_BYTES:
                least = format_quantity(Decimal(MIN_MEMORY_BYTES), binary=True)
                causes.append(_invalid(field, str(value), f"must be at least {least}: a gVisor sandbox does not "
                                       "boot with less"))
            parsed[part][name] = number
    for name, request in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        if limit is not None and request > limit:
            binary = name != "cpu"
            causes.append(_invalid(f"{path}.requests", str(res["requests"][name]),
                                   f"must be less than or equal to {name} limit of "
                                   f"{format_quantity(limit, binary=binary)}"))
