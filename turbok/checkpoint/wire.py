"""The agent's wire protocol: framed JSON headers with optional raw bodies, over TCP.

One frame is ``>I`` (header length), a JSON header, then, when the header has
``"size": n``, exactly ``n`` raw bytes. A reply is a frame whose header has
``"ok": true`` or ``"ok": false, "error": <class name>, "message": ...``.

Why not HTTP: bulk data (replicas, restores) is received with ``recv_into``
straight into the destination mapping (reporting progress so the receiver
can hash as it goes), and sent from a mapping with ``sendall`` (``sendfile``
from tmpfs measured slower over loopback here) or from a disk file with
``sendfile``; with no framework copy in between the replication path stays
near raw loopback speed. The same protocol serves the training-process
library and peer agents; Prometheus metrics are on their own HTTP port.

Called by agent.py (server side), tiers/peer.py and manager.py (client side).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from turbok.checkpoint.errors import AgentUnavailableError, error_from_wire

__all__ = ["Client", "parse_address", "recv_body", "recv_header", "recv_into", "send_frame", "sendfile"]

_LEN = struct.Struct(">I")
_REPORT = 8 << 20
_MAX_HEADER = 64 << 20


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"agent address {address!r} must be HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def send_frame(sock: socket.socket, header: dict[str, Any], body: memoryview | bytes | None = None) -> None:
    if body is not None:
        header = {**header, "size": memoryview(body).nbytes}
    raw = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(_LEN.pack(len(raw)) + raw)
    if body is not None and memoryview(body).nbytes:
        sock.sendall(body)


def sendfile(sock: socket.socket, header: dict[str, Any], path: str, offset: int, length: int) -> None:
    """Send a frame whose body is a range of a file, without copying it through Python."""
    raw = json.dumps({**header, "size": length}, separators=(",", ":")).encode()
    sock.sendall(_LEN.pack(len(raw)) + raw)
    with open(path, "rb") as f:
        done = 0
        while done < length:
            n = os.sendfile(sock.fileno(), f.fileno(), offset + done, length - done)
            if n == 0:
                raise EOFError(f"{path} ended early")
            done += n


def recv_into(sock: socket.socket, dest: memoryview, *, on_chunk: Callable[[int, memoryview], None] | None = None) -> None:
    """Fill ``dest`` from ``sock``; ``on_chunk(pos, view)`` after every 8 MiB or so (and at the end)."""
    got = reported = 0
    while got < dest.nbytes:
        n = sock.recv_into(dest[got:], min(dest.nbytes - got, 16 << 20))
        if n == 0:
            raise ConnectionError("connection closed in the middle of a body")
        got += n
        if on_chunk is not None and (got - reported >= _REPORT or got == dest.nbytes):
            on_chunk(reported, dest[reported:got])
            reported = got


def recv_body(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    recv_into(sock, memoryview(buf))
    return bytes(buf)


def recv_header(sock: socket.socket) -> dict[str, Any] | None:
    """The next header, or None when the peer closed the connection between frames."""
    first = sock.recv(_LEN.size, socket.MSG_WAITALL)
    if not first:
        return None
    if len(first) < _LEN.size:
        raise ConnectionError("connection closed in the middle of a frame")
    (n,) = _LEN.unpack(first)
    if n > _MAX_HEADER:
        raise ConnectionError(f"frame header of {n} bytes is too large")
    header = json.loads(recv_body(sock, n))
    if not isinstance(header, dict):
        raise ConnectionError("frame header is not an object")
    return header


def _kernel_timeout(sock: socket.socket, seconds: float) -> None:
    """Make ``sock`` blocking, with the timeout enforced by the kernel (SO_SNDTIMEO/SO_RCVTIMEO).

    A Python-level timeout puts the socket in non-blocking mode, so ``sendall``
    of a large body becomes a poll() and a partial send() per socket buffer:
    that cost 40% of a 1 GiB loopback copy here. With kernel timeouts a send or
    receive that makes no progress for ``seconds`` fails with EAGAIN
    (BlockingIOError), which ``request`` treats as a timeout.
    """
    sock.settimeout(None)
    whole = int(seconds)
    tv = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)


class Client:
    """One connection to an agent; calls are serialized by a lock. Reconnects once on a broken connection."""

    def __init__(self, address: str, *, timeout: float = 30.0, token: str = "") -> None:
        self.address = address
        self.timeout = timeout
        self.token = token
        self._sock: socket.socket | None = None
        self.lock = threading.RLock()

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            # An idle connection that is readable was closed by the agent (e.g. it restarted): reconnect
            # now rather than fail a request that may not be safe to repeat.
            readable, _, _ = select.select([self._sock], [], [], 0)
            if readable:
                self.close()
        if self._sock is None:
            host, port = parse_address(self.address)
            try:
                sock = socket.create_connection((host, port), timeout=self.timeout)
            except OSError as e:
                raise AgentUnavailableError(f"checkpoint agent at {self.address} is not reachable: {e}") from e
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self._sock

    def request(self, op: str, body: memoryview | bytes | None = None, *, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and read the reply header; the caller reads any reply body
        (``reply["size"]`` bytes) with ``recv_into``/``recv_body`` on ``self.sock`` while holding ``lock``.
        """
        header = {"op": op, **fields}
        if self.token:
            header["token"] = self.token
        with self.lock:
            for attempt in (0, 1):
                sock = self._connect()
                _kernel_timeout(sock, timeout if timeout is not None else self.timeout)
                try:
                    send_frame(sock, header, body)
                    reply = recv_header(sock)
                    if reply is None:
                        raise ConnectionError("agent closed the connection")
                    break
                except (OSError, ConnectionError, ValueError) as e:
                    self.close()
                    # Only retry when nothing can have been done: a fresh connection that broke at once.
                    if attempt or body is not None or isinstance(e, TimeoutError | BlockingIOError):
                        raise AgentUnavailableError(f"checkpoint agent at {self.address}: {e}") from e
            assert reply is not None
            if not reply.get("ok"):
                raise error_from_wire(str(reply.get("error", "")), str(reply.get("message", "agent error")))
            return reply

    @property
    def sock(self) -> socket.socket:
        assert self._sock is not None
        return self._sock

    def call(self, op: str, body: memoryview | bytes | None = None, *, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """``request`` for replies without a body."""
        with self.lock:
            reply = self.request(op, body, timeout=timeout, **fields)
            if reply.get("size"):
                recv_body(self.sock, int(reply["size"]))
            return reply

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
