"""Kubernetes object semantics over the SQLite store: the one way objects are written.

What kube-apiserver's generic registry does for custom resources, and what
turbok needs for Namespaces:

- create: apiVersion/kind/namespace checks, ``generateName``, pruning of
  unknown fields (``fieldValidation`` Ignore/Warn/Strict), defaulting, schema
  and metadata validation (422 with field causes, nothing stored), uid,
  creationTimestamp, generation 1 (where the kind has one); status is dropped where a status
  subresource exists; namespaces must exist and not be terminating.
- update: optimistic concurrency on ``metadata.resourceVersion`` (409), the
  main resource cannot change status and the status subresource changes
  nothing else; ``generation`` bumps when anything but metadata and status
  changes; a no-op update writes nothing.
- delete: preconditions, finalizers (``deletionTimestamp`` first, removal when
  the last finalizer goes), propagation policies through the
  ``foregroundDeletion``/``orphan`` finalizers that the garbage collector
  honours; namespaces go Terminating and wait for their contents to go.
- scale subresource (autoscaling/v1 Scale) and patches.

Every committed change is published to the ``WatchHub``. Callers: the
apiserver's handlers and, in-process, the embedded controllers.

Large writes run on worker threads (``offload``): everything up to the commit
there, the commit itself back on the event loop, in order, after checking the
object did not change meanwhile (else the write is done again). Events expire
``limits.event_ttl_seconds`` after their last write (``expire_events``, called
by the apiserver once a minute), as kube-apiserver's ``--event-ttl``.
"""

from __future__ import annotations

import base64
import builtins
import copy
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from turbok.api import gotypes, pod, schema
from turbok.api import meta as m
from turbok.api.kinds import BUILTIN, NAMESPACE, NETWORK_POLICY, POD, SERVICE, Kind, KindRegistry
from turbok.api.patch import apply_patch, check_patch_type
from turbok.api.status import (
    AlreadyExists,
    BadRequest,
    Cause,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
)
from turbok.store.admission import Admission
from turbok.store.allocator import ServiceAllocator, service_cidr
from turbok.store.eventttl import EventTTL
from turbok.store.sqlite import Row, SqliteStore
from turbok.store.strategy import strategy_of
from turbok.store.watch import Event, Watcher, WatchHub
from turbok.store.workers import Raced, Workers, names_version, on_loop, worker_loop

__all__ = ["ListResult", "ObjectRegistry", "WriteOptions", "parse_resource_version"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
NAMESPACE_FINALIZER = "kubernetes"

T = TypeVar("T")


def parse_resource_version(value: Any) -> int:
    """A resourceVersion as the integer it is; 400 for anything else (``abc``, ``-1``, ``1.5``)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isascii() or not text.isdigit():
        raise BadRequest(f"invalid resourceVersion {value!r}: a resourceVersion is an unsigned integer that the "
                         "server handed out")
    return int(text)


_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation", "selfLink", "managedFields")


@dataclass
class WriteOptions:
    dry_run: bool = False
    #: Ignore, Warn (kube-apiserver's default) or Strict.
    field_validation: str = "Warn"
    #: Filled by the registry: warnings to send back (``Warning`` headers).
    warnings: list[str] = field(default_factory=list)


@dataclass
class ListResult:
    items: list[Obj]
    resource_version: str
    continue_token: str = ""
    remaining: int | None = None


class ObjectRegistry:
    def __init__(self, db: SqliteStore, kinds: KindRegistry) -> None:
        self.db = db
        self.kinds = kinds
        limits = db.limits
        self.hub = WatchHub(start_rv=db.revision, window=limits.history_events,
                            watcher_queue=limits.watcher_queue_events, history_bytes=limits.history_bytes,
                            watcher_queue_bytes=limits.watcher_queue_bytes)
        self._workers = Workers()
        self._event_ttl = EventTTL(self)
        self.admission = Admission(db, kinds)
        self.services = ServiceAllocator(db, service_cidr())

    # ------------------------------------------------------------ reads

    def _row(self, kind: Kind, namespace: str, name: str) -> Row:
        row = self.db.get(kind.key, self._ns(kind, namespace), name)
        if row is None:
            raise NotFound(f'{kind.qualified} "{name}" not found', kind=kind.plural, group=kind.group, name=name)
        return row

    def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        return self._row(kind, namespace, name).object()

    def try_get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        row = self.db.get(kind.key, self._ns(kind, namespace), name)
        return row.object() if row else None

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: m.LabelSelector | None = None,
        field_selector: m.FieldSelector | None = None,
        limit: int = 0,
        continue_token: str = "",
    ) -> ListResult:
        start_after = _decode_continue(continue_token) if continue_token else None
        items: list[Obj] = []
        remaining = 0
        for row_ns, name, row, obj in self._matching(kind, namespace, label_selector, field_selector):
            if start_after is not None and (row_ns, name) <= start_after:
                continue
            if limit and len(items) >= limit:
                remaining += 1
                continue
            items.append(obj if obj is not None else row.object())
        token = ""
        if remaining and items:
            last = items[-1]["metadata"]
            token = _encode_continue(last.get("namespace", ""), last["name"])
        return ListResult(items, str(self.db.revision), token, remaining if token else None)

    def _matching(self, kind: Kind, namespace: str | None, label_selector: m.LabelSelector | None,
                  field_selector: m.FieldSelector | None) -> Iterator[tuple[str, str, Row, Obj | None]]:
        """(namespace, name, row, the object when a selector had to decode it) of each stored object selected."""
        ns = self._ns(kind, namespace) if namespace else None
        pinned = field_selector.value_of("metadata.name") if field_selector else None
        for row_ns, name, row in self.db.rows(kind.key, ns):
            if pinned is not None and name != pinned:
                continue
            if label_selector and not label_selector.matches(row.labels):
                continue
            obj = None
            if field_selector:
                if field_selector.metadata_only():
                    if not field_selector.matches({"metadata": {"name": name, "namespace": row_ns}}):
                        continue
                else:
                    obj = row.object()
                    if not field_selector.matches(obj):
                        continue
            yield row_ns, name, row, obj

    def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: m.LabelSelector | None = None,
        field_selector: m.FieldSelector | None = None,
    ) -> tuple[Watcher, builtins.list[Row]]:
        """A watcher plus the stored objects to send first as ADDED (when no resourceVersion is given, or "0"):
        rows, so that a watch's initial state is sent as stored, never decoded and encoded again."""
        ns = self._ns(kind, namespace) if namespace else None

        by_fields = field_selector is not None and not field_selector.metadata_only()

        def matches(ns_: str, name: str, labels: dict[str, str] | None, ev: Event,
                    fields: dict[str, str] | None) -> bool:
            if labels is None:
                return False
            if ns is not None and ns_ != ns:
                return False
            if field_selector:
                values = {"metadata.name": name, "metadata.namespace": ns_}
                if by_fields:
                    # The kind's selectable fields as they were after and before the change (a Pod bound
                    # to a node is ADDED to that node's watch); read from the object when not recorded.
                    values.update(fields if fields is not None else
                                  m.field_values(ev.object(), kind.field_selectors))
                if not field_selector.matches_values(values):
                    return False
            return not label_selector or label_selector.matches(labels)

        def filter_(ev: Event) -> str | None:
            now_ = matches(ev.namespace, ev.name, ev.labels, ev, ev.fields) if ev.type != "DELETED" else False
            before = matches(ev.namespace, ev.name, ev.prev_labels, ev, ev.prev_fields)
            if ev.type == "DELETED":
                return "DELETED" if before else None
            if now_ and before:
                return "MODIFIED"
            if now_:
                return "ADDED"
            return "DELETED" if before else None

        scope = (ns, field_selector.value_of("metadata.name") if field_selector else None)
        if resource_version in (None, "", "0"):
            initial = [row for _, _, row, _ in self._matching(kind, namespace, label_selector, field_selector)]
            return self.hub.subscribe(kind.key, None, filter_, scope), initial
        return self.hub.subscribe(kind.key, parse_resource_version(resource_version), filter_, scope), []

    # ------------------------------------------------------------ writes

    def create(self, kind: Kind, body: Any, *, namespace: str | None = None,
               opts: WriteOptions | None = None) -> Obj:
        opts = opts or WriteOptions()
        obj = self._decode(kind, body, namespace)
        md = obj["metadata"]
        for key in _SERVER_FIELDS:
            md.pop(key, None)
        generated = not md.get("name") and isinstance(md.get("generateName"), str) and bool(md["generateName"])
        if generated:
            md["name"] = m.generate_name(md["generateName"])
        if kind.status_subresource and kind is not NAMESPACE:
            obj.pop("status", None)
        if kind is NAMESPACE:
            md.setdefault("labels", {})["kubernetes.io/metadata.name"] = md.get("name", "")
            obj["spec"] = {"finalizers": [NAMESPACE_FINALIZER]}
            obj["status"] = {"phase": "Active"}
        self._go_decode(kind, obj)
        self._admit(kind, obj, None, opts)
        strategy = strategy_of(kind)
        strategy.default(obj)
        strategy.prepare_create(obj)
        self._invalid(kind, obj, strategy.validate(obj))
        if kind is SERVICE:
            self.services.allocate(obj)
        name = md["name"]
        ns = md.get("namespace", "")
        if kind.namespaced:
            self._check_namespace_open(ns)
        self.admission.admit(kind, obj, None)  # defaults, pod templates, LimitRanges, quotas
        # As kube-apiserver does, a generated name that collides is drawn again (a few times) before 409.
        for _ in range(8 if generated else 0):
            if self.db.get(kind.key, ns, name) is None:
                break
            name = md["name"] = m.generate_name(md["generateName"])
        if self.db.get(kind.key, ns, name) is not None:
            raise AlreadyExists(f'{kind.qualified} "{name}" already exists', kind=kind.plural,
                                group=kind.group, name=name)
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = m.now()
        if _has_generation(kind):
            md["generation"] = 1
        if opts.dry_run:
            return obj
        return self._commit(kind, obj, None)

    def update(self, kind: Kind, body: Any, *, namespace: str | None = None, name: str | None = None,
               subresource: str | None = None, opts: WriteOptions | None = None,
               require_rv: bool = True) -> Obj:
        """PUT semantics. ``subresource`` is None (main resource) or "status"."""
        opts = opts or WriteOptions()
        new = self._decode(kind, body, namespace)
        name = name or new["metadata"].get("name")
        if not name:
            raise BadRequest("name is required for an update")
        if new["metadata"].get("name", name) != name:
            raise BadRequest(f"the name of the object ({new['metadata'].get('name')}) does not match the name "
                             f"on the URL ({name})")
        row = self._row(kind, new["metadata"].get("namespace", ""), name)
        current = row.object()
        rv = new["metadata"].get("resourceVersion")
        if rv:
            parse_resource_version(rv)
        uid = new["metadata"].get("uid")
        if uid and uid != current["metadata"].get("uid"):
            raise Conflict(f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                           f"{current['metadata'].get('uid')}", kind=kind.plural, group=kind.group, name=name)
        # Custom resources need a resourceVersion on update; built-in kinds may be updated unconditionally.
        if not rv and require_rv and kind is not NAMESPACE and kind not in BUILTIN:
            raise Invalid.of(kind=kind.kind, group=kind.group, name=name, causes=[
                Cause("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")])
        if rv and str(rv) != str(row.rv):
            raise Conflict(
                f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                kind=kind.plural, group=kind.group, name=name)
        if subresource is None:
            self._go_decode(kind, new)
        elif kind in BUILTIN and (message := gotypes.message_of(kind.api_version, kind.kind)):
            gotypes.drop_zeros(new, message)
        if subresource == "status":
            merged = copy.deepcopy(current)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
        else:
            merged = new
            md = merged["metadata"]
            for key in ("selfLink", "managedFields"):
                md.pop(key, None)
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                        "generation"):
                if key in current["metadata"]:
                    md[key] = current["metadata"][key]
                else:
                    md.pop(key, None)
            if kind.status_subresource:
                if "status" in current:
                    merged["status"] = current["status"]
                else:
                    merged.pop("status", None)
            if current["metadata"].get("deletionTimestamp"):
                added = set(md.get("finalizers") or []) - set(current["metadata"].get("finalizers") or [])
                if added:
                    raise Invalid.of(kind=kind.kind, group=kind.group, name=name, causes=[Cause(
                        "metadata.finalizers", "Forbidden: no new finalizers can be added if the object is being "
                        "deleted", "FieldValueForbidden")])
        if subresource == "status" and "status" in (kind.schema.get("properties") or {}):
            # Only status changed, and the rest was valid when stored: check what changed.
            self._admit(kind, merged, current, opts, only={"status"})
            strategy = strategy_of(kind)
            strategy.prepare_status_update(merged, current)
            self._invalid(kind, merged, strategy.validate_status_update(merged, current))
        else:
            self._admit(kind, merged, current, opts)
        if subresource is None:
            strategy = strategy_of(kind)
            strategy.default(merged)
            strategy.prepare_update(merged, current)
            self._invalid(kind, merged, strategy.validate_update(merged, current))
            if kind is SERVICE:
                self.services.allocate(merged, current)
            self.admission.admit(kind, merged, current)
        # Compared after pruning and defaulting: re-sending what the server defaulted is no change.
        if subresource is None and _has_generation(kind) and _body(merged) != _body(current):
            merged["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if merged == current or opts.dry_run:
            return merged
        # A Pod still in its grace period stays until the node deletes it with gracePeriodSeconds=0.
        if merged["metadata"].get("deletionTimestamp") and not _finalizers(kind, merged) \
                and not merged["metadata"].get("deletionGracePeriodSeconds"):
            return self._remove(kind, merged, current)
        return self._commit(kind, merged, current)

    def patch(self, kind: Kind, namespace: str | None, name: str, content_type: str, patch: Any, *,
              subresource: str | None = None, opts: WriteOptions | None = None) -> Obj:
        # NetworkPolicy's and resource.k8s.io's lists have no merge keys: replaced (as kube's are)
        builtin = kind.group in ("", "resource.k8s.io") or kind == NETWORK_POLICY
        check_patch_type(content_type, builtin=builtin)  # 415 comes before 404, as in kube-apiserver
        current = self.get(kind, namespace or "", name)
        patched = _apply_patch(kind, name, current, content_type, patch, builtin=builtin)
        if not isinstance(patched.get("metadata"), dict):
            raise BadRequest("metadata must be an object")
        patched["metadata"].setdefault("resourceVersion", current["metadata"]["resourceVersion"])
        try:
            return self.update(kind, patched, namespace=namespace, name=name, subresource=subresource, opts=opts)
        except Conflict as e:
            # On a worker thread another write may land between the read above and the update's: a patch
            # that names no resourceVersion is then done again on the new object, as kube-apiserver does.
            row = self.db.get(kind.key, self._ns(kind, namespace), name)
            if (isinstance(e, Raced) or worker_loop() is None or names_version(patch)
                    or row is None or str(row.rv) == current["metadata"]["resourceVersion"]):
                raise
            raise Raced(e.message, kind=e.kind, group=e.group, name=e.name) from None

    def delete(self, kind: Kind, namespace: str | None, name: str, *, propagation: str | None = None,
               preconditions: dict[str, Any] | None = None, grace_period_seconds: int | None = None,
               opts: WriteOptions | None = None) -> Obj:
        """DELETE semantics: the object as removed, or as it stays (finalizers, a Pod's grace period)."""
        opts = opts or WriteOptions()
        row = self._row(kind, namespace or "", name)
        current = row.object()
        md = current["metadata"]
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != md.get("uid"):
            raise Conflict(f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                           f"{md.get('uid')}", kind=kind.plural, group=kind.group, name=name)
        if pre.get("resourceVersion"):
            parse_resource_version(pre["resourceVersion"])
        if pre.get("resourceVersion") and str(pre["resourceVersion"]) != str(row.rv):
            raise Conflict(f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                           f"ResourceVersion in object meta: {row.rv}", kind=kind.plural, group=kind.group,
                           name=name)
        if grace_period_seconds is not None and grace_period_seconds < 0:
            grace_period_seconds = 1  # as kube-apiserver: a negative period is one second
        obj = copy.deepcopy(current)
        graceful = self._graceful(kind, obj, grace_period_seconds)
        if graceful is None:
            return current  # a graceful deletion is already under way and this one would not shorten it
        if opts.dry_run:
            return obj if graceful else current
        finalizers: list[str] = obj["metadata"].setdefault("finalizers", [])
        if propagation == "Foreground" and FOREGROUND not in finalizers:
            finalizers.append(FOREGROUND)
        elif propagation == "Orphan" and ORPHAN not in finalizers:
            finalizers.append(ORPHAN)
        if not finalizers:
            obj["metadata"].pop("finalizers")
        if kind is NAMESPACE:
            obj.setdefault("status", {})["phase"] = "Terminating"
        if not _finalizers(kind, obj) and not (graceful and obj["metadata"]["deletionGracePeriodSeconds"]):
            return self._remove(kind, obj, current)
        if not obj["metadata"].get("deletionTimestamp"):
            obj["metadata"]["deletionTimestamp"] = m.now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
        if obj == current:
            return current
        return self._commit(kind, obj, current)

    def _graceful(self, kind: Kind, obj: Obj, requested: int | None) -> bool | None:
        """Set a graceful deletion's timestamp and period on ``obj`` (kube's ``rest.BeforeDelete``).

        True when it did, False when the kind (or the object's state) wants no grace, None when a
        graceful deletion is pending that this request does not shorten.
        """
        grace = strategy_of(kind).grace_period
        md = obj["metadata"]
        if grace is None:
            return False
        if md.get("deletionTimestamp"):
            current = md.get("deletionGracePeriodSeconds")
            if not current:
                return False
            if requested is None or requested >= current:
                return None
            started = m.parse_time(md["deletionTimestamp"]) - dt.timedelta(seconds=current)
            md["deletionTimestamp"] = _timestamp(started + dt.timedelta(seconds=requested))
            md["deletionGracePeriodSeconds"] = requested
            return True
        period = grace(obj, requested)
        md["deletionTimestamp"] = _timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=period))
        md["deletionGracePeriodSeconds"] = period
        if md.get("generation"):
            md["generation"] = int(md["generation"]) + 1
        return True

    # ------------------------------------------------------------ subresources that create

    def create_subresource(self, kind: Kind, namespace: str, name: str, subresource: str, body: Any, *,
                           opts: WriteOptions | None = None) -> Obj:
        """POST to ``pods/binding`` or ``pods/eviction``: the Status kube-apiserver answers (201)."""
        opts = opts or WriteOptions()
        if kind is not POD or subresource not in ("binding", "eviction"):
            raise NotFound(f"{kind.qualified}/{subresource} cannot be created")
        current = self.get(kind, namespace, name)
        if subresource == "binding":
            node = pod.check_binding(name, body)
            bound = pod.bind(current, node, (body.get("metadata") or {}).get("annotations"))
            if not opts.dry_run:
                self._commit(kind, bound, current)
        else:
            options = pod.check_eviction(name, namespace, body)
            pre = options.get("preconditions")
            self.delete(kind, namespace, name, preconditions=pre if isinstance(pre, dict) else None,
                        grace_period_seconds=_optional_int(options.get("gracePeriodSeconds")),
                        opts=WriteOptions(dry_run=opts.dry_run or bool(options.get("dryRun"))))
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    # ------------------------------------------------------------ scale subresource

    def get_scale(self, kind: Kind, namespace: str, name: str) -> Obj:
        if kind.scale is None:
            raise NotFound(f"{kind.qualified} has no scale subresource")
        return _scale_of(kind, self.get(kind, namespace, name))

    def update_scale(self, kind: Kind, namespace: str, name: str, scale: Any, *,
                     opts: WriteOptions | None = None) -> Obj:
        if kind.scale is None:
            raise NotFound(f"{kind.qualified} has no scale subresource")
        if not isinstance(scale, dict):
            raise BadRequest("the body must be an autoscaling/v1 Scale")
        obj = self.get(kind, namespace, name)
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        if rv:
            obj["metadata"]["resourceVersion"] = rv
        replicas = (scale.get("spec") or {}).get("replicas", 0)
        _set_path(obj, kind.scale.spec_replicas_path, replicas)
        return _scale_of(kind, self.update(kind, obj, namespace=namespace, name=name, opts=opts))

    def patch_scale(self, kind: Kind, namespace: str, name: str, content_type: str, patch: Any, *,
                    opts: WriteOptions | None = None) -> Obj:
        check_patch_type(content_type, builtin=True)
        current = self.get_scale(kind, namespace, name)
        patched = _apply_patch(kind, name, current, content_type, patch, builtin=True)
        return self.update_scale(kind, namespace, name, patched, opts=opts)

    # ------------------------------------------------------------ internals

    def _ns(self, kind: Kind, namespace: str | None) -> str:
        return (namespace or "") if kind.namespaced else ""

    def _decode(self, kind: Kind, body: Any, namespace: str | None) -> Obj:
        if not isinstance(body, dict):
            raise BadRequest(f"the body must be a {kind.kind} object")
        obj = copy.deepcopy(body)
        api_version, kind_name = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != kind.api_version:
            raise BadRequest(f"the API version in the data ({api_version}) does not match the expected API "
                             f"version ({kind.api_version})")
        if kind_name and kind_name != kind.kind:
            raise BadRequest(f"the kind in the data ({kind_name}) does not match the expected kind ({kind.kind})")
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        md = obj.get("metadata")
        if md is None:
            md = obj["metadata"] = {}
        if not isinstance(md, dict):
            raise BadRequest("metadata must be an object")
        if md.get("namespace") is not None and not isinstance(md["namespace"], str):
            raise BadRequest("metadata.namespace must be a string")
        if kind.namespaced:
            ns = md.get("namespace") or namespace or "default"
            if namespace and ns != namespace:
                raise BadRequest("the namespace of the provided object does not match the namespace sent on the "
                                 "request")
            md["namespace"] = ns
        else:
            md.pop("namespace", None)
        return obj

    def _admit(self, kind: Kind, obj: Obj, old: Obj | None, opts: WriteOptions,
               only: set[str] | None = None) -> None:
        """Prune, default and validate; ``only`` limits the work to those top-level fields."""
        if only is not None:
            props = kind.schema.get("properties") or {}
            part_schema = {"type": "object", "properties": {k: props[k] for k in only}}
            part = {k: obj[k] for k in only if k in obj}
            old_part = {k: old[k] for k in only if k in old} if old is not None else None
            causes = self._admit_part(kind, obj, part, part_schema, old_part, opts)
            obj.update(part)
        else:
            name = obj["metadata"].get("name")
            label = kind is NAMESPACE or (kind is SERVICE and "." not in str(name))  # DNS-1123 labels
            causes = m.validate_metadata(obj["metadata"], label_name=label)
            causes += self._admit_part(kind, obj, obj, kind.schema, old, opts)
        if causes:
            raise Invalid.of(kind=kind.kind, group=kind.group, name=obj["metadata"].get("name", ""), causes=causes)

    def _admit_part(self, kind: Kind, obj: Obj, part: Obj, part_schema: dict[str, Any], old: Obj | None,
                    opts: WriteOptions) -> builtins.list[Cause]:
        """Prune and default ``part`` in place; its validation causes."""
        dropped = schema.prune(part, part_schema)
        if part is obj:
            dropped = m.prune_metadata(obj["metadata"]) + dropped
        if dropped and opts.field_validation == "Strict":
            listed = ", ".join(f'unknown field "{p}"' for p in dropped)
            raise BadRequest(f"{kind.kind} in version \"{kind.version}\" cannot be handled as a {kind.kind}: "
                             f"strict decoding error: {listed}", kind=kind.kind, group=kind.group,
                             name=obj["metadata"].get("name", ""))
        if dropped and opts.field_validation != "Ignore":
            opts.warnings.extend(f'unknown field "{p}"' for p in dropped)
        schema.default(part, part_schema)
        if kind in BUILTIN:
            # Built-in kinds are Go types: a wrong type is a decoding error (400); their rules are Go code
            # (``strategy``), not their OpenAPI schema's.
            wrong = schema.validate(part, part_schema, types_only=True)
            if wrong:
                raise BadRequest(f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                                 f"json: {_decoding_error(wrong[0])}", kind=kind.kind, group=kind.group,
                                 name=obj["metadata"].get("name", ""))
            return []
        return schema.validate(part, part_schema, old) if old is not None else schema.validate(part, part_schema)

    @staticmethod
    def _go_decode(kind: Kind, obj: Obj) -> None:
        """What decoding into kube's Go types does to a built-in object: zero values of plain fields
        dropped (``gotypes``), then the kind's own decoding (a Secret's ``stringData``)."""
        if kind in BUILTIN and (message := gotypes.message_of(kind.api_version, kind.kind)):
            gotypes.drop_zeros(obj, message)
        strategy_of(kind).decode(obj)

    @staticmethod
    def _invalid(kind: Kind, obj: Obj, causes: builtins.list[Cause]) -> None:
        if causes:
            raise Invalid.of(kind=kind.kind, group=kind.group, name=obj["metadata"].get("name", ""), causes=causes)

    def _check_namespace_open(self, namespace: str) -> None:
        row = self.db.get(NAMESPACE.key, "", namespace)
        if row is None:
            raise NotFound(f'namespaces "{namespace}" not found', kind="namespaces", name=namespace)
        if json.loads(row.data).get("metadata", {}).get("deletionTimestamp"):
            raise Forbidden(f"unable to create new content in namespace {namespace} because it is being "
                            "terminated", kind="namespaces", name=namespace)

    def _commit(self, kind: Kind, obj: Obj, prev: Obj | None, encoded: tuple[str, str] | None = None) -> Obj:
        loop = worker_loop()
        if loop is not None:
            # Encoding a large object is work too: done here, on the worker, with a placeholder for the
            # resourceVersion that only the commit on the loop knows.
            placeholder = uuid.uuid4().hex
            obj["metadata"]["resourceVersion"] = placeholder
            encoded = (placeholder, json.dumps(obj, separators=(",", ":")))
            return on_loop(loop, self._commit, kind, obj, prev, encoded)
        md = obj["metadata"]
        self._unchanged_since(kind, md, prev)
        if encoded is not None:  # admitted on a worker: other writes may have used the quota meanwhile
            self.admission.recheck(kind, obj, prev)
        row = self.db.put(kind.key, md.get("namespace", ""), md["name"], obj, encoded=encoded)
        prev_labels = (prev["metadata"].get("labels") or {}) if prev else None
        self.hub.publish(Event("MODIFIED" if prev else "ADDED", kind.key, md.get("namespace", ""), md["name"],
                               row.rv, row.data, row.labels, prev_labels, *self._fields(kind, obj, prev)))
        return obj

    def _remove(self, kind: Kind, obj: Obj, prev: Obj) -> Obj:
        loop = worker_loop()
        if loop is not None:
            return on_loop(loop, self._remove, kind, obj, prev)
        md = obj["metadata"]
        self._unchanged_since(kind, md, prev)
        rev = self.db.delete(kind.key, md.get("namespace", ""), md["name"])
        md["resourceVersion"] = str(rev)
        labels = md.get("labels") or {}
        self.hub.publish(Event("DELETED", kind.key, md.get("namespace", ""), md["name"], rev,
                               json.dumps(obj, separators=(",", ":")), labels,
                               prev["metadata"].get("labels") or {}, *self._fields(kind, obj, prev)))
        return obj

    @staticmethod
    def _fields(kind: Kind, obj: Obj, prev: Obj | None) -> tuple[dict[str, str] | None, dict[str, str] | None]:
        """The selectable fields of the object after and before a change, for field-selected watches."""
        if not kind.field_selectors:
            return None, None
        return (m.field_values(obj, kind.field_selectors),
                m.field_values(prev, kind.field_selectors) if prev is not None else None)

    def _unchanged_since(self, kind: Kind, md: Obj, prev: Obj | None) -> None:
        """The stored object is still ``prev`` (absent for a create). Always so on the event loop; an
        offloaded write checks it here, where nothing can commit in between."""
        row = self.db.get(kind.key, md.get("namespace", ""), md["name"])
        expected = None if prev is None else str(prev["metadata"].get("resourceVersion"))
        if (None if row is None else str(row.rv)) != expected:
            raise Raced(f'Operation cannot be fulfilled on {kind.qualified} "{md["name"]}": the object has been '
                         "modified; please apply your changes to the latest version and try again",
                         kind=kind.plural, group=kind.group, name=md["name"])

    def ensure_namespace(self, name: str) -> None:
        if self.db.get(NAMESPACE.key, "", name) is None:
            self.create(NAMESPACE, {"metadata": {"name": name}})

    # ------------------------------------------------------------ off the event loop

    async def offload(self, write: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``write`` (``create``, ``update``, ``patch``...) on a worker thread, for large bodies.

        Decoding, pruning, defaulting and validating a large object takes the CPU for hundreds of
        milliseconds; here the event loop keeps serving meanwhile. The commit itself (the row, the
        revision, the watch event) still runs on the loop, in order with every other write, after
        checking that the object is still the one the write started from; when another write got
        there first, the whole write is done again on the new object (as kube-apiserver's update
        retries), so the answer is the same as if it had run on the loop.
        """
        return await self._workers.run(write, *args, **kwargs)

    def is_large(self, kind: Kind, namespace: str, name: str) -> bool:
        """Whether the stored object is over ``limits.offload_bytes``: a write of it is worth ``offload``."""
        row = self.db.get(kind.key, self._ns(kind, namespace), name)
        return row is not None and len(row.data) > self.db.limits.offload_bytes

    def get_json(self, kind: Kind, namespace: str, name: str) -> str:
        """The stored JSON of an object, as it is: a GET sends it without decoding and encoding it again."""
        return self._row(kind, namespace, name).data

    # ------------------------------------------------------------ Event TTL

    def expire_events(self, now: float | None = None) -> int:
        """Delete the Events last written ``limits.event_ttl_seconds`` ago or more (``eventttl``)."""
        return self._event_ttl.expire(now)


def _finalizers(kind: Kind, obj: Obj) -> list[str]:
    fin = list(obj["metadata"].get("finalizers") or [])
    if kind is NAMESPACE:
        fin += (obj.get("spec") or {}).get("finalizers") or []
    return fin


def _body(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _get_path(obj: Obj, path: str) -> Any:
    cur: Any = obj
    for part in path.strip(".").split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _set_path(obj: Obj, path: str, value: Any) -> None:
    parts = path.strip(".").split(".")
    cur = obj
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def _scale_of(kind: Kind, obj: Obj) -> Obj:
    assert kind.scale is not None
    md = obj["metadata"]
    status: Obj = {"replicas": _get_path(obj, kind.scale.status_replicas_path) or 0}
    if kind.scale.label_selector_path:
        selector = _get_path(obj, kind.scale.label_selector_path)
        if selector:
            status["selector"] = selector
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if k in md},
        "spec": {"replicas": _get_path(obj, kind.scale.spec_replicas_path) or 0},
        "status": status,
    }


def _has_generation(kind: Kind) -> bool:
    """Custom resources, Namespaces, Events, Pods, EndpointSlices, NetworkPolicies, DeviceClasses and
    ResourceSlices count generations; the other built-in kinds have none, as in kube-apiserver."""
    return kind not in BUILTIN or kind is POD or kind.kind in ("EndpointSlice", "NetworkPolicy", "DeviceClass",
                                                               "ResourceSlice")


def _decoding_error(cause: Cause) -> str:
    """A schema type error as Go's JSON decoder words it: ``cannot unmarshal string into Go struct field ...``."""
    found = cause.message.removeprefix("Invalid value: ").split(":", 1)[0].strip('"')
    found = {"integer": "number", "boolean": "bool"}.get(found, found)
    wanted = cause.message.rsplit(" must be of type ", 1)[-1].split(":")[0]
    field_ = re.sub(r"\[\d+\]", "", cause.field)
    return f"cannot unmarshal {found} into Go struct field {field_} of type {wanted}"


def _timestamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"gracePeriodSeconds must be an integer, not {value!r}")
    return value


def _encode_continue(namespace: str, name: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([namespace, name]).encode()).decode()


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        ns, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(ns), str(name)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"invalid continue token {token!r}") from e


def _apply_patch(kind: Kind, name: str, current: Obj, content_type: str, patch: Any, *, builtin: bool) -> Obj:
    try:
        return apply_patch(current, content_type, patch, builtin=builtin)
    except Invalid as e:  # name the object, as kubectl's message does: `The Kind "name" is invalid: ...`
        e.kind, e.group, e.name = kind.kind, kind.group, name
        raise
