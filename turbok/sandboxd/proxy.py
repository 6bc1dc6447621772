"""Any port of a sandbox through the router: HTTP (streaming both ways) and websockets, to ``podIP:port``.

A request whose ``X-Sandbox-Port`` names a port the router does not serve itself
(see ``turbok.sandboxd.router``) is forwarded to the Pod's address on the pod
network, as upstream's sandbox-router does: method, path and query as sent,
headers but the hop-by-hop ones, ``Host`` (the Pod's address instead),
``Authorization`` (the router's token never reaches a sandbox) and ``Origin`` on
upgrades (backends such as Jupyter and code-server compare it with ``Host``);
``X-Forwarded-For``/``-Host``/``-Proto`` added. The body streams in and the
answer streams out, chunk by chunk (server-sent events, downloads); a websocket
upgrade is answered by the router and relayed message by message to a websocket
to the Pod (its subprotocols offered as the client offered them).

Bounds (``RouterConfig``): a request body of at most ``proxy_body_limit`` bytes
(413 past it, the upload cut); ``proxy_timeout`` seconds for the Pod to answer
and between two pieces of its answer (504 before an answer starts, a cut
answer after); a websocket has no timeout (its pings are its liveness). The
client may ask for less time with ``X-Sandbox-Timeout`` (seconds), never more.
Connections to the Pod are not kept: each is closed with a reset when its
exchange ends (a TIME_WAIT inside the sandbox would stop it from hibernating).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from turbok.sandboxd.context import Call
from turbok.sandboxd.errors import BadGateway, BadRequest, GatewayTimeout, PayloadTooLarge

__all__ = ["HOP_BY_HOP", "ProxyClient", "forward"]

#: Headers that belong to one connection, never forwarded (RFC 9110, 7.6.1), and the ones the router consumes.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "authorization"})
_CHUNK = 256 * 1024


def _lingerless() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() resets
    return sock


class ProxyClient:
    """The router's HTTP client to Pods: no kept connections, each closed with a reset."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(force_close=True, limit=0,
                                             socket_factory=lambda addr: _lingerless())
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _headers(request: web.Request, upgrade: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    connection_tokens = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    for name, value in request.headers.items():
        low = name.lower()
        if low in HOP_BY_HOP or low in connection_tokens or (upgrade and low in (
                "content-length", "origin", "sec-websocket-key", "sec-websocket-version",
                "sec-websocket-extensions", "sec-websocket-protocol")):
            continue
        out[name] = value
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    out["X-Forwarded-Host"] = request.headers.get("Host", "")
    out["X-Forwarded-Proto"] = request.scheme
    return out


def _timeout(call: Call) -> float:
    asked = call.request.headers.get("X-Sandbox-Timeout")
    limit = call.config.proxy_timeout
    if asked:
        try:
            value = float(asked)
        except ValueError:
            raise BadRequest("X-Sandbox-Timeout must be a number of seconds") from None
        if value > 0:
            return min(value, limit)
    return limit


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body larger than {limit} bytes (TURBOK_ROUTER_PROXY_BODY_LIMIT)")


async def _body(call: Call, over: list[bool]) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk; past the limit it stops and sets ``over[0]`` (aiohttp wraps what a body
    raises into a connection error, so the caller learns why from the flag)."""
    limit = call.config.proxy_body_limit
    sent = 0
    while chunk := await call.request.content.read(_CHUNK):
        sent += len(chunk)
        if sent > limit:
            over[0] = True
            raise _too_large(limit)
        yield chunk


async def forward(call: Call, client: ProxyClient, ip: str, port: int) -> web.StreamResponse:
    """Forward ``call``'s request to ``ip:port`` (see the module docstring)."""
    request = call.request
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    if upgrade:
        return await _websocket(call, client, ip, port)
    url = f"http://{ip}:{port}{request.rel_url.raw_path_qs}"
    if not request.rel_url.raw_path_qs.startswith("/"):
        url = f"http://{ip}:{port}/{request.rel_url.raw_path_qs}"
    timeout = _timeout(call)
    limit = call.config.proxy_body_limit
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)  # refused before the Pod sees any of it
    over = [False]
    data = _body(call, over) if request.body_exists else None
    try:
        upstream = await client.session.request(
            request.method, url, headers=_headers(request, False), data=data, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=timeout), skip_auto_headers=(
                "Accept-Encoding", "User-Agent", "Content-Type"))
    except PayloadTooLarge:
        raise
    except TimeoutError:
        raise GatewayTimeout(f"sandbox {call.sandbox} did not answer on port {port} within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as e:
        raise BadGateway(f"could not connect to sandbox {call.sandbox} on port {port}: nothing listens there "
                         f"({e.strerror or 'refused'})") from None
    except aiohttp.ClientError as e:
        if over[0]:
            raise _too_large(limit) from None
        raise BadGateway(f"sandbox {call.sandbox} broke off the answer on port {port}: {type(e).__name__}") from None
    async with upstream:
        out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                out.headers.add(name, value)
        if upstream.headers.get("Content-Length") is not None and request.method != "HEAD":
            out.content_length = int(upstream.headers["Content-Length"])
        await out.prepare(request)
        try:
            while chunk := await upstream.content.readany():
                await out.write(chunk)
        except (aiohttp.ClientError, TimeoutError):
            out.force_close()  # cut: the client sees a short answer, not a different one
        with contextlib.suppress(ConnectionError, RuntimeError):
            await out.write_eof()
        return out


async def _websocket(call: Call, client: ProxyClient, ip: str, port: int) -> web.StreamResponse:
    request = call.request
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    url = f"ws://{ip}:{port}{request.rel_url.raw_path_qs}"
    try:
        upstream = await client.session.ws_connect(url, headers=_headers(request, True), protocols=offered,
                                                   autoclose=False, autoping=False, max_msg_size=0,
                                                   timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0))
    except aiohttp.WSServerHandshakeError as e:
        raise BadGateway(f"sandbox {call.sandbox} refused the websocket on port {port} ({e.status})") from None
    except aiohttp.ClientError:
        raise BadGateway(f"could not open a websocket to sandbox {call.sandbox} on port {port}") from None
    ws = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), autoclose=False,
                               autoping=False, max_msg_size=0)
    await ws.prepare(request)

    async def relay(src: Any, dst: Any) -> None:
        async for msg in src:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.PING:
                await dst.ping(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                await dst.pong(msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                break
        with contextlib.suppress(Exception):
            await dst.close(code=src.close_code or aiohttp.WSCloseCode.OK)

    try:
        await asyncio.gather(relay(ws, upstream), relay(upstream, ws), return_exceptions=True)
    finally:
        await upstream.close()
        with contextlib.suppress(Exception):
            await ws.close()
    return ws
