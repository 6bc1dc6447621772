"""What each SDK operation sends and how its answer is read: no I/O, shared by both twins.

``turbok.sdk.client`` (sync) and ``turbok.sdk.aio`` (async) only move bytes:
they build a ``Request`` here, send it with httpx, and hand the answer back to
the ``parse_*`` functions or a ``FrameSink``. Keeping the logic here keeps the
twins thin and identical in behaviour.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from turbok.sdk.errors import CommandFailed, ProtocolError, SdkError, TransportError, error_from_response
from turbok.sdk.wire import (
    EXEC_STREAM_PATH,
    SANDBOX_ID_HEADER,
    SANDBOX_NAMESPACE_HEADER,
    CommandResult,
    ErrorFrame,
    ExecRequest,
    ExitFrame,
    FileInfo,
    FrameDecoder,
    OutputFrame,
    auth_headers,
    quote_path,
)

__all__ = [
    "CHUNK",
    "ERROR_BODY_LIMIT",
    "SERVER_DEFAULT_TIMEOUT",
    "FrameSink",
    "Request",
    "error_for",
    "exists_request",
    "headers",
    "list_request",
    "parse_exists",
    "parse_list",
    "parse_result",
    "read_request",
    "run_request",
    "stream_request",
    "transport_errors",
    "write_request",
]

#: The router's default command timeout; the HTTP read waits this long plus a margin when none is given.
SERVER_DEFAULT_TIMEOUT = 300.0
_TIMEOUT_MARGIN = 10.0
ERROR_BODY_LIMIT = 64 * 1024
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    endpoint: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Seconds to wait for the answer, when longer than the connection's default (commands).
    read_timeout: float | None = None

    def send_kwargs(self, default_timeout: float | None) -> dict[str, Any]:
        if self.read_timeout is None:
            return self.kwargs
        return {**self.kwargs, "timeout": httpx.Timeout(default_timeout, read=self.read_timeout)}


def headers(token: str, namespace: str, name: str) -> dict[str, str]:
    out = {SANDBOX_ID_HEADER: name, SANDBOX_NAMESPACE_HEADER: namespace}
    if token:  # without one the router answers 401, which says what to send
        out.update(auth_headers(token))
    return out


@contextlib.contextmanager
def transport_errors(url: str) -> Iterator[None]:
    """httpx's transport failures as ``TransportError`` (works around awaits too)."""
    try:
        yield
    except httpx.TransportError as e:
        raise TransportError(f"cannot talk to the sandbox router at {url}: {e or type(e).__name__}") from e


def error_for(response: httpx.Response, body: bytes) -> SdkError:
    return error_from_response(response.status_code, body[:ERROR_BODY_LIMIT])


def _read_timeout(timeout: float | None) -> float:
    return (timeout if timeout is not None else SERVER_DEFAULT_TIMEOUT) + _TIMEOUT_MARGIN


def run_request(command: str, timeout: float | None) -> Request:
    payload: dict[str, Any] = {"command": command}
    if timeout is not None:
        payload["timeout_seconds"] = timeout
    return Request("POST", "execute", {"json": payload}, read_timeout=_read_timeout(timeout))


def parse_result(response: httpx.Response, *, check: bool) -> CommandResult:
    try:
        result = CommandResult.from_json(response.json())
    except ValueError as e:
        raise ProtocolError(f"execute answered something that is not JSON: {response.text[:200]}") from e
    if check and (result.exit_code != 0 or result.timed_out):
        raise CommandFailed(result)
    return result


def stream_request(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    timeout: float | None,
    stdin: bytes | None,
) -> Request:
    body = ExecRequest(
        argv=list(argv), env=dict(env or {}), cwd=cwd, timeout_seconds=timeout, stdin=stdin
    ).to_json()
    # Validated here as the router will, so a bad argv fails before any network traffic.
    ExecRequest.from_json(json.loads(json.dumps(body)))
    return Request("POST", EXEC_STREAM_PATH, {"json": body}, read_timeout=_read_timeout(timeout))


class FrameSink:
    """Reads an exec stream's bytes: hands out output frames, keeps the exit status."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self.exit_code: int | None = None
        self.timed_out = False

    def feed(self, chunk: bytes) -> list[OutputFrame]:
        out: list[OutputFrame] = []
        for frame in self._decoder.feed(chunk):
            if isinstance(frame, OutputFrame):
                out.append(frame)
            elif isinstance(frame, ExitFrame):
                self.exit_code, self.timed_out = frame.exit_code, frame.timed_out
            elif isinstance(frame, ErrorFrame):
                raise SdkError(frame.message)
        return out

    def finish(self) -> None:
        self._decoder.close()
        if self.exit_code is None:
            raise ProtocolError("the exec stream ended before the command did (router stopped?)")


def read_request(path: str) -> Request:
    return Request("GET", f"download/{quote_path(path)}")


def write_request(path: str, data: bytes | str | IO[bytes]) -> Request:
    if isinstance(data, str):
        data = data.encode()
    return Request("POST", "upload", {"files": {"file": (path, data, "application/octet-stream")}})


def list_request(path: str) -> Request:
    return Request("GET", f"list/{quote_path(path)}")


def parse_list(response: httpx.Response) -> list[FileInfo]:
    entries = response.json()
    if not isinstance(entries, list):
        raise ProtocolError(f"list answered {str(entries)[:200]}")
    return [FileInfo.from_json(e) for e in entries]


def exists_request(path: str) -> Request:
    return Request("GET", f"exists/{quote_path(path)}")


def parse_exists(response: httpx.Response) -> bool:
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("exists"), bool):
        raise ProtocolError(f"exists answered {str(body)[:200]}")
    return bool(body["exists"])
