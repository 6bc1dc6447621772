"""Decoding the Kubernetes protobuf bodies kubectl sends for built-in kinds.

kubectl's typed clients send core objects as ``application/vnd.kubernetes.protobuf``
(``kubectl create namespace`` does). turbok answers in JSON, which kubectl
accepts, and decodes the few request messages it can receive: the
``runtime.Unknown`` envelope, ``v1.Namespace`` (ObjectMeta fields users set),
``v1.ResourceQuota`` (``kubectl create quota``) and ``v1.DeleteOptions``. Field numbers are those of k8s.io/api generated.proto.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from turbok.api.status import BadRequest, UnsupportedMediaType

__all__ = ["MEDIA_TYPE", "decode"]

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise BadRequest("truncated protobuf body")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise BadRequest("truncated protobuf body")
            yield number, buf[pos:pos + length]
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(buf):
                raise BadRequest("truncated protobuf body")
        else:
            raise BadRequest(f"unsupported protobuf wire type {wire}")


def _str(v: int | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _map_entry(raw: bytes) -> tuple[str, str]:
    kv = {n: _str(v) for n, v in _fields(raw)}
    return kv.get(1, ""), kv.get(2, "")


def _object_meta(raw: bytes) -> dict[str, Any]:
    md: dict[str, Any] = {}
    names = {1: "name", 2: "generateName", 3: "namespace", 6: "resourceVersion"}
    for number, value in _fields(raw):
        if number in names:
            md[names[number]] = _str(value)
        elif number in (11, 12) and isinstance(value, bytes):
            key, val = _map_entry(value)
            md.setdefault("labels" if number == 11 else "annotations", {})[key] = val
        elif number == 14:
            md.setdefault("finalizers", []).append(_str(value))
    return md


def _namespace(raw: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {}}
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _object_meta(value)
    return obj


def _delete_options(raw: bytes) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, int):
            opts["gracePeriodSeconds"] = value
        elif number == 2 and isinstance(value, bytes):
            pre = {n: _str(v) for n, v in _fields(value)}
            opts["preconditions"] = {k: pre[n] for n, k in ((1, "uid"), (2, "resourceVersion")) if n in pre}
        elif number == 3:
            opts["orphanDependents"] = bool(value)
        elif number == 4:
            opts["propagationPolicy"] = _str(value)
        elif number == 5:
            opts.setdefault("dryRun", []).append(_str(value))
    return opts


def _scope_requirement(raw: bytes) -> dict[str, Any]:
    req: dict[str, Any] = {}
    for number, value in _fields(raw):
        if number in (1, 2):
            req["scopeName" if number == 1 else "operator"] = _str(value)
        elif number == 3:
            req.setdefault("values", []).append(_str(value))
    return req


def _resource_quota(raw: bytes) -> dict[str, Any]:
    """``kubectl create quota``: metadata and spec (hard: map of Quantity messages; scopes)."""
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {}}
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _object_meta(value)
        elif number == 2 and isinstance(value, bytes):
            spec: dict[str, Any] = {}
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    entry = dict(_fields(v))
                    value_ = entry.get(2)
                    quantity = dict(_fields(value_)) if isinstance(value_, bytes) else {}
                    spec.setdefault("hard", {})[_str(entry.get(1, b""))] = _str(quantity.get(1, b"0"))
                elif n == 2:
                    spec.setdefault("scopes", []).append(_str(v))
                elif n == 3 and isinstance(v, bytes):
                    spec["scopeSelector"] = {"matchExpressions": [_scope_requirement(r) for rn, r in _fields(v)
                                                                  if rn == 1 and isinstance(r, bytes)]}
            obj["spec"] = spec
    return obj


_DECODERS = {("v1", "Namespace"): _namespace, ("v1", "DeleteOptions"): _delete_options,
             ("v1", "ResourceQuota"): _resource_quota,
             ("meta.k8s.io/v1", "DeleteOptions"): _delete_options}


def decode(body: bytes) -> dict[str, Any]:
    if not body.startswith(_MAGIC):
        raise BadRequest("protobuf body without the k8s envelope")
    type_meta: dict[int, str] = {}
    raw = b""
    for number, value in _fields(body[len(_MAGIC):]):
        if number == 1 and isinstance(value, bytes):
            type_meta = {n: _str(v) for n, v in _fields(value)}
        elif number == 2 and isinstance(value, bytes):
            raw = value
    key = (type_meta.get(1, ""), type_meta.get(2, ""))
    decoder = _DECODERS.get(key)
    if decoder is None:
        raise UnsupportedMediaType(f"turbok decodes protobuf only for Namespace, ResourceQuota and DeleteOptions, "
                                   f"not {key[1]!r}; send JSON")
    return decoder(raw)
