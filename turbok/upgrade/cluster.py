"""Reading a live cluster for the planner and the checker, over its REST API.

What is read, and what each read is for:

* ``/version``: the apiserver's binary version and, when it emulates, its
  emulated and min compatibility versions (KEP-4330 "Version introspection";
  reported from 1.33 on: for a 1.32 apiserver the ``--emulated-version`` of its
  control-plane Pod is used, or a note says it could not be told).
* nodes: ``status.nodeInfo.kubeletVersion`` and ``kubeProxyVersion`` (skew).
* kube-system pods labelled ``tier=control-plane`` (kubeadm and similar): the
  image tag and ``--emulated-version``/``--min-compatibility-version`` flags of
  every apiserver, controller-manager, scheduler and cloud-controller-manager,
  their whole command lines (checked against the target binaries' flags and
  feature gates), and the etcd Pod's image tag.
* ``/metrics``: ``kubernetes_feature_enabled`` for the apiserver's feature gates.
* objects of every built-in kind the deprecation data covers: the apiVersion
  in ``kubectl.kubernetes.io/last-applied-configuration`` (what users wrote)
  and in ``managedFields`` (what clients still write with).
* Helm 3 release secrets (``owner=helm,status=deployed``): the manifests of
  every deployed release.

Reads that the cluster refuses (RBAC) or does not serve become notes, never
failures; only an unreachable or unauthenticated apiserver is an error.
``connect`` opens the connection from a kubeconfig (read by
``turbok.client.kubeconfig``, whose errors become ``ClusterError`` here) as the
project's one REST client (``turbok.client.api.Api``); the CLI hands it to
``ClusterReader``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from turbok.api import status as st
from turbok.client.api import Api, status_code, status_reason
from turbok.client.errors import ConnectionFailed, KubeconfigError
from turbok.client.kubeconfig import load_kubeconfig
from turbok.upgrade.checker import FeatureGate
from turbok.upgrade.components import ComponentFlags
from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.errors import ClusterError, ManifestError, PlanRefusedError, VersionError
from turbok.upgrade.etcd import parse_etcd_version
from turbok.upgrade.manifests import ManifestObject, objects_from_text
from turbok.upgrade.skew import ClusterVersions, Component, Instance
from turbok.upgrade.versions import Version, parse_version

__all__ = ["ClusterReader", "ClusterSnapshot", "Connection", "connect", "parse_feature_gates"]

log = logging.getLogger(__name__)

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_PAGE = 500
_COMPONENT_LABELS = {
    "kube-apiserver": Component.APISERVER,
    "kube-controller-manager": Component.CONTROLLER_MANAGER,
    "kube-scheduler": Component.SCHEDULER,
    "cloud-controller-manager": Component.CLOUD_CONTROLLER_MANAGER,
}
# Kinds whose objects controllers write, or that cannot be listed: not worth a cluster-wide list.
_NOT_LISTED = {"Event", "Endpoints", "ComponentStatus", "Lease", "LeaseCandidate", "EndpointSlice", "IPAddress", "ResourceSlice", "TokenReview",
               "SubjectAccessReview", "SelfSubjectAccessReview", "LocalSubjectAccessReview",
               "SelfSubjectRulesReview", "SelfSubjectReview", "ControllerRevision", "CertificateSigningRequest",
               "StorageVersionMigration", "PodCertificateRequest", "ResourcePoolStatusRequest"}


@dataclass(frozen=True)
class Connection:
    """Where the cluster is, which context was used, and a client for it (the caller closes it)."""

    server: str
    context: str
    client: Api


def connect(path: Path, *, context: str | None = None, timeout_s: float = 30.0) -> Connection:
    """An ``httpx.Client`` authenticated as the kubeconfig's user for ``context`` (default: current).

    Token files and exec plugins are read or run once here, so credential
    problems are a ``ClusterError`` now rather than on the first request.
    """
    try:
        config = load_kubeconfig(path, context)
        client = Api(config, timeout=timeout_s, user_agent="turbok-upgrade", follow_redirects=False,
                     trust_env=True, headers={"Accept": "application/json"})
    except KubeconfigError as e:
        raise ClusterError(str(e)) from e
    return Connection(server=config.server, context=config.context, client=client)


@dataclass
class ClusterSnapshot:
    """What the cluster reported; ``notes`` say what could not be read and why."""

    server: str
    apiserver: ControlPlaneVersion
    versions: ClusterVersions
    feature_gates: list[FeatureGate] | None = None
    notes: list[str] = field(default_factory=list)
    flags: ComponentFlags = field(default_factory=ComponentFlags)
    etcd: Version | None = None


def parse_feature_gates(text: str) -> list[FeatureGate]:
    """``kubernetes_feature_enabled{name=..., stage=...}`` samples of a Prometheus text exposition."""
    gates: list[FeatureGate] = []
    try:
        for family in text_string_to_metric_families(text):
            if family.name != "kubernetes_feature_enabled":
                continue
            for s in family.samples:
                if "name" in s.labels:
                    gates.append(FeatureGate(s.labels["name"], s.labels.get("stage", ""), s.value >= 1))
    except ValueError as e:
        raise ClusterError(f"/metrics is not Prometheus text exposition: {e}") from e
    return gates


def _flag(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def _kube_version(flag_value: str | None) -> Version | None:
    """``1.33`` or ``kube=1.33`` (the flag accepts component=version pairs)."""
    if not flag_value:
        return None
    for part in flag_value.split(","):
        comp, _, ver = part.rpartition("=")
        if comp in ("", "kube"):
            return parse_version(ver, what="--emulated-version").mm
    return None


class ClusterReader:
    """Reads one cluster through ``client`` (``turbok.client.api.Api``)."""

    def __init__(self, client: Api, server: str) -> None:
        self.client = client
        self.server = server
        self.notes: list[str] = []
        self.flags = ComponentFlags()
        self.etcd: Version | None = None

    # --- HTTP ---

    def _get(self, path: str, *, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
             optional: str = "") -> httpx.Response | None:
        """GET ``path``; None (and a note) when ``optional`` and the cluster refuses or lacks it."""
        log.debug("GET %s %s", path, params or "")
        try:
            return self.client.send("GET", path, params=params, headers=headers,
                                    accept=(headers or {}).get("Accept", "application/json"))
        except ConnectionFailed as e:
            raise ClusterError(f"cannot reach the apiserver at {self.server}: {e}") from e
        except KubeconfigError as e:  # a token file or exec plugin that failed since connect()
            raise ClusterError(str(e)) from e
        except st.ApiError as e:
            code = status_code(e)
            if code == 401:
                raise ClusterError(f"the apiserver at {self.server} refused the kubeconfig's credentials "
                                   "(401 Unauthorized)") from e
            why = status_reason(e) or re.sub(r"\s+", " ", e.message[:80])
            if optional:
                self.notes.append(f"{optional} not read: GET {path} answered {code} {why}")
                return None
            raise ClusterError(f"GET {path} answered {code} {why}") from e

    def _json(self, r: httpx.Response) -> dict[str, Any]:
        try:
            data = r.json()
        except ValueError as e:
            raise ClusterError(f"GET {r.request.url.path} did not answer JSON") from e
        if not isinstance(data, dict):
            raise ClusterError(f"GET {r.request.url.path} did not answer a JSON object")
        return data

    def _list(self, path: str, *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
              optional: str = "") -> Iterator[dict[str, Any]] | None:
        first = self._get(path, params={**(params or {}), "limit": str(_PAGE)}, headers=headers, optional=optional)
        if first is None:
            return None
        return self._pages(path, first, params or {}, headers)

    def _pages(self, path: str, r: httpx.Response, params: dict[str, str],
               headers: dict[str, str] | None) -> Iterator[dict[str, Any]]:
        while True:
            data = self._json(r)
            for item in data.get("items") or []:
                if isinstance(item, dict):
                    yield item
            token = (data.get("metadata") or {}).get("continue")
            if not token:
                return
            nxt = self._get(path, params={**params, "limit": str(_PAGE), "continue": token}, headers=headers)
            assert nxt is not None
            r = nxt

    # --- versions ---

    def apiserver_version(self) -> ControlPlaneVersion:
        r = self._get("/version")
        assert r is not None
        info = self._json(r)
        try:
            binary = parse_version(str(info.get("gitVersion") or ""), what="/version gitVersion")
            emulated = (Version(int(info["emulationMajor"]), int(info["emulationMinor"]))
                        if info.get("emulationMinor") else None)
            min_compat = (Version(int(info["minCompatibilityMajor"]), int(info["minCompatibilityMinor"]))
                          if info.get("minCompatibilityMinor") else None)
            cp = ControlPlaneVersion.of(binary, emulated)
            # what the server reports is the truth, even where turbok's defaults would differ
            return replace(cp, min_compat=min_compat) if min_compat is not None else cp
        except (VersionError, PlanRefusedError, ValueError, KeyError) as e:
            raise ClusterError(f"/version is not a Kubernetes version answer: {e}") from e

    def control_plane(self) -> list[Instance]:
        pods = self._list("/api/v1/namespaces/kube-system/pods", params={"labelSelector": "tier=control-plane"},
                          optional="control-plane pods (kube-system)")
        out: list[Instance] = []
        for pod in pods or ():
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if labels.get("component") == "etcd":
                self._etcd_pod(pod)
                continue
            component = _COMPONENT_LABELS.get(labels.get("component", ""))
            if component is None:
                continue
            name = str(pod["metadata"].get("name", ""))
            for c in (pod.get("spec") or {}).get("containers") or []:
                if component.value not in str(c.get("image", "")) and component.value not in str(c.get("name", "")):
                    continue
                tag = str(c.get("image", "")).rpartition(":")[2]
                args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
                try:
                    binary = parse_version(tag, what=f"{name} image tag")
                    control = (None if component is Component.CLOUD_CONTROLLER_MANAGER else
                               ControlPlaneVersion.of(binary, _kube_version(_flag(args, "--emulated-version")),
                                                      _kube_version(_flag(args, "--min-compatibility-version"))))
                except (VersionError, PlanRefusedError) as e:
                    self.notes.append(f"{name}: version not understood ({e})")
                    break
                out.append(Instance(component, name, binary, control))
                if component is not Component.CLOUD_CONTROLLER_MANAGER:
                    self.flags.add(component.value, args, f"cluster: kube-system/{name}")
                break
        return out

    def _etcd_pod(self, pod: dict[str, Any]) -> None:
        name = str((pod.get("metadata") or {}).get("name", ""))
        for c in (pod.get("spec") or {}).get("containers") or []:
            image = str(c.get("image", ""))
            if "etcd" not in image:
                continue
            try:
                found = parse_etcd_version(image.rpartition(":")[2], what=f"{name} image tag")
            except VersionError as e:
                self.notes.append(f"{name}: etcd version not understood ({e})")
                return
            self.etcd = found if self.etcd is None else min(self.etcd, found)
            return

    def nodes(self) -> list[Instance]:
        items = self._list("/api/v1/nodes", optional="nodes")
        out: list[Instance] = []
        for node in items or ():
            name = str((node.get("metadata") or {}).get("name", ""))
            info = ((node.get("status") or {}).get("nodeInfo")) or {}
            for key, component in (("kubeletVersion", Component.KUBELET), ("kubeProxyVersion", Component.KUBE_PROXY)):
                raw = info.get(key)
                if not raw:
                    continue  # kubeProxyVersion is empty on newer kubelets (DisableNodeKubeProxyVersion)
                try:
                    out.append(Instance(component, name, parse_version(str(raw), what=f"node {name} {key}")))
                except VersionError:
                    self.notes.append(f"node {name}: {key} {raw!r} is not a Kubernetes version")
        return out

    def feature_gates(self) -> list[FeatureGate] | None:
        r = self._get("/metrics", headers={"Accept": "text/plain"}, optional="feature gates (/metrics)")
        return parse_feature_gates(r.text) if r is not None else None

    def snapshot(self, *, kubectl: Version | None = None) -> ClusterSnapshot:
        apiserver = self.apiserver_version()
        instances = self.control_plane()
        if apiserver.binary.minor == 32 and not apiserver.emulating:
            # /version reports emulationMinor from 1.33 on: a 1.32 apiserver's flag is the only witness
            pods = [i.control for i in instances if i.component is Component.APISERVER and i.control is not None
                    and i.version.same_minor(apiserver.binary)]
            emulating = [c for c in pods if c.emulating]
            if emulating:
                apiserver = min(emulating, key=lambda c: c.emulated)
                self.notes.append(f"kube-apiserver {apiserver.binary} does not report its emulated version in /version "
                                  f"(from 1.33 it does); its control-plane Pod runs --emulated-version={apiserver.emulated}")
            elif not pods:
                self.notes.append(f"kube-apiserver {apiserver.binary} does not report an emulated version in /version "
                                  "(emulationMinor appears in 1.33) and its Pod is not visible: turbok assumed it emulates "
                                  "nothing; pass --from-emulated-version if it runs with --emulated-version")
        if not any(i.component is Component.APISERVER for i in instances):
            # managed control planes hide their pods: /version is all we know
            instances.append(Instance(Component.APISERVER, "apiserver (/version)", apiserver.binary, apiserver))
            self.notes.append("control-plane pods not visible: kube-controller-manager, kube-scheduler and "
                              "cloud-controller-manager versions were not checked")
        instances.extend(self.nodes())
        if kubectl is not None:
            instances.append(Instance(Component.KUBECTL, "local", kubectl))
        gates = self.feature_gates()
        log.info("read %s: apiserver %s, %d component instance(s), %s feature gate(s)", self.server, apiserver,
                 len(instances), "no" if gates is None else len(gates))
        return ClusterSnapshot(self.server, apiserver, ClusterVersions(tuple(instances)), gates, self.notes,
                               self.flags, self.etcd)

    # --- objects ---

    def _resources(self, wanted: set[tuple[str, str]]) -> list[tuple[str, str, str]]:
        """(group, kind, list path) for every wanted kind the cluster serves, one group per kind."""
        served: dict[str, tuple[str, str]] = {}  # kind -> (group, path)
        # group -> its group-versions, preferred first: an old cluster may serve a kind only in a
        # non-preferred version (CronJob in batch/v1beta1 before 1.21)
        groups: dict[str, list[str]] = {"": ["/api/v1"]}
        r = self._get("/apis", optional="API discovery (/apis)")
        if r is not None:
            for g in self._json(r).get("groups") or []:
                preferred = str((g.get("preferredVersion") or {}).get("groupVersion") or "")
                versions = [str(v.get("groupVersion")) for v in g.get("versions") or [] if v.get("groupVersion")]
                ordered = [preferred] + [v for v in versions if v != preferred] if preferred else versions
                groups[str(g.get("name", ""))] = [f"/apis/{gv}" for gv in ordered]
        for group, bases in groups.items():
            kinds = {k for g, k in wanted if g == group}
            for base in bases:
                if not kinds:
                    break
                doc = self._get(base, optional=f"API discovery ({base})")
                for res in (self._json(doc).get("resources") or []) if doc is not None else []:
                    kind, name = str(res.get("kind", "")), str(res.get("name", ""))
                    if "/" in name or kind not in kinds or "list" not in (res.get("verbs") or []):
                        continue
                    kinds.discard(kind)
                    # one group per kind: Ingress is served by extensions and networking.k8s.io on old clusters
                    if kind not in served or served[kind][0] == "extensions":
                        served[kind] = (group, f"{base}/{name}")
        return sorted((g, k, p) for k, (g, p) in served.items())

    def objects(self, wanted: set[tuple[str, str]]) -> list[ManifestObject]:
        """Objects of ``wanted`` (group, kind) pairs, as their users and clients wrote them."""
        wanted = {(g, k) for g, k in wanted if k not in _NOT_LISTED}
        out: list[ManifestObject] = []
        accept = {"Accept": "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"}
        for _group, kind, path in self._resources(wanted):
            seen: set[str] = set()
            for item in self._list(path, headers=accept, optional=f"{kind} objects") or ():
                meta = item.get("metadata") or {}
                uid = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
                if uid in seen:
                    continue
                seen.add(uid)
                out.extend(self._object_views(kind, meta))
            log.info("listed %s: %d object(s)", kind, len(seen))
        return out

    def _object_views(self, kind: str, meta: dict[str, Any]) -> Iterator[ManifestObject]:
        name, ns = str(meta.get("name", "")), str(meta.get("namespace") or "")
        where = f"cluster:{ns + '/' if ns else ''}{kind}/{name}"
        raw = (meta.get("annotations") or {}).get(LAST_APPLIED)
        if raw:
            try:
                applied = json.loads(raw)
                yield ManifestObject(str(applied.get("apiVersion", "")), str(applied.get("kind") or kind), name, ns,
                                     where, origin="last-applied")
            except (ValueError, AttributeError):
                self.notes.append(f"{where}: {LAST_APPLIED} is not JSON")
        for mf in meta.get("managedFields") or []:
            if isinstance(mf, dict) and mf.get("apiVersion"):
                yield ManifestObject(str(mf["apiVersion"]), kind, name, ns, where,
                                     origin=f"managedFields: {mf.get('manager', '?')}")

    def helm_releases(self) -> list[ManifestObject]:
        """Objects in the manifests of deployed Helm 3 releases (secret storage driver)."""
        items = self._list("/api/v1/secrets", params={"labelSelector": "owner=helm,status=deployed"},
                           optional="Helm releases (secrets)")
        out: list[ManifestObject] = []
        for s in items or ():
            meta = s.get("metadata") or {}
            where = f"helm:{meta.get('namespace', '')}/{meta.get('name', '')}"
            try:
                release = _decode_helm_release(str((s.get("data") or {}).get("release", "")))
                objs, _ = objects_from_text(str(release.get("manifest") or ""), where)
            except (ValueError, TypeError, binascii.Error, OSError) as e:
                self.notes.append(f"{where}: release not decodable ({e})")
                continue
            except ManifestError as e:  # a release's manifest is user data: report it, do not stop
                self.notes.append(f"manifest of {e}")
                continue
            out.extend(ManifestObject(o.api_version, o.kind, o.name, o.namespace or str(meta.get("namespace", "")),
                                      o.path, o.line, o.item, o.template, origin="helm release") for o in objs)
        return out


def _decode_helm_release(data: str) -> dict[str, Any]:
    """Helm 3 stores base64(gzip(json)) inside the secret's (base64) data."""
    raw = base64.b64decode(base64.b64decode(data))
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    release = json.loads(raw)
    if not isinstance(release, dict):
        raise ValueError("not a release object")
    return release
