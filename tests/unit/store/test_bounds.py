"""The store's bounds: object size, watch history and watcher queues in bytes, disk space given back,
Event TTL by the server's clock, and writes done off the event loop that still commit in order."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from turbok.api import schema
from turbok.api.kinds import default_registry
from turbok.api.status import Gone, RequestEntityTooLarge
from turbok.store.limits import MiB, StoreLimits
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

from .conftest import KINDS, POOL, SANDBOX, pool, sandbox, snapshot

EVENT = KINDS.by_kind("v1", "Event")
MERGE = "application/merge-patch+json"


def with_blob(obj: dict[str, Any], blob: str) -> dict[str, Any]:
    """``obj`` (a Sandbox) carrying ``blob`` as an env value: big, and not bounded by any schema."""
    obj["spec"]["podTemplate"]["spec"]["containers"][0]["env"] = [{"name": "BLOB", "value": blob}]
    return obj


def blob_patch(blob: str) -> dict[str, Any]:
    return {"spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "python:3.11-slim",
                                                              "env": [{"name": "BLOB", "value": blob}]}]}}}}


def open_registry(path: Path, **limits: Any) -> ObjectRegistry:
    reg = ObjectRegistry(SqliteStore(path, limits=StoreLimits(**limits), checkpoint_every=0.05), KINDS)
    reg.ensure_namespace("default")
    return reg


def test_an_object_over_the_limit_is_refused_and_nothing_changes(registry: ObjectRegistry) -> None:
    registry.create(POOL, pool("p"), namespace="default")
    before = snapshot(registry)
    big = sandbox("big", annotations={"a": "x" * 200_000})
    big["spec"]["podTemplate"]["metadata"] = {"annotations": {f"k{i}": "v" * 200_000 for i in range(8)}}
    with pytest.raises(RequestEntityTooLarge) as raised:
        registry.create(SANDBOX, big, namespace="default")
    assert "1572864" in str(raised.value)
    assert snapshot(registry) == before


async def test_the_watch_history_is_bounded_in_bytes(tmp_path: Path) -> None:
    """40 patches of a 1 MiB object keep at most the history's budget, and a watch from before it gets 410."""
    reg = open_registry(tmp_path / "store.db", history_bytes=8 * MiB)
    try:
        first = reg.create(SANDBOX, with_blob(sandbox("big"), "x" * MiB), namespace="default")
        for i in range(40):
            reg.patch(SANDBOX, "default", "big", MERGE, blob_patch(f"{i}" + "y" * MiB))
        assert reg.hub.history_bytes <= 8 * MiB
        with pytest.raises(Gone):
            reg.watch(SANDBOX, "default", resource_version=first["metadata"]["resourceVersion"])
        # A watch from inside the history still replays what it missed.
        recent = reg.db.revision - 2
        watcher, _ = reg.watch(SANDBOX, "default", resource_version=str(recent))
        types = [(await asyncio.wait_for(watcher.__anext__(), 2))[0] for _ in range(2)]
        assert types == ["MODIFIED", "MODIFIED"]
        watcher.close()
    finally:
        reg.db.close()


async def test_a_watcher_too_far_behind_in_bytes_is_ended(tmp_path: Path) -> None:
    reg = open_registry(tmp_path / "store.db", watcher_queue_bytes=4 * MiB)
    try:
        reg.create(SANDBOX, sandbox("big"), namespace="default")
        watcher, _ = reg.watch(SANDBOX, "default", resource_version=str(reg.db.revision))
        for i in range(10):  # nobody reads: 10 events of ~1 MiB, counted twice, overflow 4 MiB
            reg.patch(SANDBOX, "default", "big", MERGE, blob_patch(f"{i}" + "z" * MiB))
        assert watcher.overflowed and watcher.closed
        with pytest.raises(StopAsyncIteration):
            await watcher.__anext__()
    finally:
        reg.db.close()


def _file_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


def test_the_store_gives_space_back_after_large_objects_go(tmp_path: Path) -> None:
    """Checkpoints truncate the WAL and free pages go back: the files shrink once the objects are deleted."""
    path = tmp_path / "store.db"
    reg = open_registry(path, wal_bytes=MiB, free_bytes=MiB)
    try:
        for i in range(16):
            reg.create(SANDBOX, with_blob(sandbox(f"s{i}"), "x" * 200_000), namespace="default")
            reg.patch(SANDBOX, "default", f"s{i}", MERGE, blob_patch("y" * 400_000))
        grown = _file_bytes(path)
        assert grown > 6 * MiB
        for i in range(16):
            reg.delete(SANDBOX, "default", f"s{i}")
        deadline = time.monotonic() + 20
        while _file_bytes(path) > 3 * MiB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _file_bytes(path) <= 3 * MiB, (grown, _file_bytes(path))
    finally:
        reg.db.close()
    again = SqliteStore(path)  # what is left still opens, sound
    again.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


def test_events_expire_by_the_servers_clock_not_their_own_timestamps(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import turbok.store.eventttl as eventttl

    clock = Clock()
    monkeypatch.setattr(eventttl, "time", clock)
    reg = open_registry(tmp_path / "store.db", event_ttl_seconds=3600)
    try:
        def event(name: str, stamp: str) -> dict[str, Any]:
            return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": "default"},
                    "involvedObject": {"kind": "Sandbox", "name": "s", "namespace": "default"},
                    "reason": "R", "message": "m", "lastTimestamp": stamp}

        reg.create(EVENT, event("future", "2999-01-01T00:00:00Z"), namespace="default")
        reg.create(EVENT, event("past", "2001-01-01T00:00:00Z"), namespace="default")
        clock.now += 1800
        assert reg.expire_events() == 0  # written half an hour ago: both live
        reg.patch(EVENT, "default", "past", MERGE, {"count": 2})  # a write renews it
        clock.now += 1801
        assert reg.expire_events() == 1
        assert [o["metadata"]["name"] for o in reg.list(EVENT, "default").items] == ["past"]
        clock.now += 1800
        assert reg.expire_events() == 1
        assert reg.list(EVENT, "default").items == []
    finally:
        reg.db.close()
    monkeypatch.undo()
    # Loaded from disk, an event counts from the newest of its timestamps (never later than now).
    path = tmp_path / "store2.db"
    reg = open_registry(path)
    reg.create(EVENT, {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "old", "namespace": "default"},
                       "involvedObject": {"kind": "Sandbox", "name": "s"}}, namespace="default")
    reg.db.close()
    again = ObjectRegistry(SqliteStore(path), default_registry())
    try:
        assert again.expire_events(time.time() + 1800) == 0
        assert again.expire_events(time.time() + 3700) == 1
    finally:
        again.db.close()


async def test_an_offloaded_write_commits_on_the_loop_and_redoes_itself_after_a_race(
        registry: ObjectRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large patch validated on a worker thread while a small write commits on the loop: neither is lost."""
    registry.create(POOL, pool("p", labels={"a": "1"}), namespace="default")
    validating = threading.Event()
    proceed = threading.Event()
    real_validate = schema.validate
    calls = 0

    def slow_validate(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if threading.current_thread() is not threading.main_thread():
            calls += 1
            if calls == 1:  # only the first try waits for the loop's write
                validating.set()
                proceed.wait(5)
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(schema, "validate", slow_validate)
    commits: list[str] = []
    registry.hub.listeners.append(lambda ev: commits.append(threading.current_thread().name))
    big = {"metadata": {"annotations": {"big": "x" * 100_000}}}
    task = asyncio.ensure_future(registry.offload(registry.patch, POOL, "default", "p", MERGE, big))
    await asyncio.get_running_loop().run_in_executor(None, validating.wait, 5)
    registry.patch(POOL, "default", "p", MERGE, {"metadata": {"labels": {"b": "2"}}})  # commits first
    proceed.set()
    result = await task
    assert calls == 2  # the offloaded patch found the object changed and was done again on the new one
    stored = registry.get(POOL, "default", "p")
    assert stored["metadata"]["labels"] == {"a": "1", "b": "2"} and stored["metadata"]["annotations"] == big[
        "metadata"]["annotations"]
    assert result == stored
    assert commits == [threading.main_thread().name] * 2  # every commit (and watch event) on the loop


async def test_offloaded_writes_answer_as_on_the_loop(registry: ObjectRegistry) -> None:
    from turbok.api.status import AlreadyExists, Conflict

    created = await registry.offload(registry.create, POOL, pool("p"), namespace="default")
    assert created == registry.get(POOL, "default", "p")
    with pytest.raises(AlreadyExists):
        await registry.offload(registry.create, POOL, pool("p"), namespace="default")
    stale = copy.deepcopy(created)
    registry.patch(POOL, "default", "p", MERGE, {"spec": {"replicas": 5}})
    with pytest.raises(Conflict):
        await registry.offload(registry.update, POOL, stale, namespace="default")
    assert json.loads(registry.get_json(POOL, "default", "p"))["spec"]["replicas"] == 5


async def test_an_offloaded_patch_read_before_another_write_is_done_again(
        registry: ObjectRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other window: a write lands between the patch's read and its update's read (a plain 409 on the
    loop would be impossible there); a patch naming no resourceVersion is redone, one naming it gets 409."""
    import turbok.store.registry as registry_module
    from turbok.api.status import Conflict

    registry.create(POOL, pool("p", labels={"a": "1"}), namespace="default")
    patched_once = threading.Event()
    proceed = threading.Event()
    real_apply = registry_module._apply_patch
    tries = 0

    def slow_apply(*args: Any, **kwargs: Any) -> Any:
        nonlocal tries
        out = real_apply(*args, **kwargs)
        if threading.current_thread() is not threading.main_thread():
            tries += 1
            if tries == 1:
                patched_once.set()
                proceed.wait(5)
        return out

    monkeypatch.setattr(registry_module, "_apply_patch", slow_apply)
    loop = asyncio.get_running_loop()

    async def race(patch: dict[str, Any], label: str) -> Any:
        nonlocal tries
        tries = 0
        patched_once.clear()
        proceed.clear()
        task = asyncio.ensure_future(registry.offload(registry.patch, POOL, "default", "p", MERGE, patch))
        await loop.run_in_executor(None, patched_once.wait, 5)
        registry.patch(POOL, "default", "p", MERGE, {"metadata": {"labels": {label: "x"}}})
        proceed.set()
        return await task

    result = await race({"spec": {"replicas": 7}}, "b")
    assert tries == 2 and result["spec"]["replicas"] == 7 and result["metadata"]["labels"]["b"] == "x"
    version = registry.get(POOL, "default", "p")["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):
        await race({"metadata": {"resourceVersion": version}, "spec": {"replicas": 8}}, "c")
    assert registry.get(POOL, "default", "p")["spec"]["replicas"] == 7
