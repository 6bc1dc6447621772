"""The sandboxd agent in a real gVisor sandbox, directly and through the router: upstream's sandboxd API (gRPC
ProcessService, REST filesystem) with the unchanged official client, any Pod port through the router (HTTP,
streaming, websockets, gRPC), the router token kept out of the sandbox, and hibernation right after traffic.

Needs root and nft (the pod network): the agent is reached on the Pod's address.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from k8s_agent_sandbox.commands._process_stubs import process_pb2 as pb
from k8s_agent_sandbox.commands._process_stubs import process_pb2_grpc as pb_grpc
from k8s_agent_sandbox.models import SandboxdInClusterConnectionConfig
from k8s_agent_sandbox.sandbox import Sandbox

from turbok.sandboxd.agent import AGENT_PORT
from turbok.sdk.wire import auth_headers

pytestmark = pytest.mark.integration

# A server in the sandbox for the proxy tests: echoes what it got (headers, body), streams, and speaks a
# minimal websocket (RFC 6455 echo). Python's standard library only, as the base image has.
SERVER = r'''
import base64, hashlib, json, socket, struct, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith("/stream"):
            self.send_response(200); self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            for i in range(3):
                data = f"data: {i} {time.time()}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data)); self.wfile.flush(); time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n"); return
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers["Sec-WebSocket-Key"]
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            self.send_response(101); self.send_header("Upgrade", "websocket"); self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept.decode()); self.end_headers(); self.wfile.flush()
            s = self.connection
            while True:
                head = s.recv(2)
                if len(head) < 2: return
                op, n = head[0] & 15, head[1] & 127
                if n == 126: n = struct.unpack(">H", s.recv(2))[0]
                mask = s.recv(4); data = b""
                while len(data) < n: data += s.recv(n - len(data))
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
                if op == 8: s.sendall(b"\x88\x00"); return
                out = b"echo:" + data
                s.sendall(bytes([0x80 | op, len(out)]) + out)
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0)); data = self.rfile.read(n)
        body = hashlib.sha256(data).hexdigest().encode()
        self.send_response(201); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
'''


@pytest.fixture(scope="module")
def agent(live: Any) -> Iterator[Any]:
    if not live.ip:
        pytest.skip("no pod network here (needs root and nft): the agent is reached on the Pod's address")
    yield live


@pytest.fixture(scope="module")
def server(agent: Any) -> Iterator[None]:
    (agent.workdir / "server.py").write_text(SERVER)
    with agent.connect() as conn:
        conn.commands.run("nohup python3 /app/server.py >/dev/null 2>&1 &")
        deadline = time.monotonic() + 20
        while ":1F40 " not in conn.commands.run("cat /proc/net/tcp").stdout.upper():
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.2)
    yield


def _router_http(live: Any, port: int | None = None) -> httpx.Client:
    headers = {**auth_headers(live.token), "X-Sandbox-ID": live.name}
    if port is not None:
        headers["X-Sandbox-Port"] = str(port)
    return httpx.Client(base_url=live.url, headers=headers, timeout=30)


def test_commands_go_through_the_agent_not_runsc_exec(agent: Any) -> None:
    with agent.connect() as conn:
        # The agent runs them: they are its children, so their parent is the agent's Python.
        out = conn.commands.run("cat /proc/$PPID/cmdline | tr '\\0' ' '").stdout
        assert "/.turbok/agent" in out and "tkagent" in out
        assert conn.commands.run("echo $SANDBOX_BASE_DIR; pwd").stdout.split() == ["/app", "/app"]
        # Nothing of the agent's own runtime leaks into the commands' environment.
        env = conn.commands.run("env").stdout
        assert "PYTHON" not in env and "/.turbok" not in env


def test_official_client_in_cluster_pod_ip_mode_runs_commands_and_files(agent: Any) -> None:
    class Helper:
        injected_api_client = None

        def get_sandbox(self, name: str, namespace: str) -> dict[str, Any]:
            return {"metadata": {"name": name}, "status": {"podIPs": [{"ip": agent.ip}]}}

    sb = Sandbox(claim_name="c", sandbox_id=agent.name, namespace=agent.namespace,
                 connection_config=SandboxdInClusterConnectionConfig(mode="in-cluster-pod-ip"),
                 k8s_helper=Helper())  # type: ignore[arg-type]
    try:
        r = sb.commands.run("echo out; echo err >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 3)
        r = sb.commands.run("echo $GREETING; pwd", env={"GREETING": "hi"}, cwd="/app")
        assert r.stdout == "hi\n/app\n"
        r = sb.commands.run("sleep 5", command_timeout=0.5)
        assert r.timed_out and r.exit_code == 124
        data = os.urandom(300_000)
        sb.files.write("deep/dir/blob.bin", data)
        assert sb.files.read("deep/dir/blob.bin") == data
        assert (agent.workdir / "deep/dir/blob.bin").read_bytes() == data  # atomic rename into /app
        names = {e.name: e for e in sb.files.list("deep/dir")}
        assert names["blob.bin"].size == len(data) and names["blob.bin"].mode == "0644"
        assert sb.files.exists("deep/dir/blob.bin") and not sb.files.exists("deep/nope")
        with pytest.raises(Exception) as e:
            sb.files.delete("deep")
        assert getattr(e.value, "status_code", None) == 409
        sb.files.delete("deep", recursive=True)
        assert not sb.files.exists("deep")
    finally:
        sb.close_connection()


def test_grpc_start_streams_stdin_signals_and_a_pty_directly(agent: Any) -> None:
    stub = pb_grpc.ProcessServiceStub(grpc.insecure_channel(f"{agent.ip}:9090"))
    events = stub.Start(pb.StartRequest(config=pb.ProcessConfig(command=["sh", "-c", "read x; echo got:$x; sleep 60"])))
    pid = next(events).init.process_id
    stub.WriteStdin(pb.WriteStdinRequest(process_id=pid, input=b"hello\n"))
    assert next(events).stdout == b"got:hello\n"
    stub.SendSignal(pb.SendSignalRequest(process_id=pid, signal=pb.SIGNAL_SIGTERM))
    assert [e.exit.exit_code for e in events if e.WhichOneof("event") == "exit"] == [-1]
    events = stub.Start(pb.StartRequest(config=pb.ProcessConfig(command=["sh", "-c", "stty size; tty"]),
                                        pty=pb.PTY(cols=101, rows=33)))
    out = b"".join(e.stdout for e in events)
    assert b"33 101" in out and b"/dev/pts/" in out
    with pytest.raises(grpc.RpcError) as e:
        stub.SendSignal(pb.SendSignalRequest(process_id=pid, signal=pb.SIGNAL_SIGKILL))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_through_the_router_needs_the_token_and_keeps_it_from_the_sandbox(agent: Any) -> None:
    host = agent.url.removeprefix("http://")
    stub = pb_grpc.ProcessServiceStub(grpc.insecure_channel(host))
    request = pb.ExecuteRequest(config=pb.ProcessConfig(command=["/bin/sh", "-c", "echo via router; exit 4"]))
    with pytest.raises(grpc.RpcError) as e:
        stub.Execute(request, metadata=[("x-sandbox-id", agent.name)], timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and agent.token not in (e.value.details() or "")
    meta = [("authorization", f"Bearer {agent.token}"), ("x-sandbox-id", agent.name)]
    r = stub.Execute(request, metadata=meta, timeout=10)
    assert (r.stdout, r.exit_code) == (b"via router\n", 4)
    with pytest.raises(grpc.RpcError) as e:
        stub.Execute(request, metadata=[*meta[:1], ("x-sandbox-id", "nobody")], timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    events = stub.Start(pb.StartRequest(config=pb.ProcessConfig(command=["sh", "-c", "seq 1 3"])), metadata=meta)
    assert b"".join(ev.stdout for ev in events) == b"1\n2\n3\n"


def test_any_port_through_the_router_http_streaming_and_websocket(agent: Any, server: None) -> None:
    with _router_http(agent, 8000) as http:
        r = http.get("/echo?x=1", headers={"Origin": "http://elsewhere"})
        assert r.status_code == 200
        seen = r.json()
        assert seen["path"] == "/echo?x=1"
        lowered = {k.lower(): v for k, v in seen["headers"].items()}
        assert "authorization" not in lowered and agent.token not in r.text  # the token stays with the router
        assert lowered["x-forwarded-proto"] == "http"
        body = os.urandom(3 * 2**20)
        r = http.post("/upload", content=body)
        assert r.status_code == 201 and r.text == hashlib.sha256(body).hexdigest()
        started, stamps = time.monotonic(), []
        with http.stream("GET", "/stream") as s:
            for line in s.iter_lines():
                if line.startswith("data:"):
                    stamps.append(time.monotonic() - started)
        assert len(stamps) == 3 and stamps[-1] - stamps[0] > 0.4, "events arrive as sent, not all at the end"
        r = http.get("/", headers={"X-Sandbox-Port": "8001"})
        assert r.status_code == 502 and r.json()["reason"] == "BadGateway"
        assert http.get("/", headers={"X-Sandbox-Port": "99999"}).status_code == 400

    async def ws() -> list[str]:
        import aiohttp

        headers = {**auth_headers(agent.token), "X-Sandbox-ID": agent.name, "X-Sandbox-Port": "8000"}
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{agent.url}/ws", headers=headers) as w:
            got = []
            for word in ("one", "two"):
                await w.send_str(word)
                got.append((await w.receive()).data)
            return got

    assert asyncio.run(ws()) == ["echo:one", "echo:two"]


def test_sandboxd_rest_through_the_router_on_port_8080(agent: Any) -> None:
    with _router_http(agent, 8080) as http:
        assert http.put("/v1/files/rest%2Fa.txt", content=b"abc", params={"mode": "0600"}).status_code == 204
        listing = http.get("/v1/files/rest").json()
        assert listing["entries"][0]["name"] == "a.txt" and listing["entries"][0]["mode"] == "0600"
        assert http.head("/v1/files/rest%2Fa.txt").status_code == 200
        assert http.get("/v1/health").json()["status"] == "ok"
        assert http.delete("/v1/files/rest", params={"recursive": "true"}).status_code == 204
        assert http.head("/v1/files/rest").status_code == 404


def test_a_sandbox_hibernates_right_after_router_traffic(boxes: Any) -> None:
    """runsc cannot checkpoint a sandbox with a TCP connection open or closed in the last 60 s: the router drops
    and resets its connections first (``PodRuntime.before_hibernate``), and the agent never closes first."""
    from turbok.sandboxd import StaticResolver, create_router_app
    from turbok.sandboxd.testing import serve_in_thread
    from turbok.sdk import SandboxConnection

    if boxes.network is None:
        pytest.skip("no pod network here (needs root and nft)")
    runtime = boxes.twin()
    config = boxes.config("hibernating")
    resolver = StaticResolver({("default", "hib"): config.id})

    async def boot() -> None:
        await boxes.boot(config, runtime=runtime)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(boot())
        with serve_in_thread(lambda: create_router_app(runtime=runtime, resolver=resolver, token="t")) as url, \
                SandboxConnection(url, "t", "default", "hib", timeout=30) as conn:
            for _ in range(3):
                assert conn.commands.run("echo before > /tmp/mem; echo ok").stdout == "ok\n"
            conn.files.write("kept.txt", b"on disk")
            assert conn.files.read("kept.txt") == b"on disk"
            # The hook runs in the router's loop; hibernate from there, as the node would in the control plane.
            router_loop = _router_loop(url)
            asyncio.run_coroutine_threadsafe(runtime.hibernate_pod_sandbox(config.id), router_loop).result(120)
            asyncio.run_coroutine_threadsafe(_boot_again(boxes, runtime, config), router_loop).result(120)
            r = conn.commands.run("cat /tmp/mem")
            assert r.stdout == "before\n", "its memory (tmpfs) came back: it hibernated, not restarted"
    finally:
        loop.run_until_complete(runtime.remove_pod_sandbox(config.id))
        loop.close()


async def _boot_again(boxes: Any, runtime: Any, config: Any) -> None:
    """Boot the sandbox again as the node would: a disk whose loop device the kernel has not let go of yet (a
    loaded machine) is "retrying later", so retry."""
    from turbok.runtime.errors import SandboxStartFailed

    deadline = time.monotonic() + 60
    while True:
        try:
            await boxes.boot(config, runtime=runtime)
            return
        except SandboxStartFailed as e:
            if "retrying later" not in str(e) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def _router_loop(url: str) -> asyncio.AbstractEventLoop:
    from turbok.sandboxd import testing

    return testing.loop_of(url)


def test_the_agent_never_leaves_time_wait_in_the_sandbox(agent: Any) -> None:
    # Connections the agent saw end (closed by their client) leave nothing behind inside the sandbox.
    for _ in range(5):
        with socket.create_connection((agent.ip, AGENT_PORT), timeout=5) as s:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(4096)
    time.sleep(0.5)
    with agent.connect() as conn:
        states = [line.split()[3] for line in conn.commands.run("cat /proc/net/tcp").stdout.splitlines()[1:]]
    assert "06" not in states, "a TIME_WAIT in the sandbox would stop runsc from checkpointing it for 60 s"


def test_an_on_demand_agent_starts_at_the_first_call_once(boxes: Any) -> None:
    """A pod whose agent starts on demand (the default for a Sandbox's Pod: ``turbok.dev/sandboxd``) has none
    after its container starts; the router's first request is served through runsc exec and starts it in the
    background, and after that commands reach the agent. Concurrent ``ensure_agent`` calls start one agent."""
    from turbok.sandboxd import StaticResolver, create_router_app
    from turbok.sandboxd.testing import serve_in_thread
    from turbok.sdk import SandboxConnection

    if boxes.network is None:
        pytest.skip("no pod network here (needs root and nft)")
    runtime = boxes.twin()
    config = boxes.config("lazy", agent_on_demand=True)
    resolver = StaticResolver({("default", "lazy"): config.id})
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(boxes.boot(config, runtime=runtime))
        ip = loop.run_until_complete(runtime.pod_sandbox_status(config.id)).ip
        with pytest.raises(OSError):
            socket.create_connection((ip, AGENT_PORT), timeout=2).close()
        with serve_in_thread(lambda: create_router_app(runtime=runtime, resolver=resolver, token="t")) as url, \
                SandboxConnection(url, "t", "default", "lazy", timeout=30) as conn:
            parent = "cat /proc/$PPID/cmdline | tr '\\0' ' '"
            first = conn.commands.run(parent).stdout
            assert "tkagent" not in first, "the first command cannot wait for the agent: runsc exec runs it"
            deadline = time.monotonic() + 30
            while "tkagent" not in conn.commands.run(parent).stdout:
                assert time.monotonic() < deadline, "the agent did not come up after the first call"
                time.sleep(0.2)
            router_loop = _router_loop(url)

            async def ask() -> list[bool]:
                return list(await asyncio.gather(*(runtime.ensure_agent(config.id) for _ in range(3))))

            again = asyncio.run_coroutine_threadsafe(ask(), router_loop).result(60)
            assert again == [True, True, True]
            agents = conn.commands.run("ps -eo args | grep -c '[t]kagent.main'").stdout.strip()
            assert agents == "1", "asked again, a running agent is found, not started twice"
    finally:
        loop.run_until_complete(runtime.remove_pod_sandbox(config.id))
        loop.close()
