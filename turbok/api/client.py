"""What controllers and the node may ask of the cluster: typed object access on either engine.

One protocol for both (a kubelet and a controller ask the same API): the
embedded engine implements it over the in-process registry
(``turbok.embedded.client``); the Kubernetes engine over the REST API
(``turbok.kube``). All methods raise ``turbok.api.status`` errors
(``NotFound``, ``Conflict``...).

- ``list(kind, ns, selector=, field_selector=)``: label and field selectors as
  ``?labelSelector=``/``?fieldSelector=`` (e.g. ``FieldSelector.parse(
  "spec.nodeName=n1", extra=POD.field_selectors)``).
- ``patch(kind, ns, name, body, patch_type=, subresource=)``: ``merge`` (RFC
  7386), ``strategic`` (built-in kinds only) or ``json`` (RFC 6902, ``body``
  a list of operations); ``subresource="status"`` patches status only.
- ``create_subresource(kind, ns, name, subresource, body)``: ``pods/binding``
  (a v1 Binding; 409 when the Pod is already bound) and ``pods/eviction`` (a
  policy/v1 Eviction); returns the Status the API answers.
- ``delete(..., grace_period_seconds=, preconditions_rv=)``: a Pod bound to a
  node is deleted gracefully (``deletionTimestamp`` + grace period) unless
  ``grace_period_seconds=0``; a NotFound is not an error (the object is gone).
- ``update_status``: the status subresource of any kind that has one (Pods,
  Nodes, PVCs, PVs, Services, Namespaces, custom resources).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from turbok.api.kinds import Kind, KindRegistry
from turbok.api.meta import FieldSelector, LabelSelector

__all__ = ["Client", "Obj", "ObjectEvent", "PatchType"]

Obj = dict[str, Any]

#: How ``Client.patch`` applies its body: JSON merge patch, strategic merge patch or JSON patch.
PatchType = Literal["merge", "strategic", "json"]


class ObjectEvent(Protocol):
    type: str  # ADDED, MODIFIED, DELETED
    resource: str  # Kind.key
    namespace: str
    name: str

    def object(self) -> Obj: ...


class Client(Protocol):
    kinds: KindRegistry

    async def get(self, kind: Kind, namespace: str, name: str) -> Obj: ...

    async def try_get(self, kind: Kind, namespace: str, name: str) -> Obj | None: ...

    async def list(self, kind: Kind, namespace: str | None = None, *,
                   selector: LabelSelector | None = None,
                   field_selector: FieldSelector | None = None) -> list[Obj]: ...

    async def create(self, kind: Kind, obj: Obj) -> Obj: ...

    async def update(self, kind: Kind, obj: Obj) -> Obj: ...

    async def update_status(self, kind: Kind, obj: Obj) -> Obj: ...

    async def patch(self, kind: Kind, namespace: str, name: str, body: Any, *, patch_type: PatchType = "merge",
                    subresource: str | None = None) -> Obj: ...

    async def create_subresource(self, kind: Kind, namespace: str, name: str, subresource: str,
                                 body: Obj) -> Obj: ...

    async def delete(self, kind: Kind, namespace: str, name: str, *, propagation: str | None = None,
                     uid: str | None = None, grace_period_seconds: int | None = None,
                     preconditions_rv: str | None = None) -> None: ...

    def subscribe(self, callback: Callable[[ObjectEvent], None]) -> None:
        """Call ``callback`` for every change to any object, in commit order."""
