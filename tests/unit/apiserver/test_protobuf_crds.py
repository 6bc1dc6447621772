"""Protobuf request bodies kubectl sends for core kinds, and the read-only CustomResourceDefinitions."""

from __future__ import annotations

import pytest

from turbok.api.status import BadRequest, UnsupportedMediaType
from turbok.apiserver import protobuf

from .conftest import NAMESPACES, POOLS, TABLE, Api, Server, pool

PROTO = {"Content-Type": "application/vnd.kubernetes.protobuf"}


# A protobuf writer of our own, from the wire format and k8s.io/api's generated.proto field numbers.
def varint(n: int) -> bytes:
    out = b""
    while True:
        if n < 0x80:
            return out + bytes([n])
        out += bytes([n & 0x7F | 0x80])
        n >>= 7


def field(number: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = field(1, api_version) + field(2, kind)
    return b"k8s\x00" + field(1, type_meta) + field(2, raw) + field(3, "") + field(4, "")


def namespace(name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> bytes:
    meta = field(1, name)
    for key, value in (labels or {}).items():
        meta += field(11, field(1, key) + field(2, value))
    for key, value in (annotations or {}).items():
        meta += field(12, field(1, key) + field(2, value))
    meta += field(14, "example.com/hold")
    # Namespace { ObjectMeta metadata = 1; NamespaceSpec spec = 2; NamespaceStatus status = 3; }
    return envelope("v1", "Namespace", field(1, meta) + field(2, b"") + field(3, b""))


def delete_options(policy: str = "", uid: str = "", dry_run: bool = False, grace: int | None = None) -> bytes:
    raw = b""
    if grace is not None:
        raw += field(1, grace)
    if uid:
        raw += field(2, field(1, uid))
    if policy:
        raw += field(4, policy)
    if dry_run:
        raw += field(5, "All")
    return envelope("meta.k8s.io/v1", "DeleteOptions", raw)


def test_decode_namespace_and_delete_options() -> None:
    ns = protobuf.decode(namespace("team", {"a": "b", "c": "d"}, {"note": "x"}))
    assert ns == {"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": "team", "labels": {"a": "b", "c": "d"}, "annotations": {"note": "x"},
                               "finalizers": ["example.com/hold"]}, "spec": {}, "status": {}}
    opts = protobuf.decode(delete_options("Foreground", uid="u-1", dry_run=True, grace=0))
    assert opts == {"gracePeriodSeconds": 0, "preconditions": {"uid": "u-1"}, "propagationPolicy": "Foreground",
                    "dryRun": ["All"]}
    assert protobuf.decode(envelope("v1", "DeleteOptions", field(3, 1))) == {"orphanDependents": True}


@pytest.mark.parametrize("body", [b"", b"{}", b"k8s\x00\x0a\xff", b"k8s\x00" + b"\x0f", b"k8s\x00\x12\x09short"])
def test_malformed_protobuf_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        protobuf.decode(body)


def test_kinds_of_groups_not_served_are_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="send JSON"):
        protobuf.decode(envelope("apps/v1", "Deployment", b""))


async def test_kubectl_create_namespace_over_protobuf(server: Server, api: Api) -> None:
    response = await api.post(NAMESPACES, data=namespace("team", {"env": "dev"}), headers=PROTO)
    assert response.status == 201
    body = await response.json()
    assert body["metadata"]["labels"] == {"env": "dev", "kubernetes.io/metadata.name": "team"}
    assert body["status"]["phase"] == "Active"
    bad = await api.post(NAMESPACES, data=namespace("Not_Valid"), headers=PROTO)
    assert bad.status == 422 and (await bad.json())["details"]["causes"][0]["field"] == "metadata.name"


async def test_delete_with_protobuf_options(server: Server, api: Api) -> None:
    await api.post(NAMESPACES, data=namespace("team"), headers=PROTO)
    wrong = await api.delete(f"{NAMESPACES}/team", data=delete_options(uid="not-the-uid"), headers=PROTO)
    assert wrong.status == 409
    dry = await api.delete(f"{NAMESPACES}/team", data=delete_options("Background", dry_run=True), headers=PROTO)
    assert dry.status == 200 and "deletionTimestamp" not in (await dry.json())["metadata"]
    gone = await api.delete(f"{NAMESPACES}/team", data=delete_options("Background"), headers=PROTO)
    assert gone.status == 200 and (await gone.json())["status"]["phase"] == "Terminating"


# ---------------------------------------------------------------- CustomResourceDefinitions

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


async def test_crds_are_listed_established_with_only_the_storage_version_served(api: Api) -> None:
    listed = await (await api.get(CRDS)).json()
    assert listed["kind"] == "CustomResourceDefinitionList"
    names = [c["metadata"]["name"] for c in listed["items"]]
    assert "sandboxes.agents.x-k8s.io" in names and "sandboxwarmpools.extensions.agents.x-k8s.io" in names
    crd = await (await api.get(f"{CRDS}/sandboxes.agents.x-k8s.io")).json()
    assert crd["spec"]["names"]["kind"] == "Sandbox"
    assert {v["name"]: v["served"] for v in crd["spec"]["versions"]} == {"v1beta1": True, "v1alpha1": False}
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]} == {"NamesAccepted": "True",
                                                                            "Established": "True"}
    assert crd["metadata"]["uid"] == (await (await api.get(f"{CRDS}/sandboxes.agents.x-k8s.io")).json())[
        "metadata"]["uid"]
    assert (await api.get(f"{CRDS}/pods.example.com")).status == 404


async def test_crds_are_read_only(server: Server, api: Api) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        path = CRDS if method == "POST" else f"{CRDS}/sandboxes.agents.x-k8s.io"
        response = await api.request(method, path, json={})
        assert response.status == 405 and "read-only" in (await response.json())["message"]
    assert (await api.get(CRDS)).status == 200


async def test_crd_tables_selectors_and_watch(api: Api) -> None:
    table = await (await api.get(CRDS, headers={"Accept": TABLE})).json()
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Created At"]
    assert table["rows"][0]["cells"][1].endswith("Z")  # a timestamp, as kube prints CRDs
    one = await (await api.get(CRDS, params={"fieldSelector": "metadata.name=sandboxes.agents.x-k8s.io"})).json()
    assert [c["metadata"]["name"] for c in one["items"]] == ["sandboxes.agents.x-k8s.io"]
    watch = await api.get(CRDS, params={"watch": "true", "timeoutSeconds": "1",
                                        "fieldSelector": "metadata.name=sandboxes.agents.x-k8s.io"})
    lines = (await watch.read()).splitlines()
    assert len(lines) == 1 and b'"ADDED"' in lines[0]


async def test_a_custom_resource_unknown_to_the_crds_is_not_routed(api: Api) -> None:
    assert (await api.post(POOLS, json=pool())).status == 201
    response = await api.get("/apis/extensions.agents.x-k8s.io/v1alpha1/namespaces/default/sandboxwarmpools")
    assert response.status == 404
