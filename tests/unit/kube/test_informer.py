"""The informer and the cached client over a scripted API server: resume, relist after 410, own writes.

``ScriptedApi`` stands where ``turbok.client.api.AsyncApi`` stands: ``list`` answers the objects it holds
and a resourceVersion, ``watch`` plays the next script (events, then an error or the end of the watch).
The real API server's side of the same behaviour is in tests/kube/test_operator.py.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from turbok.api import status as st
from turbok.api.kinds import POD, default_registry
from turbok.api.meta import FieldSelector, LabelSelector
from turbok.client.api import WatchEvent, field_selector_text, label_selector_text
from turbok.client.errors import ConnectionFailed
from turbok.kube.client import KubeClient
from turbok.kube.informer import Change, Informer

Obj = dict[str, Any]
SANDBOX = default_registry().by_kind("agents.x-k8s.io/v1beta1", "Sandbox")


def obj(name: str, rv: int, ns: str = "default", **labels: str) -> Obj:
    return {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv), "uid": f"uid-{name}",
                         "labels": labels}}


class ScriptedApi:
    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.rv = 10
        self.scripts: list[list[WatchEvent | Exception | asyncio.Event]] = []
        self.watched_from: list[str] = []
        self.lists = 0
        self.created: list[Obj] = []
        self.deleted_answer: Obj | None = None

    async def list(self, kind: Any, namespace: str | None = None, **_: Any) -> tuple[list[Obj], str]:
        self.lists += 1
        return [copy.deepcopy(o) for o in self.objects.values()], str(self.rv)

    async def watch(self, kind: Any, namespace: str | None = None, *, resource_version: str = "",
                    **_: Any) -> AsyncIterator[WatchEvent]:
        self.watched_from.append(resource_version)
        script = self.scripts.pop(0) if self.scripts else []
        for step in script:
            if isinstance(step, asyncio.Event):
                await step.wait()
                continue
            if isinstance(step, Exception):
                raise step
            yield step
        if not self.scripts and not script:
            await asyncio.sleep(3600)  # the watch stays open

    async def create(self, kind: Any, body: Obj, **_: Any) -> Obj:
        self.created.append(copy.deepcopy(body))
        self.rv += 1
        out = copy.deepcopy(body)
        out["metadata"].update({"resourceVersion": str(self.rv), "uid": "new", "namespace": "default"})
        return out

    async def delete(self, kind: Any, namespace: str | None, name: str, **_: Any) -> Obj | None:
        return self.deleted_answer

    async def close(self) -> None:
        pass


async def _settle(informer: Informer, api: ScriptedApi) -> None:
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not api.scripts:
            return


async def test_watch_resumes_from_the_last_version_seen_and_bookmarks_move_it_without_a_relist() -> None:
    api = ScriptedApi()
    api.objects = {"a": obj("a", 5)}
    changes: list[Change] = []
    api.scripts = [
        [WatchEvent("MODIFIED", obj("a", 11)), WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "15"}}),
         ConnectionFailed("the connection broke")],
        [WatchEvent("ADDED", obj("b", 16))],
    ]
    informer = Informer(api, SANDBOX, changes.append)  # type: ignore[arg-type]
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    await _settle(informer, api)
    await asyncio.sleep(0.5)  # the retry after the broken watch waits a little (jittered back-off)
    task.cancel()
    assert api.lists == 1, "a broken watch resumes; it does not relist"
    assert api.watched_from[:3] == ["10", "15", "16"], "from the list, then from the bookmark, then the event"
    assert [(c.type, c.name) for c in changes] == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b")]
    assert informer.get("default", "b") is not None


async def test_410_relists_and_reports_what_went_missing_meanwhile_as_deleted() -> None:
    api = ScriptedApi()
    api.objects = {"a": obj("a", 5), "b": obj("b", 6)}
    changes: list[Change] = []
    informer = Informer(api, SANDBOX, changes.append)  # type: ignore[arg-type]

    gate = asyncio.Event()
    api.scripts = [[gate, st.Gone("too old resource version: 10 (40)")]]
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    # while the watch was gone: b deleted, a changed, c made
    api.objects = {"a": obj("a", 30), "c": obj("c", 31)}
    api.rv = 40
    gate.set()
    await _settle(informer, api)
    await asyncio.sleep(0.05)
    task.cancel()
    assert api.lists == 2
    assert api.watched_from[-1] == "40"
    assert sorted((c.type, c.name) for c in changes[2:]) == [("ADDED", "c"), ("DELETED", "b"), ("MODIFIED", "a")]
    assert informer.get("default", "b") is None


async def test_an_own_write_is_cached_at_once_and_the_same_version_from_the_watch_is_not_told_twice() -> None:
    api = ScriptedApi()
    changes: list[Change] = []
    informer = Informer(api, SANDBOX, changes.append)  # type: ignore[arg-type]
    api.scripts = [[]]
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    informer.observe(obj("x", 20))
    api.scripts = [[WatchEvent("ADDED", obj("x", 20)), WatchEvent("MODIFIED", obj("x", 19))]]
    # a stale event (19 < 20) never overwrites the newer object either
    informer._apply("ADDED", obj("x", 20))
    informer._apply("MODIFIED", obj("x", 19))
    task.cancel()
    assert [(c.type, c.name) for c in changes] == [("ADDED", "x")]
    assert informer.get("default", "x")["metadata"]["resourceVersion"] == "20"  # type: ignore[index]


async def test_cached_client_reads_with_selectors_and_gives_pods_the_runtime_class() -> None:
    api = ScriptedApi()
    client = KubeClient(api, cached=(("agents.x-k8s.io/v1beta1", "Sandbox"), ("v1", "Pod")))  # type: ignore[arg-type]
    api.objects = {"a": obj("a", 1, app="x"), "b": obj("b", 2, "other", app="y")}
    await client.start()
    assert [o["metadata"]["name"] for o in await client.list(SANDBOX, selector=LabelSelector.parse("app=x"))] == ["a"]
    assert [o["metadata"]["name"] for o in await client.list(SANDBOX, "other")] == ["b"]
    by_name = FieldSelector.parse("metadata.name=b")
    assert [o["metadata"]["name"] for o in await client.list(SANDBOX, field_selector=by_name)] == ["b"]
    with pytest.raises(st.NotFound):
        await client.get(SANDBOX, "default", "nope")

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
           "spec": {"containers": [{"name": "c", "image": "i"}]}}
    await client.create(POD, copy.deepcopy(pod))
    kata = copy.deepcopy(pod)
    kata["spec"]["runtimeClassName"] = "kata"
    await client.create(POD, kata)
    assert [p["spec"].get("runtimeClassName") for p in api.created] == ["gvisor", "kata"]
    assert await client.try_get(POD, "default", "p") is not None, "read your own write"

    api.deleted_answer = {"kind": "Status", "status": "Success"}
    await client.delete(POD, "default", "p")
    assert await client.try_get(POD, "default", "p") is None, "deleted at once: forgotten at once"
    await client.stop()


def test_selectors_travel_as_the_query_kube_apiserver_parses() -> None:
    selector = LabelSelector.parse("app=x,tier in (a,b),!gone,there,env!=prod")
    assert label_selector_text(selector) == "app=x,tier in (a,b),!gone,there,env!=prod"
    assert field_selector_text(FieldSelector.parse("spec.nodeName=n1,metadata.name!=x",
                                                   extra=POD.field_selectors)) == "spec.nodeName=n1,metadata.name!=x"
