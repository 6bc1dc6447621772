"""The sandboxd agent, staged as for a sandbox but run on this machine (``agenthost``): no gVisor, no root.

What upstream's sandboxd API promises, checked with the unchanged official client
(its sandboxd in-cluster mode) and raw requests; the router in front of an agent
(a fake pod with an address): commands without ``exec``, any port forwarded
(HTTP, streaming, websockets, gRPC) with its bounds; and the agent's command line.
The same paths inside real gVisor sandboxes: tests/integration/sandboxd.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from aiohttp import WSMsgType, web
from k8s_agent_sandbox.commands._process_stubs import process_pb2 as pb
from k8s_agent_sandbox.commands._process_stubs import process_pb2_grpc as pb_grpc
from k8s_agent_sandbox.exceptions import SandboxRequestError
from k8s_agent_sandbox.models import SandboxdInClusterConnectionConfig
from k8s_agent_sandbox.sandbox import Sandbox

from tests.unit.sandboxd.agenthost import HostAgent, free_port, host_agent
from turbok.sandboxd import StaticResolver, create_router_app
from turbok.sandboxd.agent.main import _parse
from turbok.sandboxd.testing import FakeRuntime, serve_in_thread
from turbok.sdk import SandboxConnection
from turbok.sdk.wire import auth_headers

TOKEN = "agent-host-token"
SANDBOX_ID = "tk00000000000000000000a1"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostAgent]:
    with host_agent(tmp_path_factory.mktemp("agent"), env={"SANDBOX_ID": "box", "SANDBOX_API_TOKEN": "x"}) as a:
        yield a


class _Helper:
    """What ``Sandbox`` asks of Kubernetes in the sandboxd pod-IP mode: the Sandbox's status."""

    injected_api_client = None

    def __init__(self, ip: str) -> None:
        self.ip = ip

    def get_sandbox(self, name: str, namespace: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"podIPs": [{"ip": self.ip}]}}


@pytest.fixture
def sandbox(agent: HostAgent) -> Iterator[Sandbox]:
    config = SandboxdInClusterConnectionConfig(mode="in-cluster-pod-ip", rest_port=agent.rest_port,
                                               grpc_port=agent.grpc_port)
    sb = Sandbox(claim_name="c", sandbox_id="box", namespace="default", connection_config=config,
                 k8s_helper=_Helper(agent.ip))  # type: ignore[arg-type]
    yield sb
    sb.close_connection()


def test_the_agent_command_line() -> None:
    args = _parse(["--root", "/w", "--host=10.0.0.1", "--port", "48888", "--port=8080", "--foreground"])
    assert (args.root, args.host, args.port, args.foreground) == ("/w", "10.0.0.1", [48888, 8080], True)
    defaults = _parse([])
    assert (defaults.root, defaults.host, defaults.port, defaults.foreground) == ("/app", "0.0.0.0", [], False)
    for bad in (["--port", "http"], ["--port", "70000"], ["--root"], ["--verbose"]):
        with pytest.raises(SystemExit) as e:
            _parse(bad)
        assert "sandboxd-agent" in str(e.value)


def test_official_client_commands_in_sandboxd_mode(sandbox: Sandbox, agent: HostAgent) -> None:
    assert sandbox.commands is not None
    r = sandbox.commands.run("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 3, False)
    r = sandbox.commands.run("echo $GREETING; pwd", env={"GREETING": "hi"}, cwd=str(agent.root))
    assert r.stdout == f"hi\n{agent.root}\n"
    started = time.monotonic()
    r = sandbox.commands.run("sleep 20", command_timeout=0.5)
    assert r.timed_out and r.exit_code == 124 and time.monotonic() - started < 10


def test_official_client_files_in_sandboxd_mode(sandbox: Sandbox, agent: HostAgent) -> None:
    files = sandbox.files
    assert files is not None
    data = os.urandom(300_000)
    files.write("deep/dir/blob.bin", data)
    assert files.read("deep/dir/blob.bin") == data
    assert (agent.root / "deep/dir/blob.bin").read_bytes() == data
    assert not [p for p in (agent.root / "deep/dir").iterdir() if p.name != "blob.bin"], "no temp file left"
    entry = {e.name: e for e in files.list("deep/dir")}["blob.bin"]
    assert entry.size == len(data) and entry.type == "file" and entry.mode == "0644"
    assert files.exists("deep/dir/blob.bin") and not files.exists("deep/none")
    with pytest.raises(SandboxRequestError) as e:
        files.delete("deep")
    assert e.value.status_code == 409 and (agent.root / "deep").is_dir()
    files.delete("deep", recursive=True)
    assert not (agent.root / "deep").exists()


def test_rest_paths_never_leave_the_root(agent: HostAgent, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    (agent.root / "link").symlink_to(outside)
    try:
        with httpx.Client(base_url=f"http://{agent.ip}:{agent.rest_port}", timeout=10) as http:
            for path in ("..%2F..%2Fetc%2Fpasswd", "link%2Fsecret.txt", "link"):
                assert http.get(f"/v1/files/{path}").status_code == 403, path
                assert http.head(f"/v1/files/{path}").status_code == 403, path
            assert http.put("/v1/files/link%2Fplanted", content=b"x").status_code == 403
            assert http.delete("/v1/files/link%2Fsecret.txt").status_code == 403
            assert http.put("/v1/files/x", content=b"x", params={"mode": "4755"}).status_code == 400
            # A listing leaves out the link that leads outside, rather than describe what is there.
            assert "link" not in [e["name"] for e in http.get("/v1/files/").json()["entries"]]
            assert http.get("/v1/health").json()["status"] == "ok"
            # Metadata: the orchestrator's SANDBOX_* variables, never one whose name looks secret.
            assert http.get("/v1/metadata").json()["env"] == {"SANDBOX_ID": "box"}
        assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
        assert (outside / "secret.txt").read_text() == "host secret"
    finally:
        (agent.root / "link").unlink()


def test_process_service_start_with_stdin_and_signals(agent: HostAgent) -> None:
    with grpc.insecure_channel(f"{agent.ip}:{agent.grpc_port}") as channel:
        stub = pb_grpc.ProcessServiceStub(channel)
        events = stub.Start(pb.StartRequest(config=pb.ProcessConfig(
            command=["sh", "-c", "read x; echo got:$x; sleep 60"])))
        pid = next(events).init.process_id
        stub.WriteStdin(pb.WriteStdinRequest(process_id=pid, input=b"hello\n"))
        assert next(events).stdout == b"got:hello\n"
        stub.SendSignal(pb.SendSignalRequest(process_id=pid, signal=pb.SIGNAL_SIGTERM))
        assert [e.exit.exit_code for e in events if e.WhichOneof("event") == "exit"] == [-1]
        with pytest.raises(grpc.RpcError) as e:
            stub.SendSignal(pb.SendSignalRequest(process_id=pid, signal=pb.SIGNAL_SIGKILL))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------- the router in front of an agent


class _App:
    """A server of the sandbox's own on another port of its address: echoes, streams, slow answers, websockets."""

    def __init__(self) -> None:
        self.app = web.Application(client_max_size=64 * 2**20)
        self.app.router.add_get("/echo", self.echo)
        self.app.router.add_post("/sum", self.sum)
        self.app.router.add_get("/stream", self.stream)
        self.app.router.add_get("/slow", self.slow)
        self.app.router.add_get("/ws", self.ws)

    async def echo(self, request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs, "headers": dict(request.headers)})

    async def sum(self, request: web.Request) -> web.Response:
        return web.Response(status=201, text=hashlib.sha256(await request.read()).hexdigest())

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.3)
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=["chat"])
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        return ws


@pytest.fixture(scope="module")
def routed(agent: HostAgent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeRuntime, int]]:
    """The router with one sandbox whose pod has the agent's address; an app of its own on a free port there."""
    runtime = FakeRuntime(tmp_path_factory.mktemp("pods"))
    runtime.add(SANDBOX_ID)
    runtime.ips[SANDBOX_ID] = agent.ip
    app_port = free_port(agent.ip)
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def serve_app() -> web.AppRunner:
        runner = web.AppRunner(_App().app, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, agent.ip, app_port).start()
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve_app())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    resolver = StaticResolver({("default", "box"): SANDBOX_ID})
    try:
        with serve_in_thread(lambda: create_router_app(runtime=runtime, resolver=resolver, token=TOKEN,
                                                       proxy_timeout=1.5, proxy_body_limit=4 * 2**20)) as url:
            yield url, runtime, app_port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _http(url: str, port: int | None = None) -> httpx.Client:
    headers = {**auth_headers(TOKEN), "X-Sandbox-ID": "box"}
    if port is not None:
        headers["X-Sandbox-Port"] = str(port)
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def test_router_runs_commands_and_files_through_the_agent(routed: tuple[str, FakeRuntime, int],
                                                          agent: HostAgent) -> None:
    url, runtime, _ = routed
    with SandboxConnection(url, TOKEN, "default", "box", timeout=30) as conn:
        r = conn.commands.run("echo via agent; echo e >&2; pwd; exit 5")
        # In the agent's root: the container's work directory (here not /app, as in an image without one).
        assert (r.stdout, r.stderr, r.exit_code) == (f"via agent\n{agent.root}\n", "e\n", 5)
        with conn.commands.stream(["sh", "-c", "pwd; cat"], stdin=b"fed") as run:
            out = b"".join(frame.data for frame in run if frame.stream == "stdout")
        assert out == f"{agent.root}\n".encode() + b"fed" and run.exit_code == 0
        conn.files.write("routed/a.txt", b"abc")
        assert (agent.root / "routed/a.txt").read_bytes() == b"abc"
        assert conn.files.read("routed/a.txt") == b"abc"
    assert runtime.spawns == [], "the agent ran them: no exec through the runtime"


def test_any_port_http_streaming_and_bounds(routed: tuple[str, FakeRuntime, int]) -> None:
    url, _, port = routed
    with _http(url, port) as http:
        seen = http.get("/echo?x=1").json()
        assert seen["path"] == "/echo?x=1"
        lowered = {k.lower(): v for k, v in seen["headers"].items()}
        assert "authorization" not in lowered and TOKEN not in str(seen), "the router's token stays with it"
        assert lowered["x-forwarded-proto"] == "http"
        body = os.urandom(3 * 2**20)
        r = http.post("/sum", content=body)
        assert (r.status_code, r.text) == (201, hashlib.sha256(body).hexdigest())
        stamps, started = [], time.monotonic()
        with http.stream("GET", "/stream") as s:
            for line in s.iter_lines():
                if line.startswith("data:"):
                    stamps.append(time.monotonic() - started)
        assert len(stamps) == 3 and stamps[-1] - stamps[0] > 0.4, "events arrive as sent, not all at the end"
        # proxy_body_limit (4 MiB here) and proxy_timeout (1.5 s here), given to create_router_app.
        r = http.post("/sum", content=os.urandom(5 * 2**20))  # with its Content-Length: refused at once
        assert r.status_code == 413 and r.json()["reason"] == "PayloadTooLarge"

        def chunks() -> Iterator[bytes]:  # chunked, no length: cut where it passes the limit
            for _ in range(5):
                yield os.urandom(2**20)

        r = http.post("/sum", content=chunks())
        assert r.status_code == 413 and r.json()["reason"] == "PayloadTooLarge"
        r = http.get("/slow")
        assert r.status_code == 504 and r.json()["reason"] == "GatewayTimeout"
        r = http.get("/slow", headers={"X-Sandbox-Timeout": "0.2"})
        assert r.status_code == 504 and "0.2 s" in r.json()["message"]
    with _http(url, 1) as http:  # nothing listens on port 1 of the Pod
        r = http.get("/")
        assert r.status_code == 502 and r.json()["reason"] == "BadGateway"


def test_any_port_websocket(routed: tuple[str, FakeRuntime, int]) -> None:
    url, _, port = routed

    async def talk() -> tuple[str | None, list[str]]:
        import aiohttp

        headers = {**auth_headers(TOKEN), "X-Sandbox-ID": "box", "X-Sandbox-Port": str(port)}
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"{url}/ws", headers=headers, protocols=["chat"]) as ws:
            got = []
            for word in ("one", "two"):
                await ws.send_str(word)
                got.append((await ws.receive()).data)
            return ws.protocol, got

    assert asyncio.run(talk()) == ("chat", ["echo:one", "echo:two"])


def test_grpc_through_the_router_reaches_the_agent(routed: tuple[str, FakeRuntime, int], agent: HostAgent) -> None:
    url, runtime, _ = routed
    with grpc.insecure_channel(url.removeprefix("http://")) as channel:
        stub = pb_grpc.ProcessServiceStub(channel)
        request = pb.ExecuteRequest(config=pb.ProcessConfig(command=["/bin/sh", "-c", "echo routed; exit 4"]))
        with pytest.raises(grpc.RpcError) as e:
            stub.Execute(request, metadata=[("x-sandbox-id", "box")], timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and TOKEN not in (e.value.details() or "")
        meta = [("authorization", f"Bearer {TOKEN}"), ("x-sandbox-id", "box")]
        r = stub.Execute(request, metadata=meta, timeout=10)
        assert (r.stdout, r.exit_code) == (b"routed\n", 4)
        # Start is relayed to the Pod's gRPC port (x-sandbox-port; sandboxd's 9090 when not given).
        events = stub.Start(pb.StartRequest(config=pb.ProcessConfig(command=["sh", "-c", "seq 1 3"])),
                            metadata=[*meta, ("x-sandbox-port", str(agent.grpc_port))])
        assert b"".join(ev.stdout for ev in events) == b"1\n2\n3\n"
        with pytest.raises(grpc.RpcError) as e:
            stub.Execute(request, metadata=[meta[0], ("x-sandbox-id", "nobody")], timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert runtime.spawns == []


def test_official_async_client_in_sandboxd_mode_and_through_the_router(agent: HostAgent,
                                                                       routed: tuple[str, FakeRuntime, int]) -> None:
    """The async twin (httpx, grpc.aio), unchanged: straight to the agent, and Direct through the router."""
    pytest.importorskip("kubernetes_asyncio", reason="kubernetes_asyncio is not installed (k8s-agent-sandbox[async])")
    from k8s_agent_sandbox.async_sandbox import AsyncSandbox
    from k8s_agent_sandbox.models import SandboxDirectConnectionConfig

    url, runtime, _ = routed

    class AsyncHelper:
        injected_api_client = None

        async def get_sandbox(self, name: str, namespace: str) -> dict[str, Any]:
            return _Helper(agent.ip).get_sandbox(name, namespace)

    async def use(config: Any) -> tuple[Any, bytes]:
        sb = AsyncSandbox(claim_name="c", sandbox_id="box", namespace="default", connection_config=config,
                          k8s_helper=AsyncHelper())  # type: ignore[arg-type]
        try:
            assert sb.commands is not None and sb.files is not None
            r = await sb.commands.run("echo async; exit 2")
            await sb.files.write("async/x.txt", b"twin")
            return r, await sb.files.read("async/x.txt")
        finally:
            await sb.close_connection()

    direct = SandboxdInClusterConnectionConfig(mode="in-cluster-pod-ip", rest_port=agent.rest_port,
                                               grpc_port=agent.grpc_port)
    routed_config = SandboxDirectConnectionConfig(api_url=url, extra_headers=auth_headers(TOKEN))
    for config in (direct, routed_config):
        r, data = asyncio.run(use(config))
        assert (r.stdout, r.exit_code, data) == ("async\n", 2, b"twin")
    assert runtime.spawns == []
