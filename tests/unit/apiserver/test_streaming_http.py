"""Pod streams over HTTP as kube-apiserver serves them, against a ``PodStreams`` double (local processes).

The messages compared here were read off a real kube-apiserver 1.37.2 (pods/log options, container
choice, a Pod without a node, the status frames of exec after the upgrade).
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

from tests.doubles.pod_streams import FakePodStreams
from turbok.api.kinds import POD
from turbok.api.status import ApiError, BadRequest
from turbok.apiserver.app import create_app
from turbok.apiserver.streaming import stream_handler
from turbok.apiserver.streaming_spdy import (
    ControlFrame,
    ControlType,
    DataFrame,
    FrameReader,
    HeaderCompressor,
    HeaderDecompressor,
    control_frame,
    data_frame,
)
from turbok.store.registry import ObjectRegistry

from .conftest import AUTH, TOKEN

Api = TestClient[web.Request, web.Application]
PODS = "/api/v1/namespaces/default/pods"
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
TUNNEL = "SPDY/3.1+portforward.k8s.io"


def make_pod(registry: ObjectRegistry, name: str, *, node: str = "n1", containers: tuple[str, ...] = ("c",),
             inits: tuple[str, ...] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": c, "image": "busybox"} for c in containers]}
    if inits:
        spec["initContainers"] = [{"name": c, "image": "busybox"} for c in inits]
    if node:
        spec["nodeName"] = node
    pod = registry.create(POD, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec},
                          namespace="default")
    pod["status"] = {"phase": "Running"}
    updated: dict[str, Any] = registry.update(POD, pod, namespace="default", name=name, subresource="status")
    return updated


@pytest.fixture
async def streams() -> AsyncIterator[FakePodStreams]:
    fake = FakePodStreams()
    yield fake
    await fake.aclose()


@pytest.fixture
async def api(registry: ObjectRegistry, streams: FakePodStreams) -> AsyncIterator[Api]:
    app = create_app(registry, token=TOKEN, metrics_registry=CollectorRegistry(), stream_handler=stream_handler(streams))
    client = TestClient(TestServer(app, host="127.0.0.1"), headers=AUTH)
    await client.start_server()
    make_pod(registry, "p")
    yield client
    await client.close()


async def status_of(response: Any) -> tuple[int, str]:
    body = await response.json()
    return response.status, body["message"]


# ------------------------------------------------------------------ logs


async def test_log_options_reach_the_node_as_kube_reads_them(api: Api, streams: FakePodStreams) -> None:
    streams.logs_by_container[("default", "p", "c")] = b"one\ntwo\n"
    r = await api.get(f"{PODS}/p/log", params={
        "container": "c", "previous": "false", "tailLines": "5", "timestamps": "1", "limitBytes": "100",
        "sinceTime": "2024-05-01T12:00:00.5+02:00", "insecureSkipTLSVerifyBackend": "true", "follow": "False"})
    assert r.status == 200 and r.content_type == "text/plain" and await r.read() == b"one\ntwo\n"
    call = streams.log_calls[-1]
    assert call == {"pod": "p", "container": "c", "follow": False, "previous": False, "since": 1714557600.5,
                    "timestamps": True, "tail_lines": 5, "limit_bytes": 100}
    # As the apiserver's query decoding has it: a flag is true unless it is "0" or "false", in any case.
    await api.get(f"{PODS}/p/log", params={"follow": "", "previous": "yes"})
    assert streams.log_calls[-1]["previous"] is True
    before = asyncio.get_running_loop().time()
    await api.get(f"{PODS}/p/log", params={"sinceSeconds": "60"})
    since = streams.log_calls[-1]["since"]
    assert since is not None and abs(__import__("time").time() - 60 - since) < 5 + asyncio.get_running_loop().time() - before


@pytest.mark.parametrize(("query", "code", "message"), [
    ({"tailLines": "abc"}, 400, 'strconv.ParseInt: parsing "abc": invalid syntax'),
    ({"limitBytes": "99999999999999999999"}, 400, 'strconv.ParseInt: parsing "99999999999999999999": value out of range'),
    ({"tailLines": "-1"}, 422, 'PodLogOptions "p" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0'),
    ({"limitBytes": "0"}, 422, 'PodLogOptions "p" is invalid: limitBytes: Invalid value: 0: must be greater than 0'),
    ({"sinceSeconds": "0"}, 422, 'PodLogOptions "p" is invalid: sinceSeconds: Invalid value: 0: must be greater than 0'),
    ({"sinceSeconds": "1", "sinceTime": "2020-01-01T00:00:00Z"}, 422,
     'PodLogOptions "p" is invalid: []: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified'),
    ({"sinceTime": "yesterday"}, 400,
     'parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" as "2006"'),
    ({"stream": "Stdout"}, 422, 'PodLogOptions "p" is invalid: stream: Forbidden: may not be specified'),
])
async def test_bad_log_options_get_kubes_answers(api: Api, streams: FakePodStreams, query: dict[str, str], code: int,
                                                 message: str) -> None:
    assert await status_of(await api.get(f"{PODS}/p/log", params=query)) == (code, message)
    # Checked before the Pod is looked up, as kube-apiserver does.
    assert await status_of(await api.get(f"{PODS}/nothere/log", params=query)) == (
        code, message.replace('"p"', '"nothere"'))
    assert streams.log_calls == []


async def test_which_container_as_kube_apiserver_decides(api: Api, registry: ObjectRegistry,
                                                         streams: FakePodStreams) -> None:
    make_pod(registry, "multi", containers=("a", "b"), inits=("i",))
    assert await status_of(await api.get(f"{PODS}/multi/log")) == (
        400, "a container name must be specified for pod multi, choose one of: [i a b]")
    assert await status_of(await api.get(f"{PODS}/multi/log", params={"container": "zz"})) == (
        400, "container zz is not valid for pod multi")
    assert (await api.get(f"{PODS}/multi/log", params={"container": "i"})).status == 200
    assert streams.log_calls[-1]["container"] == "i"
    assert await status_of(await api.get(f"{PODS}/nothere/log")) == (404, 'pods "nothere" not found')
    assert await status_of(await api.post(f"{PODS}/p/log")) == (
        405, "the server does not allow this method on the requested resource")


async def test_a_pod_without_a_node_has_an_empty_log(api: Api, registry: ObjectRegistry,
                                                     streams: FakePodStreams) -> None:
    make_pod(registry, "pending", node="")
    r = await api.get(f"{PODS}/pending/log")
    assert r.status == 204 and await r.read() == b"" and streams.log_calls == []


async def test_the_nodes_refusal_is_the_answer(api: Api, streams: FakePodStreams) -> None:
    streams.log_error = BadRequest('container "c" in pod "p" is waiting to start: ContainerCreating')
    assert await status_of(await api.get(f"{PODS}/p/log")) == (
        400, 'container "c" in pod "p" is waiting to start: ContainerCreating')


async def test_follow_streams_as_lines_come_and_stops_when_the_client_goes(api: Api,
                                                                           streams: FakePodStreams) -> None:
    streams.logs_by_container[("default", "p", "c")] = b"first\n"
    r = await api.get(f"{PODS}/p/log", params={"follow": "true"})
    assert await r.content.readline() == b"first\n"
    streams.append_log(b"second\n")
    assert await asyncio.wait_for(r.content.readline(), 2) == b"second\n"
    r.close()
    for _ in range(50):
        if streams.abandoned:
            break
        await asyncio.sleep(0.05)
    assert streams.abandoned == 1
    streams.logs_by_container[("default", "p", "c")] = b"x\n"
    r = await api.get(f"{PODS}/p/log", params={"follow": "true"})
    streams.end_follow()
    assert await asyncio.wait_for(r.read(), 2) == b"x\n"


# ------------------------------------------------------------------ exec and attach


async def session(api: Api, path: str, params: list[tuple[str, str]], protocol: str = V5,
                  send: list[bytes] | None = None) -> tuple[list[bytes], dict[str, Any] | None]:
    """Every message of an exec/attach session; the error channel's Status, decoded."""
    ws = await api.ws_connect(f"{PODS}/{path}", params=params, protocols=(protocol,))
    assert ws.protocol == protocol
    for message in send or []:
        await ws.send_bytes(message)
    messages = []
    async for msg in ws:
        assert msg.type == WSMsgType.BINARY
        messages.append(msg.data)
    if protocol not in (V5, V4):
        return messages, None  # earlier versions write an error's text, not a Status
    status = next((json.loads(m[1:]) for m in messages if m[:1] == b"\x03" and len(m) > 1), None)
    return messages, status


def channel(messages: list[bytes], number: int) -> bytes:
    return b"".join(m[1:] for m in messages if m[0] == number)


async def test_exec_streams_output_and_the_exit_code(api: Api, streams: FakePodStreams) -> None:
    messages, status = await session(api, "p/exec", [
        ("command", "sh"), ("command", "-c"), ("command", "echo out; echo err >&2; exit 3"),
        ("stdout", "true"), ("stderr", "true")])
    assert messages[0] == b"\x01"  # the kubelet's "connection established": empty, on stdout
    assert channel(messages, 1) == b"out\n" and channel(messages, 2) == b"err\n"
    assert status == {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                      "message": "command terminated with non-zero exit code: command terminated with exit code 3",
                      "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
    assert streams.execs[0][:2] == ("c", ("sh", "-c", "echo out; echo err >&2; exit 3"))


async def test_stdin_ends_with_v5s_close_signal(api: Api) -> None:
    messages, status = await session(api, "p/exec", [
        ("command", "wc"), ("command", "-c"), ("stdin", "true"), ("stdout", "true")],
        send=[b"\x00hello ", b"\x00world", b"\xff\x00"])
    assert channel(messages, 1).strip() == b"11" and status == {"metadata": {}, "status": "Success"}


async def test_v4_ends_with_a_status_and_earlier_versions_with_text(api: Api) -> None:
    _, status = await session(api, "p/exec", [("command", "true"), ("stdout", "1")], protocol=V4)
    assert status == {"metadata": {}, "status": "Success"}
    messages, _ = await session(api, "p/exec", [("command", "false"), ("stdout", "1")], protocol="channel.k8s.io")
    assert channel(messages, 3) == b"command terminated with non-zero exit code: command terminated with exit code 1"


async def test_a_terminal_gets_its_size(api: Api, streams: FakePodStreams) -> None:
    messages, status = await session(api, "p/exec", [
        ("command", "sh"), ("command", "-c"), ("command", "sleep 0.5; stty size"), ("tty", "true"),
        ("stdin", "true"), ("stdout", "true"), ("stderr", "true")],
        send=[b'\x04{"Width":100,"Height":30}'])
    assert b"30 100" in channel(messages, 1) and channel(messages, 2) == b""  # a tty folds stderr in
    assert status == {"metadata": {}, "status": "Success"}
    assert streams.execs[0][2].resizes == [(100, 30)]


async def test_what_is_refused_before_the_upgrade(api: Api, registry: ObjectRegistry) -> None:
    path = f"{PODS}/p/exec?command=true&stdout=1"
    spdy = await api.post(path, headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                                          "X-Stream-Protocol-Version": "v4.channel.k8s.io"})
    code, message = await status_of(spdy)
    assert code == 400 and "needs a WebSocket" in message and "SPDY" in message and "kubectl 1.30" in message
    assert await status_of(await api.post(path)) == (400, "Upgrade request required")
    assert await status_of(await api.put(path)) == (405, "the server does not allow this method on the requested resource")
    make_pod(registry, "pending", node="")
    assert await status_of(await api.get(f"{PODS}/pending/exec?command=true&stdout=1")) == (
        400, "pod pending does not have a host assigned")
    with pytest.raises(Exception) as refused:
        await api.ws_connect(path, protocols=("v3.channel.k8s.io",))
    assert getattr(refused.value, "status", None) == 400


async def test_what_the_node_refuses_comes_after_the_upgrade(api: Api, streams: FakePodStreams) -> None:
    streams.exec_error = ApiError('container not found ("c")')
    messages, status = await session(api, "p/exec", [("command", "true"), ("stdout", "true")])
    assert status is not None and status["reason"] == "InternalError" and status["code"] == 500
    assert status["message"] == 'Internal error occurred: unable to upgrade connection: container not found ("c")'
    _, status = await session(api, "p/exec", [("stdout", "true")])
    assert status is not None and status["message"].endswith("you must specify at least one command for the container")
    messages, status = await session(api, "p/exec", [("command", "true")])
    assert messages[0] == b"\x03" and status is not None
    assert status["message"].endswith("you must specify at least 1 of stdin, stdout, stderr")


async def test_a_client_that_goes_away_ends_an_exec_but_not_an_attach(api: Api, streams: FakePodStreams) -> None:
    ws = await api.ws_connect(f"{PODS}/p/exec", params=[("command", "sleep"), ("command", "60"), ("stdout", "1")],
                              protocols=(V5,))
    await ws.receive_bytes()
    await ws.close()
    proc = streams.execs[0][2].proc
    await asyncio.wait_for(proc.wait(), 5)
    assert proc.returncode is not None and proc.returncode < 0  # killed
    ws = await api.ws_connect(f"{PODS}/p/attach", params=[("stdin", "1"), ("stdout", "1")], protocols=(V5,))
    assert await ws.receive_bytes() == b"\x01"
    await ws.send_bytes(b"\x00echoed by cat\n")
    assert await ws.receive_bytes() == b"\x01echoed by cat\n"
    await ws.close()
    await asyncio.sleep(0.2)
    attached = streams.attached["p/c"]
    assert attached.proc.returncode is None  # detached, not killed


# ------------------------------------------------------------------ port-forward


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_port_forward_over_the_channel_protocol(api: Api, streams: FakePodStreams, echo_port: int) -> None:
    streams.ports[8080] = echo_port
    ws = await api.ws_connect(f"{PODS}/p/portforward", params={"ports": "8080,9999"}, protocols=(V4,))
    # Each port's two channels open with the port, little-endian, before anything else.
    a, b = struct.pack("<H", 8080), struct.pack("<H", 9999)
    assert [await ws.receive_bytes() for _ in range(4)] == [b"\x00" + a, b"\x01" + a, b"\x02" + b, b"\x03" + b]
    await ws.send_bytes(b"\x00ping")
    rest = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type != WSMsgType.BINARY:
            break
        rest.append(msg.data)
        if b"\x00ping" in rest and any(m[:1] == b"\x03" and len(m) > 3 for m in rest):
            break
    assert b"\x00ping" in rest
    error = next(m[1:].decode() for m in rest if m[:1] == b"\x03" and len(m) > 3)
    assert error.startswith("error forwarding port 9999 to pod p_default, uid ")
    assert error.endswith(": dial tcp4 127.0.0.1:9999: connect: connection refused")
    await ws.close()


@pytest.mark.parametrize(("query", "message"), [
    ({}, 'query parameter "ports" is required'),
    ({"ports": "abc"}, 'cannot convert to []int32: strconv.ParseUint: parsing "abc": invalid syntax'),
    ({"ports": "70000"}, 'cannot convert to []int32: strconv.ParseUint: parsing "70000": value out of range'),
    ({"ports": "0"}, 'port "0" must be > 0'),
    ({"ports": ",".join(["80"] * 129)}, "at most 128 ports may be forwarded by one request, not 129"),
])
async def test_port_forward_ports_are_checked(api: Api, query: dict[str, str], message: str) -> None:
    r = await api.get(f"{PODS}/p/portforward", params=query, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": V4})
    assert await status_of(r) == (400, message)


class SpdyClient:
    """kubectl's side of the tunnel, in miniature."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.out = HeaderCompressor()
        self.back = HeaderDecompressor()
        self.reader = FrameReader()
        self.data: dict[int, bytes] = {}
        self.fin: set[int] = set()
        self.replies: set[int] = set()

    async def open(self, stream_id: int, headers: dict[str, str]) -> None:
        block = self.out.compress({k: [v] for k, v in headers.items()})
        await self.ws.send_bytes(control_frame(ControlType.SYN_STREAM, struct.pack(">IIBB", stream_id, 0, 0, 0) + block))

    async def pump(self, until: Any, timeout: float = 5) -> None:
        async def run() -> None:
            while not until():
                msg = await self.ws.receive()
                assert msg.type == WSMsgType.BINARY, msg
                for frame in self.reader.feed(msg.data):
                    if isinstance(frame, DataFrame):
                        self.data[frame.stream_id] = self.data.get(frame.stream_id, b"") + frame.data
                        if frame.fin:
                            self.fin.add(frame.stream_id)
                    elif frame.type == ControlType.SYN_REPLY:
                        self.back.decompress(frame.payload[4:])
                        self.replies.add(struct.unpack_from(">I", frame.payload)[0])

        await asyncio.wait_for(run(), timeout)


async def test_port_forward_through_spdy_in_a_websocket(api: Api, streams: FakePodStreams, echo_port: int) -> None:
    streams.ports[8888] = echo_port
    ws = await api.ws_connect(f"{PODS}/p/portforward", protocols=(TUNNEL,))
    assert ws.protocol == TUNNEL
    spdy = SpdyClient(ws)
    await spdy.open(1, {"streamType": "error", "port": "8888", "requestID": "0"})
    await ws.send_bytes(data_frame(1, b"", fin=True))  # kubectl closes its side of the error stream at once
    await spdy.open(3, {"streamType": "data", "port": "8888", "requestID": "0"})
    await ws.send_bytes(data_frame(3, b"through the tunnel"))
    await spdy.pump(lambda: spdy.data.get(3) == b"through the tunnel")
    assert spdy.replies == {1, 3}
    await ws.send_bytes(data_frame(3, b"", fin=True))
    await spdy.pump(lambda: {1, 3} <= spdy.fin)
    assert spdy.data.get(1, b"") == b""  # nothing went wrong
    # A port nothing listens on: the kubelet's words on the error stream; a pair without requestID
    # (older clients) is matched by stream ids.
    await spdy.open(5, {"streamType": "error", "port": "9999"})
    await spdy.open(7, {"streamType": "data", "port": "9999"})
    await spdy.pump(lambda: {5, 7} <= spdy.fin)
    assert spdy.data[5].decode().endswith("dial tcp4 127.0.0.1:9999: connect: connection refused")
    # PING is answered.
    await ws.send_bytes(control_frame(ControlType.PING, struct.pack(">I", 1)))
    frames: list[ControlFrame | DataFrame] = []
    while not frames:
        frames = spdy.reader.feed(await ws.receive_bytes())
    assert frames == [ControlFrame(ControlType.PING, 0, struct.pack(">I", 1))]
    await ws.close()
    assert streams.forwards == [8888, 9999]


async def test_a_kubectl_without_websockets_is_told_what_to_do(api: Api) -> None:
    r = await api.post(f"{PODS}/p/portforward", headers={
        "Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "portforward.k8s.io"})
    code, message = await status_of(r)
    assert code == 400 and "WebSocket" in message and "kubectl 1.31" in message


async def test_streams_are_long_running_and_not_counted_in_flight(registry: ObjectRegistry,
                                                                  streams: FakePodStreams) -> None:
    from turbok.apiserver.limits import ApiLimits

    app = create_app(registry, token=TOKEN, metrics_registry=CollectorRegistry(),
                     limits=ApiLimits(inflight_per_client=1, inflight_total=1), stream_handler=stream_handler(streams))
    client = TestClient(TestServer(app, host="127.0.0.1"), headers=AUTH)
    await client.start_server()
    try:
        make_pod(registry, "p")
        shell = await client.ws_connect(f"{PODS}/p/exec", params=[("command", "sleep"), ("command", "30"),
                                                                  ("stdout", "1")], protocols=(V5,))
        streams.logs_by_container[("default", "p", "c")] = b"x\n"
        log = await client.get(f"{PODS}/p/log", params={"follow": "1"})
        assert await log.content.readline() == b"x\n"
        # Both still open, yet this client's one in-flight slot is free for an ordinary request.
        assert (await client.get(f"{PODS}/p")).status == 200
        log.close()
        await shell.close()
    finally:
        await client.close()
