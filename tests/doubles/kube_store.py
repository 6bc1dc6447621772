"""The object store behind the Kubernetes API double (``kube_api``): no HTTP here.

Holds the served resources (from which discovery documents are generated),
the objects, pod logs and service-proxy answers, and the reactors that stand
in for controllers. Thread-safe: the HTTP server runs on its own loop (often
in a thread) while the test reads and changes the store from another.

Fixture format (a dict, or a directory: ``cluster.yaml`` holds the mapping and
every other ``*.yaml``/``*.json`` file adds its documents to ``objects``)::

    version: {major: "1", minor: "35", gitVersion: v1.35.2}
    resources:                 # what discovery serves; kinds map to REST paths through this list
      - {apiVersion: v1, kind: Pod, name: pods, namespaced: true, subresources: [log, status]}
      - {apiVersion: kueue.x-k8s.io/v1beta1, kind: ClusterQueue, name: clusterqueues, namespaced: false}
    groups: {custom.metrics.k8s.io: [v1beta1]}   # optional: groups without resources above (aggregated APIs)
    discovery: {"/apis/x/v1": {...}}   # optional: documents served verbatim instead of generated ones
    objects: [ {apiVersion: v1, kind: Node, metadata: {name: n1}, ...} ]
    logs: {"ns/pod": "text", "ns/pod/container": "text"}
    proxy: {"ns/service:port/path": "text"}   # answers of /api/v1/namespaces/ns/services/service:port/proxy/path

In a directory fixture a ``logs`` or ``proxy`` value may be ``{file: NAME}``: the text of that file.

``verbs`` default to the full set (get list watch create update patch delete deletecollection).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_VERBS",
    "Event",
    "Reject",
    "Resource",
    "Store",
    "load_fixture",
    "match_fields",
    "match_labels",
    "merge_patch",
]

DEFAULT_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


class Reject(Exception):
    """Raised by a reactor to refuse a request (an admission webhook, a validation rule)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    name: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = DEFAULT_VERBS
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass
class Event:
    """What a reactor sees. ``obj`` may be changed in place by ``create``/``update`` reactors."""

    verb: str  # create, created, update, updated, delete, deleted, read
    resource: Resource
    obj: dict[str, Any] | None
    store: Store
    namespace: str | None = None
    name: str | None = None


Reactor = Callable[[Event], None]
Objects = list[dict[str, Any]]  # an alias: inside Store, ``list`` names the method


def load_fixture(source: dict[str, Any] | str | Path) -> dict[str, Any]:
    """A fixture mapping from a dict (copied) or a directory (see the module docstring)."""
    if isinstance(source, dict):
        return copy.deepcopy(source)
    root = Path(source)
    data: dict[str, Any] = yaml.safe_load((root / "cluster.yaml").read_text()) or {}
    objects = list(data.get("objects") or [])
    for path in sorted(root.rglob("*")):
        if path == root / "cluster.yaml" or path.suffix not in (".yaml", ".yml", ".json"):
            continue
        docs = [json.loads(path.read_text())] if path.suffix == ".json" else list(yaml.safe_load_all(path.read_text()))
        objects.extend(d for d in docs if d)
    data["objects"] = objects
    for section in ("logs", "proxy"):
        for key, value in list((data.get(section) or {}).items()):
            if isinstance(value, dict) and "file" in value:
                data[section][key] = (root / value["file"]).read_text()
    return data


_SELECTOR_SPLIT = re.compile(r",(?![^(]*\))")


def match_labels(selector: str | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics: =, ==, !=, in, notin, exists, !exists."""
    if not selector:
        return True
    for term in (t.strip() for t in _SELECTOR_SPLIT.split(selector) if t.strip()):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            inside = key in labels and labels[key] in values
            if inside != (op == "in"):
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def match_fields(selector: str | None, obj: dict[str, Any]) -> bool:
    """Field selectors as equality on dotted paths (``metadata.name=x``, ``status.phase!=Running``)."""
    if not selector:
        return True
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        neg = "!=" in term
        key, value = (s.strip() for s in re.split(r"!=|==|=", term, maxsplit=1))
        actual = _dig(obj, key)
        actual = "" if actual is None else str(actual)
        if (actual == value) == neg:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches, lists replaced whole)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Store:
    """Resources, objects, logs, proxy answers and reactors of one double."""

    resources: list[Resource] = field(default_factory=list)
    version: dict[str, Any] = field(default_factory=dict)
    discovery_overrides: dict[str, Any] = field(default_factory=dict)
    extra_groups: dict[str, list[str]] = field(default_factory=dict)
    cascade_namespace_delete: bool = True

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.logs: dict[str, str] = {}
        self.proxy: dict[str, str | Callable[[dict[str, str]], tuple[int, str]]] = {}
        self.reactors: list[tuple[str, str | None, str | None, Reactor]] = []
        self.created: list[dict[str, Any]] = []
        self.deleted: list[dict[str, Any]] = []
        self.watchers: list[Callable[[str, Resource, dict[str, Any]], None]] = []
        self._rv = itertools.count(1000)

    @classmethod
    def from_fixture(cls, fixture: dict[str, Any]) -> Store:
        resources = []
        for r in fixture.get("resources") or []:
            group, _, version = r["apiVersion"].rpartition("/")
            resources.append(
                Resource(
                    group=group,
                    version=version,
                    name=r["name"],
                    kind=r["kind"],
                    namespaced=bool(r.get("namespaced", True)),
                    verbs=tuple(r.get("verbs") or DEFAULT_VERBS),
                    subresources=tuple(r.get("subresources") or ()),
                )
            )
        store = cls(resources=resources, version=dict(fixture.get("version") or {}),
                    discovery_overrides=dict(fixture.get("discovery") or {}),
                    extra_groups={k: list(v) for k, v in (fixture.get("groups") or {}).items()})
        for obj in fixture.get("objects") or []:
            store.add(obj)
        store.logs.update(fixture.get("logs") or {})
        store.proxy.update(fixture.get("proxy") or {})
        return store

    # -- lookups ---------------------------------------------------------------------------

    def resource_for(self, api_version: str, kind: str) -> Resource:
        for r in self.resources:
            if r.api_version == api_version and r.kind == kind:
                return r
        raise KeyError(f"the double serves no {kind} in {api_version}: add it to the fixture's resources")

    def serves(self, api_version: str, kind: str) -> bool:
        return any(r.api_version == api_version and r.kind == kind for r in self.resources)

    def resource_by_path(self, group: str, version: str, name: str) -> Resource | None:
        for r in self.resources:
            if (r.group, r.version, r.name) == (group, version, name):
                return r
        return None

    def _key(self, res: Resource, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        # objects are stored once per group+resource, whatever version they were written in
        return (res.group, res.name, (namespace or "") if res.namespaced else "", name)

    # -- changes (reactors do not run here: these are the test's own hands) ------------------

    def next_rv(self) -> str:
        return str(next(self._rv))

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Put an object in as is (defaults filled in), without reactors: fixtures and reactors use this."""
        res = self.resource_for(obj["apiVersion"], obj["kind"])
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = self.next_rv()
        with self.lock:
            self.objects[self._key(res, meta.get("namespace"), meta["name"])] = obj
        self._notify("ADDED", res, obj)
        return obj

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        res = self.resource_for(api_version, kind)
        with self.lock:
            return self.objects.get(self._key(res, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None) -> Objects:
        res = self.resource_for(api_version, kind)
        return self.list_res(res, namespace, label_selector, None)

    def list_res(self, res: Resource, namespace: str | None, label_selector: str | None, field_selector: str | None) -> Objects:
        with self.lock:
            found = [
                o
                for (g, n, ns, _), o in sorted(self.objects.items())
                if (g, n) == (res.group, res.name)
                and (namespace is None or not res.namespaced or ns == namespace)
                and match_labels(label_selector, (o.get("metadata") or {}).get("labels") or {})
                and match_fields(field_selector, o)
            ]
        return found

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace an object (bumping resourceVersion), without reactors."""
        res = self.resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        meta["resourceVersion"] = self.next_rv()
        with self.lock:
            self.objects[self._key(res, meta.get("namespace"), meta["name"])] = obj
        self._notify("MODIFIED", res, obj)
        return obj

    def remove(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.pop(self._key(res, namespace, name), None)
            if obj is None:
                return None
            self.deleted.append(obj)
            if self.cascade_namespace_delete and res.group == "" and res.name == "namespaces":
                for key in [k for k in self.objects if k[2] == name]:
                    self.deleted.append(self.objects.pop(key))
        self._notify("DELETED", res, obj)
        return obj

    def set_log(self, namespace: str, pod: str, text: str, container: str | None = None) -> None:
        with self.lock:
            self.logs[f"{namespace}/{pod}" + (f"/{container}" if container else "")] = text

    def set_proxy(self, namespace: str, target: str, path: str, answer: str | Callable[[dict[str, str]], tuple[int, str]]) -> None:
        """Answer of the service proxy for ``namespace/target/path`` (``target`` is ``name:port``)."""
        with self.lock:
            self.proxy[f"{namespace}/{target}/{path.lstrip('/')}"] = answer

    # -- reactors ----------------------------------------------------------------------------

    def on(self, verb: str, reactor: Reactor, *, group: str | None = None, resource: str | None = None) -> None:
        """Run ``reactor`` on ``verb`` for one resource (``group`` + plural ``resource``) or all.

        Verbs: ``create``/``update`` (before storing: change ``event.obj`` or raise ``Reject``),
        ``created``/``updated``/``deleted`` (after), ``delete`` (before; may ``Reject``),
        ``read`` (before a get or list is answered: advance simulated time here).
        """
        self.reactors.append((verb, group, resource, reactor))

    def react(self, verb: str, res: Resource, obj: dict[str, Any] | None, namespace: str | None, name: str | None) -> None:
        for v, g, r, fn in list(self.reactors):
            if v == verb and (g is None or g == res.group) and (r is None or r == res.name):
                fn(Event(verb=verb, resource=res, obj=obj, store=self, namespace=namespace, name=name))

    def _notify(self, kind: str, res: Resource, obj: dict[str, Any]) -> None:
        for watcher in list(self.watchers):
            watcher(kind, res, copy.deepcopy(obj))

    # -- what happened -----------------------------------------------------------------------

    def created_of(self, kind: str) -> Objects:
        return [o for o in self.created if o.get("kind") == kind]

    def labelled(self, label_selector: str) -> Objects:
        """Every stored object matching a label selector, whatever its kind."""
        with self.lock:
            return [o for o in self.objects.values() if match_labels(label_selector, (o.get("metadata") or {}).get("labels") or {})]
