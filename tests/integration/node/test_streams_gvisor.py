"""Pod streams end to end: the API server's handlers, the node's ``NodeStreams``, real Pods under gVisor.

Logs (as written, with timestamps, tail, follow to the container's end), exec
over ``v5.channel.k8s.io`` (output, exit code, stdin, a terminal), exec into a
container that is not running, and port-forward into a Pod's network namespace
(a unique pod network, root and nft needed) with a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from tests.unit.node.conftest import NodeHarness, pod
from turbok.apiserver.app import create_app
from turbok.apiserver.streaming import stream_handler
from turbok.node.streams import NodeStreams

pytestmark = pytest.mark.integration

IMAGE = "python-runtime-sandbox"
TOKEN = "streams"
PODS = "/api/v1/namespaces/default/pods"
Api = TestClient[web.Request, web.Application]


def _c(name: str, script: str, **kw: object) -> dict[str, object]:
    return {"name": name, "image": IMAGE, "command": ["/bin/sh", "-c", script], **kw}


@pytest.fixture
async def api(real_node: NodeHarness) -> AsyncIterator[Api]:
    streams = NodeStreams(real_node.runtime, node_name=real_node.node.name if real_node.node else None)
    app = create_app(real_node.registry, token=TOKEN, metrics_registry=CollectorRegistry(),
                     stream_handler=stream_handler(streams))
    client = TestClient(TestServer(app, host="127.0.0.1"), headers={"Authorization": f"Bearer {TOKEN}"})
    await client.start_server()
    yield client
    await client.close()


async def session(api: Api, name: str, params: list[tuple[str, str]],
                  send: list[bytes] | None = None) -> tuple[bytes, bytes, dict[str, Any]]:
    ws = await api.ws_connect(f"{PODS}/{name}/exec", params=params, protocols=("v5.channel.k8s.io",))
    for message in send or []:
        await ws.send_bytes(message)
    out, err, status = b"", b"", {}
    async for msg in ws:
        assert msg.type == WSMsgType.BINARY
        if msg.data[:1] == b"\x01":
            out += msg.data[1:]
        elif msg.data[:1] == b"\x02":
            err += msg.data[1:]
        elif msg.data[:1] == b"\x03" and len(msg.data) > 1:
            status = json.loads(msg.data[1:])
    return out, err, status


async def test_logs_and_exec_of_a_gvisor_pod(real_node: NodeHarness, api: Api) -> None:
    real_node.create(pod("talker", node=None, containers=[_c("main", "echo out; echo err >&2; sleep 600")]))
    await real_node.wait_ready("talker", timeout=60)
    for _ in range(100):
        body = await (await api.get(f"{PODS}/talker/log")).read()
        if body == b"out\nerr\n":
            break
        await asyncio.sleep(0.05)
    assert body == b"out\nerr\n"
    stamped = (await (await api.get(f"{PODS}/talker/log", params={"timestamps": "true", "tailLines": "1"})).read())
    when, text = stamped.split(b" ", 1)
    assert text == b"err\n" and when.endswith(b"Z") and when[:2] == b"20"
    out, err, status = await session(api, "talker", [("command", "sh"), ("command", "-c"),
                                                     ("command", "echo $((6*7)); echo e >&2; exit 3"),
                                                     ("stdout", "1"), ("stderr", "1")])
    assert (out, err, status["reason"]) == (b"42\n", b"e\n", "NonZeroExitCode")
    out, _, status = await session(api, "talker", [("command", "wc"), ("command", "-c"), ("stdin", "1"),
                                                   ("stdout", "1")], send=[b"\x00twelve bytes", b"\xff\x00"])
    assert out.strip() == b"12" and status == {"metadata": {}, "status": "Success"}
    out, _, status = await session(api, "talker", [("command", "sh"), ("command", "-c"),
                                                   ("command", "sleep 1; stty size"), ("tty", "1"), ("stdin", "1"),
                                                   ("stdout", "1")], send=[b'\x04{"Width":90,"Height":25}'])
    assert b"25 90" in out and status["status"] == "Success"


async def test_logs_survive_a_restart_of_the_node(real_node: NodeHarness) -> None:
    from turbok.node.node import NodeSettings

    real_node.create(pod("keeper", node=None, containers=[_c("main", "echo kept; sleep 600")]))
    await real_node.wait_ready("keeper", timeout=60)
    await real_node.stop()  # the control plane goes away; the Pod's sandbox runs on
    await real_node.start(settings=NodeSettings(relist_seconds=0.2))
    streams = NodeStreams(real_node.runtime)
    app = create_app(real_node.registry, token=TOKEN, metrics_registry=CollectorRegistry(),
                     stream_handler=stream_handler(streams))
    client = TestClient(TestServer(app, host="127.0.0.1"), headers={"Authorization": f"Bearer {TOKEN}"})
    await client.start_server()
    try:
        for _ in range(100):
            body = await (await client.get(f"{PODS}/keeper/log")).read()
            if body:
                break
            await asyncio.sleep(0.05)
        assert body == b"kept\n"
        _, _, status = await session(client, "keeper", [("command", "true"), ("stdout", "1")])
        assert status == {"metadata": {}, "status": "Success"}
    finally:
        await client.close()


async def test_follow_ends_with_the_container_and_a_stopped_one_refuses_exec(real_node: NodeHarness,
                                                                             api: Api) -> None:
    real_node.create(pod("counter", node=None, restartPolicy="Never",
                         containers=[_c("main", "for i in 1 2 3; do echo $i; sleep 0.5; done")]))
    await real_node.wait_pod("counter", lambda p: (p.get("status") or {}).get("containerStatuses"), timeout=60)
    response = await api.get(f"{PODS}/counter/log", params={"follow": "true"})
    assert await asyncio.wait_for(response.read(), 30) == b"1\n2\n3\n"
    await real_node.wait_phase("counter", "Succeeded", timeout=30)
    _, _, status = await session(api, "counter", [("command", "true"), ("stdout", "1")])
    assert status["message"] == 'Internal error occurred: unable to upgrade connection: container not found ("main")'
    # Logs outlive the container: still readable once it has ended.
    assert await (await api.get(f"{PODS}/counter/log")).read() == b"1\n2\n3\n"


async def test_port_forward_into_a_pods_network(networked: NodeHarness) -> None:
    network = networked.runtime.network  # type: ignore[attr-defined]
    streams = NodeStreams(networked.runtime, network=network)
    app = create_app(networked.registry, token=TOKEN, metrics_registry=CollectorRegistry(),
                     stream_handler=stream_handler(streams))
    api = TestClient(TestServer(app, host="127.0.0.1"), headers={"Authorization": f"Bearer {TOKEN}"})
    await api.start_server()
    try:
        server = ("import socketserver\n"
                  "class H(socketserver.StreamRequestHandler):\n"
                  "    def handle(self): self.wfile.write(b'pod says ' + self.rfile.readline())\n"
                  "socketserver.TCPServer(('0.0.0.0', 8080), H).serve_forever()\n")
        networked.create(pod("web", node=None, containers=[
            {"name": "main", "image": IMAGE, "command": ["python3", "-c", server]}]))
        await networked.wait_ready("web", timeout=60)

        async def forward(port: int, payload: bytes) -> list[bytes]:
            """Every message of one forwarded connection (the websocket closes when it is done)."""
            ws = await api.ws_connect(f"{PODS}/web/portforward", params={"ports": str(port)},
                                      protocols=("v4.channel.k8s.io",))
            opened = [await ws.receive_bytes() for _ in range(2)]
            assert opened == [b"\x00" + struct.pack("<H", port), b"\x01" + struct.pack("<H", port)]
            await ws.send_bytes(b"\x00" + payload)
            got = []
            while (msg := await asyncio.wait_for(ws.receive(), 10)).type == WSMsgType.BINARY:
                got.append(msg.data)
                if msg.data[:1] == b"\x00":
                    break
            await ws.close()
            return got

        for _ in range(50):  # the server in the pod may still be starting: refused until it listens
            got = await forward(8080, b"hello\n")
            if got and got[0][:1] == b"\x00":
                break
            await asyncio.sleep(0.2)
        assert got == [b"\x00pod says hello\n"]
        (refused,) = await forward(9, b"anyone?")
        text = refused[1:].decode()
        assert refused[:1] == b"\x01" and text.startswith("error forwarding port 9 to pod web_default")
        assert text.endswith(":9: connect: connection refused")
    finally:
        await api.close()
