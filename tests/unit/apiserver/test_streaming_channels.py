"""The channel.k8s.io protocols: negotiation, framing (binary and base64), resize, the statuses kube sends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from turbok.apiserver import streaming_channels as ch
from turbok.apiserver.streaming_channels import (
    EXEC_PROTOCOLS,
    PORTFORWARD_PROTOCOLS,
    ChannelConnection,
    ChannelProtocolError,
    negotiate,
    parse_resize,
)


def test_the_clients_order_decides() -> None:
    assert negotiate(["v4.channel.k8s.io", "v5.channel.k8s.io"], EXEC_PROTOCOLS) is ch.V4
    assert negotiate(["v5.channel.k8s.io", "v4.channel.k8s.io"], EXEC_PROTOCOLS) is ch.V5
    assert negotiate(["v3.channel.k8s.io", "base64.channel.k8s.io"], EXEC_PROTOCOLS) is ch.V1_BASE64
    assert negotiate([""], EXEC_PROTOCOLS) is ch.NONE
    assert negotiate(["v5.channel.k8s.io"], PORTFORWARD_PROTOCOLS) is None
    assert negotiate(["bogus"], EXEC_PROTOCOLS) is None


def test_versions_differ_in_status_and_close_signal() -> None:
    assert ch.V5.close_signal and ch.V5.status_on_error_channel
    assert not ch.V4.close_signal and ch.V4.status_on_error_channel
    assert not ch.V1.status_on_error_channel and not ch.V1_BASE64.binary


def test_resize_is_kubes_terminal_size_json() -> None:
    assert parse_resize(b'{"Width":120,"Height":40}') == (120, 40)
    for bad in (b"80x24", b'{"Width":80}', b'{"Width":-1,"Height":2}', b'{"Width":70000,"Height":2}'):
        with pytest.raises(ChannelProtocolError):
            parse_resize(bad)


def test_statuses_are_what_client_go_decodes() -> None:
    code = ch.exit_status(3)
    assert code["reason"] == "NonZeroExitCode" and code["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert ch.success_status() == {"metadata": {}, "status": "Success"}
    err = ch.internal_error_status('container not found ("c")')
    assert err["message"] == 'Internal error occurred: container not found ("c")' and err["code"] == 500


async def _echo_server(protocol: ch.ChannelProtocol) -> TestClient[web.Request, web.Application]:
    """A WebSocket that sends back, on channel+1, every message it receives; a status at the end."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=(protocol.name,) if protocol.name else ())
        await ws.prepare(request)
        conn = ChannelConnection(ws, protocol)
        try:
            while (message := await conn.receive()) is not None:
                channel, data = message
                if channel == ch.CLOSE_SIGNAL:
                    await conn.send(ch.STDOUT, b"closed " + data)
                else:
                    await conn.send((channel + 1) % 256, data)
        except ChannelProtocolError as e:
            await conn.send_status(ch.internal_error_status(str(e)))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.mark.parametrize("protocol", [ch.V5, ch.V4], ids=lambda p: p.name)
async def test_binary_messages_carry_the_channel_in_the_first_byte(protocol: ch.ChannelProtocol) -> None:
    client = await _echo_server(protocol)
    try:
        ws = await client.ws_connect("/", protocols=(protocol.name,))
        assert ws.protocol == protocol.name
        await ws.send_bytes(b"\x00hello")
        assert await ws.receive_bytes() == b"\x01hello"
        await ws.send_bytes(b"\xff\x00")
        if protocol.close_signal:
            assert await ws.receive_bytes() == b"\x01closed \x00"
        else:  # before v5, 255 is just a channel nobody uses
            assert await ws.receive_bytes() == b"\x00\x00"  # channel 255 + 1, modulo 256
        await ws.send_str("text is not binary")
        status: dict[str, Any] = json.loads((await ws.receive_bytes())[1:])
        assert "binary" in status["message"]
        await ws.close()
    finally:
        await client.close()


async def test_base64_messages_are_a_digit_and_base64() -> None:
    client = await _echo_server(ch.V4_BASE64)
    try:
        ws = await client.ws_connect("/", protocols=(ch.V4_BASE64.name,))
        await ws.send_str("0aGVsbG8=")
        assert await ws.receive_str() == "1aGVsbG8="
        await ws.send_str("0!!!")
        assert "base64" in json.loads(__import__("base64").b64decode((await ws.receive_str())[1:]))["message"]
        await ws.close()
    finally:
        await client.close()
