"""Containers as kube-apiserver defaults and validates them (``SetDefaults_Container``, ``validateContainers``).

Pure functions; ``turbok.api.podtemplate`` calls them for each container and
init container of a pod spec, Pods and the pod templates of Sandboxes alike.
Messages and field paths are kube-apiserver 1.37's.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from turbok.api import validation as v
from turbok.api.quantity import QuantityError, format_quantity, parse_quantity
from turbok.api.status import Cause

__all__ = ["ENV_FIELD_PATHS", "set_container_defaults", "validate_container", "validate_probes"]

Obj = dict[str, Any]

_PROTOCOLS = ("SCTP", "TCP", "UDP")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")
_SCHEMES = ("HTTP", "HTTPS")
_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_MAX_INT32 = 2**31 - 1
_ENV_NAME_MESSAGE = "a valid environment variable name must consist only of printable ASCII characters other than '='"
#: What ``fieldRef.fieldPath`` of an env var may name (downward API), besides subscripted labels/annotations.
ENV_FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
                   "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs")
#: Every field label the downward API converts (others are "field label not supported").
_DOWNWARD_FIELDS = ("metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace", "metadata.uid",
                    "spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName", "spec.schedulerName",
                    "status.phase", "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs")
_RESOURCE_FIELDS = ("limits.cpu", "limits.memory", "limits.ephemeral-storage", "requests.cpu", "requests.memory",
                    "requests.ephemeral-storage")


# ---------------------------------------------------------------- defaults


def _pull_policy(image: Any) -> str:
    """Always for ``:latest`` or an untagged image, else IfNotPresent (kube's rule)."""
    if not isinstance(image, str):
        return "IfNotPresent"
    name = image.split("@", 1)[0]
    if "@" in image:
        return "IfNotPresent"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return "Always"
    return "Always" if last.rsplit(":", 1)[1] == "latest" else "IfNotPresent"


def _probe_defaults(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                       ("failureThreshold", 3)):
        if not probe.get(key):
            probe[key] = value
    _handler_defaults(probe)


def _handler_defaults(handler: Any) -> None:
    http = handler.get("httpGet") if isinstance(handler, dict) else None
    if isinstance(http, dict):
        http.setdefault("path", "/")
        http.setdefault("scheme", "HTTP")
    grpc = handler.get("grpc") if isinstance(handler, dict) else None
    if isinstance(grpc, dict):
        grpc.setdefault("service", "")


def set_container_defaults(container: Obj, *, host_network: bool = False) -> None:
    """Fill what kube fills in a container: pull policy, termination message, probes, ports, requests."""
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    if not container.get("imagePullPolicy"):
        container["imagePullPolicy"] = _pull_policy(container.get("image"))
    resources = container.get("resources")
    if not isinstance(resources, dict):
        resources = container["resources"] = {}
    limits = resources.get("limits")
    if isinstance(limits, dict) and limits:
        requests = resources.setdefault("requests", {})
        if isinstance(requests, dict):
            for name, value in limits.items():
                requests.setdefault(name, value)
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            if not port.get("protocol"):
                port["protocol"] = "TCP"
            if host_network and not port.get("hostPort") and port.get("containerPort"):
                port["hostPort"] = port["containerPort"]
    for var in container.get("env") or []:
        ref = ((var.get("valueFrom") or {}).get("fieldRef") if isinstance(var, dict) else None)
        if isinstance(ref, dict):
            ref.setdefault("apiVersion", "v1")
    for key in ("livenessProbe", "readinessProbe", "startupProbe"):
        _probe_defaults(container.get(key))
    lifecycle = container.get("lifecycle")
    if isinstance(lifecycle, dict):
        for key in ("postStart", "preStop"):
            _handler_defaults(lifecycle.get(key))


# ---------------------------------------------------------------- validation


def validate_container(c: Obj, path: str, volumes: set[str] | None) -> list[Cause]:
    """``validateContainerCommon``: what every container, init or not, must be (``volumes`` None: any mount)."""
    causes: list[Cause] = []
    name = c.get("name")
    if not isinstance(name, str) or not name:
        causes.append(v.required(f"{path}.name"))
    else:
        causes += v.dns1123_label_causes(f"{path}.name", name)
    if not c.get("image"):
        causes.append(v.required(f"{path}.image"))
    policy = c.get("terminationMessagePolicy")
    if policy is not None and policy not in _MESSAGE_POLICIES:
        causes.append(v.not_supported(f"{path}.terminationMessagePolicy", policy, _MESSAGE_POLICIES))
    causes += _ports(c.get("ports"), f"{path}.ports")
    causes += _env(c.get("env"), f"{path}.env")
    causes += _env_from(c.get("envFrom"), f"{path}.envFrom")
    causes += _mounts(c.get("volumeMounts"), f"{path}.volumeMounts", volumes)
    pull = c.get("imagePullPolicy")
    if pull is not None and pull not in _PULL_POLICIES:
        causes.append(v.not_supported(f"{path}.imagePullPolicy", pull, _PULL_POLICIES))
    causes += _resources(c.get("resources"), f"{path}.resources")
    causes += _security_context(c.get("securityContext"), f"{path}.securityContext")
    return causes


def validate_probes(c: Obj, path: str, *, init: bool, sidecar: bool, grace: int = 30) -> list[Cause]:
    """Lifecycle and probes: allowed on containers and sidecars (init containers with restartPolicy Always)."""
    causes: list[Cause] = []
    if init and not sidecar:
        for key in ("lifecycle", "livenessProbe", "readinessProbe", "startupProbe"):
            if c.get(key) is not None:
                causes.append(v.forbidden(f"{path}.{key}", "may not be set for init containers without "
                                                            "restartPolicy=Always"))
        return causes
    lifecycle = c.get("lifecycle")
    if isinstance(lifecycle, dict):
        for key in ("postStart", "preStop"):
            if lifecycle.get(key) is not None:
                causes += _handler(lifecycle[key], f"{path}.lifecycle.{key}", lifecycle_hook=True, grace=grace)
    for key in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = c.get(key)
        if not isinstance(probe, dict):
            continue
        where = f"{path}.{key}"
        causes += _handler(probe, where, lifecycle_hook=False)
        for field in ("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold",
                      "failureThreshold"):
            value = probe.get(field)
            if isinstance(value, int) and value < 0:
                causes.append(v.invalid(f"{where}.{field}", value, "must be greater than or equal to 0"))
        probe_grace = probe.get("terminationGracePeriodSeconds")
        if isinstance(probe_grace, int) and probe_grace <= 0:
            causes.append(v.invalid(f"{where}.terminationGracePeriodSeconds", probe_grace, "must be greater than 0"))
        if key == "readinessProbe" and probe_grace is not None:
            causes.append(v.invalid(f"{where}.terminationGracePeriodSeconds", probe_grace,
                                    "must not be set for readinessProbes"))
        threshold = probe.get("successThreshold", 1)
        if key != "readinessProbe" and threshold != 1:
            causes.append(v.invalid(f"{where}.successThreshold", threshold, "must be 1"))
    return causes


def _handler(handler: Obj, path: str, *, lifecycle_hook: bool, grace: int = 30) -> list[Cause]:
    causes: list[Cause] = []
    kinds = ("exec", "httpGet", "tcpSocket") + (("sleep",) if lifecycle_hook else ("grpc",))
    count = 0
    for kind in kinds:
        action = handler.get(kind)
        if action is None:
            continue
        if count:
            causes.append(v.forbidden(f"{path}.{kind}", "may not specify more than 1 handler type"))
            continue
        count += 1
        if not isinstance(action, dict):
            continue
        where = f"{path}.{kind}"
        if kind == "exec" and not action.get("command"):
            causes.append(v.required(f"{where}.command"))
        elif kind in ("httpGet", "tcpSocket"):
            if kind == "httpGet":
                if not action.get("path"):
                    causes.append(v.required(f"{where}.path"))
                scheme = action.get("scheme", "HTTP")
                if scheme not in _SCHEMES:
                    causes.append(v.not_supported(f"{where}.scheme", scheme, _SCHEMES))
            causes += _port_or_name(action.get("port"), f"{where}.port")
        elif kind == "grpc":
            causes += v.port_number_causes(f"{where}.port", action.get("port"))
        elif kind == "sleep":
            seconds = action.get("seconds")
            if not isinstance(seconds, int) or not 0 <= seconds <= grace:
                causes.append(v.invalid(where, seconds, "must be non-negative and less than "
                                                        f"terminationGracePeriodSeconds ({grace})"))
    if not count:
        causes.append(v.required(path, "must specify a handler type"))
    return causes


def _port_or_name(port: Any, path: str) -> list[Cause]:
    if isinstance(port, str):
        return [v.invalid(path, port, problem) for problem in v.port_name_problems(port)]
    return v.port_number_causes(path, port)


def _ports(ports: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    names: set[str] = set()
    for i, port in enumerate(ports if isinstance(ports, list) else []):
        if not isinstance(port, dict):
            continue
        where = f"{path}[{i}]"
        name = port.get("name")
        if isinstance(name, str) and name:
            problems = v.port_name_problems(name)
            if problems:
                causes += [v.invalid(f"{where}.name", name, p) for p in problems]
            elif name in names:
                causes.append(v.duplicate(f"{where}.name", name))
            else:
                names.add(name)
        number = port.get("containerPort")
        if not number:
            causes.append(v.required(f"{where}.containerPort"))
        else:
            causes += v.port_number_causes(f"{where}.containerPort", number)
        host = port.get("hostPort")
        if host:
            causes += v.port_number_causes(f"{where}.hostPort", host)
        protocol = port.get("protocol", "TCP")
        if protocol not in _PROTOCOLS:
            causes.append(v.not_supported(f"{where}.protocol", protocol, _PROTOCOLS))
    return causes


def _env(env: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    for i, var in enumerate(env if isinstance(env, list) else []):
        if not isinstance(var, dict):
            continue
        where = f"{path}[{i}]"
        name = var.get("name")
        if not name:
            causes.append(v.required(f"{where}.name"))
        elif not isinstance(name, str) or "=" in name or not all(" " <= ch <= "~" for ch in name):
            causes.append(v.invalid(f"{where}.name", name, _ENV_NAME_MESSAGE))
        source = var.get("valueFrom")
        if isinstance(source, dict):
            causes += _value_from(source, var.get("value"), f"{where}.valueFrom")
    return causes


def _value_from(source: Obj, value: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    count = 0
    if isinstance(source.get("fieldRef"), dict):
        count += 1
        causes += _field_ref(source["fieldRef"], f"{path}.fieldRef")
    if isinstance(source.get("resourceFieldRef"), dict):
        count += 1
        ref = source["resourceFieldRef"]
        resource = ref.get("resource")
        if not resource:
            causes.append(v.required(f"{path}.resourceFieldRef.resource"))
        elif resource not in _RESOURCE_FIELDS and not str(resource).startswith(("limits.hugepages-",
                                                                               "requests.hugepages-")):
            causes.append(v.not_supported(f"{path}.resourceFieldRef.resource", resource, _RESOURCE_FIELDS))
    for kind in ("configMapKeyRef", "secretKeyRef"):
        ref = source.get(kind)
        if isinstance(ref, dict):
            count += 1
            name = ref.get("name") or ""
            if not name or v.dns1123_subdomain_causes("", name):
                causes += [v.invalid(f"{path}.{kind}.name", name, v.DNS1123_SUBDOMAIN_MESSAGE)]
            key = ref.get("key")
            if not key:
                causes.append(v.required(f"{path}.{kind}.key"))
            else:
                causes += v.config_map_key_causes(f"{path}.{kind}.key", key)
    if count == 0:
        causes.append(v.invalid(path, "", "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef`, "
                                          "`secretKeyRef` or `fileKeyRef`"))
    elif value:
        causes.append(v.invalid(path, "", "may not be specified when `value` is not empty"))
    elif count > 1:
        causes.append(v.invalid(path, "", "may not have more than one field specified at a time"))
    return causes


def _field_ref(ref: Obj, path: str) -> list[Cause]:
    if not ref.get("apiVersion"):
        return [v.required(f"{path}.apiVersion")]
    field = ref.get("fieldPath")
    if not field:
        return [v.required(f"{path}.fieldPath")]
    subscripted = re.fullmatch(r"(metadata\.(?:labels|annotations))\['([^']*)'\]", str(field))
    base = subscripted.group(1) if subscripted else field
    if base not in _DOWNWARD_FIELDS:
        return [v.invalid(f"{path}.fieldPath", field, f"error converting fieldPath: field label not supported: "
                                                      f"{field}")]
    if subscripted:
        return []
    if base not in ENV_FIELD_PATHS:
        return [v.not_supported(f"{path}.fieldPath", base, sorted(ENV_FIELD_PATHS))]
    return []


def _env_from(sources: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    for i, source in enumerate(sources if isinstance(sources, list) else []):
        if not isinstance(source, dict):
            continue
        where = f"{path}[{i}]"
        prefix = source.get("prefix")
        if prefix and ("=" in prefix or not all(" " <= ch <= "~" for ch in prefix)):
            causes.append(v.invalid(f"{where}.prefix", prefix, _ENV_NAME_MESSAGE))
        given = [k for k in ("configMapRef", "secretRef") if source.get(k) is not None]
        if len(given) > 1:
            causes.append(v.invalid(where, "", "may not have more than one field specified at a time"))
        elif not given:
            causes.append(v.invalid(where, "", "must specify one of: `configMapRef` or `secretRef`"))
        for kind in given:
            name = (source[kind] or {}).get("name") if isinstance(source[kind], dict) else None
            if not name:
                causes.append(v.required(f"{where}.{kind}.name"))
    return causes


def _mounts(mounts: Any, path: str, volumes: set[str] | None) -> list[Cause]:
    causes: list[Cause] = []
    paths: set[str] = set()
    for j, mount in enumerate(mounts if isinstance(mounts, list) else []):
        if not isinstance(mount, dict):
            continue
        name, mount_path = mount.get("name"), mount.get("mountPath")
        if not name:
            causes.append(v.required(f"{path}[{j}].name"))
        if volumes is not None and name not in volumes:
            causes.append(v.not_found(f"{path}[{j}].name", name or ""))
        if not mount_path:
            causes.append(v.required(f"{path}[{j}].mountPath"))
        elif mount_path in paths:
            causes.append(v.invalid(f"{path}[{j}].mountPath", mount_path, "must be unique"))
        else:
            paths.add(mount_path)
        sub = mount.get("subPath")
        if isinstance(sub, str) and sub:
            if sub.startswith("/"):
                causes.append(v.invalid(f"{path}.subPath", sub, "must be a relative path"))
            if ".." in sub.split("/"):
                causes.append(v.invalid(f"{path}.subPath", sub, "must not contain '..'"))
    return causes


def _resource_name_causes(field: str, name: str) -> list[Cause]:
    if "/" in name or name in _CONTAINER_RESOURCES or name.startswith("hugepages-"):
        return []
    return [v.invalid(field, name, "must be a standard resource type or fully qualified"),
            v.invalid(field, name, "must be a standard resource for containers")]


def _resources(res: Any, path: str) -> list[Cause]:
    if not isinstance(res, dict):
        return []
    causes: list[Cause] = []
    parsed: dict[str, dict[str, Decimal]] = {}
    for part in ("limits", "requests"):
        values = res.get(part)
        parsed[part] = {}
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            field = f"{path}.{part}[{name}]"
            causes += _resource_name_causes(field, name)
            try:
                number = parse_quantity(value)
            except (QuantityError, TypeError):
                causes.append(v.invalid(field, str(value), "must be a quantity, such as 500m, 1.5 or 256Mi"))
                continue
            if number < 0:
                causes.append(v.invalid(field, str(value), "must be greater than or equal to 0"))
            parsed[part][name] = number
    for name, request in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        if limit is not None and request > limit:
            causes.append(v.invalid(f"{path}.requests", str(res["requests"][name]),
                                    f"must be less than or equal to {name} limit of "
                                    f"{format_quantity(limit, binary=name != 'cpu')}"))
    return causes


def _security_context(ctx: Any, path: str) -> list[Cause]:
    if not isinstance(ctx, dict):
        return []
    causes: list[Cause] = []
    for key in ("runAsUser", "runAsGroup"):
        if ctx.get(key) is not None:
            causes += v.range_causes(f"{path}.{key}", ctx[key], 0, _MAX_INT32)
    if ctx.get("privileged") is True and ctx.get("allowPrivilegeEscalation") is False:
        causes.append(v.invalid(path, ctx, "cannot set `allowPrivilegeEscalation` to false and `privileged` to "
                                           "true"))
    adds = (ctx.get("capabilities") or {}).get("add") if isinstance(ctx.get("capabilities"), dict) else None
    if ctx.get("allowPrivilegeEscalation") is False and isinstance(adds, list) and \
            any(a in ("SYS_ADMIN", "CAP_SYS_ADMIN") for a in adds):
        causes.append(v.invalid(path, ctx, "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` "
                                           "CAP_SYS_ADMIN"))
    return causes
