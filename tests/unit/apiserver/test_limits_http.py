"""The API's bounds over HTTP: body and object size, nesting, resourceVersion syntax, per-client in-flight
limits, a full disk, large writes off the event loop, and the Event TTL."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from turbok.api.kinds import default_registry
from turbok.apiserver.app import create_app
from turbok.apiserver.limits import ApiLimits
from turbok.store.limits import MiB, StoreLimits
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

from .conftest import AUTH, NAMESPACES, POOLS, SANDBOXES, TOKEN, Api, Server, pool

EVENTS = "/api/v1/namespaces/default/events"


def big_sandbox(name: str, entries: int, *, value: str = "x" * 20) -> dict[str, Any]:
    """A Sandbox whose pod template carries ``entries`` env vars: about 45 bytes of JSON each, and many
    small values, the expensive shape to decode and validate."""
    env = [{"name": f"V{i}", "value": value} for i in range(entries)]
    return {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": name},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "python", "env": env}]}}}}


async def names(api: Api, path: str) -> list[str]:
    listed = await (await api.get(path)).json()
    return [o["metadata"]["name"] for o in listed["items"]]


@asynccontextmanager
async def serving(registry: ObjectRegistry, limits: ApiLimits) -> AsyncIterator[TestServer]:
    app = create_app(registry, token=TOKEN, metrics_registry=CollectorRegistry(), limits=limits)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def client(server: TestServer, agent: str) -> Api:
    return TestClient(server, headers={**AUTH, "User-Agent": agent})


# ------------------------------------------------------------ sizes


async def test_a_body_over_3_mib_is_413_and_nothing_is_stored(server: Server, api: Api) -> None:
    before = server.registry.db.revision
    body = pool("huge", annotations={"a": "x" * (4 * MiB)})
    response = await api.post(POOLS, data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status == 413
    status = await response.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "RequestEntityTooLarge", 413)
    assert "limit is 3145728" in status["message"]
    assert server.registry.db.revision == before and await names(api, POOLS) == []


async def test_an_object_over_1_5_mib_is_refused_and_nothing_is_stored(server: Server, api: Api) -> None:
    before = server.registry.db.revision
    response = await api.post(SANDBOXES, json=big_sandbox("two-mib", 2 * MiB // 45))  # a 2 MiB body
    assert response.status == 413, (await response.text())[:300]
    status = await response.json()
    assert status["reason"] == "RequestEntityTooLarge" and "1572864" in status["message"]
    assert server.registry.db.revision == before and await names(api, SANDBOXES) == []
    # Growing a stored object past the limit is refused the same way; the object stays as it was.
    created = await (await api.post(SANDBOXES, json=big_sandbox("grows", 10))).json()
    patch = {"spec": {"podTemplate": {"spec": {"containers": [big_sandbox("x", 2 * MiB // 45)["spec"]["podTemplate"]
                                                               ["spec"]["containers"][0]]}}}}
    response = await api.patch(f"{SANDBOXES}/grows", data=json.dumps(patch),
                               headers={"Content-Type": "application/merge-patch+json"})
    assert response.status == 413
    assert await (await api.get(f"{SANDBOXES}/grows")).json() == created


# ------------------------------------------------------------ malformed input


async def test_deep_nesting_is_400_not_500(server: Server, api: Api) -> None:
    before = server.registry.db.revision
    for depth in (500, 5000, 200_000):  # Python's own recursion gives out somewhere in between
        nested = "[" * depth + "]" * depth
        body = json.dumps(pool("deep")).replace('"spec": {', f'"spec": {{"x": {nested}, ', 1)
        response = await api.post(POOLS, data=body, headers={"Content-Type": "application/json"})
        assert response.status == 400, (depth, (await response.text())[:300])
        status = await response.json()
        assert status["reason"] == "BadRequest" and "nested" in status["message"]
    yaml_body = "metadata:\n  name: deep\nspec:\n  x: " + "[" * 500 + "]" * 500 + "\n"
    response = await api.post(POOLS, data=yaml_body, headers={"Content-Type": "application/yaml"})
    assert response.status == 400 and (await response.json())["reason"] == "BadRequest"
    response = await api.delete(f"{POOLS}/any", data="[" * 5000 + "]" * 5000,
                                headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert server.registry.db.revision == before


async def test_yaml_aliases_cannot_expand_a_small_body_into_a_huge_object(api: Api) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    body = "\n".join(["metadata: {name: bomb}", "spec:", "  replicas: 1", "  sandboxTemplateRef: {name: t}",
                      "  x:", *("    " + line for line in lines)]) + "\n"
    started = time.monotonic()
    response = await api.post(POOLS, data=body, headers={"Content-Type": "application/yaml"})
    assert response.status == 400 and "values" in (await response.json())["message"]
    assert time.monotonic() - started < 10


async def test_a_resource_version_that_is_not_a_number_is_400(server: Server, api: Api) -> None:
    created = await (await api.post(POOLS, json=pool("p"))).json()
    stale = dict(created, metadata={**created["metadata"], "resourceVersion": "abc"})
    before = server.registry.db.revision
    answers = [
        await api.put(f"{POOLS}/p", json=stale),
        await api.patch(f"{POOLS}/p", data='{"metadata":{"resourceVersion":"abc"},"spec":{"replicas":3}}',
                        headers={"Content-Type": "application/merge-patch+json"}),
        await api.get(POOLS, params={"resourceVersion": "abc"}),
        await api.get(f"{POOLS}/p", params={"resourceVersion": "abc"}),
        await api.get(POOLS, params={"watch": "true", "resourceVersion": "abc"}),
        await api.delete(f"{POOLS}/p", json={"preconditions": {"resourceVersion": "abc"}}),
    ]
    for response in answers:
        assert response.status == 400, (response.url, (await response.text())[:300])
        assert (await response.json())["reason"] == "BadRequest"
    assert server.registry.db.revision == before


async def test_internal_errors_never_reach_the_client(server: Server, api: Api,
                                                      monkeypatch: Any) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("urpc method containerManager.WaitPID failed: EOF /secret/path")

    monkeypatch.setattr(server.registry, "list", broken)
    response = await api.get(POOLS)
    assert response.status == 500
    text = await response.text()
    assert "WaitPID" not in text and "/secret/path" not in text
    assert json.loads(text)["reason"] == "InternalError"


# ------------------------------------------------------------ a full disk


async def test_a_full_disk_is_507_writes_nothing_and_recovers(server: Server, api: Api) -> None:
    registry = server.registry
    watch = await api.get(POOLS, params={"watch": "true", "timeoutSeconds": "5"})
    await api.post(POOLS, json=pool("before"))
    db = registry.db._db  # a database that may not grow is what SQLite sees on a full disk
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages + 2}")
    revision, listed = registry.db.revision, await names(api, POOLS)
    response = await api.post(POOLS, json=pool("full", annotations={"a": "x" * 200_000}))
    assert response.status == 507, (await response.text())[:300]
    status = await response.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "InsufficientStorage", 507)
    assert "disk" in status["message"] and "full" in status["message"]
    # Nothing half-written: not in the index, not in the watch, the revision as it was.
    assert registry.db.revision == revision and await names(api, POOLS) == listed
    assert (await api.get(f"{POOLS}/full")).status == 404
    db.execute("PRAGMA max_page_count=1073741823")  # space is back
    retried = await api.post(POOLS, json=pool("full", annotations={"a": "x" * 200_000}))
    assert retried.status == 201
    assert int((await retried.json())["metadata"]["resourceVersion"]) == revision + 1
    seen = []
    while len(seen) < 2:
        seen.append(json.loads(await asyncio.wait_for(watch.content.readline(), 5)))
    assert [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"])
            for e in seen] == [("ADDED", "before", str(revision)), ("ADDED", "full", str(revision + 1))]
    watch.close()


# ------------------------------------------------------------ fairness


async def _stall_upload(server: TestServer, agent: str) -> asyncio.StreamWriter:
    """A POST whose body never finishes: it stays in flight until the writer closes."""
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write((f"POST {POOLS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nUser-Agent: {agent}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{").encode())
    await writer.drain()
    return writer


async def _refused(api: Api) -> web.Response | Any:
    """Poll until the server (which sees the stalled uploads soon) answers 429."""
    for _ in range(100):
        response = await api.get(POOLS)
        if response.status == 429:
            return response
        await asyncio.sleep(0.02)
    raise AssertionError("never refused")


async def test_a_client_over_its_limit_gets_429_while_another_is_served(registry: ObjectRegistry) -> None:
    limits = ApiLimits(inflight_per_client=3, inflight_total=100)
    async with serving(registry, limits) as server:
        greedy, polite = client(server, "greedy/1.0"), client(server, "polite/1.0")
        await greedy.start_server()
        stalled = [await _stall_upload(server, "greedy/1.0") for _ in range(3)]
        refused = await _refused(greedy)
        status = await refused.json()
        assert (status["reason"], status["code"]) == ("TooManyRequests", 429)
        assert refused.headers["Retry-After"] == "1" and status["details"]["retryAfterSeconds"] == 1
        assert (await polite.get(POOLS)).status == 200
        assert (await polite.post(POOLS, json=pool("served"))).status == 201
        # Watches are long-running: they take no in-flight seat, and are served even now.
        watch = await greedy.get(POOLS, params={"watch": "true", "timeoutSeconds": "1"})
        assert watch.status == 200
        watch.close()
        for writer in stalled:
            writer.close()
        for _ in range(100):  # once its requests end, the greedy client is served again
            if (await greedy.get(POOLS)).status == 200:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the greedy client stayed refused")
        await greedy.close()
        await polite.close()


async def test_a_client_with_too_many_watches_open_gets_429_and_others_still_watch(registry: ObjectRegistry) -> None:
    limits = ApiLimits(streams_per_client=3)
    async with serving(registry, limits) as server:
        greedy, polite = client(server, "greedy/1.0"), client(server, "polite/1.0")
        await greedy.start_server()
        watch = {"watch": "true", "timeoutSeconds": "30"}
        held = [await greedy.get(POOLS, params=watch) for _ in range(3)]
        assert [w.status for w in held] == [200, 200, 200]
        refused = await greedy.get(POOLS, params=watch)
        status = await refused.json()
        assert (refused.status, status["reason"]) == (429, "TooManyRequests") and refused.headers["Retry-After"]
        assert "3 watches and streams open" in status["message"]
        # Its ordinary requests are not streams, and another client's watch is served and hears a change.
        assert (await greedy.get(POOLS)).status == 200
        theirs = await polite.get(POOLS, params=watch)
        assert theirs.status == 200
        assert (await polite.post(POOLS, json=pool("seen"))).status == 201
        event = json.loads(await theirs.content.readline())
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "seen")
        theirs.close()
        held.pop().close()  # one closed: the greedy client may open one again
        for _ in range(100):
            again = await greedy.get(POOLS, params=watch)
            if again.status == 200:
                again.close()
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the greedy client stayed refused after closing a watch")
        for w in held:
            w.close()
        await greedy.close()
        await polite.close()


async def test_watches_of_everything_are_limited_sooner_than_watches_of_one_object(registry: ObjectRegistry) -> None:
    limits = ApiLimits(streams_per_client=10, broad_watches_per_client=2)
    async with serving(registry, limits) as server:
        api = client(server, "watcher/1.0")
        await api.start_server()
        watch = {"watch": "true", "timeoutSeconds": "30"}
        broad = [await api.get(POOLS, params=watch) for _ in range(2)]
        refused = await api.get(POOLS, params=watch)
        assert [w.status for w in broad] == [200, 200] and refused.status == 429
        assert "2 watches open that are not of one object" in (await refused.json())["message"]
        # A selector other than one name is still broad; watches of one object each are served.
        other = await api.get(POOLS, params={**watch, "fieldSelector": "metadata.name!=x"})
        assert other.status == 429
        pinned = [await api.get(POOLS, params={**watch, "fieldSelector": f"metadata.name=p{i}"}) for i in range(8)]
        assert [w.status for w in pinned] == [200] * 8
        assert (await api.get(POOLS, params={**watch, "fieldSelector": "metadata.name=p9"})).status == 429
        assert (await api.post(POOLS, json=pool("p3"))).status == 201
        event = json.loads(await pinned[3].content.readline())
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "p3")
        for w in [*broad, *pinned]:
            w.close()
        await api.close()


async def test_past_the_total_each_client_keeps_one_request(registry: ObjectRegistry) -> None:
    limits = ApiLimits(inflight_per_client=10, inflight_total=3)
    async with serving(registry, limits) as server:
        stalled = [await _stall_upload(server, f"client-{i}") for i in range(3)]
        busy = client(server, "client-0")
        await busy.start_server()
        await _refused(busy)  # the server is full and client-0 already has one in flight
        newcomer = client(server, "newcomer")
        assert (await newcomer.get(POOLS)).status == 200  # with none in flight, it is served
        for writer in stalled:
            writer.close()
        await busy.close()
        await newcomer.close()


# ------------------------------------------------------------ large writes and the event loop


async def test_large_writes_leave_the_event_loop_free(server: Server, api: Api) -> None:
    """A neighbour's GETs go on during large writes: many are answered while each write runs, and none waits as
    long as a write takes (the measurement is bench/apiserver.py). A loop blocked by a write would answer at
    most one GET per write; counting them, not timing the slowest, leaves a collector's pause out of it."""
    entries = 30_000  # about 1.4 MB of JSON: under the object limit, and expensive to validate
    bodies = [json.dumps(big_sandbox(f"big-{i}", entries)).encode() for i in range(3)]
    headers = {"Content-Type": "application/json"}
    answered: list[tuple[float, float]] = []  # (when, how long it took)
    stop = asyncio.Event()

    async def neighbour() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            response = await api.get(f"{NAMESPACES}/default")
            await response.read()
            answered.append((time.perf_counter(), time.perf_counter() - started))
            await asyncio.sleep(0.005)

    task = asyncio.create_task(neighbour())
    writes: list[tuple[float, float]] = []
    for body in bodies:
        started = time.perf_counter()
        response = await api.post(SANDBOXES, data=body, headers=headers)
        raw = await response.read()
        writes.append((started, time.perf_counter()))
        assert response.status == 201, raw[:300]
    stop.set()
    await task
    latencies = [took for _, took in answered]
    during = [sum(start < when < end for when, _ in answered) for start, end in writes]
    shortest = min(end - start for start, end in writes)
    assert min(during) >= 5 and max(latencies) < shortest, (during, max(latencies), shortest,
                                                            statistics.median(latencies))
    stored = await (await api.get(f"{SANDBOXES}/big-2")).json()
    assert len(stored["spec"]["podTemplate"]["spec"]["containers"][0]["env"]) == entries


# ------------------------------------------------------------ Event TTL


async def test_events_expire_an_hour_after_their_last_write(tmp_path: Path) -> None:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db", limits=StoreLimits(event_ttl_seconds=1)),
                              default_registry())
    registry.ensure_namespace("default")
    limits = ApiLimits(event_sweep_seconds=0.1)
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"},
             "involvedObject": {"kind": "Sandbox", "name": "s", "namespace": "default"},
             "reason": "Test", "message": "m", "type": "Normal",
             # Timestamps are the client's: far in the future, they must not keep the event forever.
             "lastTimestamp": "2999-01-01T00:00:00Z", "firstTimestamp": "2999-01-01T00:00:00Z"}
    try:
        async with serving(registry, limits) as server:
            api = client(server, "events")
            await api.start_server()
            assert (await api.post(EVENTS, json=event)).status == 201
            assert await names(api, EVENTS) == ["e1"]
            deadline = time.monotonic() + 5
            while await names(api, EVENTS) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await names(api, EVENTS) == []
            await api.close()
    finally:
        registry.db.close()
