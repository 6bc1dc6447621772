"""Discovery documents: what ``kubectl`` and client libraries ask first.

``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``, ``/apis/<group>/<version>``
and ``/version``, in the legacy (unaggregated) JSON forms, which every
client accepts. The stored kinds are listed with the read-only
``apiextensions.k8s.io/v1`` CustomResourceDefinitions (``crds``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from turbok import __version__
from turbok.api.kinds import NAMESPACE, POD, Kind, KindRegistry
from turbok.apiserver.crds import CRD_KIND

__all__ = ["api_versions", "group", "group_list", "resource_list", "served", "version_info"]

#: The Kubernetes minor whose API behaviour the embedded control plane follows.
KUBE_MAJOR, KUBE_MINOR = "1", "34"

#: The Pod subresources turbok serves, as kube-apiserver lists them (kubectl looks for them here).
_POD_SUBRESOURCES: list[tuple[str, dict[str, Any]]] = [
    ("attach", {"kind": "PodAttachOptions", "verbs": ["create", "get"]}),
    ("binding", {"kind": "Binding", "verbs": ["create"]}),
    ("eviction", {"group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}),
    ("exec", {"kind": "PodExecOptions", "verbs": ["create", "get"]}),
    ("log", {"kind": "Pod", "verbs": ["get"]}),
    ("portforward", {"kind": "PodPortForwardOptions", "verbs": ["create", "get"]}),
    ("status", {"kind": "Pod", "verbs": ["get", "patch", "update"]}),
]

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def served(kinds: KindRegistry) -> KindRegistry:
    """What discovery lists: the stored kinds plus the read-only CustomResourceDefinitions."""
    return KindRegistry([*kinds, CRD_KIND])


def version_info() -> dict[str, Any]:
    return {
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": f"v{KUBE_MAJOR}.{KUBE_MINOR}.0-turbok.{__version__}",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "turbok",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _storage_hash(kind: Kind) -> str:
    return hashlib.sha256(f"{kind.api_version}/{kind.kind}".encode()).digest()[:8].hex()


def _resources(kind: Kind) -> list[dict[str, Any]]:
    if kind is CRD_KIND:
        verbs = ["get", "list", "watch"]
    else:
        verbs = [v for v in _VERBS if not (kind is NAMESPACE and v == "deletecollection")]
    main: dict[str, Any] = {
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": verbs,
        "storageVersionHash": _storage_hash(kind),
    }
    if kind.short_names:
        main["shortNames"] = list(kind.short_names)
    if kind.categories:
        main["categories"] = list(kind.categories)
    out = [main]
    if kind.status_subresource and kind is not POD:
        out.append({"name": f"{kind.plural}/status", "singularName": "", "namespaced": kind.namespaced,
                    "kind": kind.kind, "verbs": ["get", "patch", "update"]})
    if kind.scale:
        out.append({"name": f"{kind.plural}/scale", "singularName": "", "namespaced": kind.namespaced,
                    "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
    if kind is POD:
        out += [{"name": f"pods/{sub}", "singularName": "", "namespaced": True, **extra}
                for sub, extra in _POD_SUBRESOURCES]
    if kind is NAMESPACE:
        out.append({"name": "namespaces/finalize", "singularName": "", "namespaced": False, "kind": "Namespace",
                    "verbs": ["update"]})
    return out


def resource_list(kinds: KindRegistry, group_name: str, version: str) -> dict[str, Any] | None:
    members = [k for k in kinds if k.group == group_name and k.version == version]
    if not members:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group_name}/{version}" if group_name else version,
        "resources": [r for k in members for r in _resources(k)],
    }


def group(kinds: KindRegistry, group_name: str) -> dict[str, Any] | None:
    versions = sorted({k.version for k in kinds if k.group == group_name})
    if not group_name or not versions:
        return None
    gvs = [{"groupVersion": f"{group_name}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group_name, "versions": gvs, "preferredVersion": gvs[0]}


def group_list(kinds: KindRegistry) -> dict[str, Any]:
    groups = []
    for name in kinds.groups():
        doc = group(kinds, name)
        if doc:
            doc = {k: v for k, v in doc.items() if k not in ("kind", "apiVersion")}
            groups.append(doc)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
