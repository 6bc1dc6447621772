"""A container's environment, as a kubelet makes it (``makeEnvironmentVariables``).

``container_env`` resolves, in kubelet's order and precedence:

1. the service links: for every Service of the pod's namespace that has a
   cluster IP (``spec.enableServiceLinks``, default true), and always for the
   ``kubernetes`` Service of ``default``, Docker-link variables as kubelet's
   ``envvars.FromServices`` writes them (``MY_SVC_SERVICE_HOST``,
   ``MY_SVC_SERVICE_PORT``, ``MY_SVC_PORT_80_TCP_ADDR``...). Headless Services
   (every Sandbox's) give none; the embedded engine serves no ``kubernetes``
   Service, so ``KUBERNETES_SERVICE_HOST`` appears only where one exists (pods
   cannot reach the API anyway: their egress is denied);
2. ``envFrom`` (``configMapRef``/``secretRef``, with ``prefix``): every key, a
   later source overriding an earlier one; keys that are not environment
   variable names (the relaxed rule kube-apiserver 1.37 applies: printable
   ASCII but ``=``, so only a prefix the API would refuse can make a valid key
   one) are skipped with a Warning ``InvalidEnvironmentVariableNames`` Event;
3. ``env`` in order: ``value`` with ``$(VAR)`` expanded from the variables
   defined so far and the service links (``$$`` escapes; an unknown name stays
   as written), or ``valueFrom``: ``configMapKeyRef``, ``secretKeyRef``,
   ``fieldRef`` (the downward API: ``metadata.name|namespace|uid``,
   ``metadata.labels['k']``, ``metadata.annotations['k']``, ``spec.nodeName``,
   ``spec.serviceAccountName``, ``status.podIP(s)``, ``status.hostIP(s)``)
   or ``resourceFieldRef`` (``limits.*``/``requests.*`` of cpu, memory,
   ephemeral-storage, divided by ``divisor`` and rounded up; a missing limit is
   the node's allocatable, as kubelet's ``MergeContainerResourceLimits``);
4. the service links that no variable above has taken.

A missing ConfigMap, Secret or key that is not ``optional`` raises
``EnvError`` with kubelet's message (``configmap "c" not found``, ``couldn't
find key k in Secret ns/s``): the pod worker keeps the container Waiting with
reason ``CreateContainerConfigError`` and records a Warning ``Failed`` Event
``Error: <message>``, then retries. Every error that keeps a container from
being created as asked (here, in ``turbok.node.security`` and in
``turbok.node.volumes.container_mounts``) is a ``ContainerConfigError``.

Also here, because volumes use them too: the downward API (``field_value``,
``resource_value``), ``$(VAR)`` expansion (``expand``, ``expand_command``) and
the data of ConfigMaps and Secrets as bytes (``config_map_data``,
``secret_data``). The pod worker calls ``container_env`` once per container
start, after ``run_pod_sandbox`` (so the pod's IP is known).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from turbok.api.kinds import CONFIG_MAP, SECRET, SERVICE, Kind
from turbok.api.podtemplate import as_dict, container_resources
from turbok.api.quantity import QuantityError, parse_quantity
from turbok.api.status import ApiError, NotFound
from turbok.node.client import NodeClient, Obj

__all__ = [
    "ContainerConfigError",
    "EnvError",
    "Warn",
    "config_map_data",
    "container_env",
    "expand",
    "expand_command",
    "field_value",
    "go_quote",
    "is_env_var_name",
    "resource_value",
    "secret_data",
    "service_env",
]

#: ``warn(reason, message)``: a Warning Event about the Pod (the pod worker records it).
Warn = Callable[[str, str], None]

#: The Services whose links every pod gets, from the ``default`` namespace (kubelet's ``masterServices``).
_MASTER_SERVICES = ("kubernetes",)
_MASTER_NAMESPACE = "default"
#: What kubelet's ``defaultPodLimitsForDownwardAPI`` fills from the node when a container sets no limit.
_DEFAULTED_LIMITS = ("cpu", "memory", "ephemeral-storage")


class ContainerConfigError(Exception):
    """A container cannot be created as its spec asks (kubelet's ``CreateContainerConfigError``);
    ``str()`` is kubelet's message."""


class EnvError(ContainerConfigError):
    """The environment cannot be made; ``str()`` is kubelet's message (e.g. ``secret "s" not found``)."""


# --------------------------------------------------------------------------- expansion


def expand(text: str, *contexts: Mapping[str, str]) -> str:
    """``$(VAR)`` references in ``text`` replaced as kubelet's ``expansion.Expand`` does: the first
    context holding ``VAR`` gives its value; an unknown ``VAR`` stays ``$(VAR)``; ``$$`` is ``$``; an
    unterminated ``$(`` and a ``$`` before anything else stay as written."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close < 0:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2:close]
                    out.append(_lookup(name, contexts))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _lookup(name: str, contexts: Sequence[Mapping[str, str]]) -> str:
    for context in contexts:
        if name in context:
            return context[name]
    return f"$({name})"


def expand_command(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``command``/``args`` with ``$(VAR)`` expanded from the container's environment
    (kubelet's ``ExpandContainerCommandAndArgs``)."""
    return [expand(arg, env) for arg in argv]


def is_env_var_name(name: str) -> bool:
    """kube-apiserver 1.37's rule (RelaxedEnvironmentVariableValidation, GA): not empty, printable
    ASCII, no ``=``."""
    return bool(name) and all(" " <= ch <= "~" and ch != "=" for ch in name)


# --------------------------------------------------------------------------- sources


def _decode(value: object) -> bytes:
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.encode()  # not base64: what a client meant (the API validates this)


def secret_data(secret: Obj) -> dict[str, bytes]:
    """A Secret's ``data`` (base64 on the wire) as bytes, ``stringData`` merged over it as the API does."""
    out = {k: _decode(v) for k, v in as_dict(secret.get("data")).items()}
    out.update({k: str(v).encode() for k, v in as_dict(secret.get("stringData")).items()})
    return out


def config_map_data(config_map: Obj) -> tuple[dict[str, str], dict[str, bytes]]:
    """A ConfigMap's ``data`` (text) and ``binaryData`` (bytes)."""
    data = {k: str(v) for k, v in as_dict(config_map.get("data")).items() if v is not None}
    binary = {k: _decode(v) for k, v in as_dict(config_map.get("binaryData")).items()}
    return data, binary


class _Objects:
    """The ConfigMaps and Secrets one container's environment reads, each fetched once."""

    def __init__(self, client: NodeClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._config_maps: dict[str, Obj | None] = {}
        self._secrets: dict[str, Obj | None] = {}

    async def config_map(self, name: str) -> Obj | None:
        if name not in self._config_maps:
            self._config_maps[name] = await _try_get(self.client, CONFIG_MAP, self.namespace, name, "configmap")
        return self._config_maps[name]

    async def secret(self, name: str) -> Obj | None:
        if name not in self._secrets:
            self._secrets[name] = await _try_get(self.client, SECRET, self.namespace, name, "secret")
        return self._secrets[name]


async def _try_get(client: NodeClient, kind: Kind, namespace: str, name: str, what: str) -> Obj | None:
    try:
        return await client.get(kind, namespace, name)
    except NotFound:
        return None
    except ApiError as e:
        raise EnvError(f"failed to read {what} {name!r}: {e}") from e


# --------------------------------------------------------------------------- service links


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def _ip_set(service: Obj) -> bool:
    ip = as_dict(service.get("spec")).get("clusterIP")
    return isinstance(ip, str) and ip not in ("", "None")


def _host_port(ip: str, port: int) -> str:
    try:
        if ipaddress.ip_address(ip).version == 6:
            return f"[{ip}]:{port}"
    except ValueError:
        pass
    return f"{ip}:{port}"


def service_env(services: Sequence[Obj]) -> dict[str, str]:
    """The Docker-link variables of these Services (kubelet's ``envvars.FromServices``)."""
    out: dict[str, str] = {}
    for svc in services:
        if not _ip_set(svc):
            continue
        spec = as_dict(svc.get("spec"))
        ip = str(spec["clusterIP"])
        prefix = _env_name(str(as_dict(svc.get("metadata")).get("name", "")))
        ports = [as_dict(p) for p in spec.get("ports") or []]
        out[f"{prefix}_SERVICE_HOST"] = ip
        if ports:
            out[f"{prefix}_SERVICE_PORT"] = str(ports[0].get("port", ""))
        for p in ports:
            if p.get("name"):
                out[f"{prefix}_SERVICE_PORT_{_env_name(str(p['name']))}"] = str(p.get("port", ""))
        for i, p in enumerate(ports):
            protocol = str(p.get("protocol") or "TCP")
            port = int(p.get("port", 0))
            url = f"{protocol.lower()}://{_host_port(ip, port)}"
            if i == 0:
                out[f"{prefix}_PORT"] = url
            head = f"{prefix}_PORT_{port}_{protocol.upper()}"
            out[head] = url
            out[f"{head}_PROTO"] = protocol.lower()
            out[f"{head}_PORT"] = str(port)
            out[f"{head}_ADDR"] = ip
    return out


async def _service_env(client: NodeClient, pod: Obj) -> dict[str, str]:
    namespace = str(pod["metadata"].get("namespace") or "default")
    links = as_dict(pod.get("spec")).get("enableServiceLinks")
    enable = links is not False  # the API defaults it to true
    chosen: dict[str, Obj] = {}
    for svc in await client.list(SERVICE, None):
        if not _ip_set(svc):
            continue
        md = as_dict(svc.get("metadata"))
        name, ns = str(md.get("name", "")), md.get("namespace")
        if ns == _MASTER_NAMESPACE and name in _MASTER_SERVICES:
            chosen.setdefault(name, svc)
        elif ns == namespace and enable:
            chosen[name] = svc
    return service_env([chosen[k] for k in sorted(chosen)])


# --------------------------------------------------------------------------- downward API


def go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` writes it (``strconv.Quote``), for ``metadata.labels`` files."""
    out = ['"']
    escapes = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               "\\": "\\\\", '"': '\\"'}
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _format_map(values: Mapping[str, object]) -> str:
    return "\n".join(f"{k}={go_quote(str(values[k]))}" for k in sorted(values))


def _split_subscript(path: str) -> tuple[str, str] | None:
    if not path.endswith("']"):
        return None
    head, sep, key = path[:-2].partition("['")
    if not sep or not head:
        return None
    return head, key


#: What kubelet's ``ConvertDownwardAPIFieldLabel`` accepts for a v1 Pod.
_POD_FIELDS = ("metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace",
               "metadata.uid", "spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName",
               "spec.schedulerName", "status.phase", "status.hostIP", "status.hostIPs", "status.podIP",
               "status.podIPs")


def field_value(pod: Obj, selector: Obj, *, node_name: str = "", host_ips: Sequence[str] = (),
                pod_ips: Sequence[str] = ()) -> str:
    """The value of a ``fieldRef`` (``ObjectFieldSelector``) for ``pod``, as kubelet's
    ``podFieldSelectorRuntimeValue`` gives it; ``ValueError`` with kubelet's message when unsupported.

    A downwardAPI volume passes no IPs: kube allows only ``metadata.*`` there (the API validates it).
    """
    version = selector.get("apiVersion") or "v1"
    path = str(selector.get("fieldPath", ""))
    if version != "v1":
        raise ValueError(f"unsupported pod version: {version}")
    sub = _split_subscript(path)
    if path not in _POD_FIELDS and not (sub and sub[0] in ("metadata.annotations", "metadata.labels")):
        raise ValueError(f"field label not supported: {path}")
    md = as_dict(pod.get("metadata"))
    spec = as_dict(pod.get("spec"))
    if path == "spec.nodeName":
        return str(spec.get("nodeName") or node_name)
    if path == "spec.serviceAccountName":
        return str(spec.get("serviceAccountName") or "")
    if path in ("status.hostIP", "status.hostIPs"):
        return (host_ips[0] if host_ips else "") if path == "status.hostIP" else ",".join(host_ips)
    if path in ("status.podIP", "status.podIPs"):
        return (pod_ips[0] if pod_ips else "") if path == "status.podIP" else ",".join(pod_ips)
    if sub:
        head, key = sub
        values = as_dict(md.get("annotations" if head == "metadata.annotations" else "labels"))
        return str(values.get(key, ""))
    if path == "metadata.annotations":
        return _format_map(as_dict(md.get("annotations")))
    if path == "metadata.labels":
        return _format_map(as_dict(md.get("labels")))
    if path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(md.get(path.split(".")[1], ""))
    raise ValueError(f"unsupported fieldPath: {path}")


def _find_container(pod: Obj, name: str) -> Obj:
    spec = as_dict(pod.get("spec"))
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict) and c.get("name") == name:
                return c
    raise ValueError(f"container {name} not found")


def resource_value(pod: Obj, container: Obj | None, selector: Obj,
                   allocatable: Mapping[str, Decimal] | None = None) -> str:
    """The value of a ``resourceFieldRef`` (``ResourceFieldSelector``), as kubelet's
    ``ExtractContainerResourceValue`` computes it: ``containerName`` (else ``container``), the
    resource, ``divisor`` (default 1), rounded up; a limit the container does not set is the
    node's ``allocatable``. ``ValueError`` with kubelet's message when unsupported."""
    name = selector.get("containerName")
    target = _find_container(pod, str(name)) if name else container
    if target is None:
        raise ValueError("a resourceFieldRef here needs containerName")
    resource = str(selector.get("resource", ""))
    try:
        divisor = parse_quantity(selector.get("divisor") or "1")
    except (QuantityError, TypeError) as e:
        raise ValueError(f"invalid divisor {selector.get('divisor')!r}") from e
    if divisor == 0:
        divisor = Decimal(1)
    part, _, res_name = resource.partition(".")
    if part not in ("limits", "requests") or not res_name:
        raise ValueError(f"unsupported container resource : {resource}")
    have = container_resources(target)
    if part == "limits":
        values = dict(have.limits)
        for res in _DEFAULTED_LIMITS:
            if not values.get(res) and allocatable and res in allocatable:
                values[res] = allocatable[res]
    else:
        values = dict(have.requests)
    if res_name not in ("cpu", "memory", "ephemeral-storage") and not res_name.startswith("hugepages-"):
        raise ValueError(f"unsupported container resource : {resource}")
    value = values.get(res_name, Decimal(0))
    if res_name == "cpu":
        # Go: ceil(MilliValue / divisor.MilliValue), both milli-values rounded up to integers.
        millis = math.ceil(value * 1000)
        divisor_millis = max(math.ceil(divisor * 1000), 1)
        return str(math.ceil(Decimal(millis) / Decimal(divisor_millis)))
    return str(math.ceil(Decimal(math.ceil(value)) / Decimal(max(math.ceil(divisor), 1))))


# --------------------------------------------------------------------------- the environment


async def container_env(client: NodeClient, pod: Obj, container: Obj, *, node_name: str, host_ip: str,
                        pod_ip: str, pod_ips: Sequence[str] = (), host_ips: Sequence[str] = (),
                        allocatable: Mapping[str, Decimal] | None = None,
                        warn: Warn | None = None) -> dict[str, str]:
    """The environment of ``container`` (a dict from the Pod's spec) in ``pod``.

    ``allocatable``: the Node's allocatable (``cpu`` in cores, ``memory``/``ephemeral-storage``
    in bytes), for ``resourceFieldRef`` of a limit the container does not set. ``warn(reason,
    message)``: a Warning Event about the Pod (``InvalidEnvironmentVariableNames``). Raises
    ``EnvError``.
    """
    namespace = str(pod["metadata"].get("namespace") or "default")
    ips = list(pod_ips) or ([pod_ip] if pod_ip else [])
    hosts = list(host_ips) or ([host_ip] if host_ip else [])
    services = await _service_env(client, pod)
    objects = _Objects(client, namespace)
    env: dict[str, str] = {}

    for source in container.get("envFrom") or []:
        source = as_dict(source)
        prefix = str(source.get("prefix") or "")
        ref = as_dict(source.get("configMapRef") or source.get("secretRef"))
        what = "configMap" if source.get("configMapRef") is not None else "secret"
        name = str(ref.get("name", ""))
        obj = await (objects.config_map(name) if what == "configMap" else objects.secret(name))
        if obj is None:
            if ref.get("optional"):
                continue
            raise EnvError(f"{what.lower()} \"{name}\" not found")
        values: dict[str, str] = config_map_data(obj)[0] if what == "configMap" else \
            {k: v.decode("utf-8", "replace") for k, v in secret_data(obj).items()}
        invalid = []
        for key, value in values.items():
            key = prefix + key
            if not is_env_var_name(key):
                invalid.append(key)
                continue
            env[key] = value
        if invalid and warn is not None:
            warn("InvalidEnvironmentVariableNames",
                 f"Keys [{', '.join(sorted(invalid))}] from the EnvFrom {what} {namespace}/{name} were skipped "
                 "since they are considered invalid environment variable names.")

    for var in container.get("env") or []:
        var = as_dict(var)
        name = str(var.get("name", ""))
        literal = var.get("value")
        source = as_dict(var.get("valueFrom"))
        if literal:
            env[name] = expand(str(literal), env, services)
            continue
        if not source:
            env[name] = ""
            continue
        resolved = await _value_from(objects, pod, container, source, namespace=namespace, node_name=node_name,
                                     host_ips=hosts, pod_ips=ips, allocatable=allocatable)
        if resolved is None:
            continue  # an optional reference to something that is not there
        env[name] = resolved

    for key, value in services.items():
        env.setdefault(key, value)
    return env


async def _value_from(objects: _Objects, pod: Obj, container: Obj, source: Obj, *, namespace: str,
                      node_name: str, host_ips: Sequence[str], pod_ips: Sequence[str],
                      allocatable: Mapping[str, Decimal] | None) -> str | None:
    if source.get("fieldRef") is not None:
        try:
            return field_value(pod, as_dict(source["fieldRef"]), node_name=node_name, host_ips=host_ips,
                               pod_ips=pod_ips)
        except ValueError as e:
            raise EnvError(str(e)) from e
    if source.get("resourceFieldRef") is not None:
        try:
            return resource_value(pod, container, as_dict(source["resourceFieldRef"]), allocatable)
        except ValueError as e:
            raise EnvError(str(e)) from e
    for field, what in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
        if source.get(field) is None:
            continue
        ref = as_dict(source[field])
        name, key, optional = str(ref.get("name", "")), str(ref.get("key", "")), bool(ref.get("optional"))
        obj = await (objects.config_map(name) if what == "ConfigMap" else objects.secret(name))
        if obj is None:
            if optional:
                return None
            raise EnvError(f"{what.lower()} \"{name}\" not found")
        if what == "ConfigMap":
            data = config_map_data(obj)[0]
            if key in data:
                return data[key]
        else:
            secret = secret_data(obj)
            if key in secret:
                return secret[key].decode("utf-8", "replace")
        if optional:
            return None
        raise EnvError(f"couldn't find key {key} in {what} {namespace}/{name}")
    # A valueFrom this node does not know (e.g. fileKeyRef): never silently empty.
    raise EnvError(f"unsupported valueFrom {sorted(source)}: the embedded node resolves configMapKeyRef, "
                   "secretKeyRef, fieldRef and resourceFieldRef")
