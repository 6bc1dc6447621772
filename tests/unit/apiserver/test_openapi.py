"""OpenAPI v3 (index, group-version documents) and v2 (JSON, and the gnostic protobuf kubectl downloads)."""

from __future__ import annotations

import json
import struct
from typing import Any

from turbok.api.kinds import default_registry
from turbok.apiserver import openapi, openapi_pb

from .conftest import Api

POOL_SCHEMA = "io.x-k8s.agents.extensions.v1beta1.SandboxWarmPool"
POOL_PATH = "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/{namespace}/sandboxwarmpools/{name}"
PB = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


# ---------------------------------------------------------------- v3


async def test_v3_index_points_at_every_group_version_with_a_hash(api: Api) -> None:
    index = await (await api.get("/openapi/v3")).json()
    paths = index["paths"]
    assert {"api/v1", "apis/agents.x-k8s.io/v1beta1", "apis/extensions.agents.x-k8s.io/v1beta1"} <= set(paths)
    for url in (p["serverRelativeURL"] for p in paths.values()):
        response = await api.get(url)
        assert response.status == 200
        assert response.headers["Cache-Control"] == "public, immutable"
        doc = await response.json()
        assert doc["openapi"].startswith("3.")
    assert (await api.get("/openapi/v3/apis/nope.example/v1")).status == 404


async def test_v3_document_has_schemas_with_gvk_and_patch_with_field_validation(api: Api) -> None:
    doc = await (await api.get("/openapi/v3/apis/extensions.agents.x-k8s.io/v1beta1")).json()
    schema = doc["components"]["schemas"][POOL_SCHEMA]
    assert schema["x-kubernetes-group-version-kind"] == [
        {"group": "extensions.agents.x-k8s.io", "version": "v1beta1", "kind": "SandboxWarmPool"}]
    assert schema["properties"]["spec"]["properties"]["replicas"]["type"] == "integer"
    assert schema["properties"]["metadata"]["allOf"][0]["$ref"].endswith("meta.v1.ObjectMeta")
    patch = doc["paths"][POOL_PATH]["patch"]
    assert patch["x-kubernetes-group-version-kind"]["kind"] == "SandboxWarmPool"
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    # No strategic merge patch for custom resources: kubectl must compute a JSON merge patch.
    assert set(patch["requestBody"]["content"]) == {"application/json-patch+json", "application/merge-patch+json"}
    assert doc["paths"][POOL_PATH + "/status"]["get"]["parameters"][-1]["name"] == "name"


# ---------------------------------------------------------------- v2 JSON


def test_v2_schemas_are_what_kubectl_can_validate_against() -> None:
    spec = openapi.v2_spec(default_registry())
    sandbox = spec["definitions"]["io.x-k8s.agents.v1beta1.Sandbox"]
    assert sandbox["properties"]["metadata"]["$ref"] == "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    container = sandbox["properties"]["spec"]["properties"]["podTemplate"]["properties"]["spec"]["properties"][
        "containers"]["items"]
    port = container["properties"]["ports"]["items"]["properties"]["containerPort"]
    assert port["type"] == "integer"
    storage = sandbox["properties"]["spec"]["properties"]["volumeClaimTemplates"]["items"]["properties"]["spec"][
        "properties"]["resources"]["properties"]["requests"]["additionalProperties"]
    assert "type" not in storage and "anyOf" not in storage  # int-or-string is untyped in v2
    dumped = json.dumps(spec)
    assert '"anyOf"' not in dumped and '"nullable"' not in dumped


def test_v2_conversion_of_nullable_and_preserve_unknown_fields() -> None:
    converted = openapi._to_v2({
        "type": "object", "required": ["a", "b"],
        "properties": {
            "a": {"type": "string", "nullable": True},
            "b": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"x": {}}},
            "c": {"type": "array", "x-kubernetes-preserve-unknown-fields": True, "items": {"type": "string"}},
            "d": {"oneOf": [{"type": "string"}], "type": "string"},
        }})
    assert converted["required"] == ["b"]
    assert converted["properties"]["a"] == {}
    assert converted["properties"]["b"] == {"x-kubernetes-preserve-unknown-fields": True}
    assert converted["properties"]["c"] == {"x-kubernetes-preserve-unknown-fields": True}
    assert converted["properties"]["d"] == {"type": "string"}


async def test_v2_json_is_served_to_clients_asking_for_json(api: Api) -> None:
    for accept in ("application/json", "", "application/json, application/com.github.proto-openapi.spec.v2@v1.0+protobuf"):
        response = await api.get("/openapi/v2", headers={"Accept": accept} if accept else {})
        assert response.content_type == "application/json"
        assert (await response.json())["swagger"] == "2.0"


# ---------------------------------------------------------------- v2 protobuf, decoded by hand


def fields(buf: bytes) -> list[tuple[int, Any]]:
    """A protobuf message as (field number, value) pairs; nested messages stay bytes."""
    out: list[tuple[int, Any]] = []
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    while pos < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == 1:
            out.append((number, struct.unpack("<d", buf[pos:pos + 8])[0]))
            pos += 8
        elif wire == 2:
            length = varint()
            out.append((number, buf[pos:pos + length]))
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def one(buf: bytes, number: int) -> Any:
    [value] = [v for n, v in fields(buf) if n == number]
    return value


def all_of(buf: bytes, number: int) -> list[Any]:
    return [v for n, v in fields(buf) if n == number]


def named(buf: bytes, number: int) -> dict[str, bytes]:
    """Repeated Named* messages (name = 1, value = 2) as a dict."""
    return {one(entry, 1).decode(): one(entry, 2) for entry in all_of(buf, number)}


def schema_properties(schema: bytes) -> dict[str, bytes]:
    return named(one(schema, 25), 1)


def extensions(message: bytes, number: int) -> dict[str, Any]:
    return {name: json.loads(one(value, 2)) for name, value in named(message, number).items()}


async def test_v2_protobuf_is_served_when_asked_for(api: Api) -> None:
    response = await api.get("/openapi/v2", headers={"Accept": PB})
    assert response.status == 200
    assert response.headers["Content-Type"] == openapi_pb.MEDIA_TYPE
    body = await response.read()
    assert body == openapi.v2_protobuf(default_registry())
    assert one(body, 1) == b"2.0"
    assert one(one(body, 2), 1) == b"turbok"


def test_v2_protobuf_definitions_decode_to_the_schemas() -> None:
    doc = openapi.v2_protobuf(default_registry())
    definitions = named(one(doc, 9), 1)
    assert set(definitions) == set(openapi.v2_spec(default_registry())["definitions"])
    pool = definitions[POOL_SCHEMA]
    assert extensions(pool, 31)["x-kubernetes-group-version-kind"] == [
        {"group": "extensions.agents.x-k8s.io", "version": "v1beta1", "kind": "SandboxWarmPool"}]
    assert all_of(one(pool, 22), 1) == [b"object"]
    props = schema_properties(pool)
    assert one(props["metadata"], 1) == b"#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    spec = schema_properties(props["spec"])
    assert all_of(spec["sandboxTemplateRef"], 19) == [b"name"]
    assert b"sandboxTemplateRef" in all_of(props["spec"], 19)
    replicas = spec["replicas"]
    assert all_of(one(replicas, 22), 1) == [b"integer"]
    assert one(replicas, 2) == b"int32"
    assert json.loads(one(one(replicas, 5), 2)) == 1  # default: Any.yaml
    assert one(replicas, 9) == 0.0  # minimum, a double
    labels = schema_properties(definitions["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"])["labels"]
    additional = one(one(labels, 21), 1)  # AdditionalPropertiesItem.schema
    assert all_of(one(additional, 22), 1) == [b"string"]
    update_type = schema_properties(spec["updateStrategy"])["type"]
    assert [json.loads(one(v, 2)) for v in all_of(update_type, 20)] == ["Recreate", "OnReplenish"]


def test_v2_protobuf_patch_operations_declare_field_validation_for_their_kind() -> None:
    doc = openapi.v2_protobuf(default_registry())
    paths = named(one(doc, 8), 2)
    patch = one(paths[POOL_PATH], 8)
    assert one(patch, 5) == b"patchSandboxWarmPool"
    assert extensions(patch, 13)["x-kubernetes-group-version-kind"] == {
        "group": "extensions.agents.x-k8s.io", "version": "v1beta1", "kind": "SandboxWarmPool"}
    query_names: list[str] = []
    path_names: list[str] = []
    bodies: list[bytes] = []
    for item in all_of(patch, 8):
        parameter = one(item, 1)
        for number, value in fields(parameter):
            if number == 1:
                bodies.append(value)
            else:
                [(slot, sub)] = fields(value)
                (query_names if slot == 3 else path_names).append(one(sub, 4).decode())
    assert "fieldValidation" in query_names and "dryRun" in query_names
    assert path_names == ["namespace", "name"]
    [body] = bodies
    assert one(body, 3) == b"body" and one(body, 4) == 1
    assert one(one(body, 5), 1) == f"#/definitions/{POOL_SCHEMA}".encode()
    responses = named(one(patch, 9), 1)
    assert one(one(one(one(responses["200"], 1), 2), 1), 1) == f"#/definitions/{POOL_SCHEMA}".encode()
    ns_patch = one(paths["/api/v1/namespaces/{name}"], 8)
    assert b"application/strategic-merge-patch+json" in all_of(ns_patch, 7)


def test_the_encoder_writes_every_scalar_kind() -> None:
    raw = openapi_pb.schema({"type": "integer", "minimum": -1.5, "maxLength": 300, "uniqueItems": True,
                             "required": ["a", "b"], "additionalProperties": False, "x-ext": {"k": [1]},
                             "items": {"type": "string"}, "allOf": [{"$ref": "#/definitions/X"}]})
    assert one(raw, 9) == -1.5
    assert one(raw, 11) == 300 and one(raw, 16) == 1
    assert all_of(raw, 19) == [b"a", b"b"]
    assert fields(one(raw, 21)) == [(2, 0)]
    assert all_of(one(one(one(raw, 23), 1), 22), 1) == [b"string"]
    assert one(one(raw, 24), 1) == b"#/definitions/X"
    assert extensions(raw, 31) == {"x-ext": {"k": [1]}}
    negative = openapi_pb.schema({"minLength": -2})
    assert one(negative, 12) == 2**64 - 2  # int64 two's complement, ten bytes
