"""OpenAPI v2 as the protobuf message kubectl downloads (gnostic's ``openapi.v2.Document``).

kubectl validates manifests on the client against OpenAPI v2 when it cannot
leave validation to the server: every kubectl before 1.24 (Debian 12's
``kubernetes-client`` is 1.20), and kubectl 1.32 for kinds the v3 documents
do not name. It asks only for ``application/com.github.proto-openapi.spec.v2@v1.0+protobuf``,
so the JSON document built by ``turbok.apiserver.openapi`` is encoded here into
that message. Field numbers are those of gnostic's ``openapiv2/OpenAPIv2.proto``;
vendor extensions, ``default``, ``enum`` and ``example`` travel as ``Any.yaml``
text (JSON, which is YAML). Keys the message has no field for are dropped.

Pure: a dict in, bytes out. Called by ``turbok.apiserver.openapi``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any

__all__ = ["MEDIA_TYPE", "encode_document"]

#: The Content-Type kube-apiserver answers with (what kubectl asks for, spelled its way).
MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"

_VARINT, _FIXED64, _BYTES = 0, 1, 2

Obj = dict[str, Any]


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64s are ten-byte two's complement, as protobuf writes them
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes(number: int, payload: bytes) -> bytes:
    return _key(number, _BYTES) + _varint(len(payload)) + payload


def _string(number: int, value: str) -> bytes:
    return _bytes(number, value.encode()) if value else b""


def _strings(number: int, values: Iterable[str]) -> bytes:
    return b"".join(_bytes(number, v.encode()) for v in values)


def _bool(number: int, value: bool) -> bytes:
    return _key(number, _VARINT) + b"\x01" if value else b""


def _int(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(int(value)) if value else b""


def _double(number: int, value: float) -> bytes:
    return _key(number, _FIXED64) + struct.pack("<d", float(value))


def _any(number: int, value: Any) -> bytes:
    # Any { google.protobuf.Any value = 1; string yaml = 2; }: JSON text is valid YAML.
    return _bytes(number, _bytes(2, json.dumps(value, separators=(",", ":")).encode()))


def _extensions(number: int, obj: Obj) -> bytes:
    # NamedAny { string name = 1; Any value = 2; }
    return b"".join(_bytes(number, _string(1, k) + _any(2, v)) for k, v in obj.items() if k.startswith("x-"))


def _named(number: int, items: Iterable[tuple[str, bytes]]) -> bytes:
    """Repeated Named* messages: ``{string name = 1; <Message> value = 2;}``."""
    return b"".join(_bytes(number, _string(1, name) + _bytes(2, value)) for name, value in items)


# ---------------------------------------------------------------- Schema

# Scalar fields of Schema: key -> (field number, encoder).
_SCHEMA_SCALARS: dict[str, tuple[int, Any]] = {
    "$ref": (1, _string), "format": (2, _string), "title": (3, _string), "description": (4, _string),
    "default": (5, _any), "multipleOf": (6, _double), "maximum": (7, _double), "exclusiveMaximum": (8, _bool),
    "minimum": (9, _double), "exclusiveMinimum": (10, _bool), "maxLength": (11, _int), "minLength": (12, _int),
    "pattern": (13, _string), "maxItems": (14, _int), "minItems": (15, _int), "uniqueItems": (16, _bool),
    "maxProperties": (17, _int), "minProperties": (18, _int), "discriminator": (26, _string),
    "readOnly": (27, _bool), "example": (30, _any),
}


def schema(s: Obj) -> bytes:
    """Encode one JSON schema (v2 dialect) as ``openapi.v2.Schema``."""
    out = bytearray()
    for key, (number, encode) in _SCHEMA_SCALARS.items():
        if key in s:
            out += encode(number, s[key])
    out += _strings(19, s.get("required") or ())
    for value in s.get("enum") or ():
        out += _any(20, value)
    extra = s.get("additionalProperties")
    if isinstance(extra, dict):
        out += _bytes(21, _bytes(1, schema(extra)))
    elif isinstance(extra, bool):
        out += _bytes(21, _key(2, _VARINT) + (b"\x01" if extra else b"\x00"))
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        out += _bytes(22, _strings(1, types))
    items = s.get("items")
    if isinstance(items, dict):
        out += _bytes(23, _bytes(1, schema(items)))
    for sub in s.get("allOf") or ():
        out += _bytes(24, schema(sub))
    if "properties" in s:
        out += _bytes(25, _named(1, ((k, schema(v)) for k, v in s["properties"].items())))
    out += _extensions(31, s)
    return bytes(out)


# ---------------------------------------------------------------- operations

# QueryParameterSubSchema and PathParameterSubSchema differ only in where the numbers fall.
_QUERY = {"required": 1, "in": 2, "description": 3, "name": 4, "type": 6, "format": 7}
_PATH = {"required": 1, "in": 2, "description": 3, "name": 4, "type": 5, "format": 6}
_HEADER = _PATH


def _parameter(p: Obj) -> bytes:
    """``ParametersItem`` holding a body parameter or a non-body one (query, path, header)."""
    if p.get("in") == "body":
        body = (_string(1, p.get("description", "")) + _string(2, p.get("name", "body")) + _string(3, "body")
                + _bool(4, bool(p.get("required"))) + _bytes(5, schema(p.get("schema") or {})) + _extensions(6, p))
        parameter = _bytes(1, body)
    else:
        where = p.get("in", "query")
        numbers, slot = {"query": (_QUERY, 3), "path": (_PATH, 4), "header": (_HEADER, 1)}.get(where, (_QUERY, 3))
        sub = bytearray()
        for key, number in sorted(numbers.items(), key=lambda kv: kv[1]):
            if key == "required":
                sub += _bool(number, bool(p.get(key)))
            elif key in p:
                sub += _string(number, str(p[key]))
        parameter = _bytes(2, _bytes(slot, bytes(sub)))
    return _bytes(1, parameter)


def _responses(responses: Obj) -> bytes:
    items = []
    for code, r in responses.items():
        response = _string(1, r.get("description", ""))
        if "schema" in r:
            response += _bytes(2, _bytes(1, schema(r["schema"])))
        items.append((str(code), _bytes(1, response)))  # ResponseValue { Response response = 1; }
    return _named(1, items)


def _operation(op: Obj) -> bytes:
    out = bytearray()
    out += _strings(1, op.get("tags") or ())
    out += _string(2, op.get("summary", ""))
    out += _string(3, op.get("description", ""))
    out += _string(5, op.get("operationId", ""))
    out += _strings(6, op.get("produces") or ())
    out += _strings(7, op.get("consumes") or ())
    for p in op.get("parameters") or ():
        out += _bytes(8, _parameter(p))
    if "responses" in op:
        out += _bytes(9, _responses(op["responses"]))
    out += _strings(10, op.get("schemes") or ())
    out += _bool(11, bool(op.get("deprecated")))
    out += _extensions(13, op)
    return bytes(out)


_VERBS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def _path_item(item: Obj) -> bytes:
    out = bytearray()
    for verb, number in _VERBS.items():
        if verb in item:
            out += _bytes(number, _operation(item[verb]))
    for p in item.get("parameters") or ():
        out += _bytes(9, _parameter(p))
    out += _extensions(10, item)
    return bytes(out)


def encode_document(doc: Obj) -> bytes:
    """Encode a Swagger 2.0 document (as JSON-decoded dicts) as ``openapi.v2.Document``."""
    info = doc.get("info") or {}
    out = bytearray()
    out += _string(1, doc.get("swagger", "2.0"))
    out += _bytes(2, _string(1, info.get("title", "")) + _string(2, info.get("version", ""))
                  + _string(3, info.get("description", "")))
    out += _string(3, doc.get("host", ""))
    out += _string(4, doc.get("basePath", ""))
    out += _strings(5, doc.get("schemes") or ())
    out += _strings(6, doc.get("consumes") or ())
    out += _strings(7, doc.get("produces") or ())
    paths = doc.get("paths") or {}
    out += _bytes(8, _named(2, ((p, _path_item(v)) for p, v in paths.items())))
    definitions = doc.get("definitions") or {}
    out += _bytes(9, _named(1, ((name, schema(s)) for name, s in definitions.items())))
    out += _extensions(16, doc)
    return bytes(out)
