"""A Pod's volumes as the runtime sees them, and each container's mounts of them.

``pod_volumes`` turns ``spec.volumes`` into ``turbok.runtime.cri.VolumeConfig``:

- ``emptyDir``: a directory on the pod's disk (``kind="emptyDir"``). With a
  ``sizeLimit`` it is a bounded ext4 image of its own (``LocalStorage.empty_dir``,
  ``kind="host"``): writes past the limit fail with ENOSPC inside the pod (a
  kubelet evicts such a pod instead; a hard bound is stricter and needs no
  monitor). ``medium: Memory`` is a tmpfs in the sandbox (``kind="memory"``)
  of ``sizeLimit``, else the pod's memory limit, else the node's allocatable
  memory, as kubelet sizes it. ``HugePages`` media are refused.
- ``configMap``, ``secret`` (``items``, ``defaultMode``/``mode``, ``optional``),
  ``downwardAPI`` (``fieldRef`` of ``metadata.*``, ``resourceFieldRef``) and
  ``projected`` (those three plus ``serviceAccountToken``): ``kind="files"``,
  the files as kubelet's ``MakePayload``/``CollectData`` make them (mode
  default 0644), written and mounted read-only by the runtime.
- ``persistentVolumeClaim``: the bound local volume's directory
  (``LocalStorage.claim_path``, ``kind="host"``).
- Anything else (``hostPath``, ``nfs``, ``csi``, ``ephemeral``, ``image``...)
  is refused by name: a gVisor sandbox sees only the pod's own storage.

A volume that cannot be made yet (a missing ConfigMap or Secret that is not
optional, a missing key, an unbound claim) raises ``VolumeError``, one message
per failing volume in kubelet's words (``MountVolume.SetUp failed for volume
"cfg" : configmap "c" not found``): the pod worker keeps the Pod Pending, its
containers Waiting with ``ContainerCreating``, records a Warning ``FailedMount``
Event per message and retries.

Updates: ``refresh_volumes`` (the pod worker calls it every sync period, a
kubelet's ~1 minute, and when a ConfigMap or Secret changes) gives the
``files`` volumes whose content changed, for ``PodRuntime.update_volume``; a
source that went away keeps the old files and gives a ``FailedMount`` message,
as kubelet does. Files mounted through ``subPath`` are not updated (kubelet's
rule too; the runtime's concern).

Service-account tokens: kube-apiserver issues them through TokenRequest; the
embedded API authenticates only turbok's own token, and pods have no route to
it (egress is denied). So the node issues the token itself: a JWT with the
claims kube-apiserver writes (``iss``, ``sub: system:serviceaccount:<ns>:<sa>``,
``aud``, ``exp``, ``iat``, ``nbf``, ``kubernetes.io`` with the namespace, pod,
node and service account), signed HS256 with a node key kept 0600 in the home.
It names the pod truthfully, is refreshed at 80 % of its life (kubelet's
rule) and grants nothing on this machine: the API does not accept it. The
ServiceAccount must exist, as for TokenRequest.

``container_mounts`` maps a container's ``volumeMounts`` to
``turbok.runtime.cri.Mount`` (``subPath``; ``subPathExpr`` expanded from the
container's environment; configMap, secret, downwardAPI and projected volumes
always read-only, as kubelet mounts them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets as _secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath

from turbok.api.kinds import CONFIG_MAP, SECRET, SERVICE_ACCOUNT, Kind
from turbok.api.podtemplate import as_dict, container_resources
from turbok.api.quantity import QuantityError, parse_quantity
from turbok.api.status import ApiError, NotFound
from turbok.node.client import NodeClient, Obj
from turbok.node.env import (
    ContainerConfigError,
    config_map_data,
    expand,
    field_value,
    resource_value,
    secret_data,
)
from turbok.node.storage import LocalStorage, StorageError
from turbok.runtime.cri import Mount, PodRuntime, VolumeConfig
from turbok.runtime.errors import RuntimeError_

__all__ = [
    "DEFAULT_MODE",
    "DEFAULT_TOKEN_SECONDS",
    "MountError",
    "ServiceAccountTokens",
    "VolumeError",
    "VolumeRefresh",
    "container_mounts",
    "pod_volumes",
    "refresh_volumes",
    "sync_files",
]

#: The mode of projected files when a volume sets no ``defaultMode`` (API defaulting: 0644).
DEFAULT_MODE = 0o644
#: A projected token's life when ``expirationSeconds`` is not set (API defaulting: one hour).
DEFAULT_TOKEN_SECONDS = 3600
#: kube-apiserver's default issuer and audience on a cluster set up by kubeadm or kind.
ISSUER = "https://kubernetes.default.svc.cluster.local"
_FILE_SOURCES = ("configMap", "secret", "downwardAPI", "projected")
_READ_ONLY_SOURCES = _FILE_SOURCES
_UNSUPPORTED = {
    "hostPath": "a gVisor sandbox sees only the pod's own storage; use a persistentVolumeClaim",
    "ephemeral": "use a persistentVolumeClaim (or the Sandbox's volumeClaimTemplates)",
    "image": "image volumes are not available on this node",
    "csi": "this node has no CSI drivers",
    "gitRepo": "gitRepo is deprecated in Kubernetes; clone in an init container instead",
}

Warn = Callable[[str, str], None]


class VolumeError(Exception):
    """Volumes cannot be set up yet; ``messages``: one per failing volume in kubelet's words
    (``MountVolume.SetUp failed for volume "v" : ...``), ``str()`` the first.

    ``reason`` is the Event reason (``FailedMount`` unless said otherwise)."""

    reason: str = "FailedMount"

    def __init__(self, messages: Sequence[str]) -> None:
        super().__init__(messages[0] if messages else "volumes cannot be set up")
        self.messages = list(messages)


class MountError(ContainerConfigError):
    """A container's ``volumeMounts`` cannot be honoured (``CreateContainerConfigError``)."""


def _setup_failed(volume: str, why: str) -> str:
    return f"MountVolume.SetUp failed for volume \"{volume}\" : {why}"


# --------------------------------------------------------------------------- service-account tokens


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ServiceAccountTokens:
    """Projected service-account tokens, signed with a node key (``key_path``, made 0600 if missing)."""

    def __init__(self, key_path: Path, *, node_name: str = "", issuer: str = ISSUER,
                 now: Callable[[], float] = time.time) -> None:
        self.key_path = key_path
        self.node_name = node_name
        self.issuer = issuer
        self._now = now
        self._key: bytes | None = None
        self._cache: dict[tuple[str, str, str, int], tuple[float, str]] = {}

    def _signing_key(self) -> bytes:
        if self._key is None:
            try:
                self._key = self.key_path.read_bytes()
            except FileNotFoundError:
                self.key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                key = _secrets.token_bytes(32)
                fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(key)
                self._key = key
        return self._key

    def token(self, pod: Obj, service_account: Obj, *, audience: str = "",
              expiration: int = DEFAULT_TOKEN_SECONDS) -> str:
        """A token for ``pod`` as ``service_account``; the same one until 80 % of its life has passed."""
        md = as_dict(pod.get("metadata"))
        sa_md = as_dict(service_account.get("metadata"))
        key = (str(md.get("uid", "")), str(sa_md.get("uid", "")), audience, expiration)
        now = self._now()
        cached = self._cache.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        issued = int(now)
        namespace = str(md.get("namespace") or "default")
        claims = {
            "aud": [audience or self.issuer],
            "exp": issued + expiration,
            "iat": issued,
            "nbf": issued,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "sub": f"system:serviceaccount:{namespace}:{sa_md.get('name', '')}",
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": self.node_name},
                "pod": {"name": md.get("name", ""), "uid": md.get("uid", "")},
                "serviceaccount": {"name": sa_md.get("name", ""), "uid": sa_md.get("uid", "")},
            },
        }
        header = {"alg": "HS256", "typ": "JWT", "kid": hashlib.sha256(self._signing_key()).hexdigest()[:16]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = hmac.new(self._signing_key(), signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64url(signature)}"
        self._cache[key] = (issued + 0.8 * expiration, token)
        return token

    def forget(self, pod_uid: str) -> None:
        """Drop the cached tokens of a pod that is gone."""
        for key in [k for k in self._cache if k[0] == pod_uid]:
            del self._cache[key]


# --------------------------------------------------------------------------- file payloads


class _Failed(Exception):
    """One volume's SetUp failed; ``str()`` the reason after ``: ``."""


def _mode(value: object, default: int) -> int:
    return value & 0o777 if isinstance(value, int) and not isinstance(value, bool) else default


def _check_path(path: str) -> str:
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts:
        raise _Failed(f"invalid path {path!r}: must be relative and may not contain '..'")
    return str(p)


async def _get(client: NodeClient, kind: Kind, namespace: str, name: str) -> Obj | None:
    try:
        return await client.get(kind, namespace, name)
    except NotFound:
        return None
    except ApiError as e:
        raise _Failed(f"failed to read {kind.singular} {name!r}: {e}") from e


def _payload(items: Sequence[Obj], data: Mapping[str, bytes], default_mode: int, optional: bool,
             what: str) -> dict[str, tuple[bytes, int]]:
    """kubelet's ``MakePayload``: every key, or the listed ``items`` (key -> path, mode)."""
    if not items:
        return {_check_path(k): (v, default_mode) for k, v in data.items()}
    out = {}
    for item in items:
        key = str(item.get("key", ""))
        if key not in data:
            if optional:
                continue
            raise _Failed(f"{what} references non-existent {'config' if what == 'configmap' else 'secret'} key: "
                          f"{key}")
        out[_check_path(str(item.get("path", "")))] = (data[key], _mode(item.get("mode"), default_mode))
    return out


async def _config_map_files(client: NodeClient, namespace: str, source: Obj, default_mode: int,
                            projected: bool) -> dict[str, tuple[bytes, int]]:
    name = str(source.get("name", ""))
    optional = bool(source.get("optional"))
    cm = await _get(client, CONFIG_MAP, namespace, name)
    if cm is None:
        if optional:
            return {}
        raise _Failed(f"Couldn't get configMap {namespace}/{name}: configmap \"{name}\" not found" if projected
                      else f"configmap \"{name}\" not found")
    text, binary = config_map_data(cm)
    data = {**{k: v.encode() for k, v in text.items()}, **binary}
    return _payload(source.get("items") or [], data, default_mode, optional, "configmap")


async def _secret_files(client: NodeClient, namespace: str, source: Obj, default_mode: int, *, name_key: str,
                        projected: bool) -> dict[str, tuple[bytes, int]]:
    name = str(source.get(name_key, ""))
    optional = bool(source.get("optional"))
    secret = await _get(client, SECRET, namespace, name)
    if secret is None:
        if optional:
            return {}
        raise _Failed(f"Couldn't get secret {namespace}/{name}: secret \"{name}\" not found" if projected
                      else f"secret \"{name}\" not found")
    return _payload(source.get("items") or [], secret_data(secret), default_mode, optional, "secret")


def _downward_files(pod: Obj, items: Sequence[Obj], default_mode: int,
                    allocatable: Mapping[str, Decimal] | None) -> dict[str, tuple[bytes, int]]:
    """kubelet's ``downwardapi.CollectData``: only ``metadata.*`` fields, as the API allows in volumes."""
    out: dict[str, tuple[bytes, int]] = {}
    errors = []
    for item in items:
        item = as_dict(item)
        path = _check_path(str(item.get("path", "")))
        mode = _mode(item.get("mode"), default_mode)
        try:
            if item.get("fieldRef") is not None:
                selector = as_dict(item["fieldRef"])
                if not str(selector.get("fieldPath", "")).startswith("metadata."):
                    raise ValueError(f"unsupported fieldPath: {selector.get('fieldPath')}")
                value = field_value(pod, selector)
            elif item.get("resourceFieldRef") is not None:
                value = resource_value(pod, None, as_dict(item["resourceFieldRef"]), allocatable)
            else:
                value = ""
        except ValueError as e:
            errors.append(str(e))
            continue
        out[path] = (value.encode(), mode)
    if errors:
        raise _Failed(errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]")
    return out


async def _files(client: NodeClient, pod: Obj, volume: Obj, *, allocatable: Mapping[str, Decimal] | None,
                 tokens: ServiceAccountTokens | None) -> dict[str, tuple[bytes, int]]:
    namespace = str(pod["metadata"].get("namespace") or "default")
    if volume.get("configMap") is not None:
        source = as_dict(volume["configMap"])
        return await _config_map_files(client, namespace, source, _mode(source.get("defaultMode"), DEFAULT_MODE),
                                       projected=False)
    if volume.get("secret") is not None:
        source = as_dict(volume["secret"])
        return await _secret_files(client, namespace, source, _mode(source.get("defaultMode"), DEFAULT_MODE),
                                   name_key="secretName", projected=False)
    if volume.get("downwardAPI") is not None:
        source = as_dict(volume["downwardAPI"])
        return _downward_files(pod, source.get("items") or [], _mode(source.get("defaultMode"), DEFAULT_MODE),
                               allocatable)
    source = as_dict(volume.get("projected"))
    default_mode = _mode(source.get("defaultMode"), DEFAULT_MODE)
    out: dict[str, tuple[bytes, int]] = {}
    errors: list[str] = []
    for part in source.get("sources") or []:
        part = as_dict(part)
        try:
            if part.get("configMap") is not None:
                out.update(await _config_map_files(client, namespace, as_dict(part["configMap"]), default_mode,
                                                   projected=True))
            elif part.get("secret") is not None:
                out.update(await _secret_files(client, namespace, as_dict(part["secret"]), default_mode,
                                               name_key="name", projected=True))
            elif part.get("downwardAPI") is not None:
                out.update(_downward_files(pod, as_dict(part["downwardAPI"]).get("items") or [], default_mode,
                                           allocatable))
            elif part.get("serviceAccountToken") is not None:
                out.update(await _token_file(client, pod, as_dict(part["serviceAccountToken"]), default_mode, tokens))
            else:
                kinds = ", ".join(sorted(part)) or "an empty source"
                raise _Failed(f"projected source {kinds} is not supported by the embedded node")
        except _Failed as e:
            errors.append(str(e))
    if errors:
        raise _Failed(errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]")
    return out


async def _token_file(client: NodeClient, pod: Obj, source: Obj, default_mode: int,
                      tokens: ServiceAccountTokens | None) -> dict[str, tuple[bytes, int]]:
    if tokens is None:
        raise _Failed("failed to fetch token: this node issues no service account tokens")
    namespace = str(pod["metadata"].get("namespace") or "default")
    spec = as_dict(pod.get("spec"))
    sa_name = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    sa = await _get(client, SERVICE_ACCOUNT, namespace, sa_name)
    if sa is None:
        raise _Failed(f"failed to fetch token: serviceaccounts \"{sa_name}\" not found")
    expiration = source.get("expirationSeconds")
    seconds = expiration if isinstance(expiration, int) and expiration > 0 else DEFAULT_TOKEN_SECONDS
    token = tokens.token(pod, sa, audience=str(source.get("audience") or ""), expiration=seconds)
    return {_check_path(str(source.get("path", ""))): (token.encode(), default_mode)}


# --------------------------------------------------------------------------- volumes


def _memory_size(pod: Obj, size_limit: int | None, allocatable: Mapping[str, Decimal] | None) -> int | None:
    """A memory emptyDir's tmpfs size: ``sizeLimit``, the pod's memory limit and the node's allocatable
    memory, whichever are known, the smallest."""
    candidates = [size_limit] if size_limit else []
    spec = as_dict(pod.get("spec"))
    limits = [container_resources(as_dict(c)).limits.get("memory") for c in spec.get("containers") or []]
    if limits and all(limits):
        candidates.append(int(sum(d for d in limits if d is not None)))
    if allocatable and allocatable.get("memory"):
        candidates.append(int(allocatable["memory"]))
    return min(candidates) if candidates else None


def _size(value: object) -> int | None:
    if value is None:
        return None
    try:
        return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))  # type: ignore[arg-type]
    except (QuantityError, TypeError):
        return None


async def _volume(client: NodeClient, pod: Obj, volume: Obj, *, storage: LocalStorage | None, sandbox_id: str,
                  allocatable: Mapping[str, Decimal] | None, tokens: ServiceAccountTokens | None,
                  warn: Warn | None) -> VolumeConfig:
    name = str(volume.get("name", ""))
    if any(volume.get(k) is not None for k in _FILE_SOURCES):
        return VolumeConfig(name=name, kind="files",
                            files=await _files(client, pod, volume, allocatable=allocatable, tokens=tokens))
    if volume.get("persistentVolumeClaim") is not None:
        if storage is None:
            raise _Failed("this node has no local storage for persistent volume claims")
        claim = str(as_dict(volume["persistentVolumeClaim"]).get("claimName", ""))
        try:
            path = await storage.claim_path(str(pod["metadata"].get("namespace") or "default"), claim)
        except StorageError as e:
            raise _Failed(str(e)) from e
        return VolumeConfig(name=name, kind="host", host_path=path)
    empty = volume.get("emptyDir")
    if empty is not None or not any(k != "name" for k in volume):
        source = as_dict(empty)
        medium = str(source.get("medium") or "")
        size = _size(source.get("sizeLimit"))
        if medium == "Memory":
            return VolumeConfig(name=name, kind="memory", size_bytes=_memory_size(pod, size, allocatable))
        if medium:
            raise _Failed(f"emptyDir medium {medium!r} is not supported by the embedded node (use \"\" or Memory)")
        if size is None:
            return VolumeConfig(name=name, kind="emptyDir")
        if storage is None or storage.unbounded_reason:
            if warn is not None:
                why = storage.unbounded_reason if storage is not None else "this node has no local storage"
                warn("SizeLimitNotEnforced", f"emptyDir \"{name}\": sizeLimit {source.get('sizeLimit')} is not "
                                             f"enforced on this machine ({why})")
            return VolumeConfig(name=name, kind="emptyDir", size_bytes=size)
        try:
            path = await storage.empty_dir(sandbox_id, name, size)
        except (StorageError, ValueError) as e:
            raise _Failed(str(e)) from e
        return VolumeConfig(name=name, kind="host", size_bytes=size, host_path=path)
    kinds = [k for k in volume if k != "name"]
    kind = kinds[0] if kinds else "?"
    why = _UNSUPPORTED.get(kind, "the embedded node supports emptyDir, configMap, secret, downwardAPI, projected "
                                 "and persistentVolumeClaim")
    raise _Failed(f"{kind} volumes are not supported: {why}")


async def pod_volumes(client: NodeClient, pod: Obj, *, storage: LocalStorage | None = None, sandbox_id: str = "",
                      allocatable: Mapping[str, Decimal] | None = None, tokens: ServiceAccountTokens | None = None,
                      warn: Warn | None = None) -> list[VolumeConfig]:
    """Every volume of ``pod`` (``spec.volumes``), in order; ``VolumeError`` when any cannot be made.

    ``storage``: the node's ``LocalStorage`` (claims, bounded emptyDirs); ``sandbox_id``: the pod
    sandbox's runtime id (names its bounded emptyDirs); ``allocatable``: the Node's, for
    ``resourceFieldRef`` and memory emptyDirs; ``tokens``: the service-account token issuer;
    ``warn(reason, message)``: a Warning Event for what is honoured only in part.
    """
    out: list[VolumeConfig] = []
    failures: list[str] = []
    for volume in as_dict(pod.get("spec")).get("volumes") or []:
        volume = as_dict(volume)
        try:
            out.append(await _volume(client, pod, volume, storage=storage, sandbox_id=sandbox_id,
                                     allocatable=allocatable, tokens=tokens, warn=warn))
        except _Failed as e:
            failures.append(_setup_failed(str(volume.get("name", "")), str(e)))
    if failures:
        raise VolumeError(failures)
    return out


@dataclass(frozen=True)
class VolumeRefresh:
    """What ``refresh_volumes`` found: volumes to hand to ``PodRuntime.update_volume``, and failures
    (kubelet's ``FailedMount`` messages; those volumes keep their old files)."""

    changed: list[VolumeConfig] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def refresh_volumes(client: NodeClient, pod: Obj, applied: Sequence[VolumeConfig], *,
                          allocatable: Mapping[str, Decimal] | None = None,
                          tokens: ServiceAccountTokens | None = None) -> VolumeRefresh:
    """The ``files`` volumes of ``pod`` whose content differs from ``applied`` (what the runtime has)."""
    have = {v.name: v for v in applied if v.kind == "files"}
    result = VolumeRefresh()
    for volume in as_dict(pod.get("spec")).get("volumes") or []:
        volume = as_dict(volume)
        name = str(volume.get("name", ""))
        if name not in have:
            continue
        try:
            files = await _files(client, pod, volume, allocatable=allocatable, tokens=tokens)
        except _Failed as e:
            result.failures.append(_setup_failed(name, str(e)))
            continue
        if dict(have[name].files) != files:
            result.changed.append(VolumeConfig(name=name, kind="files", files=files))
    return result


async def sync_files(runtime: PodRuntime, sandbox_id: str, client: NodeClient, pod: Obj,
                     applied: Sequence[VolumeConfig] | None, *, allocatable: Mapping[str, Decimal] | None = None,
                     tokens: ServiceAccountTokens | None = None, warn: Warn | None = None) -> list[VolumeConfig]:
    """kubelet's periodic volume sync for a running pod sandbox: the ``files`` volumes whose content
    changed go to ``PodRuntime.update_volume``; a source that went away keeps the old files and is a
    ``FailedMount`` warning. ``applied``: what the runtime has (None: unknown, e.g. a sandbox adopted
    after a restart: every files volume is pushed once). Returns what the runtime has now."""
    if applied is None:
        applied = [VolumeConfig(name=str(v.get("name", "")), kind="files")
                   for v in (as_dict(v) for v in as_dict(pod.get("spec")).get("volumes") or [])
                   if any(v.get(k) is not None for k in _FILE_SOURCES)]
    result = await refresh_volumes(client, pod, applied, allocatable=allocatable, tokens=tokens)
    for message in result.failures:
        if warn is not None:
            warn("FailedMount", message)
    now = {v.name: v for v in applied}
    for volume in result.changed:
        try:
            await runtime.update_volume(sandbox_id, volume)
        except (NotImplementedError, RuntimeError_) as e:
            if warn is not None:
                warn("FailedMount", _setup_failed(volume.name, f"updating its files: {e}"))
            continue
        now[volume.name] = volume
    return list(now.values())


# --------------------------------------------------------------------------- mounts


def _expand_sub_path(expr: str, env: Mapping[str, str]) -> str:
    """kubelet's ``ExpandContainerVolumeMounts``: every ``$(VAR)`` must have a non-empty value."""
    missing: set[str] = set()

    class _Env(dict[str, str]):
        def __missing__(self, key: str) -> str:
            missing.add(key)
            return ""

        def __contains__(self, key: object) -> bool:
            if not env.get(str(key)):
                missing.add(str(key))
            return True

    expanded = expand(expr, _Env(env))
    if missing:
        raise MountError(f"missing value for {', '.join(sorted(missing))}")
    return expanded


def container_mounts(pod: Obj, container: Obj, *, env: Mapping[str, str] | None = None) -> list[Mount]:
    """``container``'s ``volumeMounts`` (``subPath``; ``subPathExpr`` expanded from ``env``, the
    container's environment). Raises ``MountError``."""
    volumes = {str(as_dict(v).get("name")): as_dict(v) for v in as_dict(pod.get("spec")).get("volumes") or []}
    cname = str(container.get("name", ""))
    out = []
    for m in container.get("volumeMounts") or []:
        m = as_dict(m)
        name = str(m.get("name", ""))
        volume = volumes.get(name)
        if volume is None:
            raise MountError(f"cannot find volume \"{name}\" to mount into container \"{cname}\"")
        sub_path = str(m.get("subPath") or "")
        if m.get("subPathExpr"):
            sub_path = _expand_sub_path(str(m["subPathExpr"]), env or {})
        if sub_path:
            if sub_path.startswith("/"):
                raise MountError(f"error SubPath `{sub_path}` must not be an absolute path")
            if ".." in PurePosixPath(sub_path).parts:
                raise MountError(f"unable to provision SubPath `{sub_path}`: must not contain '..'")
        read_only = bool(m.get("readOnly")) or any(volume.get(k) is not None for k in _READ_ONLY_SOURCES) or \
            bool(as_dict(volume.get("persistentVolumeClaim")).get("readOnly"))
        path = str(m.get("mountPath", ""))
        out.append(Mount(volume=name, container_path=path if path.startswith("/") else "/" + path,
                         read_only=read_only, sub_path=sub_path))
    return out
