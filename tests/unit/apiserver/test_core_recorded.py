"""The differential cases replayed against turbok alone, compared with kube-apiserver 1.37.2's recorded answers.

tests/compat/test_differential.py compares turbok with a live kube-apiserver where its binaries are
installed, and records kube's answers (tests/data/differential/recorded.json,
``TURBOK_RECORD_DIFFERENTIAL=1``); this runs everywhere: status codes, reasons, field causes,
stored objects (defaults) and `kubectl get` Table rows of Pods, Services, Secrets, ConfigMaps,
ServiceAccounts, PVCs, PVs, StorageClasses, Nodes, EndpointSlices and Leases.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.differential import CASES, NAMESPACE, RECORDED, TABLE, TABLE_CASES, answer, cells, normal, path_of
from turbok.api.patch import json_patch

from .conftest import Api

KUBE: dict[str, Any] = json.loads(RECORDED.read_text())


@pytest.fixture
async def diff_api(api: Api) -> Api:
    assert (await api.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}})).status == 201
    return api


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_answer_and_stored_object_as_kube_apiserver(case: dict[str, Any], diff_api: Api) -> None:
    recorded = KUBE[case["name"]]
    body = case["body"]
    path = path_of(body)
    response = await diff_api.post(path, json=body)
    if "update" in case and response.status < 300:
        changed = json_patch(await response.json(), case["update"])
        response = await diff_api.put(f"{path}/{body['metadata']['name']}", json=changed)
    got = await response.json()
    assert answer(response.status, got, loose=case.get("loose", False)) == recorded["answer"]
    if recorded["stored"] is not None:
        assert normal(got) == recorded["stored"]


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c["name"] for c in TABLE_CASES])
async def test_table_row_as_kube_apiserver(case: dict[str, Any], diff_api: Api) -> None:
    recorded = KUBE[f"table:{case['name']}"]
    body = case["body"]
    path = path_of(body)
    name = body["metadata"]["name"]
    created = await diff_api.post(path, json=body)
    assert created.status == 201, await created.text()
    if "status" in case:
        obj = await created.json()
        obj["status"] = case["status"]
        assert (await diff_api.put(f"{path}/{name}/status", json=obj)).status == 200
    if case.get("delete"):
        assert (await diff_api.delete(f"{path}/{name}")).status == 200
    table = await (await diff_api.get(f"{path}/{name}", headers={"Accept": TABLE})).json()
    assert [c["name"] for c in table["columnDefinitions"]] == recorded["columns"]
    assert cells(table) == recorded["cells"]
