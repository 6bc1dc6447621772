"""``pods/portforward`` over WebSockets, in both forms clients speak.

- **SPDY tunnelled in a WebSocket** (kubectl >= 1.30, subprotocol
  ``SPDY/3.1+portforward.k8s.io``; client-go's ``tools/portforward``): the
  binary messages carry a SPDY/3.1 connection (``streaming_spdy``). For each
  local connection kubectl opens two streams with headers ``streamType``
  (``error`` or ``data``), ``port`` and ``requestID``; the pair is forwarded
  to the Pod's port once both are open (the kubelet's ``httpstream`` handler:
  a pair not complete within ``PAIR_TIMEOUT`` gets an error). Ports come from
  the streams, not the query.
- **The channel protocol** (``v4.channel.k8s.io``, ``v4.base64.channel.k8s.io``
  or none; the Kubernetes Python client's ``portforward``): ports from the
  ``ports`` query parameter; port i uses channel 2i for data and 2i+1 for
  errors, each opened with the port as two little-endian bytes; one
  connection per port per WebSocket, which closes when every port is done.

Each forwarded connection is ``PodStreams.port_forward(pod, port)`` (a TCP
connection into the Pod's network namespace). A failure (nothing listens
there) is written to the error stream/channel as the kubelet words it:
``error forwarding port 8888 to pod NAME_NAMESPACE, uid UID: <why>``; kubectl
prints it. Bytes are copied both ways; a client's half-close (SPDY FIN) is
passed on to the Pod (``write_eof``) and the Pod's answer still comes back;
when the Pod closes, the client gets FIN and the other direction gets
``DRAIN_SECONDS`` to finish, as containerd's port-forward allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from turbok.api.status import ApiError, BadRequest
from turbok.apiserver.streaming import PodStreams
from turbok.apiserver.streaming_channels import (
    PORTFORWARD_PROTOCOLS,
    ChannelConnection,
    ChannelProtocol,
    ChannelProtocolError,
    negotiate,
    offered_protocols,
)
from turbok.apiserver.streaming_spdy import ProtocolError, SpdySession, SpdyStream
from turbok.printable import printable

__all__ = ["DRAIN_SECONDS", "PAIR_TIMEOUT", "TUNNEL_PROTOCOL", "parse_ports", "serve"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
#: Seconds the second stream of a pair may take to arrive (the kubelet's stream creation timeout).
PAIR_TIMEOUT = 30.0
#: Once the Pod closed a connection, seconds the client's direction gets to finish.
DRAIN_SECONDS = 1.0
CHUNK = 64 * 1024
#: Largest WebSocket message a client may send (kubectl's tunnel writes one SPDY frame per message).
MAX_MESSAGE = 16 * 1024 * 1024 + 64
#: Ports one channel-protocol request may name (each is a connection into the Pod).
MAX_PORTS = 128


def parse_ports(request: web.Request) -> list[int]:
    """The ``ports`` query parameter (repeated or comma-separated), as kube-apiserver converts it."""
    ports = []
    for value in request.query.getall("ports", []):
        for part in value.split(","):
            if not re.fullmatch(r"\d+", part):
                raise BadRequest(f'cannot convert to []int32: strconv.ParseUint: parsing "{part}": invalid syntax')
            if int(part) > 0xFFFF:
                raise BadRequest(f'cannot convert to []int32: strconv.ParseUint: parsing "{part}": value out of range')
            ports.append(int(part))
    return ports


async def serve(request: web.Request, pod: Obj, ports: list[int], streams: PodStreams) -> web.StreamResponse:
    offered = offered_protocols(request)
    forward = _Forwarder(pod, streams)
    if TUNNEL_PROTOCOL in offered:
        ws = web.WebSocketResponse(protocols=(TUNNEL_PROTOCOL,), max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        await _Tunnel(ws, forward).run()
        return ws
    protocol = negotiate(offered, PORTFORWARD_PROTOCOLS)
    if protocol is None:
        raise BadRequest(f"unable to upgrade: the WebSocket subprotocols offered ({', '.join(offered)}) are not "
                         f"supported; this server speaks {TUNNEL_PROTOCOL}, "
                         + ", ".join(p for p in PORTFORWARD_PROTOCOLS if p))
    if not ports:
        raise BadRequest('query parameter "ports" is required')
    if len(ports) > MAX_PORTS:
        raise BadRequest(f"at most {MAX_PORTS} ports may be forwarded by one request, not {len(ports)}")
    for port in ports:
        if port < 1:
            raise BadRequest(f'port "{port}" must be > 0')
    ws = web.WebSocketResponse(protocols=(protocol.name,) if protocol.name else (), max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    await _Channels(ws, protocol, ports, forward).run()
    return ws


class _Forwarder:
    """One forwarded connection: open it on the node, copy both ways, report a failure as the kubelet does."""

    def __init__(self, pod: Obj, streams: PodStreams) -> None:
        md = pod["metadata"]
        self.pod = pod
        self.streams = streams
        self.label = f"{md['name']}_{md.get('namespace', '')}, uid {md.get('uid', '')}"

    async def __call__(self, port: int, *, read: Callable[[], Awaitable[bytes]],
                       write: Callable[[bytes], Awaitable[None]], close: Callable[[], Awaitable[None]],
                       report: Callable[[str], Awaitable[None]], aborted: asyncio.Event) -> None:
        try:
            reader, writer = await self.streams.port_forward(self.pod, port)
        except Exception as e:  # the node's words go to the client, whatever they are
            why = e.message if isinstance(e, ApiError) else str(e) or type(e).__name__
            log.debug("port-forward to %s port %d: %s", printable(self.label), port, printable(why))
            with contextlib.suppress(ConnectionResetError):
                await report(f"error forwarding port {port} to pod {self.label}: {why}")
            return
        try:
            await _pipe(reader, writer, read=read, write=write, close=close, aborted=aborted)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, read: Callable[[], Awaitable[bytes]],
                write: Callable[[bytes], Awaitable[None]], close: Callable[[], Awaitable[None]],
                aborted: asyncio.Event) -> None:
    async def to_pod() -> None:
        while data := await read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # the client half-closed: the Pod may still answer

    async def from_pod() -> None:
        while data := await reader.read(CHUNK):
            await write(data)
        await close()

    up, down = asyncio.ensure_future(to_pod()), asyncio.ensure_future(from_pod())
    stop = asyncio.ensure_future(aborted.wait())
    try:
        await asyncio.wait({up, down, stop}, return_when=asyncio.FIRST_COMPLETED)
        if down.done() and not up.done():
            await asyncio.wait({up, stop}, timeout=DRAIN_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        elif up.done() and up.exception() is None and not down.done():
            await asyncio.wait({down, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down, stop):
            task.cancel()
        await asyncio.gather(up, down, stop, return_exceptions=True)


class _Tunnel:
    """SPDY streams from kubectl, paired by ``requestID`` and forwarded."""

    def __init__(self, ws: web.WebSocketResponse, forward: _Forwarder) -> None:
        self.ws = ws
        self.forward = forward
        self.session = SpdySession(self._send, self._on_stream)
        self.pairs: dict[str, dict[str, SpdyStream]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def _send(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)

    async def run(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.BINARY:
                    log.debug("port-forward tunnel: a %s message; closing", msg.type.name)
                    break
                await self.session.feed(msg.data)
        except ProtocolError as e:
            log.info("port-forward tunnel to %s: %s", printable(self.forward.label), e)
            with contextlib.suppress(ConnectionResetError):
                await self.session.goaway()
        except ConnectionResetError:
            pass
        finally:
            self.session.close()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.ws.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_stream(self, stream: SpdyStream) -> str | None:
        """The kubelet's checks of a new stream; the reason to refuse it, or None."""
        port = stream.header("port")
        if not port:
            return '"port" header is required'
        if not re.fullmatch(r"\d+", port) or not 0 < int(port) <= 0xFFFF:
            return f"unable to parse {port!r} as a port"
        kind = stream.header("streamType")
        if kind not in ("error", "data"):
            return f"invalid stream type {kind!r}" if kind else '"streamType" header is required'
        # Clients before requestID paired a data stream with the error stream opened just before it.
        request_id = stream.header("requestID") or str(stream.id if kind == "error" else stream.id - 2)
        pair = self.pairs.setdefault(request_id, {})
        if kind in pair:
            return f"a second {kind} stream for request {request_id}"
        pair[kind] = stream
        if len(pair) == 2:
            del self.pairs[request_id]
            self._spawn(self._forward(int(port), pair["data"], pair["error"]))
        else:
            self._spawn(self._expire(request_id, stream))
        return None

    async def _expire(self, request_id: str, stream: SpdyStream) -> None:
        await asyncio.sleep(PAIR_TIMEOUT)
        pair = self.pairs.get(request_id)
        if pair is not None and pair.get(stream.header("streamType")) is stream:
            del self.pairs[request_id]
            if "error" in pair:
                with contextlib.suppress(ConnectionResetError):
                    await pair["error"].write(f"timed out waiting for the streams of request {request_id}".encode())
            await _close(*pair.values())

    async def _forward(self, port: int, data: SpdyStream, error: SpdyStream) -> None:
        async def report(message: str) -> None:
            await error.write(message.encode())

        try:
            # A reset of the data stream (or the session's end) drops the connection to the Pod.
            await self.forward(port, read=data.read, write=data.write, close=data.close, report=report,
                               aborted=data.reset)
        except ConnectionResetError:
            pass
        finally:
            await _close(data, error)


async def _close(*streams: SpdyStream) -> None:
    for stream in streams:
        with contextlib.suppress(ConnectionResetError):
            await stream.close()


class _Channels:
    """The channel protocol: one connection per port, all on one WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, protocol: ChannelProtocol, ports: list[int],
                 forward: _Forwarder) -> None:
        self.conn = ChannelConnection(ws, protocol)
        self.ports = ports
        self.forward = forward
        self.inbound: list[asyncio.Queue[bytes]] = [asyncio.Queue() for _ in ports]
        self.closed = asyncio.Event()

    async def run(self) -> None:
        reader = asyncio.ensure_future(self._read())
        try:
            for i, port in enumerate(self.ports):
                opening = struct.pack("<H", port)
                await self.conn.send(2 * i, opening)
                await self.conn.send(2 * i + 1, opening)
            await asyncio.gather(*(self._port(i, port) for i, port in enumerate(self.ports)))
        except ConnectionResetError:
            pass
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self.conn.ws.close()

    async def _read(self) -> None:
        try:
            while (message := await self.conn.receive()) is not None:
                channel, data = message
                if channel % 2 == 0 and channel // 2 < len(self.ports) and data:
                    self.inbound[channel // 2].put_nowait(data)
        except ChannelProtocolError as e:
            log.info("port-forward to %s: %s", printable(self.forward.label), e)
        finally:
            self.closed.set()
            for queue in self.inbound:
                queue.put_nowait(b"")

    async def _port(self, i: int, port: int) -> None:
        async def report(message: str) -> None:
            await self.conn.send(2 * i + 1, message.encode())

        async def write(data: bytes) -> None:
            await self.conn.send(2 * i, data)

        async def nothing() -> None:
            return None  # the channel protocol has no half-close

        with contextlib.suppress(ConnectionResetError):
            await self.forward(port, read=self.inbound[i].get, write=write, close=nothing, report=report,
                               aborted=self.closed)
