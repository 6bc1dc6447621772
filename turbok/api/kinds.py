"""The registry of kinds: names, scope, schema and subresources of each.

Kinds come from the CustomResourceDefinitions packaged in ``turbok/api/crds``
(the upstream Agent Sandbox CRDs unchanged, plus turbok's own), and a few core
kinds defined here (``v1`` Namespace). For each CRD the storage version is
served; other versions would need conversion and are not. Events (core/v1)
are served so that ``kubectl describe`` and ``kubectl get events`` work and
controllers may record what they did. The other built-in kinds (``BUILTIN``:
Pods, Services, Secrets, Nodes...) carry kube-apiserver's own schemas
(``api/schemas/core.json``, made by scripts/core_schemas.py). ``LimitRange``
and ``ResourceQuota`` bound what a namespace's sandboxes may use;
``turbok.store.admission`` enforces them.

Who calls: the apiserver (routing, discovery, OpenAPI), the registry in
``turbok.store`` (validation), the CLI (resolving ``sandboxclaim`` to a kind).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from turbok.api.status import NotFound

__all__ = [
    "BUILTIN",
    "CONFIG_MAP",
    "DEVICE_CLASS",
    "ENDPOINTS",
    "ENDPOINT_SLICE",
    "EVENT",
    "LEASE",
    "LIMIT_RANGE",
    "NAMESPACE",
    "NETWORK_POLICY",
    "NODE",
    "PERSISTENT_VOLUME",
    "PERSISTENT_VOLUME_CLAIM",
    "POD",
    "RESOURCE_CLAIM",
    "RESOURCE_CLAIM_TEMPLATE",
    "RESOURCE_QUOTA",
    "RESOURCE_SLICE",
    "SECRET",
    "SERVICE",
    "SERVICE_ACCOUNT",
    "STORAGE_CLASS",
    "Kind",
    "KindRegistry",
    "Scale",
    "default_registry",
    "kind_from_crd",
]


@dataclass(frozen=True)
class Scale:
    """The scale subresource's paths, as a CRD declares them (``.spec.replicas``...)."""

    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str | None = None


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    schema: dict[str, Any] = field(repr=False, hash=False, compare=False)
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    scale: Scale | None = None
    printer_columns: tuple[dict[str, Any], ...] = field(default=(), hash=False, compare=False)
    #: The CRD this kind came from, for deploy/ and discovery; None for core kinds.
    crd: dict[str, Any] | None = field(default=None, repr=False, hash=False, compare=False)
    #: Fields a field selector may name besides metadata.name and metadata.namespace.
    field_selectors: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def key(self) -> str:
        """Storage key of the resource: ``group/plural`` (``/namespaces`` for core)."""
        return f"{self.group}/{self.plural}"

    @property
    def qualified(self) -> str:
        """``plural.group``, as kubectl and error messages name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def base_path(self, namespace: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"


def kind_from_crd(crd: dict[str, Any]) -> Kind:
    spec = crd["spec"]
    names = spec["names"]
    versions = [v for v in spec["versions"] if v.get("served", True)]
    storage = next((v for v in versions if v.get("storage")), versions[0])
    sub = storage.get("subresources") or {}
    scale = sub.get("scale")
    return Kind(
        group=spec["group"],
        version=storage["name"],
        kind=names["kind"],
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        schema=storage["schema"]["openAPIV3Schema"],
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        status_subresource="status" in sub,
        scale=Scale(
            spec_replicas_path=scale["specReplicasPath"],
            status_replicas_path=scale["statusReplicasPath"],
            label_selector_path=scale.get("labelSelectorPath"),
        )
        if scale
        else None,
        printer_columns=tuple(storage.get("additionalPrinterColumns") or ()),
        crd=crd,
    )


NAMESPACE = Kind(
    group="",
    version="v1",
    kind="Namespace",
    plural="namespaces",
    singular="namespace",
    namespaced=False,
    short_names=("ns",),
    status_subresource=True,
    schema={
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "properties": {"finalizers": {"type": "array", "items": {"type": "string"}}},
            },
            "status": {
                "type": "object",
                "properties": {
                    "phase": {"type": "string", "enum": ["Active", "Terminating"]},
                    "conditions": {
                        "type": "array",
                        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                },
            },
        },
    },
    printer_columns=(
        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)

_REFERENCE: dict[str, Any] = {
    "type": "object",
    "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name", "namespace", "uid",
                                                   "resourceVersion", "fieldPath")},
}

#: core/v1 Event: what ``kubectl describe`` lists under an object and ``kubectl get events`` shows.
EVENT = Kind(
    group="",
    version="v1",
    kind="Event",
    plural="events",
    singular="event",
    namespaced=True,
    short_names=("ev",),
    schema={
        "type": "object",
        "required": ["involvedObject"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "involvedObject": _REFERENCE,
            "related": _REFERENCE,
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "type": {"type": "string"},
            "action": {"type": "string"},
            "count": {"type": "integer", "format": "int32"},
            "firstTimestamp": {"type": "string", "format": "date-time", "nullable": True},
            "lastTimestamp": {"type": "string", "format": "date-time", "nullable": True},
            "eventTime": {"type": "string", "format": "date-time", "nullable": True},
            "series": {"type": "object", "properties": {
                "count": {"type": "integer", "format": "int32"},
                "lastObservedTime": {"type": "string", "format": "date-time"}}},
            "source": {"type": "object", "properties": {"component": {"type": "string"}, "host": {"type": "string"}}},
            "reportingComponent": {"type": "string"},
            "reportingInstance": {"type": "string"},
        },
    },
    printer_columns=(
        {"name": "Last Seen", "type": "date", "jsonPath": ".lastTimestamp"},
        {"name": "Type", "type": "string", "jsonPath": ".type"},
        {"name": "Reason", "type": "string", "jsonPath": ".reason"},
        {"name": "Object", "type": "string", "jsonPath": ".involvedObject.name"},
        {"name": "Message", "type": "string", "jsonPath": ".message"},
    ),
    # What kube-apiserver lets events be selected by (kubectl describe uses the involvedObject ones).
    field_selectors=("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                     "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                     "involvedObject.fieldPath", "reason", "reportingComponent", "type"),
)


@functools.cache
def _core_schemas() -> dict[str, Any]:
    text = (resources.files("turbok.api") / "schemas" / "core.json").read_text()
    kinds: dict[str, Any] = json.loads(text)["kinds"]
    return kinds


def _builtin(group: str, kind: str, plural: str, *, namespaced: bool = True, short_names: tuple[str, ...] = (),
             status: bool = False, categories: tuple[str, ...] = (), field_selectors: tuple[str, ...] = ()) -> Kind:
    """A built-in kind with kube-apiserver's own schema (``api/schemas/core.json``, scripts/core_schemas.py);
    its printer columns and cells are ``turbok.apiserver.printers``'."""
    return Kind(group=group, version="v1", kind=kind, plural=plural, singular=kind.lower(), namespaced=namespaced,
                schema=_core_schemas()[kind], short_names=short_names, status_subresource=status,
                categories=categories, field_selectors=field_selectors)


#: core/v1 LimitRange: per-namespace defaults and bounds of each container's resources (LimitRanger).
LIMIT_RANGE = _builtin("", "LimitRange", "limitranges", short_names=("limits",))
#: core/v1 ResourceQuota: per-namespace caps on object counts and cpu/memory, ``status.used`` kept current.
RESOURCE_QUOTA = _builtin("", "ResourceQuota", "resourcequotas", short_names=("quota",), status=True)
#: The Pod: what controllers ask of a node (turbok.node on one machine, the kubelet on a cluster).
POD = _builtin("", "Pod", "pods", short_names=("po",), status=True, categories=("all",),
               field_selectors=("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                                "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
                                "status.nominatedNodeName"))
SERVICE = _builtin("", "Service", "services", short_names=("svc",), status=True, categories=("all",),
                   field_selectors=("spec.clusterIP", "spec.type"))
ENDPOINTS = _builtin("", "Endpoints", "endpoints", short_names=("ep",))
ENDPOINT_SLICE = _builtin("discovery.k8s.io", "EndpointSlice", "endpointslices")
PERSISTENT_VOLUME_CLAIM = _builtin("", "PersistentVolumeClaim", "persistentvolumeclaims", short_names=("pvc",),
                                   status=True)
PERSISTENT_VOLUME = _builtin("", "PersistentVolume", "persistentvolumes", namespaced=False, short_names=("pv",),
                             status=True)
SECRET = _builtin("", "Secret", "secrets", field_selectors=("type",))
CONFIG_MAP = _builtin("", "ConfigMap", "configmaps", short_names=("cm",))
SERVICE_ACCOUNT = _builtin("", "ServiceAccount", "serviceaccounts", short_names=("sa",))
NODE = _builtin("", "Node", "nodes", namespaced=False, short_names=("no",), status=True,
                field_selectors=("spec.unschedulable",))
LEASE = _builtin("coordination.k8s.io", "Lease", "leases")
STORAGE_CLASS = _builtin("storage.k8s.io", "StorageClass", "storageclasses", namespaced=False, short_names=("sc",))
#: networking.k8s.io/v1 NetworkPolicy: the node enforces them on the pod network (turbok.node.netpolicy).
NETWORK_POLICY = _builtin("networking.k8s.io", "NetworkPolicy", "networkpolicies", short_names=("netpol",))

#: resource.k8s.io/v1, Dynamic Resource Allocation (turbok.api.dra validates them; turbok.node.dra allocates
#: claims and prepares them on the node).
DEVICE_CLASS = _builtin("resource.k8s.io", "DeviceClass", "deviceclasses", namespaced=False)
RESOURCE_CLAIM = _builtin("resource.k8s.io", "ResourceClaim", "resourceclaims", status=True)
RESOURCE_CLAIM_TEMPLATE = _builtin("resource.k8s.io", "ResourceClaimTemplate", "resourceclaimtemplates")
RESOURCE_SLICE = _builtin("resource.k8s.io", "ResourceSlice", "resourceslices", namespaced=False,
                          field_selectors=("spec.nodeName", "spec.driver"))

#: The built-in kinds besides Namespace and Event, in discovery order.
BUILTIN = (POD, SERVICE, ENDPOINTS, PERSISTENT_VOLUME_CLAIM, PERSISTENT_VOLUME, SECRET, CONFIG_MAP, SERVICE_ACCOUNT,
           NODE, LIMIT_RANGE, RESOURCE_QUOTA, ENDPOINT_SLICE, LEASE, STORAGE_CLASS, NETWORK_POLICY, DEVICE_CLASS,
           RESOURCE_CLAIM, RESOURCE_CLAIM_TEMPLATE, RESOURCE_SLICE)


class KindRegistry:
    """Every kind served, found by resource path, by apiVersion+kind or by a name a user types."""

    def __init__(self, kinds: Iterable[Kind]) -> None:
        self._kinds = list(kinds)
        self._by_resource = {(k.group, k.version, k.plural): k for k in self._kinds}
        self._by_gvk = {(k.api_version, k.kind): k for k in self._kinds}
        self._by_key = {k.key: k for k in self._kinds}

    def __iter__(self) -> Iterator[Kind]:
        return iter(self._kinds)

    def groups(self) -> dict[str, list[Kind]]:
        """Kinds by API group, core ("") included, in registration order."""
        out: dict[str, list[Kind]] = {}
        for k in self._kinds:
            out.setdefault(k.group, []).append(k)
        return out

    def by_resource(self, group: str, version: str, plural: str) -> Kind:
        try:
            return self._by_resource[(group, version, plural)]
        except KeyError:
            gv = f"{group}/{version}" if group else version
            raise NotFound(f"the server could not find the requested resource ({plural} in {gv})") from None

    def by_key(self, key: str) -> Kind | None:
        """The kind stored under ``Kind.key`` (``group/plural``), if served."""
        return self._by_key.get(key)

    def by_kind(self, api_version: str, kind: str) -> Kind:
        try:
            return self._by_gvk[(api_version, kind)]
        except KeyError:
            raise NotFound(
                f'no matches for kind "{kind}" in version "{api_version}"', kind=kind
            ) from None

    def resolve(self, name: str) -> Kind:
        """Find a kind by what a user types: plural, singular, short name or Kind, optionally ``.group``."""
        wanted, _, group = name.lower().partition(".")
        for k in self._kinds:
            if group and k.group != group:
                continue
            if wanted in (k.plural, k.singular, k.kind.lower(), *k.short_names):
                return k
        raise NotFound(f'the server doesn\'t have a resource type "{name}"')


def _packaged_crds() -> Iterator[dict[str, Any]]:
    folder = resources.files("turbok.api") / "crds"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            for doc in yaml.safe_load_all(entry.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    yield doc


@functools.cache
def default_registry() -> KindRegistry:
    """Namespace, Event, the other built-in kinds and every packaged CRD, loaded once per process."""
    return KindRegistry([NAMESPACE, EVENT, *BUILTIN, *(kind_from_crd(c) for c in _packaged_crds())])
