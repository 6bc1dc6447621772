"""OpenAPI documents built from the served kinds' schemas.

``/openapi/v3`` (an index of group-version documents) and
``/openapi/v3/apis/<group>/<version>``: what ``kubectl explain`` reads and what
``kubectl apply`` checks to learn that the server validates fields itself
(a PATCH operation for the kind with a ``fieldValidation`` parameter).

``/openapi/v2``: one Swagger 2.0 document for every kind, as JSON and as the
protobuf message kubectl downloads (``openapi_pb``) for client-side
validation and strategic-merge-patch metadata. Schemas are converted the way
kube-apiserver publishes CRDs in v2: junctors (``anyOf``...) dropped,
nullable and preserve-unknown-fields nodes left untyped, so kubectl never
refuses what the server accepts.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

from turbok import __version__
from turbok.api.kinds import NAMESPACE, Kind, KindRegistry
from turbok.apiserver.openapi_pb import encode_document

__all__ = ["v2_document", "v2_protobuf", "v2_spec", "v3_document", "v3_index"]

_META = "io.k8s.apimachinery.pkg.apis.meta.v1"

_OBJECT_META: dict[str, Any] = {
    "description": "ObjectMeta is metadata that all persisted resources must have.",
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Name must be unique within a namespace."},
        "generateName": {"type": "string", "description": "Optional prefix the server uses to generate a name."},
        "namespace": {"type": "string", "description": "Namespace defines the space within which the name must "
                      "be unique."},
        "uid": {"type": "string", "description": "UID is the unique in time and space value for this object."},
        "resourceVersion": {"type": "string", "description": "An opaque value that represents the internal "
                            "version of this object."},
        "generation": {"type": "integer", "format": "int64",
                       "description": "A sequence number representing a specific generation of the desired state."},
        "creationTimestamp": {"type": "string", "format": "date-time"},
        "deletionTimestamp": {"type": "string", "format": "date-time"},
        "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "selfLink": {"type": "string"},
        "managedFields": {"type": "array", "items": {"type": "object"}},
        "ownerReferences": {"type": "array", "items": {
            "type": "object",
            "required": ["apiVersion", "kind", "name", "uid"],
            "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name", "uid")}
            | {"controller": {"type": "boolean"}, "blockOwnerDeletion": {"type": "boolean"}},
        }},
    },
}


def _schema_name(kind: Kind) -> str:
    group = ".".join(reversed(kind.group.split("."))) if kind.group else "io.k8s.api.core"
    return f"{group}.{kind.version}.{kind.kind}"


def _gvk(kind: Kind) -> list[dict[str, str]]:
    return [{"group": kind.group, "version": kind.version, "kind": kind.kind}]


def _component(kind: Kind, ref_prefix: str) -> dict[str, Any]:
    schema = copy.deepcopy(kind.schema)
    schema.setdefault("type", "object")
    props = schema.setdefault("properties", {})
    props["metadata"] = {"allOf": [{"$ref": f"{ref_prefix}{_META}.ObjectMeta"}],
                         "description": "Standard object's metadata."}
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    schema["x-kubernetes-group-version-kind"] = _gvk(kind)
    return schema


def _params(*names: str) -> list[dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {
        "name": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        "namespace": {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}},
        "dryRun": {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        "fieldManager": {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        "fieldValidation": {"name": "fieldValidation", "in": "query", "schema": {"type": "string"},
                            "description": "Ignore, Warn (default) or Strict: what to do with unknown fields."},
        "labelSelector": {"name": "labelSelector", "in": "query", "schema": {"type": "string"}},
        "fieldSelector": {"name": "fieldSelector", "in": "query", "schema": {"type": "string"}},
        "watch": {"name": "watch", "in": "query", "schema": {"type": "boolean"}},
        "resourceVersion": {"name": "resourceVersion", "in": "query", "schema": {"type": "string"}},
    }
    return [table[n] for n in names]


def _operation(kind: Kind, action: str, ref: str, params: list[dict[str, Any]], body: bool) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{action}{kind.kind}",
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(kind)[0],
    }
    if body:
        # PATCH names the patch types served: kubectl computes a strategic merge patch only where listed.
        media = _PATCH_TYPES if action == "patch" else ["application/json", "application/yaml"]
        op["requestBody"] = {"content": {m: {"schema": {"$ref": ref}} for m in media}, "required": True}
    return op


_PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json"]


def _paths(kind: Kind, ref: str) -> dict[str, Any]:
    root = kind.base_path()
    scope = ["namespace"] if kind.namespaced else []
    collection = kind.base_path("{namespace}") if kind.namespaced else root
    write = ["dryRun", "fieldManager", "fieldValidation"]
    paths: dict[str, Any] = {
        collection: {
            "get": _operation(kind, "list", ref, _params(*scope, "labelSelector", "fieldSelector", "watch",
                                                           "resourceVersion"), False),
            "post": _operation(kind, "post", ref, _params(*scope, *write), True),
        },
        f"{collection}/{{name}}": {
            "get": _operation(kind, "get", ref, _params(*scope, "name"), False),
            "put": _operation(kind, "put", ref, _params(*scope, "name", *write), True),
            "patch": _operation(kind, "patch", ref, _params(*scope, "name", *write), True),
            "delete": _operation(kind, "delete", ref, _params(*scope, "name", "dryRun"), False),
        },
    }
    if kind.namespaced:
        paths[root] = {"get": _operation(kind, "list", ref, _params("labelSelector", "fieldSelector", "watch"),
                                         False)}
    if kind.status_subresource:
        paths[f"{collection}/{{name}}/status"] = {
            "get": _operation(kind, "get", ref, _params(*scope, "name"), False),
            "put": _operation(kind, "put", ref, _params(*scope, "name", *write), True),
            "patch": _operation(kind, "patch", ref, _params(*scope, "name", *write), True),
        }
    return paths


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


@functools.cache
def _v3_cached(kinds: KindRegistry, group: str, version: str) -> tuple[str, str]:
    members = [k for k in kinds if k.group == group and k.version == version]
    ref_prefix = "#/components/schemas/"
    schemas: dict[str, Any] = {f"{_META}.ObjectMeta": _OBJECT_META}
    paths: dict[str, Any] = {}
    for kind in members:
        name = _schema_name(kind)
        schemas[name] = _component(kind, ref_prefix)
        paths.update(_paths(kind, ref_prefix + name))
    doc = {"openapi": "3.0.0", "info": {"title": "turbok", "version": __version__}, "paths": paths,
           "components": {"schemas": schemas}}
    text = json.dumps(doc, separators=(",", ":"))
    return text, hashlib.sha512(text.encode()).hexdigest()[:32].upper()


def v3_index(kinds: KindRegistry) -> dict[str, Any]:
    paths = {}
    for group, version in sorted({(k.group, k.version) for k in kinds}):
        _, digest = _v3_cached(kinds, group, version)
        path = _gv_path(group, version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


def v3_document(kinds: KindRegistry, group: str, version: str) -> str | None:
    """The group-version document as JSON text, or None when nothing is served there."""
    if not any(k.group == group and k.version == version for k in kinds):
        return None
    return _v3_cached(kinds, group, version)[0]


# ---------------------------------------------------------------- OpenAPI v2


def _to_v2(s: dict[str, Any]) -> dict[str, Any]:
    """A structural v3 schema as kube-apiserver publishes it in v2 (what kubectl's validator copes with)."""
    out = {k: v for k, v in s.items() if k not in ("allOf", "anyOf", "oneOf", "not", "nullable")}
    if s.get("nullable"):
        for key in ("type", "items", "properties"):
            out.pop(key, None)
    if s.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("items", None)
        out.pop("properties", None)
        if out.get("type") == "object":
            del out["type"]
    if out.get("type") == "array" and "items" not in out:
        del out["type"]
    props = out.get("properties")
    if isinstance(props, dict):
        nullable = {k for k, v in props.items() if isinstance(v, dict) and v.get("nullable")}
        out["properties"] = {k: _to_v2(v) for k, v in props.items()}
        if nullable and out.get("required"):
            out["required"] = [r for r in out["required"] if r not in nullable]
            if not out["required"]:
                del out["required"]
    if isinstance(out.get("items"), dict):
        out["items"] = _to_v2(out["items"])
    extra = out.get("additionalProperties")
    if isinstance(extra, dict):
        if extra.get("nullable"):
            out.pop("required", None)
        out["additionalProperties"] = _to_v2(extra)
    return out


def _v2_definition(kind: Kind) -> dict[str, Any]:
    schema = _to_v2(kind.schema)
    schema.setdefault("type", "object")
    props = schema.setdefault("properties", {})
    props["metadata"] = {"$ref": f"#/definitions/{_META}.ObjectMeta", "description": "Standard object's metadata."}
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    schema["x-kubernetes-group-version-kind"] = _gvk(kind)
    return schema


def _v2_parameter(p: dict[str, Any], ref: str | None = None) -> dict[str, Any]:
    if ref is not None:
        return {"name": "body", "in": "body", "required": True, "schema": {"$ref": ref}}
    out = {k: v for k, v in p.items() if k not in ("schema",)}
    out["type"] = p.get("schema", {}).get("type", "string")
    return out


@functools.cache
def v2_spec(kinds: KindRegistry) -> dict[str, Any]:
    """The Swagger 2.0 document of every served kind, as dicts (shared; do not mutate)."""
    definitions: dict[str, Any] = {f"{_META}.ObjectMeta": _to_v2(_OBJECT_META)}
    paths: dict[str, Any] = {}
    for kind in kinds:
        name = _schema_name(kind)
        ref = f"#/definitions/{name}"
        definitions[name] = _v2_definition(kind)
        for path, ops in _paths(kind, ref).items():
            v2ops = {}
            for verb, op in ops.items():
                v2 = {k: v for k, v in op.items() if k not in ("requestBody", "responses", "parameters")}
                v2["parameters"] = [_v2_parameter(p) for p in op["parameters"]]
                if "requestBody" in op:
                    v2["parameters"].append(_v2_parameter({}, ref))
                    v2["consumes"] = list(op["requestBody"]["content"])
                    if verb == "patch" and kind is NAMESPACE:
                        v2["consumes"].append("application/strategic-merge-patch+json")
                v2["produces"] = ["application/json", "application/yaml"]
                v2["responses"] = {"200": {"description": "OK", "schema": {"$ref": ref}}}
                v2ops[verb] = v2
            paths.setdefault(path, {}).update(v2ops)
    return {"swagger": "2.0", "info": {"title": "turbok", "version": __version__}, "paths": paths,
            "definitions": definitions}


@functools.cache
def v2_document(kinds: KindRegistry) -> str:
    """``/openapi/v2`` as JSON text."""
    return json.dumps(v2_spec(kinds), separators=(",", ":"))


@functools.cache
def v2_protobuf(kinds: KindRegistry) -> bytes:
    """``/openapi/v2`` as gnostic's ``openapi.v2.Document`` protobuf."""
    return encode_document(v2_spec(kinds))
