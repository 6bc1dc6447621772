"""The router's ``SandboxResolver`` over the embedded store: name -> runtime id of a Ready sandbox.

The runtime id is ``sandbox_id(<Sandbox uid>)``: the Sandbox controller puts
that uid on the Sandbox's Pod as ``turbok.dev/sandbox-identity`` and the node
keys the Pod's runtime state by it, so the id outlives the Pod (suspend and
resume, a warm pool's Sandbox adopted by a claim). Readiness is the Sandbox's
Ready condition, which the controller derives from the Pod's. One indexed read
per request (the store's in-memory index), no scans, no read of the Pod.
"""

from __future__ import annotations

from turbok.api import meta as m
from turbok.api.kinds import Kind
from turbok.runtime.ids import sandbox_id
from turbok.sandboxd.errors import SandboxNotFound, SandboxNotReady
from turbok.store.registry import ObjectRegistry

__all__ = ["StoreResolver"]


class StoreResolver:
    def __init__(self, registry: ObjectRegistry, sandbox_kind: Kind) -> None:
        self.registry = registry
        self.kind = sandbox_kind

    async def resolve(self, namespace: str, name: str) -> str:
        obj = self.registry.try_get(self.kind, namespace, name)
        if obj is None:
            raise SandboxNotFound(f"sandbox {namespace}/{name} not found")
        ready = m.condition(obj, "Ready")
        if not ready or ready.get("status") != "True":
            why = f"{ready.get('reason')}: {ready.get('message')}" if ready else "it has not started yet"
            raise SandboxNotReady(f"sandbox {namespace}/{name} is not ready ({why}); wait for its Ready condition")
        return sandbox_id(obj["metadata"]["uid"])
