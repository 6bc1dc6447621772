"""The garbage collector never takes an owner it has not indexed yet for a gone one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from turbok.api.kinds import CONFIG_MAP, Kind, default_registry
from turbok.controllers import labels as lb
from turbok.controllers.garbage import GarbageCollector
from turbok.embedded.client import EmbeddedClient
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

from .conftest import sandbox


class RacingClient(EmbeddedClient):
    """Creates an owner and its dependent right after the owner's kind was listed, as a user could while the
    collector starts: the owner misses the collector's listing, the dependent does not."""

    def __init__(self, registry: ObjectRegistry) -> None:
        super().__init__(registry)
        self.raced = False

    async def list(self, kind: Kind, namespace: str | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        items = await super().list(kind, namespace, **kwargs)
        if kind is CONFIG_MAP and not self.raced:
            self.raced = True
            owner = self.registry.create(CONFIG_MAP, {"apiVersion": "v1", "kind": "ConfigMap",
                                                      "metadata": {"name": "owner", "namespace": "default"}},
                                         namespace="default")
            dep = sandbox("dep")
            dep["metadata"]["ownerReferences"] = [lb.owner_ref(owner)]
            self.registry.create(self.kinds.resolve("sandbox"), dep, namespace="default")
        return items


async def test_an_owner_created_while_the_collector_starts_keeps_its_dependents(tmp_path: Path) -> None:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    client = RacingClient(registry)
    kinds = list(registry.kinds)
    assert kinds.index(CONFIG_MAP) < kinds.index(registry.kinds.resolve("sandbox")), "the race needs this order"
    collector = GarbageCollector(client)
    await collector.start()
    try:
        assert client.raced
        await asyncio.sleep(0.2)
        assert registry.try_get(registry.kinds.resolve("sandbox"), "default", "dep") is not None
        registry.delete(CONFIG_MAP, "default", "owner")
        deadline = asyncio.get_running_loop().time() + 5
        while registry.try_get(registry.kinds.resolve("sandbox"), "default", "dep") is not None:
            assert asyncio.get_running_loop().time() < deadline, "the dependent is collected once its owner goes"
            await asyncio.sleep(0.01)
    finally:
        await collector.stop()
        registry.db.close()
