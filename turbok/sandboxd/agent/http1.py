"""A small HTTP/1.1 server connection: requests in, responses out, one thread per connection.

Enough of RFC 9112 for the agent's clients (turbok's router, the official client's
``requests``, curl): request line and headers (at most ``MAX_HEAD`` bytes),
bodies by ``Content-Length`` or chunked, responses with a length or chunked,
keep-alive. The agent never closes a connection first (see the package
docstring): after a response it waits for the next request until the peer
closes; an idle connection is reset (no TIME_WAIT) after ``IDLE_TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["BodyReader", "HttpError", "Request", "Response", "abort", "serve_http"]

MAX_HEAD = 64 * 1024
IDLE_TIMEOUT = 600.0
_REASONS = {200: "OK", 204: "No Content", 206: "Partial Content", 400: "Bad Request", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            416: "Range Not Satisfiable", 500: "Internal Server Error", 503: "Service Unavailable",
            507: "Insufficient Storage"}


class HttpError(Exception):
    """A request the connection cannot go on after (malformed); answered 400 and the connection reset."""


def abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset: no TIME_WAIT is left behind, on either side."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Stream:
    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(buffered)

    def fill(self) -> bool:
        try:
            data = self.sock.recv(256 * 1024)
        except (ConnectionError, TimeoutError, OSError):
            return False
        if not data:
            return False
        self.buf += data
        return True

    def read_line(self, limit: int) -> bytes | None:
        while True:
            at = self.buf.find(b"\n")
            if at >= 0:
                line = bytes(self.buf[:at + 1])
                del self.buf[:at + 1]
                return line
            if len(self.buf) > limit:
                raise HttpError("line too long")
            if not self.fill():
                return None

    def read(self, n: int) -> bytes:
        if not self.buf and not self.fill():
            return b""
        chunk = bytes(self.buf[:n])
        del self.buf[:n]
        return chunk


class BodyReader:
    """A request's body, read as it arrives (``read``) or whole (``read_all``)."""

    def __init__(self, stream: _Stream, length: int | None, chunked: bool) -> None:
        self._s = stream
        self._left = length if length is not None else 0
        self._chunked = chunked
        self._chunk_left = 0
        self.done = not chunked and not self._left

    def read(self, n: int = 256 * 1024) -> bytes:
        """Up to ``n`` bytes; b"" at the end. ``HttpError`` if the peer went away mid-body."""
        if self.done:
            return b""
        if not self._chunked:
            data = self._s.read(min(n, self._left))
            if not data:
                raise HttpError("the body ended early")
            self._left -= len(data)
            self.done = self._left == 0
            return data
        if self._chunk_left == 0:
            line = self._s.read_line(4096)
            if line is None:
                raise HttpError("the body ended early")
            try:
                self._chunk_left = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise HttpError("bad chunk size") from None
            if self._chunk_left == 0:
                while True:  # trailers, up to the empty line
                    trailer = self._s.read_line(MAX_HEAD)
                    if trailer is None or trailer in (b"\r\n", b"\n"):
                        break
                self.done = True
                return b""
        data = self._s.read(min(n, self._chunk_left))
        if not data:
            raise HttpError("the body ended early")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._s.read_line(16)  # the chunk's CRLF
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read():
            yield chunk

    def read_all(self, limit: int) -> bytes:
        out = bytearray()
        for chunk in self:
            out += chunk
            if len(out) > limit:
                raise HttpError(f"body larger than {limit} bytes")
        return bytes(out)

    def drain(self) -> None:
        for _ in self:
            pass


class Request:
    def __init__(self, method: str, target: str, headers: dict[str, str], body: BodyReader,
                 sock: socket.socket) -> None:
        self.method = method
        self.target = target
        raw_path, _, query = target.partition("?")
        #: The path as sent (percent-encoded): handlers decode it once, themselves.
        self.raw_path = raw_path
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
        self.headers = headers
        self.body = body
        self.sock = sock


class Response:
    """One response: ``start`` then ``write``s then ``end`` (or ``json``/``empty`` at once)."""

    def __init__(self, sock: socket.socket, head_only: bool) -> None:
        self.sock = sock
        self.head_only = head_only
        self.started = False
        self.chunked = False
        self.status = 0

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def start(self, status: int, headers: dict[str, str] | None = None, *, length: int | None = None) -> None:
        self.status = status
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        elif status not in (204, 304):
            lines.append("Transfer-Encoding: chunked")
            self.chunked = not self.head_only
        self._send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.started = True

    def write(self, data: bytes) -> None:
        if not data or self.head_only:
            return
        if self.chunked:
            self._send(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._send(data)

    def end(self) -> None:
        if self.chunked:
            self._send(b"0\r\n\r\n")
            self.chunked = False

    def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.start(status, {"Content-Type": "application/json", **(headers or {})}, length=len(data))
        self.write(data)

    def empty(self, status: int = 204) -> None:
        self.start(status, length=0 if status != 204 else None)


Handler = Callable[[Request, Response], None]


def serve_http(sock: socket.socket, buffered: bytes, handler: Handler) -> None:
    """Serve requests on ``sock`` until the peer closes; never closes first (resets when idle too long)."""
    stream = _Stream(sock, buffered)
    sock.settimeout(IDLE_TIMEOUT)
    resp: Response | None = None
    try:
        while True:
            line = stream.read_line(MAX_HEAD)
            if line is None:
                break
            if not line.strip():
                continue
            try:
                method, target, version = line.decode("latin-1").split()
                if not version.startswith("HTTP/1."):
                    raise ValueError
            except ValueError:
                raise HttpError("bad request line") from None
            headers: dict[str, str] = {}
            size = 0
            while True:
                h = stream.read_line(MAX_HEAD)
                if h is None:
                    raise HttpError("the head ended early")
                size += len(h)
                if size > MAX_HEAD:
                    raise HttpError("head too large")
                if h in (b"\r\n", b"\n"):
                    break
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            length = None
            if not chunked and headers.get("content-length"):
                try:
                    length = int(headers["content-length"])
                    if length < 0:
                        raise ValueError
                except ValueError:
                    raise HttpError("bad Content-Length") from None
            body = BodyReader(stream, length, chunked)
            resp = Response(sock, head_only=method == "HEAD")
            try:
                handler(Request(method, target, headers, body, sock), resp)
            except HttpError:
                raise
            except Exception as e:  # a bug: answer if nothing was sent yet, else the connection is lost
                if resp.started:
                    raise HttpError("failed mid-response") from e
                resp.json(500, {"code": "INTERNAL", "message": f"{type(e).__name__}: {e}"})
            if not body.done:
                body.drain()
    except HttpError:
        if resp is None or not resp.started:
            with contextlib.suppress(OSError):
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    except (ConnectionError, TimeoutError, OSError):
        pass
    abort(sock)
