"""The runtime protocol on the wire: headers, paths, bodies and exec-stream frames.

No I/O here. The router (``turbok.sandboxd``) and the clients
(``turbok.sdk.client``) both import this module, so the two ends cannot drift.

Every request carries the router's own token as ``Authorization: Bearer
<router token>`` (``auth_headers``); a token in the URL is refused, so it never
shows in a client's exception text or a log. Endpoints (relative to the router
URL), each for the sandbox named by the ``X-Sandbox-ID`` and
``X-Sandbox-Namespace`` headers:

=================  ==========================================================
``GET /``           health of the sandbox: ``{"status": "ok", "message": ...}``
``POST /execute``   ``{"command", "timeout_seconds"?}`` -> ``CommandResult`` JSON
``POST /upload``    multipart field ``file``; its filename is the relative path
``GET /download/P`` the file's bytes (``P`` quoted with ``quote_path``)
``GET /list/P``     ``[FileInfo JSON, ...]``
``GET /exists/P``   ``{"path": P, "exists": bool}``
``POST /turbok/v1/exec``  ``ExecRequest`` JSON -> a stream of frames (below)
=================  ==========================================================

Exec-stream frames are newline-delimited JSON objects (``application/x-ndjson``),
one per line, in this order: any number of output frames
``{"stream": "stdout"|"stderr", "data": <base64>}``, then exactly one final
frame, either ``{"exit_code": N, "timed_out": bool}`` or ``{"error": message}``
(the runtime failed after the stream began). A stream that ends without a
final frame was cut (the router went away).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from turbok.sdk.errors import ProtocolError

__all__ = [
    "DEFAULT_NAMESPACE",
    "EXEC_STREAM_PATH",
    "MAX_FRAME_BYTES",
    "NDJSON",
    "SANDBOX_ID_HEADER",
    "RETIRED_TOKEN_PATH_PREFIX",
    "SANDBOX_NAMESPACE_HEADER",
    "CommandResult",
    "ErrorFrame",
    "ExecRequest",
    "ExitFrame",
    "FileInfo",
    "Frame",
    "FrameDecoder",
    "OutputFrame",
    "auth_headers",
    "decode_frame",
    "encode_frame",
    "parse_timeout",
    "quote_path",
    "redact_url",
]

SANDBOX_ID_HEADER = "X-Sandbox-ID"
SANDBOX_NAMESPACE_HEADER = "X-Sandbox-Namespace"
DEFAULT_NAMESPACE = "default"
#: ``<router>/t/<token>/<endpoint>``: the retired capability URL; the router answers it 401.
RETIRED_TOKEN_PATH_PREFIX = "t"
EXEC_STREAM_PATH = "turbok/v1/exec"
NDJSON = "application/x-ndjson"
#: Longest frame line a decoder accepts; the router's frames stay far below (64 KiB of data).
MAX_FRAME_BYTES = 1024 * 1024


def quote_path(path: str) -> str:
    """A sandbox-relative path as one URL segment (``/`` quoted), as the official client sends it."""
    return urllib.parse.quote(path, safe="")


def auth_headers(token: str) -> dict[str, str]:
    """The header that carries the router token, e.g. the official client's ``extra_headers``."""
    return {"Authorization": f"Bearer {token}"}


def redact_url(url: str) -> str:
    """``url`` with the token of a retired capability URL masked, for messages (one may linger in a script)."""
    scheme, sep, rest = url.partition("://")
    marker = f"/{RETIRED_TOKEN_PATH_PREFIX}/"
    head, found, tail = rest.partition(marker)
    if not found:
        return url
    _, slash, after = tail.partition("/")
    return f"{scheme}{sep}{head}{marker}***{slash}{after}"


def parse_timeout(value: Any, *, name: str = "timeout_seconds") -> float | None:
    """A positive, finite number of seconds, or None; ``ValueError`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number of seconds, not {value}")
    return float(value)


# --- exec-stream frames ------------------------------------------------------


@dataclass(frozen=True)
class OutputFrame:
    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class ExitFrame:
    exit_code: int
    timed_out: bool = False


@dataclass(frozen=True)
class ErrorFrame:
    message: str


Frame = OutputFrame | ExitFrame | ErrorFrame


def encode_frame(frame: Frame) -> bytes:
    """One frame as one line of JSON, newline included."""
    obj: dict[str, Any]
    if isinstance(frame, OutputFrame):
        obj = {"stream": frame.stream, "data": base64.b64encode(frame.data).decode("ascii")}
    elif isinstance(frame, ExitFrame):
        obj = {"exit_code": frame.exit_code, "timed_out": frame.timed_out}
    else:
        obj = {"error": frame.message}
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode_frame(line: bytes) -> Frame:
    """Parse one frame line (without or with its newline); ``ProtocolError`` if malformed."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"exec stream: a frame is not JSON: {line[:80]!r}") from e
    if not isinstance(obj, dict):
        raise ProtocolError(f"exec stream: a frame is not an object: {line[:80]!r}")
    stream = obj.get("stream")
    if stream in ("stdout", "stderr"):
        try:
            return OutputFrame(stream=stream, data=base64.b64decode(obj["data"], validate=True))
        except (KeyError, TypeError, binascii.Error) as e:
            raise ProtocolError(f"exec stream: bad {stream} frame: {line[:80]!r}") from e
    if "exit_code" in obj:
        code, timed_out = obj["exit_code"], obj.get("timed_out", False)
        if isinstance(code, bool) or not isinstance(code, int) or not isinstance(timed_out, bool):
            raise ProtocolError(f"exec stream: bad exit frame: {line[:80]!r}")
        return ExitFrame(exit_code=code, timed_out=timed_out)
    if "error" in obj:
        return ErrorFrame(message=str(obj["error"]))
    raise ProtocolError(f"exec stream: unknown frame: {line[:80]!r}")


class FrameDecoder:
    """Turns the bytes of an exec stream, in chunks of any size, into frames."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        start = 0
        while (end := self._buf.find(b"\n", start)) >= 0:
            if end > start:
                frames.append(decode_frame(bytes(self._buf[start:end])))
            start = end + 1
        del self._buf[:start]
        if len(self._buf) > self._max:
            raise ProtocolError(f"exec stream: a frame is longer than {self._max} bytes")
        return frames

    def close(self) -> None:
        """Call at the end of the stream: a partial frame left over means it was cut."""
        if self._buf.strip():
            raise ProtocolError("exec stream ended in the middle of a frame")


# --- request and response bodies ---------------------------------------------


@dataclass(frozen=True)
class ExecRequest:
    """Body of ``POST /turbok/v1/exec``: run ``argv`` (no shell) and stream its output."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout_seconds: float | None = None
    stdin: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"argv": list(self.argv)}
        if self.env:
            obj["env"] = dict(self.env)
        if self.cwd is not None:
            obj["cwd"] = self.cwd
        if self.timeout_seconds is not None:
            obj["timeout_seconds"] = self.timeout_seconds
        if self.stdin is not None:
            obj["stdin"] = base64.b64encode(self.stdin).decode("ascii")
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> ExecRequest:
        """Validate a decoded body; ``ValueError`` says what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("body must be a JSON object")
        argv = obj.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a non-empty list of strings")
        if any("\0" in a for a in argv):
            raise ValueError("argv must not contain NUL characters")
        env = obj.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise ValueError("env must map names (non-empty, no '=') to strings")
        cwd = obj.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd):
            raise ValueError("cwd must be an absolute path inside the sandbox")
        stdin = obj.get("stdin")
        if stdin is not None:
            try:
                stdin = base64.b64decode(stdin, validate=True)
            except (TypeError, binascii.Error) as e:
                raise ValueError("stdin must be base64") from e
        return cls(
            argv=tuple(argv),
            env=env,
            cwd=cwd,
            timeout_seconds=parse_timeout(obj.get("timeout_seconds")),
            stdin=stdin,
        )


@dataclass(frozen=True)
class CommandResult:
    """Answer of ``POST /execute`` (the official client's ``ExecutionResult``, plus ``truncated``)."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    #: True when stdout or stderr was cut at the router's output limit (a note ends stderr).
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "truncated": self.truncated,
        }

    @classmethod
    def from_json(cls, obj: Any) -> CommandResult:
        try:
            return cls(
                stdout=str(obj["stdout"]),
                stderr=str(obj["stderr"]),
                exit_code=int(obj["exit_code"]),
                timed_out=bool(obj.get("timed_out", False)),
                truncated=bool(obj.get("truncated", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"bad execute result: {str(obj)[:200]}") from e


@dataclass(frozen=True)
class FileInfo:
    """One entry of ``GET /list/P``; ``type`` is "file" or "directory" (the official client's two)."""

    name: str
    size: int
    type: Literal["file", "directory"]
    #: Modification time, seconds since the epoch.
    mod_time: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "type": self.type, "mod_time": self.mod_time}

    @classmethod
    def from_json(cls, obj: Any) -> FileInfo:
        try:
            kind = obj["type"]
            if kind not in ("file", "directory"):
                raise ValueError(kind)
            return cls(
                name=str(obj["name"]), size=int(obj["size"]), type=kind, mod_time=float(obj["mod_time"])
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"bad file entry: {str(obj)[:200]}") from e
