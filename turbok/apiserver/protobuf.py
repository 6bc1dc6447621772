"""Decoding the Kubernetes protobuf bodies kubectl sends for built-in kinds.

kubectl's typed clients send built-in objects as ``application/vnd.kubernetes.protobuf``
(``kubectl create secret``, ``create namespace``, ``run``, ``expose``, the
DeleteOptions of a delete). turbok answers in JSON, which kubectl accepts, and
decodes any message of the groups it serves (core/v1, discovery.k8s.io/v1,
coordination.k8s.io/v1, storage.k8s.io/v1, policy/v1, networking.k8s.io/v1, meta.k8s.io/v1) into the
JSON a client would have sent, from a table derived from upstream's
generated.proto and types.go (``turbok.api.gotypes``: ``api/schemas/proto_fields.json``,
made by scripts/proto_fields.py): field numbers and types from the proto, JSON names,
inlined structs (``Volume.volumeSource``) and which zero values mean something
(Go pointers) from the Go types. gogo-protobuf writes every plain Go field,
zero or not; a zero where Go would omit the field in JSON is dropped here, so
``storageClassName: ""`` (a pointer) survives and ``hostPort: 0`` does not.

Hand-read messages: the ``runtime.Unknown`` envelope, ``Quantity`` (a string),
``IntOrString``, ``Time``/``MicroTime`` (RFC 3339), ``Duration``,
``FieldsV1`` and ``RawExtension`` (embedded JSON).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
from collections.abc import Iterator
from typing import Any

from turbok.api import gotypes
from turbok.api.status import BadRequest, UnsupportedMediaType

__all__ = ["MEDIA_TYPE", "decode", "decode_message"]

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"

_META = "k8s.io.apimachinery.pkg.apis.meta.v1"
#: Deepest message nesting decoded (a Pod is about 12); deeper is a malformed or hostile body.
MAX_DEPTH = 64
#: Seconds of Go's zero time (0001-01-01T00:00:00Z): what gogo writes for an unset Time.
_ZERO_TIME = -62135596800

Row = list[Any]


def _table() -> dict[str, dict[int, Row]]:
    return gotypes.messages()


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
        if shift > 63:
            raise BadRequest("malformed protobuf varint")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one message; fixed-width values as their raw bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire in (1, 2, 5):
            if wire == 2:
                length, pos = _varint(buf, pos)
            else:
                length = 8 if wire == 1 else 4
            if pos + length > len(buf):
                raise BadRequest("truncated protobuf body")
            yield number, wire, buf[pos:pos + length]
            pos += length
        else:
            raise BadRequest(f"unsupported protobuf wire type {wire}")


def _signed(value: int, bits: int = 64) -> int:
    return value - (1 << 64) if value >= 1 << (bits - 1) and value < 1 << 64 else value


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise BadRequest("malformed protobuf body: a string field holds a number")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise BadRequest("malformed protobuf body: a string field is not UTF-8") from None


def _scalar(type_: str, wire: int, value: int | bytes) -> Any:
    if type_ == "string":
        return _text(value)
    if type_ == "bytes":
        if not isinstance(value, bytes):
            raise BadRequest("malformed protobuf body: a bytes field holds a number")
        return base64.b64encode(value).decode()
    if isinstance(value, bytes):
        if type_ in ("double", "fixed64") and len(value) == 8:
            return struct.unpack("<d" if type_ == "double" else "<Q", value)[0]
        if type_ in ("float", "fixed32") and len(value) == 4:
            return struct.unpack("<f" if type_ == "float" else "<I", value)[0]
        raise BadRequest(f"malformed protobuf body: a {type_} field has wire type {wire}")
    if type_ == "bool":
        return bool(value)
    if type_ in ("int32", "int64"):
        return _signed(value)
    if type_ in ("sint32", "sint64"):
        return (value >> 1) ^ -(value & 1)
    return value  # uint32, uint64


def _packed(type_: str, raw: bytes) -> list[Any]:
    """A packed repeated scalar (proto3 style; k8s writes them unpacked, but a client may not)."""
    out: list[Any] = []
    pos = 0
    while pos < len(raw):
        if type_ in ("double", "fixed64", "float", "fixed32"):
            size = 8 if type_ in ("double", "fixed64") else 4
            out.append(_scalar(type_, 1 if size == 8 else 5, raw[pos:pos + size]))
            pos += size
        else:
            value, pos = _varint(raw, pos)
            out.append(_scalar(type_, 0, value))
    return out


def _is_zero(value: Any) -> bool:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    return bool(value == "")


def _time(raw: bytes, micro: bool) -> str | None:
    if not raw:
        return None  # metav1.Time writes a zero time as an empty message
    parts = {n: v for n, _, v in _fields(raw) if isinstance(v, int)}
    seconds, nanos = _signed(parts.get(1, 0)), _signed(parts.get(2, 0))
    if seconds <= _ZERO_TIME and not nanos:
        return None
    try:
        when = dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(microseconds=nanos // 1000)
    except (OverflowError, OSError, ValueError):
        raise BadRequest("malformed protobuf body: a time out of range") from None
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _duration(raw: bytes) -> str:
    """A Go ``time.Duration`` (nanoseconds) as Go's String() writes it: ``1h2m3.5s``."""
    nanos = _signed(next((v for n, _, v in _fields(raw) if n == 1 and isinstance(v, int)), 0))
    sign, nanos = ("-", -nanos) if nanos < 0 else ("", nanos)
    if nanos == 0:
        return "0s"
    hours, rest = divmod(nanos, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = f"{rest / 10**9:.9f}".rstrip("0").rstrip(".")
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{seconds}s"
    return sign + text


def _embedded_json(raw: bytes) -> Any:
    data = next((v for n, _, v in _fields(raw) if n == 1 and isinstance(v, bytes)), b"")
    if not data:
        return {}
    try:
        return json.loads(data)
    except ValueError:
        raise BadRequest("malformed protobuf body: embedded data is not JSON") from None


def _special(name: str, raw: bytes) -> tuple[bool, Any]:
    """(handled, value) for the messages read by hand."""
    if name == "k8s.io.apimachinery.pkg.api.resource.Quantity":
        return True, next((_text(v) for n, _, v in _fields(raw) if n == 1), "0")
    if name == "k8s.io.apimachinery.pkg.util.intstr.IntOrString":
        parts = {n: v for n, _, v in _fields(raw)}
        if parts.get(1, 0) == 1:
            return True, _text(parts.get(3, b""))
        int_val = parts.get(2, 0)
        return True, _signed(int_val) if isinstance(int_val, int) else 0
    if name in (f"{_META}.Time", f"{_META}.MicroTime"):
        return True, _time(raw, name.endswith("MicroTime"))
    if name == f"{_META}.Duration":
        return True, _duration(raw)
    if name in (f"{_META}.FieldsV1", "k8s.io.apimachinery.pkg.runtime.RawExtension"):
        return True, _embedded_json(raw)
    return False, None


def decode_message(name: str, raw: bytes, depth: int = 0) -> Any:
    """One message as the JSON value Go would write for it."""
    handled, value = _special(name, raw)
    if handled:
        return value
    if depth > MAX_DEPTH:
        raise BadRequest(f"the protobuf body is nested more than {MAX_DEPTH} levels deep")
    rows = _table().get(name)
    if rows is None:
        raise UnsupportedMediaType(f"turbok cannot decode protobuf message {name}; send JSON")
    out: dict[str, Any] = {}
    for number, wire, value in _fields(raw):
        row = rows.get(number)
        if row is None:
            continue  # a field newer than the table: dropped, as an unknown JSON field would be
        json_name, type_ = row[1], row[2]
        if type_ == "map":
            if not isinstance(value, bytes):
                raise BadRequest(f"malformed protobuf body: {json_name} is not a map entry")
            key, item = _map_entry(row[3], row[4], value, depth)
            out.setdefault(json_name, {})[key] = item
            continue
        flags = row[4]
        if type_ in _SCALAR_TYPES:
            if row[3] == "r" and wire == 2 and type_ not in ("string", "bytes") and isinstance(value, bytes):
                out.setdefault(json_name, []).extend(_packed(type_, value))
                continue
            item = _scalar(type_, wire, value)
            if row[3] != "r" and "z" not in flags and _is_zero(item):
                out.pop(json_name, None)
                continue
        else:
            if not isinstance(value, bytes):
                raise BadRequest(f"malformed protobuf body: {json_name} is not a message")
            item = decode_message(type_, value, depth + 1)
            if item is None:  # an unset Time
                continue
            if "i" in flags and isinstance(item, dict):
                out.update(item)
                continue
        if row[3] == "r":
            out.setdefault(json_name, []).append(item)
        else:
            out[json_name] = item
    return out


_SCALAR_TYPES = frozenset({"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "double", "float",
                           "sint32", "sint64", "fixed32", "fixed64"})


def _map_entry(key_type: str, value_type: str, raw: bytes, depth: int) -> tuple[str, Any]:
    key: Any = ""
    value: Any = None
    for number, wire, v in _fields(raw):
        if number == 1:
            key = _scalar(key_type, wire, v)
        elif number == 2:
            if value_type in _SCALAR_TYPES:
                value = _scalar(value_type, wire, v)
            elif isinstance(v, bytes):
                value = decode_message(value_type, v, depth + 1)
    if value is None:
        value = "" if value_type in ("string", "bytes") else ({} if value_type not in _SCALAR_TYPES else 0)
    return str(key), value


def decode(body: bytes) -> dict[str, Any]:
    """A ``k8s\\x00`` + ``runtime.Unknown`` body as the JSON object it carries (apiVersion and kind set)."""
    if not body.startswith(_MAGIC):
        raise BadRequest("protobuf body without the k8s envelope")
    type_meta: dict[int, str] = {}
    raw = b""
    for number, _, value in _fields(body[len(_MAGIC):]):
        if number == 1 and isinstance(value, bytes):
            type_meta = {n: _text(v) for n, _, v in _fields(value)}
        elif number == 2 and isinstance(value, bytes):
            raw = value
        elif number == 3 and isinstance(value, bytes) and value:
            raise UnsupportedMediaType(f"protobuf bodies with contentEncoding {_text(value)!r} are not supported")
    api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
    name = gotypes.message_of(api_version, kind) or ""
    if not name and kind in ("DeleteOptions", "Status", "ListOptions", "GetOptions"):
        name = f"{_META}.{kind}"  # meta kinds sent under a group's version (``v1`` DeleteOptions)
    if name not in _table():
        raise UnsupportedMediaType(f"turbok decodes protobuf for core/v1, discovery.k8s.io/v1, coordination.k8s.io/"
                                   f"v1, storage.k8s.io/v1, policy/v1 and networking.k8s.io/v1 kinds, not "
                                   f"{api_version}/{kind}; send JSON")
    obj = decode_message(name, raw)
    if not isinstance(obj, dict):
        raise BadRequest(f"malformed protobuf body for {api_version}/{kind}")
    if kind not in ("DeleteOptions",):
        obj = {"apiVersion": api_version, "kind": kind, **obj}
    return obj
