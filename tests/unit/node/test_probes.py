"""Probes as kubelet's prober workers run them: timing, thresholds, startup gating, exec/httpGet/tcpSocket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from turbok.node.probes import USER_AGENT, ContainerProber, ProbeSpec, run_probe
from turbok.node.testing import FakeClock, FakePodRuntime
from turbok.runtime.cri import ContainerConfig, PodSandboxConfig, Stream
from turbok.runtime.process import Process

Obj = dict[str, Any]
SID = "tk" + "2" * 22


class Recorder:
    def __init__(self) -> None:
        self.changes = 0
        self.unhealthy: list[tuple[str, str]] = []

    def change(self) -> None:
        self.changes += 1

    def bad(self, probe: str, message: str) -> None:
        self.unhealthy.append((probe, message))


@pytest.fixture
async def runtime() -> AsyncIterator[FakePodRuntime]:
    rt = FakePodRuntime()
    await rt.run_pod_sandbox(PodSandboxConfig(id=SID, name="p", namespace="default", uid="u", hostname="p"))
    await rt.start_container(SID, ContainerConfig(name="c", image="i"))
    yield rt


def script(runtime: FakePodRuntime, results: dict[str, list[int]]) -> None:
    """exec of ``[name]`` returns the next code in ``results[name]`` (the last one repeats)."""
    def handler(_id: str, _name: str, argv: Sequence[str]) -> tuple[int, bytes]:
        codes = results[argv[0]]
        code = codes.pop(0) if len(codes) > 1 else codes[0]
        return code, f"{argv[0]} said {code}".encode()
    runtime.exec_handler = handler


def execs(runtime: FakePodRuntime, name: str) -> int:
    return sum(1 for c in runtime.calls if c[0] == "exec" and c[3] == name)


def prober(runtime: FakePodRuntime, clock: FakeClock, rec: Recorder, **probes: Obj) -> ContainerProber:
    container = {"name": "c", "image": "i", **probes}
    return ContainerProber(runtime=runtime, sandbox_id=SID, pod={"metadata": {"name": "p"}}, container=container,
                           pod_ip="127.0.0.1", clock=clock, on_change=rec.change, on_unhealthy=rec.bad)


def exec_probe(name: str, **timing: int) -> Obj:
    return {"exec": {"command": [name]}, **timing}


async def turn() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


async def test_readiness_thresholds_and_unhealthy_events(runtime: FakePodRuntime) -> None:
    clock, rec = FakeClock(), Recorder()
    script(runtime, {"ready": [1, 0, 0, 1, 1, 1]})
    p = prober(runtime, clock, rec, readinessProbe=exec_probe("ready", periodSeconds=5, successThreshold=2,
                                                               failureThreshold=3))
    assert p.started and not p.ready
    p.start()
    await turn()  # readiness runs at once: fails
    assert execs(runtime, "ready") == 1 and rec.unhealthy == [("Readiness", "ready said 1")]
    await clock.advance(5)  # passes once: below successThreshold 2
    assert not p.ready
    await clock.advance(5)
    assert p.ready and rec.changes == 1
    await clock.advance(10)  # two failures: below failureThreshold 3
    assert p.ready
    await clock.advance(5)
    assert not p.ready and rec.changes == 2
    await p.stop()


async def test_liveness_failure_asks_for_a_restart_and_holds(runtime: FakePodRuntime) -> None:
    clock, rec = FakeClock(), Recorder()
    script(runtime, {"alive": [0, 1]})
    p = prober(runtime, clock, rec, livenessProbe=exec_probe("alive", periodSeconds=10, failureThreshold=3))
    p.start()
    await turn()
    assert p.failed is None and execs(runtime, "alive") == 1
    await clock.advance(20)
    assert p.failed is None
    await clock.advance(10)
    assert p.failed == ("Liveness", "alive said 1") and rec.changes == 1
    await clock.advance(60)
    assert execs(runtime, "alive") == 4  # on hold once failed: the worker kills the container
    await p.stop()


async def test_initial_delay_skips_ticks(runtime: FakePodRuntime) -> None:
    clock, rec = FakeClock(), Recorder()
    script(runtime, {"alive": [0]})
    p = prober(runtime, clock, rec, livenessProbe=exec_probe("alive", initialDelaySeconds=15, periodSeconds=10))
    p.start()
    await turn()
    await clock.advance(10)
    assert execs(runtime, "alive") == 0  # ticks at 0 and 10 are within the delay, as kubelet's
    await clock.advance(10)
    assert execs(runtime, "alive") == 1
    await p.stop()


async def test_startup_gates_the_others(runtime: FakePodRuntime) -> None:
    clock, rec = FakeClock(), Recorder()
    script(runtime, {"boot": [1, 1, 0], "alive": [0], "ready": [0]})
    p = prober(runtime, clock, rec, startupProbe=exec_probe("boot", periodSeconds=2, failureThreshold=10),
               livenessProbe=exec_probe("alive", periodSeconds=3), readinessProbe=exec_probe("ready", periodSeconds=60))
    assert not p.started and not p.ready
    p.start()
    await turn()
    await clock.advance(2)
    assert not p.started and execs(runtime, "alive") == 0 and execs(runtime, "ready") == 0
    await clock.advance(2)
    assert p.started and p.ready  # readiness ran at once when startup passed, not at its 60 s tick
    assert execs(runtime, "ready") == 1
    await clock.advance(6)
    assert execs(runtime, "alive") >= 1 and p.failed is None
    assert execs(runtime, "boot") == 3  # startup stops once passed
    await p.stop()


async def test_startup_failure(runtime: FakePodRuntime) -> None:
    clock, rec = FakeClock(), Recorder()
    script(runtime, {"boot": [1]})
    p = prober(runtime, clock, rec, startupProbe=exec_probe("boot", periodSeconds=1, failureThreshold=2))
    p.start()
    await turn()
    await clock.advance(1)
    assert p.failed == ("Startup", "boot said 1") and not p.started
    await p.stop()


async def test_pod_terminating_stops_liveness(runtime: FakePodRuntime) -> None:
    clock, rec = FakeClock(), Recorder()
    script(runtime, {"alive": [1]})
    p = prober(runtime, clock, rec, livenessProbe=exec_probe("alive", periodSeconds=1, failureThreshold=2))
    p.start()
    await turn()
    p.pod_terminating()
    await clock.advance(5)
    assert p.failed is None and execs(runtime, "alive") == 1
    await p.stop()


async def test_grpc_is_said_once_and_never_passes(runtime: FakePodRuntime) -> None:
    clock, rec = FakeClock(), Recorder()
    p = prober(runtime, clock, rec, readinessProbe={"grpc": {"port": 9000}, "periodSeconds": 1})
    p.start()
    await turn()
    await clock.advance(5)
    assert not p.ready and rec.unhealthy == [("Readiness", "gRPC probes are not supported by the embedded node")]
    await p.stop()


class _Hanging(Process):
    def __init__(self) -> None:
        self.killed = asyncio.Event()
        self._out = asyncio.StreamReader()
        self._err = asyncio.StreamReader()

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._out

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._err

    async def wait(self) -> int:
        await self.killed.wait()
        return 137

    async def kill(self) -> None:
        self.killed.set()
        self._out.feed_eof()
        self._err.feed_eof()


class _HangingStream(Stream):
    def __init__(self) -> None:
        self._p = _Hanging()

    @property
    def process(self) -> Process:
        return self._p

    async def write(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, columns: int, rows: int) -> None: ...


async def test_exec_timeout_kills_the_command(runtime: FakePodRuntime) -> None:
    stream = _HangingStream()

    async def hang(*_: Any, **__: Any) -> Stream:
        return stream
    runtime.exec = hang  # type: ignore[method-assign]
    spec = ProbeSpec.parse({"exec": {"command": ["sh", "-c", "sleep 100"]}, "timeoutSeconds": 1})
    spec = ProbeSpec(handler=spec.handler, timeout=0.05)
    result = await run_probe(runtime, SID, {"name": "c"}, spec, pod_ip="")
    assert (result.result, result.message) == ("failure", 'command "sh -c sleep 100" timed out')
    assert stream._p.killed.is_set()


async def _server(handler: Any) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _http_handler(responses: dict[str, bytes], seen: list[bytes]) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        path = head.split(b" ")[1].decode()
        writer.write(responses.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
        await writer.drain()
        writer.close()
    return handle


async def test_http_probe() -> None:
    seen: list[bytes] = []
    responses = {
        "/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/bad": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
        "/moved": b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n",
        "/away": b"HTTP/1.1 302 Found\r\nLocation: http://example.invalid/x\r\nContent-Length: 3\r\n\r\nbye",
    }
    server, port = await _server(_http_handler(responses, seen))
    rt = FakePodRuntime()
    container = {"name": "c", "ports": [{"name": "web", "containerPort": port}]}

    async def get(path: str, **extra: Any) -> tuple[str, str]:
        spec = ProbeSpec.parse({"httpGet": {"path": path, "port": "web", **extra}})
        r = await run_probe(rt, SID, container, spec, pod_ip="127.0.0.1")
        return r.result, r.message

    try:
        assert await get("/ok", httpHeaders=[{"name": "X-Check", "value": "1"}, {"name": "Host", "value": "svc"}]) \
            == ("success", "ok")
        assert b"User-Agent: " + USER_AGENT.encode() in seen[-1] and b"X-Check: 1" in seen[-1]
        assert b"Host: svc" in seen[-1]
        assert await get("/bad") == ("failure", "HTTP probe failed with statuscode: 500")
        assert await get("/moved") == ("success", "ok")
        assert await get("/away") == ("warning", "Probe terminated redirects, Response body: bye")
        result = await run_probe(rt, SID, container, ProbeSpec.parse({"httpGet": {"port": "nope"}}),
                                 pod_ip="127.0.0.1")
        assert result.result == "error" and "couldn't find port nope" in result.message
    finally:
        server.close()
        await server.wait_closed()
    refused = await get("/ok")
    assert refused == ("failure", f'Get "http://127.0.0.1:{port}/ok": dial tcp 127.0.0.1:{port}: connect: '
                                  "connection refused")


async def test_http_probe_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()
    server, port = await _server(silent)
    try:
        spec = ProbeSpec(handler={"httpGet": {"path": "/", "port": port}}, timeout=0.1)
        r = await run_probe(FakePodRuntime(), SID, {"name": "c"}, spec, pod_ip="127.0.0.1")
        assert (r.result, r.message) == ("failure", f'Get "http://127.0.0.1:{port}/": context deadline exceeded '
                                                    "(Client.Timeout exceeded while awaiting headers)")
    finally:
        server.close()


async def test_tcp_probe() -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
    server, port = await _server(accept)
    rt = FakePodRuntime()
    spec = ProbeSpec.parse({"tcpSocket": {"port": port}})
    try:
        assert (await run_probe(rt, SID, {"name": "c"}, spec, pod_ip="127.0.0.1")).result == "success"
    finally:
        server.close()
        await server.wait_closed()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    r = await run_probe(rt, SID, {"name": "c"}, ProbeSpec.parse({"tcpSocket": {"port": free}}), pod_ip="127.0.0.1")
    assert (r.result, r.message) == ("failure", f"dial tcp 127.0.0.1:{free}: connect: connection refused")


async def test_network_probes_never_go_to_the_host_without_a_pod_ip() -> None:
    for handler in ({"httpGet": {"port": 80}}, {"tcpSocket": {"port": 22}}):
        r = await run_probe(FakePodRuntime(), SID, {"name": "c"}, ProbeSpec.parse(handler), pod_ip="")
        assert r.result == "error" and "the pod has no IP" in r.message
