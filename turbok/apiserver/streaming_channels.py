"""The ``channel.k8s.io`` WebSocket protocols: numbered channels in WebSocket messages.

Used by ``pods/exec`` and ``pods/attach`` (kubectl >= 1.30 offers only
``v5.channel.k8s.io``; the Python client ``v4.channel.k8s.io``) and by the
plain WebSocket ``pods/portforward`` (the Python client's ``portforward``).

A message is one channel byte, then that channel's bytes. Exec and attach use
channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize (JSON
``{"Width":80,"Height":24}``). The versions differ in what ends a session:

| subprotocol | error channel | half-close |
|---|---|---|
| ``channel.k8s.io``, ``base64.channel.k8s.io``, none | the error's text (nothing on success) | - |
| ``v4.channel.k8s.io``, ``v4.base64.channel.k8s.io`` | a ``Status`` (``Success``, ``NonZeroExitCode`` with an ``ExitCode`` cause) | - |
| ``v5.channel.k8s.io`` | as v4 | ``[255, channel]`` from the client closes that channel (stdin EOF) |

The base64 forms send text messages: the channel as an ASCII digit, then the
bytes in base64. Port-forward uses channel ``2i`` (data) and ``2i+1``
(error) for the i-th port, each opened by the server with the port as two
little-endian bytes. The server opens a session with an empty message on its
lowest channel that will carry output (kubelet's "connection established").
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

__all__ = [
    "CLOSE",
    "CLOSE_SIGNAL",
    "ERROR",
    "EXEC_PROTOCOLS",
    "PORTFORWARD_PROTOCOLS",
    "RESIZE",
    "STDERR",
    "STDIN",
    "STDOUT",
    "ChannelConnection",
    "ChannelProtocol",
    "ChannelProtocolError",
    "exit_status",
    "internal_error_status",
    "negotiate",
    "offered_protocols",
    "parse_resize",
    "success_status",
]

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
#: v5: a client message ``[CLOSE, channel]`` half-closes that channel.
CLOSE = 255
#: What ``ChannelConnection.receive`` gives as the channel of a v5 close signal (no real channel is negative).
CLOSE_SIGNAL = -1


class ChannelProtocolError(Exception):
    """A client message that breaks the protocol (wrong type, bad base64, unknown channel)."""


@dataclass(frozen=True)
class ChannelProtocol:
    name: str
    version: int  # 1 (pre-v4), 4 or 5
    binary: bool = True

    @property
    def status_on_error_channel(self) -> bool:
        return self.version >= 4

    @property
    def close_signal(self) -> bool:
        return self.version >= 5


V5 = ChannelProtocol("v5.channel.k8s.io", 5)
V4 = ChannelProtocol("v4.channel.k8s.io", 4)
V4_BASE64 = ChannelProtocol("v4.base64.channel.k8s.io", 4, binary=False)
V1 = ChannelProtocol("channel.k8s.io", 1)
V1_BASE64 = ChannelProtocol("base64.channel.k8s.io", 1, binary=False)
NONE = ChannelProtocol("", 1)

#: What each subresource speaks; the client's order of preference picks among them (``negotiate``).
EXEC_PROTOCOLS = {p.name: p for p in (V5, V4, V4_BASE64, V1, V1_BASE64, NONE)}
PORTFORWARD_PROTOCOLS = {p.name: p for p in (V4, V4_BASE64, NONE)}


def offered_protocols(request: web.Request) -> list[str]:
    """The client's ``Sec-WebSocket-Protocol`` values, in its order of preference (none: ``[""]``)."""
    offered = [p.strip() for header in request.headers.getall("Sec-WebSocket-Protocol", [])
               for p in header.split(",") if p.strip()]
    return offered or [""]


def negotiate(offered: list[str], supported: dict[str, ChannelProtocol]) -> ChannelProtocol | None:
    """The first protocol the client offers that ``supported`` has, as kube's wsstream picks."""
    for name in offered:
        if name in supported:
            return supported[name]
    return None


def parse_resize(data: bytes) -> tuple[int, int]:
    """(columns, rows) from a resize message (``{"Width": 80, "Height": 24}``)."""
    try:
        size = json.loads(data)
        width, height = int(size["Width"]), int(size["Height"])
    except (ValueError, KeyError, TypeError) as e:
        raise ChannelProtocolError(f"a resize message must be {{\"Width\": N, \"Height\": N}}: {e}") from None
    if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
        raise ChannelProtocolError("a terminal's width and height are 0-65535")
    return width, height


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_status(code: int) -> dict[str, Any]:
    """What kube-apiserver's stream translator sends for a command that exited with ``code`` (1-255)."""
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: command terminated with exit code {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def internal_error_status(message: str) -> dict[str, Any]:
    """``apierrors.NewInternalError``: how kube-apiserver reports a failure after the upgrade."""
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
            "reason": "InternalError", "details": {"causes": [{"message": message}]}, "code": 500}


class ChannelConnection:
    """A WebSocket (already upgraded) speaking one ``channel.k8s.io`` protocol."""

    def __init__(self, ws: web.WebSocketResponse, protocol: ChannelProtocol) -> None:
        self.ws = ws
        self.protocol = protocol

    async def send(self, channel: int, data: bytes) -> None:
        if self.protocol.binary:
            await self.ws.send_bytes(bytes((channel,)) + data)
        else:
            await self.ws.send_str(chr(ord("0") + channel) + base64.b64encode(data).decode())

    async def send_status(self, status: dict[str, Any]) -> None:
        """End a session on the error channel: a Status (v4, v5), or the failure's text (earlier)."""
        if self.protocol.status_on_error_channel:
            await self.send(ERROR, json.dumps(status, separators=(",", ":")).encode())
        elif status.get("status") != "Success":
            await self.send(ERROR, str(status.get("message", "")).encode())

    async def receive(self) -> tuple[int, bytes] | None:
        """The next (channel, data) from the client; (CLOSE_SIGNAL, bytes([channel])) for a v5 close signal;
        None once the client closed the WebSocket or the connection dropped."""
        while True:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None
            if msg.type == WSMsgType.BINARY:
                data: bytes = msg.data
                if not self.protocol.binary:
                    raise ChannelProtocolError(f"{self.protocol.name} takes text messages, not binary ones")
                if not data:
                    continue
                if data[0] == CLOSE and self.protocol.close_signal:
                    if len(data) != 2:
                        raise ChannelProtocolError("a close signal is two bytes: 255 and the channel")
                    return CLOSE_SIGNAL, data[1:]
                return data[0], data[1:]
            if msg.type == WSMsgType.TEXT:
                text: str = msg.data
                if self.protocol.binary:
                    raise ChannelProtocolError(f"{self.protocol.name or 'this protocol'} takes binary messages")
                if not text:
                    continue
                channel = ord(text[0]) - ord("0")
                try:
                    return channel, base64.b64decode(text[1:], validate=True)
                except (binascii.Error, ValueError):
                    raise ChannelProtocolError("a base64 channel message is not base64") from None
            # PING/PONG are answered by aiohttp itself.
