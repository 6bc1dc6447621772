"""Differential tests: the same objects sent to a real kube-apiserver 1.37.2 and to turbok's API.

Each case in tests/data/differential/*.yaml is created (then, when it has an
``update``, changed by a JSON patch and PUT) on both servers; the answers must
agree: status code, reason, and each field cause's field, reason and first
line of message (not the message where the case says ``loose``: it quotes a Go
library's words). For a write both accept, the stored objects must agree too
(after removing what only a full cluster adds: the service-account token
volume, and the particular ClusterIP drawn). Skipped, naming what is missing,
without the kube binaries (tests/kube_cluster.py: a bare etcd and kube-apiserver).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.differential import CASES, NAMESPACE, RECORDED, TABLE, TABLE_CASES, answer, cells, normal, path_of
from tests.kube_cluster import RELEASE, KubeCluster, kube_cluster, missing
from turbok.api.kinds import default_registry
from turbok.api.patch import json_patch
from turbok.apiserver.app import create_app
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

pytestmark = [pytest.mark.compat, pytest.mark.skipif(missing(version=RELEASE) is not None,
                                                  reason=str(missing(version=RELEASE)))]

TOKEN = "differential-token"


class TurbokApi:
    """turbok's API server (registry + aiohttp app) on a loopback port, on a thread of its own."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self.registry = ObjectRegistry(SqliteStore(self._home / "store.db"), default_registry())
        app = create_app(self.registry, token=TOKEN, metrics_registry=CollectorRegistry())
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self.registry.db.close()

    def __enter__(self) -> httpx.Client:
        self._thread.start()
        self._ready.wait(30)
        self._client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                                    headers={"Authorization": f"Bearer {TOKEN}"})
        return self._client

    def __exit__(self, *_: object) -> None:
        self._client.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture(scope="module")
def record() -> Iterator[dict[str, Any]]:
    """What kube-apiserver answered, by case; saved to ``RECORDED`` when asked to."""
    answers: dict[str, Any] = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
    yield answers
    if os.environ.get("TURBOK_RECORD_DIFFERENTIAL") == "1":
        RECORDED.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    with kube_cluster(controller_manager=False, scheduler=False, kwok=False, version=RELEASE) as server:
        for client in (server.client,):
            client.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}})
            # The ServiceAccount admission plugin wants the namespace's default ServiceAccount.
            client.post(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts", json={"metadata": {"name": "default"}})
        yield server


@pytest.fixture(scope="module")
def turbok(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with TurbokApi(tmp_path_factory.mktemp("differential")) as client:
        assert client.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}).status_code == 201
        yield client


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_same_answer_as_kube_apiserver(case: dict[str, Any], kube: KubeCluster, turbok: httpx.Client,
                                       record: dict[str, Any]) -> None:
    body = case["body"]
    path = path_of(body)
    name = body["metadata"]["name"]
    answers = []
    stored = []
    for client in (kube.client, turbok):
        created = client.post(path, json=body)
        response = created
        if "update" in case and created.status_code < 300:
            changed = json_patch(created.json(), case["update"])
            response = client.put(f"{path}/{name}", json=changed)
        answers.append(answer(response.status_code, response.json(), loose=case.get("loose", False)))
        if response.status_code < 300:
            stored.append(normal(response.json()))
        if created.status_code < 300:
            client.delete(f"{path}/{name}", params={"gracePeriodSeconds": "0"})
    record[case["name"]] = {"answer": answers[0], "stored": stored[0] if stored else None}
    assert answers[1] == answers[0], f"turbok answered {answers[1]}, kube-apiserver {answers[0]}"
    if len(stored) == 2:
        assert stored[1] == stored[0]


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c["name"] for c in TABLE_CASES])
def test_same_table_as_kube_apiserver(case: dict[str, Any], kube: KubeCluster, turbok: httpx.Client,
                                      record: dict[str, Any]) -> None:
    body = case["body"]
    path = path_of(body)
    name = body["metadata"]["name"]
    tables = []
    for client in (kube.client, turbok):
        created = client.post(path, json=body)
        assert created.status_code == 201, created.text
        if "status" in case:
            obj = created.json()
            obj["status"] = case["status"]
            written = client.put(f"{path}/{name}/status", json=obj)
            assert written.status_code == 200, written.text
        if case.get("delete"):
            assert client.delete(f"{path}/{name}").status_code == 200
        response = client.get(f"{path}/{name}", headers={"Accept": TABLE})
        assert response.status_code == 200, response.text
        tables.append(response.json())
        client.delete(f"{path}/{name}", params={"gracePeriodSeconds": "0"})
    kube_table, turbok_table = tables
    record[f"table:{case['name']}"] = {"columns": [c["name"] for c in kube_table["columnDefinitions"]],
                                       "cells": cells(kube_table)}
    assert turbok_table["columnDefinitions"] == kube_table["columnDefinitions"]
    assert cells(turbok_table) == cells(kube_table)
