"""Protocol buffers of ``process.v1`` (upstream ``packages/sandboxd/spec/process/v1/process.proto``), by hand.

The messages are few and flat, so they are encoded and decoded here with the
wire format's three types used (varint, length-delimited, nothing else) rather
than with a generated module and the protobuf runtime, which the agent could not
count on inside a sandbox. Unknown fields are skipped, as protobuf does.
Requests decode to plain dicts; responses are encoded from arguments.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ProtoError",
    "decode_execute_request",
    "decode_resize_request",
    "decode_signal_request",
    "decode_start_request",
    "decode_stdin_request",
    "empty",
    "execute_response",
    "start_exit",
    "start_init",
    "start_output",
]


class ProtoError(ValueError):
    """A message that is not valid protobuf for its type."""


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 are ten-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtoError("truncated or oversized varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value: int for varints, bytes for length-delimited) in order."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise ProtoError("truncated field")
            value, pos = data[pos:pos + size], pos + size
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _text(raw: Any) -> str:
    if not isinstance(raw, bytes):
        raise ProtoError("expected a string")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ProtoError("a string field is not UTF-8") from None


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _config(data: bytes) -> dict[str, Any]:
    command: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            command.append(_text(value))
        elif number == 2 and wire == 2:
            key = val = ""
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    key = _text(v)
                elif n == 2 and w == 2:
                    val = _text(v)
            env[key] = val
        elif number == 3 and wire == 2:
            cwd = _text(value)
    return {"command": command, "env": env, "cwd": cwd}


def decode_start_request(data: bytes) -> dict[str, Any]:
    """``StartRequest``: ``{"config": {...}, "pty": (cols, rows) | None}``."""
    config: dict[str, Any] = {"command": [], "env": {}, "cwd": None}
    pty = None
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            config = _config(value)
        elif number == 2 and wire == 2:
            cols = rows = 0
            for n, w, v in _fields(value):
                if w == 0 and n == 1:
                    cols = v & 0xFFFFFFFF
                elif w == 0 and n == 2:
                    rows = v & 0xFFFFFFFF
            pty = (cols, rows)
    return {"config": config, "pty": pty}


def decode_execute_request(data: bytes) -> dict[str, Any]:
    """``ExecuteRequest``: ``{"config": {...}}``."""
    return {"config": decode_start_request(data)["config"]}


def decode_stdin_request(data: bytes) -> dict[str, Any]:
    """``WriteStdinRequest``: ``{"process_id", "input": bytes | None, "eof": bool}``."""
    out: dict[str, Any] = {"process_id": 0, "input": None, "eof": False}
    for number, wire, value in _fields(data):
        if number == 1 and wire == 0:
            out["process_id"] = _int32(value)
        elif number == 2 and wire == 2:
            out["input"], out["eof"] = bytes(value), False
        elif number == 3 and wire == 2:
            out["input"], out["eof"] = None, True
    return out


def decode_signal_request(data: bytes) -> dict[str, Any]:
    """``SendSignalRequest``: ``{"process_id", "signal"}`` (the enum's number: 2, 9, 15; 0 unspecified)."""
    out = {"process_id": 0, "signal": 0}
    for number, wire, value in _fields(data):
        if wire == 0 and number in (1, 2):
            out["process_id" if number == 1 else "signal"] = _int32(value)
    return out


def decode_resize_request(data: bytes) -> dict[str, Any]:
    """``ResizeTTYRequest``: ``{"process_id", "cols", "rows"}``."""
    out = {"process_id": 0, "cols": 0, "rows": 0}
    names = {1: "process_id", 2: "cols", 3: "rows"}
    for number, wire, value in _fields(data):
        if wire == 0 and number in names:
            out[names[number]] = _int32(value) if number == 1 else value & 0xFFFFFFFF
    return out


def start_init(process_id: int) -> bytes:
    return _field(1, _int_field(1, process_id))


def start_output(stream: str, data: bytes) -> bytes:
    return _field(2 if stream == "stdout" else 3, data)


def start_exit(exit_code: int) -> bytes:
    return _field(4, _int_field(1, exit_code))


def execute_response(exit_code: int, stdout: bytes, stderr: bytes) -> bytes:
    out = _int_field(1, exit_code)
    if stdout:
        out += _field(2, stdout)
    if stderr:
        out += _field(3, stderr)
    return out


def empty() -> bytes:
    return b""
