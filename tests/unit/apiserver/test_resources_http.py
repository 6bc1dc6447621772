"""CRUD over HTTP as kubectl and client libraries speak it: status codes, Status bodies, headers, tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import NAMESPACES, POOLS, SANDBOXES, TABLE, Api, Server, pool


async def create(api: Api, body: dict[str, Any], path: str = POOLS, **params: str) -> dict[str, Any]:
    response = await api.post(path, json=body, params=params)
    assert response.status == 201, await response.text()
    out: dict[str, Any] = await response.json()
    return out


async def test_create_get_list_delete(api: Api) -> None:
    created = await create(api, pool())
    assert created["metadata"]["uid"] and created["metadata"]["resourceVersion"]
    got = await (await api.get(f"{POOLS}/p1")).json()
    assert got == created
    listed = await (await api.get(POOLS)).json()
    assert listed["kind"] == "SandboxWarmPoolList" and listed["apiVersion"] == "extensions.agents.x-k8s.io/v1beta1"
    assert [o["metadata"]["name"] for o in listed["items"]] == ["p1"]
    assert int(listed["metadata"]["resourceVersion"]) >= int(created["metadata"]["resourceVersion"])
    everywhere = await (await api.get("/apis/extensions.agents.x-k8s.io/v1beta1/sandboxwarmpools")).json()
    assert len(everywhere["items"]) == 1
    response = await api.delete(f"{POOLS}/p1")
    assert response.status == 200
    missing = await api.get(f"{POOLS}/p1")
    assert missing.status == 404
    body = await missing.json()
    assert body["reason"] == "NotFound" and body["details"] == {
        "name": "p1", "group": "extensions.agents.x-k8s.io", "kind": "sandboxwarmpools"}


async def test_409_already_exists_and_conflict_are_told_apart(api: Api) -> None:
    created = await create(api, pool())
    again = await api.post(POOLS, json=pool())
    assert again.status == 409 and (await again.json())["reason"] == "AlreadyExists"
    created["spec"]["replicas"] = 2
    assert (await api.put(f"{POOLS}/p1", json=created)).status == 200
    stale = await api.put(f"{POOLS}/p1", json=created)
    assert stale.status == 409 and (await stale.json())["reason"] == "Conflict"


async def test_422_names_the_fields_and_stores_nothing(server: Server, api: Api) -> None:
    before = server.registry.db.revision
    body = pool(replicas="three")  # type: ignore[arg-type]
    del body["spec"]["sandboxTemplateRef"]  # type: ignore[attr-defined]
    response = await api.post(POOLS, json=body)
    assert response.status == 422
    status = await response.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Invalid", 422)
    assert status["details"]["name"] == "p1" and status["details"]["kind"] == "SandboxWarmPool"
    causes = {c["field"]: c for c in status["details"]["causes"]}
    assert causes["spec.replicas"]["reason"] == "FieldValueInvalid"
    assert causes["spec.sandboxTemplateRef"]["reason"] == "FieldValueRequired"
    assert server.registry.db.revision == before
    assert (await (await api.get(POOLS)).json())["items"] == []


@pytest.mark.parametrize("body", [b"{not json", b"- just\n- a list\n", b"null", b"42"])
async def test_malformed_bodies_are_400(server: Server, api: Api, body: bytes) -> None:
    before = server.registry.db.revision
    response = await api.post(POOLS, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400 and (await response.json())["reason"] == "BadRequest"
    assert server.registry.db.revision == before


async def test_yaml_bodies_are_accepted(api: Api) -> None:
    text = "apiVersion: extensions.agents.x-k8s.io/v1beta1\nkind: SandboxWarmPool\nmetadata: {name: y}\n" \
           "spec: {replicas: 0, sandboxTemplateRef: {name: t}}\n"
    response = await api.post(POOLS, data=text, headers={"Content-Type": "application/yaml"})
    assert response.status == 201


async def test_field_validation_parameter(server: Server, api: Api) -> None:
    body = pool()
    body["spec"]["bogus"] = True  # type: ignore[index]
    strict = await api.post(POOLS, json=body, params={"fieldValidation": "Strict"})
    assert strict.status == 400
    assert 'unknown field "spec.bogus"' in (await strict.json())["message"]
    bad = await api.post(POOLS, json=body, params={"fieldValidation": "Loud"})
    assert bad.status == 400
    warn = await api.post(POOLS, json=body)  # Warn is the default
    assert warn.status == 201
    assert warn.headers.getall("Warning") == ['299 - "unknown field \\"spec.bogus\\""']
    assert "bogus" not in (await warn.json())["spec"]
    ignore = await api.post(POOLS, json=pool("p2") | {"extra": 1}, params={"fieldValidation": "Ignore"})
    assert ignore.status == 201 and "Warning" not in ignore.headers


async def test_dry_run_over_http(server: Server, api: Api) -> None:
    before = server.registry.db.revision
    response = await api.post(POOLS, json=pool(), params={"dryRun": "All"})
    assert response.status == 201 and (await response.json())["metadata"]["name"] == "p1"  # as kube-apiserver
    bad = await api.post(POOLS, json=pool(), params={"dryRun": "Some"})
    assert bad.status == 422 and (await bad.json())["details"]["causes"][0]["field"] == "dryRun"
    assert server.registry.db.revision == before


async def test_patch_types(api: Api) -> None:
    await create(api, pool())
    merge = await api.patch(f"{POOLS}/p1", data=json.dumps({"spec": {"replicas": 3}}),
                            headers={"Content-Type": "application/merge-patch+json"})
    assert merge.status == 200 and (await merge.json())["spec"]["replicas"] == 3
    ops = [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]
    jp = await api.patch(f"{POOLS}/p1", data=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"})
    assert jp.status == 200 and (await jp.json())["metadata"]["labels"] == {"a": "b"}
    failing = await api.patch(f"{POOLS}/p1", data=json.dumps([{"op": "remove", "path": "/nope"}]),
                              headers={"Content-Type": "application/json-patch+json"})
    assert failing.status == 422
    smp = await api.patch(f"{POOLS}/p1", data="{}", headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert smp.status == 415 and (await smp.json())["reason"] == "UnsupportedMediaType"
    ssa = await api.patch(f"{POOLS}/p1", data="{}", headers={"Content-Type": "application/apply-patch+yaml"})
    assert ssa.status == 415 and "server-side apply is not supported" in (await ssa.json())["message"]
    # The media type is refused before the object is looked up: kubectl apply --server-side of a new object.
    new = await api.patch(f"{POOLS}/new", data="{}", headers={"Content-Type": "application/apply-patch+yaml"})
    assert new.status == 415


async def test_status_subresource_over_http(api: Api) -> None:
    await create(api, pool())
    status = await api.patch(f"{POOLS}/p1/status", data=json.dumps({"status": {"replicas": 1}}),
                             headers={"Content-Type": "application/merge-patch+json"})
    assert status.status == 200 and (await status.json())["status"] == {"replicas": 1}
    main = await api.patch(f"{POOLS}/p1", data=json.dumps({"status": {"replicas": 5}}),
                           headers={"Content-Type": "application/merge-patch+json"})
    assert (await main.json())["status"] == {"replicas": 1}
    got = await (await api.get(f"{POOLS}/p1/status")).json()
    assert got["status"] == {"replicas": 1}
    assert (await api.delete(f"{POOLS}/p1/status")).status == 405


async def test_scale_subresource_over_http(api: Api) -> None:
    await create(api, pool())
    scale = await (await api.get(f"{POOLS}/p1/scale")).json()
    assert scale["kind"] == "Scale" and scale["spec"] == {"replicas": 1}
    patched = await api.patch(f"{POOLS}/p1/scale", data=json.dumps({"spec": {"replicas": 4}}),
                              headers={"Content-Type": "application/merge-patch+json"})
    assert patched.status == 200 and (await patched.json())["spec"]["replicas"] == 4
    scale = await (await api.get(f"{POOLS}/p1/scale")).json()
    scale["spec"]["replicas"] = 0
    assert (await api.put(f"{POOLS}/p1/scale", json=scale)).status == 200
    assert (await (await api.get(f"{POOLS}/p1")).json())["spec"]["replicas"] == 0
    assert (await api.get(f"{SANDBOXES}/s/scale")).status == 404


async def test_selectors_and_pages(api: Api) -> None:
    for i in range(5):
        await create(api, pool(f"p{i}", labels={"parity": "even" if i % 2 == 0 else "odd"}))
    odd = await (await api.get(POOLS, params={"labelSelector": "parity=odd"})).json()
    assert [o["metadata"]["name"] for o in odd["items"]] == ["p1", "p3"]
    named = await (await api.get(POOLS, params={"fieldSelector": "metadata.name=p4"})).json()
    assert [o["metadata"]["name"] for o in named["items"]] == ["p4"]
    assert (await api.get(POOLS, params={"fieldSelector": "spec.replicas=1"})).status == 400
    assert (await api.get(POOLS, params={"labelSelector": "a in (b"})).status == 400
    page = await (await api.get(POOLS, params={"limit": "2"})).json()
    assert len(page["items"]) == 2 and page["metadata"]["remainingItemCount"] == 3
    rest = await (await api.get(POOLS, params={"limit": "10", "continue": page["metadata"]["continue"]})).json()
    assert [o["metadata"]["name"] for o in rest["items"]] == ["p2", "p3", "p4"]


async def test_deletecollection_deletes_what_the_selector_matches(api: Api) -> None:
    for i in range(4):
        await create(api, pool(f"p{i}", labels={"keep": "yes" if i == 0 else "no"}))
    response = await api.delete(POOLS, params={"labelSelector": "keep=no"})
    assert response.status == 200 and (await response.json())["status"] == "Success"
    left = await (await api.get(POOLS)).json()
    assert [o["metadata"]["name"] for o in left["items"]] == ["p0"]


async def test_delete_options_json_and_query(server: Server, api: Api) -> None:
    created = await create(api, pool())
    wrong = await api.delete(f"{POOLS}/p1", json={"kind": "DeleteOptions", "apiVersion": "v1",
                                                  "preconditions": {"uid": "nope"}})
    assert wrong.status == 409
    held = await api.delete(f"{POOLS}/p1", params={"propagationPolicy": "Foreground"})
    body = await held.json()
    assert held.status == 200 and body["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert (await api.delete(f"{POOLS}/p1", json={"propagationPolicy": "Sideways"})).status == 400
    assert server.registry.get(server.registry.kinds.resolve("swp"), "default", "p1")["metadata"]["uid"] == \
        created["metadata"]["uid"]


async def test_tables_use_the_printer_columns(api: Api) -> None:
    await create(api, pool())
    table = await (await api.get(POOLS, headers={"Accept": TABLE})).json()
    assert (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Ready", "Desired", "Age"]
    [row] = table["rows"]
    assert row["cells"][0] == "p1" and row["cells"][2] == 1
    assert row["cells"][3].endswith("s")  # an age, not a timestamp
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["name"] == "p1"
    one = await (await api.get(f"{POOLS}/p1", headers={"Accept": TABLE},
                               params={"includeObject": "Object"})).json()
    assert one["rows"][0]["object"]["spec"]["replicas"] == 1
    ns = await (await api.get(NAMESPACES, headers={"Accept": TABLE})).json()
    assert [c["name"] for c in ns["columnDefinitions"]] == ["Name", "Status", "Age"]
    assert ns["rows"][0]["cells"][:2] == ["default", "Active"]


async def test_sandbox_table_reads_conditions_with_filters(server: Server, api: Api) -> None:
    body = {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": "s"},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    await create(api, body, path=SANDBOXES)
    await api.patch(f"{SANDBOXES}/s/status", headers={"Content-Type": "application/merge-patch+json"},
                    data=json.dumps({"status": {"conditions": [
                        {"type": "Other", "status": "False", "reason": "X", "message": "",
                         "lastTransitionTime": "2025-01-01T00:00:00Z"},
                        {"type": "Ready", "status": "True", "reason": "DependenciesReady", "message": "",
                         "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}))
    table = await (await api.get(SANDBOXES, headers={"Accept": TABLE})).json()
    assert table["rows"][0]["cells"][:3] == ["s", "True", "DependenciesReady"]


async def test_namespaces_over_http(api: Api) -> None:
    response = await api.post(NAMESPACES, json={"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": "team"}})
    assert response.status == 201
    inside = await api.post("/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/team/sandboxwarmpools",
                            json=pool())
    assert inside.status == 201
    nowhere = await api.post("/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/nowhere/sandboxwarmpools",
                             json=pool())
    assert nowhere.status == 404
    deleted = await api.delete(f"{NAMESPACES}/team")
    assert deleted.status == 200 and (await deleted.json())["status"]["phase"] == "Terminating"
    late = await api.post("/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/team/sandboxwarmpools",
                          json=pool("late"))
    assert late.status == 403 and (await late.json())["reason"] == "Forbidden"


EVENTS = "/api/v1/namespaces/default/events"


def event(name: str, about: str, reason: str, kind: str = "SandboxWarmPool") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
            "involvedObject": {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": kind, "name": about,
                               "namespace": "default", "uid": f"uid-{about}"},
            "reason": reason, "message": f"{reason} happened", "type": "Normal", "count": 1,
            "firstTimestamp": "2025-01-01T00:00:00Z", "lastTimestamp": "2025-01-01T00:00:00Z",
            "source": {"component": "turbok"}}


async def test_events_are_selected_by_their_involved_object(api: Api) -> None:
    for name, about, reason in [("e1", "p1", "Scaled"), ("e2", "p2", "Scaled"), ("e3", "p1", "Ready")]:
        await create(api, event(name, about, reason), path=EVENTS)
    # What kubectl describe asks for.
    selector = "involvedObject.name=p1,involvedObject.namespace=default,involvedObject.kind=SandboxWarmPool," \
               "involvedObject.uid=uid-p1"
    listed = await (await api.get(EVENTS, params={"fieldSelector": selector})).json()
    assert [e["metadata"]["name"] for e in listed["items"]] == ["e1", "e3"]
    by_reason = await (await api.get(EVENTS, params={"fieldSelector": "reason=Scaled,type=Normal"})).json()
    assert [e["metadata"]["name"] for e in by_reason["items"]] == ["e1", "e2"]
    assert (await api.get(EVENTS, params={"fieldSelector": "message=x"})).status == 400
    assert (await api.get(POOLS, params={"fieldSelector": "involvedObject.name=p1"})).status == 400
    table = await (await api.get(EVENTS, headers={"Accept": TABLE})).json()
    # kube-apiserver's event columns (the wide ones too: kubectl shows them with -o wide).
    assert [c["name"] for c in table["columnDefinitions"]] == ["Last Seen", "Type", "Reason", "Object", "Subobject",
                                                               "Source", "Message", "First Seen", "Count", "Name"]
    invalid = await api.post(EVENTS, json={"apiVersion": "v1", "kind": "Event", "metadata": {"name": "x"}})
    assert invalid.status == 422


async def test_a_watch_on_events_filters_by_involved_object(api: Api) -> None:
    response = await api.get(EVENTS, params={"watch": "true", "timeoutSeconds": "3",
                                             "fieldSelector": "involvedObject.name=p2"})
    await create(api, event("e1", "p1", "Scaled"), path=EVENTS)
    await create(api, event("e2", "p2", "Scaled"), path=EVENTS)
    line = json.loads(await response.content.readline())
    assert line["type"] == "ADDED" and line["object"]["metadata"]["name"] == "e2"
    response.close()
