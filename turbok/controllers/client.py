"""What reconcilers may ask of the cluster: typed object access on either engine.

The embedded engine implements it over the in-process registry
(``turbok.embedded.client``); the Kubernetes engine over the REST API. All
methods raise ``turbok.api.status`` errors (``NotFound``, ``Conflict``...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from turbok.api.kinds import Kind, KindRegistry
from turbok.api.meta import LabelSelector

__all__ = ["Client", "Obj", "ObjectEvent"]

Obj = dict[str, Any]


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
                   selector: LabelSelector | None = None) -> list[Obj]: ...

    async def create(self, kind: Kind, obj: Obj) -> Obj: ...

    async def update(self, kind: Kind, obj: Obj) -> Obj: ...

    async def update_status(self, kind: Kind, obj: Obj) -> Obj: ...

    async def delete(self, kind: Kind, namespace: str, name: str, *, propagation: str | None = None,
                     uid: str | None = None) -> None: ...

    def subscribe(self, callback: Callable[[ObjectEvent], None]) -> None:
        """Call ``callback`` for every change to any object, in commit order."""
