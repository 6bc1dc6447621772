"""``turbok.client.api.AsyncApi`` against a small scripted API server on loopback (aiohttp).

What the operator relies on: the client-side token bucket paces requests, a 429 is waited out and
retried, lists follow ``continue`` tokens, a watch asks for bookmarks and turns an ``ERROR`` 410 into
``Gone``, every failure ``Status`` becomes its error with causes, and long-lived watches never take the
connections requests need (they have a pool of their own).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from turbok.api import status as st
from turbok.api.kinds import CONFIG_MAP
from turbok.client.api import AsyncApi, RateLimiter
from turbok.client.kubeconfig import ClusterConfig

Obj = dict[str, Any]


class Server:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.throttle = 0  # answer 429 this many times first
        self.watch_forever = asyncio.Event()  # set: watches end
        self.watch_error: Obj | None = None

    async def configmaps(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, dict(request.query)))
        if request.query.get("watch") == "true":
            response = web.StreamResponse()
            await response.prepare(request)
            if self.watch_error is not None:
                await response.write(json.dumps({"type": "ERROR", "object": self.watch_error}).encode() + b"\n")
                return response
            await response.write(json.dumps({"type": "BOOKMARK", "object": {
                "kind": "ConfigMap", "metadata": {"resourceVersion": "12"}}}).encode() + b"\n")
            await self.watch_forever.wait()
            return response
        if self.throttle:
            self.throttle -= 1
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 429,
                                      "reason": "TooManyRequests", "message": "slow down",
                                      "details": {"retryAfterSeconds": 0}}, status=429, headers={"Retry-After": "0"})
        if request.method == "POST":
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
                                      "reason": "Invalid", "message": "ConfigMap \"x\" is invalid",
                                      "details": {"name": "x", "kind": "ConfigMap", "causes": [
                                          {"reason": "FieldValueInvalid", "field": "data[a b]",
                                           "message": "Invalid value"}]}}, status=422)
        token = request.query.get("continue", "")
        page = int(token or 0)
        items = [{"metadata": {"name": f"cm{page * 2 + i}", "namespace": "ns"}} for i in range(2)]
        more = page < 2
        return web.json_response({"kind": "ConfigMapList", "apiVersion": "v1", "items": items,
                                  "metadata": {"resourceVersion": "11", **({"continue": str(page + 1)} if more else {})}})


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, ClusterConfig]]:
    s = Server()
    app = web.Application()
    app.router.add_route("*", "/api/v1/namespaces/ns/configmaps", s.configmaps)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield s, ClusterConfig(server=f"http://127.0.0.1:{port}", token="t")
    s.watch_forever.set()
    await runner.cleanup()


def test_the_token_bucket_lets_a_burst_through_then_paces_at_qps() -> None:
    limiter = RateLimiter(qps=50, burst=5)
    started = time.monotonic()
    for _ in range(5):
        limiter.acquire_sync()
    assert time.monotonic() - started < 0.05, "the burst goes at once"
    for _ in range(5):
        limiter.acquire_sync()
    assert time.monotonic() - started >= 5 / 50 * 0.9, "then 50 a second"
    unlimited = RateLimiter(qps=0, burst=1)
    started = time.monotonic()
    for _ in range(1000):
        unlimited.acquire_sync()
    assert time.monotonic() - started < 0.1


async def test_a_429_is_waited_out_and_lists_follow_continue_tokens(server: tuple[Server, ClusterConfig]) -> None:
    s, config = server
    api = AsyncApi(config)
    s.throttle = 2
    items, rv = await api.list(CONFIG_MAP, "ns", limit=2)
    await api.close()
    assert [i["metadata"]["name"] for i in items] == [f"cm{i}" for i in range(6)]
    assert all(i["kind"] == "ConfigMap" and i["apiVersion"] == "v1" for i in items)
    assert rv == "11"
    gets = [q for m, q in s.requests if m == "GET"]
    assert len(gets) == 2 + 3, "two throttled, then three pages"
    assert [q.get("continue", "") for q in gets[2:]] == ["", "1", "2"] and all(q["limit"] == "2" for q in gets)


async def test_failures_become_their_errors_with_causes(server: tuple[Server, ClusterConfig]) -> None:
    s, config = server
    api = AsyncApi(config)
    with pytest.raises(st.Invalid) as caught:
        await api.create(CONFIG_MAP, {"metadata": {"name": "x", "namespace": "ns"}})
    s.watch_error = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                     "message": "too old resource version: 1 (20)"}
    with pytest.raises(st.Gone):
        async for _ in api.watch(CONFIG_MAP, "ns", resource_version="1"):
            pass
    await api.close()
    assert [(c.field, c.reason) for c in caught.value.causes] == [("data[a b]", "FieldValueInvalid")]
    watch = [q for m, q in s.requests if q.get("watch")][0]
    assert watch["allowWatchBookmarks"] == "true" and watch["resourceVersion"] == "1"


async def test_watches_never_take_the_connections_requests_need(server: tuple[Server, ClusterConfig]) -> None:
    s, config = server
    api = AsyncApi(config, connections=2)
    bookmarks: list[str] = []

    async def watch() -> None:
        async for event in api.watch(CONFIG_MAP, "ns"):
            bookmarks.append(event.resource_version)

    async def all_watching() -> None:
        while len(bookmarks) < 8:
            await asyncio.sleep(0.01)

    watches = [asyncio.create_task(watch()) for _ in range(8)]  # more than the request connections
    try:
        await asyncio.wait_for(all_watching(), 5)
        items, _ = await asyncio.wait_for(api.list(CONFIG_MAP, "ns", limit=2), 5)
    finally:
        s.watch_forever.set()
        await asyncio.gather(*watches)
        await api.close()
    assert len(items) == 6, "requests go while 8 watches hold connections"
