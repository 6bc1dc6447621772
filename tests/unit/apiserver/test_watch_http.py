"""Watch over HTTP: the newline-delimited event stream, 410 as an ERROR event, bookmarks, watch-list, tables."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import ClientResponse

from turbok.apiserver import resources
from turbok.store.watch import WatchHub

from .conftest import POOLS, TABLE, Api, Server, pool


async def next_event(response: ClientResponse, timeout: float = 3.0) -> dict[str, Any]:
    line = await asyncio.wait_for(response.content.readline(), timeout)
    assert line, "the watch ended"
    event: dict[str, Any] = json.loads(line)
    return event


async def test_watch_streams_initial_state_then_changes(server: Server, api: Api) -> None:
    await api.post(POOLS, json=pool("a"))
    response = await api.get(POOLS, params={"watch": "true", "timeoutSeconds": "5"})
    assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
    first = await next_event(response)
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "a"
    await api.post(POOLS, json=pool("b"))
    await api.delete(f"{POOLS}/a")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in
            [await next_event(response), await next_event(response)]] == [("ADDED", "b"), ("DELETED", "a")]
    response.close()
    await asyncio.sleep(0.05)


async def test_watch_from_a_resource_version_replays_and_ends_at_the_timeout(api: Api) -> None:
    created = await (await api.post(POOLS, json=pool("a"))).json()
    await api.patch(f"{POOLS}/a", data='{"spec":{"replicas":0}}',
                    headers={"Content-Type": "application/merge-patch+json"})
    response = await api.get(POOLS, params={"watch": "1", "timeoutSeconds": "1",
                                            "resourceVersion": created["metadata"]["resourceVersion"]})
    event = await next_event(response)
    assert event["type"] == "MODIFIED" and event["object"]["spec"]["replicas"] == 0
    rest = await asyncio.wait_for(response.content.read(), 5)  # the server ends the stream after 1 s
    assert rest == b""


async def test_a_too_old_resource_version_is_an_error_event_with_410(server: Server, api: Api) -> None:
    server.registry.hub = WatchHub(start_rv=server.registry.db.revision, window=2)
    created = await (await api.post(POOLS, json=pool("a"))).json()
    for i in range(4):
        await api.patch(f"{POOLS}/a", data=json.dumps({"spec": {"replicas": i}}),
                        headers={"Content-Type": "application/merge-patch+json"})
    response = await api.get(POOLS, params={"watch": "true",
                                            "resourceVersion": created["metadata"]["resourceVersion"]})
    assert response.status == 200
    event = await next_event(response)
    assert event["type"] == "ERROR"
    assert (event["object"]["kind"], event["object"]["code"], event["object"]["reason"]) == ("Status", 410, "Expired")
    assert await asyncio.wait_for(response.content.read(), 3) == b""


async def test_watch_with_selectors(api: Api) -> None:
    response = await api.get(POOLS, params={"watch": "true", "labelSelector": "team=red", "timeoutSeconds": "5"})
    await api.post(POOLS, json=pool("blue", labels={"team": "blue"}))
    await api.post(POOLS, json=pool("red", labels={"team": "red"}))
    event = await next_event(response)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "red")
    await api.patch(f"{POOLS}/red", data='{"metadata":{"labels":{"team":"blue"}}}',
                    headers={"Content-Type": "application/merge-patch+json"})
    event = await next_event(response)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "red")
    response.close()


async def test_bookmarks_when_allowed(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "BOOKMARK_SECONDS", 0.2)
    created = await (await api.post(POOLS, json=pool("a"))).json()
    response = await api.get(POOLS, params={"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "5",
                                            "resourceVersion": created["metadata"]["resourceVersion"]})
    event = await next_event(response)
    assert event["type"] == "BOOKMARK"
    assert event["object"]["kind"] == "SandboxWarmPool"
    assert int(event["object"]["metadata"]["resourceVersion"]) >= int(created["metadata"]["resourceVersion"])
    response.close()
    quiet = await api.get(POOLS, params={"watch": "true", "timeoutSeconds": "1",
                                         "resourceVersion": created["metadata"]["resourceVersion"]})
    assert await asyncio.wait_for(quiet.content.read(), 5) == b""  # no bookmarks unless asked


async def test_watch_list_sends_state_then_the_initial_events_end_bookmark(api: Api) -> None:
    await api.post(POOLS, json=pool("a"))
    await api.post(POOLS, json=pool("b"))
    response = await api.get(POOLS, params={"watch": "true", "sendInitialEvents": "true",
                                            "allowWatchBookmarks": "true", "resourceVersionMatch": "NotOlderThan",
                                            "resourceVersion": "", "timeoutSeconds": "5"})
    events = [await next_event(response) for _ in range(3)]
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    response.close()
    refused = await api.get(POOLS, params={"watch": "true", "sendInitialEvents": "true"})
    assert refused.status == 422
    fields = {c["field"] for c in (await refused.json())["details"]["causes"]}
    assert fields == {"allowWatchBookmarks", "resourceVersionMatch"}


async def test_watch_as_table(api: Api) -> None:
    await api.post(POOLS, json=pool("a"))
    response = await api.get(POOLS, params={"watch": "true", "timeoutSeconds": "5"}, headers={"Accept": TABLE})
    event = await next_event(response)
    assert event["type"] == "ADDED" and event["object"]["kind"] == "Table"
    assert event["object"]["rows"][0]["cells"][0] == "a"
    await api.patch(f"{POOLS}/a", data='{"spec":{"replicas":0}}',
                    headers={"Content-Type": "application/merge-patch+json"})
    event = await next_event(response)
    assert event["type"] == "MODIFIED" and event["object"]["rows"][0]["cells"][2] == 0
    response.close()


async def test_a_client_that_goes_away_releases_its_watcher(server: Server, api: Api) -> None:
    response = await api.get(POOLS, params={"watch": "true"})
    await asyncio.sleep(0.05)
    assert server.registry.hub.watcher_count() == 1
    response.close()
    await api.post(POOLS, json=pool("poke"))  # a write makes the server notice the closed connection
    for _ in range(100):
        if server.registry.hub.watcher_count() == 0:
            break
        await asyncio.sleep(0.05)
    assert server.registry.hub.watcher_count() == 0
