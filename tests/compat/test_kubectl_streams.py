"""Real kubectl (and the Kubernetes Python client) against turbok's Pod streams: logs, exec, attach, port-forward.

The API server runs in the test's event loop over TLS, with the node's side
replaced by ``tests.doubles.pod_streams.FakePodStreams`` (local processes,
a local echo server standing for a Pod's port): these tests are about the
wire protocols kubectl speaks (websocket ``v5.channel.k8s.io``, SPDY/3.1
tunnelled in a websocket for port-forward, the SPDY-only kubectl 1.20), not
about the node. The same commands against a real node and gVisor are in
tests/integration/node/test_streams_gvisor.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import struct
import termios
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.compat.kubectl import KUBECTL, MARKS
from tests.doubles.pod_streams import FakePodStreams
from turbok.api.kinds import POD, default_registry
from turbok.apiserver.app import create_app
from turbok.apiserver.certs import ensure_pki
from turbok.apiserver.kubeconfig import write_kubeconfig
from turbok.apiserver.streaming import stream_handler
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

pytestmark = MARKS

TOKEN = "compat-streams-token"
LEGACY = os.environ.get("TURBOK_LEGACY_KUBECTL") or next(
    (str(p) for p in [Path(__file__).resolve().parents[2] / ".cache/kubernetes-client/usr/bin/kubectl"]
     if p.exists()), None)


@dataclass
class Cluster:
    kubeconfig: Path
    cache: Path
    registry: ObjectRegistry
    streams: FakePodStreams
    echo_port: int

    async def kubectl(self, *args: str, binary: str | None = None, stdin: bytes | None = None,
                      timeout: float = 30) -> tuple[int, str, str]:
        assert KUBECTL is not None
        proc = await asyncio.create_subprocess_exec(
            binary or KUBECTL, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache}", *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


def running_pod(registry: ObjectRegistry, name: str, containers: list[str], *, labels: dict[str, str] | None = None,
                annotations: dict[str, str] | None = None) -> None:
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"nodeName": "node1", "containers": [
            {"name": c, "image": "busybox", "stdin": True, "ports": [{"name": "web", "containerPort": 8888}]}
            for c in containers]}}
    pod = registry.create(POD, body, namespace="default")
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    registry.update(POD, pod, namespace="default", name=name, subresource="status")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    running_pod(registry, "p", ["c"], labels={"app": "web"})
    running_pod(registry, "multi", ["a", "b"], annotations={"kubectl.kubernetes.io/default-container": "b"})
    svc = registry.kinds.by_kind("v1", "Service")
    registry.create(svc, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                          "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": "web"}]}},
                    namespace="default")

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    streams = FakePodStreams(ports={8888: echo_port})
    app = create_app(registry, token=TOKEN, metrics_registry=CollectorRegistry(), stream_handler=stream_handler(streams))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    pki = ensure_pki(tmp_path / "pki")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context())
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, api_url=f"https://127.0.0.1:{port}", token=TOKEN, router_url="http://127.0.0.1:1",
                     router_token="unused", ca_file=pki.ca_cert)
    yield Cluster(kubeconfig, tmp_path / "cache", registry, streams, echo_port)
    await streams.aclose()
    await runner.cleanup()
    echo_server.close()
    registry.db.close()


# ------------------------------------------------------------------ exec


async def test_exec_output_streams_and_exit_code(cluster: Cluster) -> None:
    code, out, err = await cluster.kubectl("exec", "p", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (code, out) == (3, "out\n")
    assert "err\n" in err and "command terminated with exit code 3" in err
    code, out, _ = await cluster.kubectl("exec", "-i", "p", "--", "wc", "-c", stdin=b"hello world")
    assert (code, out.strip()) == (0, "11")
    code, out, _ = await cluster.kubectl("exec", "multi", "--", "true")  # the default-container annotation
    assert code == 0 and cluster.streams.execs[-1][0] == "b"


async def test_exec_it_through_a_terminal(cluster: Cluster) -> None:
    assert KUBECTL is not None
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, f"--kubeconfig={cluster.kubeconfig}", f"--cache-dir={cluster.cache}", "exec", "-it", "p", "--", "sh",
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            seen.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    async def wait_for(pattern: bytes, timeout: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not re.search(pattern, bytes(seen)):
            assert asyncio.get_running_loop().time() < deadline, f"no {pattern!r} in {bytes(seen)!r}"
            await asyncio.sleep(0.05)

    try:
        await wait_for(rb"[#$] ")  # the shell's prompt: on a terminal, interactive
        os.write(master, b"stty size; echo $((6*7))\r")
        await wait_for(rb"33 111\r\n42\r\n")
        os.write(master, b"exit 5\r")
        assert await asyncio.wait_for(proc.wait(), 20) == 5
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        os.close(master)
    assert b"command terminated with exit code 5" in seen


async def test_attach_to_the_containers_process(cluster: Cluster) -> None:
    code, out, _ = await cluster.kubectl("attach", "-i", "p", stdin=b"typed into cat\n")
    assert (code, out) == (0, "typed into cat\n")  # stdin's end (v5's close signal) ends cat, and the session


# ------------------------------------------------------------------ logs


async def test_logs_flags_reach_the_node(cluster: Cluster) -> None:
    cluster.streams.logs_by_container[("default", "p", "c")] = b"hello\n"
    cluster.streams.previous_logs[("default", "p", "c")] = b"before the restart\n"
    cluster.streams.logs_by_container[("default", "multi", "b")] = b"from b\n"
    assert (await cluster.kubectl("logs", "p"))[:2] == (0, "hello\n")
    assert (await cluster.kubectl("logs", "p", "--previous"))[:2] == (0, "before the restart\n")
    await cluster.kubectl("logs", "p", "--tail=2", "--since=10s", "--timestamps", "--limit-bytes=99", "-c", "c")
    call = cluster.streams.log_calls[-1]
    assert (call["tail_lines"], call["timestamps"], call["limit_bytes"], call["container"]) == (2, True, 99, "c")
    assert call["since"] is not None and abs(time.time() - 10 - call["since"]) < 30
    await cluster.kubectl("logs", "p", "--since-time=2024-05-01T12:00:00Z")
    assert cluster.streams.log_calls[-1]["since"] == 1714564800.0
    assert (await cluster.kubectl("logs", "multi"))[:2] == (0, "from b\n")  # kubectl reads the annotation
    code, _, err = await cluster.kubectl("logs", "p", "-c", "nope")
    assert code == 1 and "container nope is not valid for pod p" in err


async def test_logs_follow(cluster: Cluster) -> None:
    assert KUBECTL is not None
    cluster.streams.logs_by_container[("default", "p", "c")] = b"one\n"
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, f"--kubeconfig={cluster.kubeconfig}", f"--cache-dir={cluster.cache}", "logs", "-f", "p",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"one\n"
    cluster.streams.append_log(b"two\n")
    assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"two\n"
    cluster.streams.end_follow()  # the container ended: -f ends
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert cluster.streams.log_calls[-1]["follow"] is True


# ------------------------------------------------------------------ port-forward


async def forward(cluster: Cluster, target: str, remote: int) -> tuple[asyncio.subprocess.Process, int]:
    assert KUBECTL is not None
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, f"--kubeconfig={cluster.kubeconfig}", f"--cache-dir={cluster.cache}", "port-forward", target,
        f":{remote}", "--address=127.0.0.1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    match = re.search(r"127\.0\.0\.1:(\d+) ->", line)
    assert match, line
    return proc, int(match.group(1))


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
    writer.close()
    return got


async def stop(proc: asyncio.subprocess.Process) -> str:
    proc.terminate()
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    return err.decode()


async def test_port_forward_to_a_pod_and_to_a_service(cluster: Cluster) -> None:
    proc, port = await forward(cluster, "pod/p", 8888)
    try:
        assert await roundtrip(port, b"ping") == b"ping"
        big = os.urandom(3 * 1024 * 1024)
        assert await roundtrip(port, big) == big  # many SPDY frames, many websocket messages
        probes = [asyncio.ensure_future(roundtrip(port, f"conn {i}".encode())) for i in range(5)]
        assert sorted(await asyncio.gather(*probes)) == [f"conn {i}".encode() for i in range(5)]
    finally:
        await stop(proc)
    # svc/web: kubectl picks a Running Pod the Service selects and its container port named "web".
    proc, port = await forward(cluster, "svc/web", 8080)
    try:
        assert await roundtrip(port, b"through the service") == b"through the service"
    finally:
        await stop(proc)
    assert set(cluster.streams.forwards) == {8888}


async def test_port_forward_to_a_closed_port_says_so(cluster: Cluster) -> None:
    proc, port = await forward(cluster, "pod/p", 9999)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"anyone?")
    assert await asyncio.wait_for(reader.read(), 20) == b""
    writer.close()
    await asyncio.wait_for(proc.wait(), 20)  # kubectl gives up on the tunnel, as it does with kube-apiserver
    err = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert "error forwarding port 9999 to pod p_default" in err and "connection refused" in err


# ------------------------------------------------------------------ older kubectl, other clients


@pytest.mark.skipif(LEGACY is None, reason="no kubectl 1.20 (Debian's kubernetes-client; TURBOK_LEGACY_KUBECTL)")
async def test_an_spdy_only_kubectl_is_told_to_use_websockets(cluster: Cluster) -> None:
    code, _, err = await cluster.kubectl("exec", "p", "--", "true", binary=LEGACY)
    assert code == 1 and "needs a WebSocket" in err and "kubectl 1.30 or newer" in err
    code, _, err = await cluster.kubectl("port-forward", "pod/p", ":8888", binary=LEGACY)
    assert code == 1 and "needs a WebSocket" in err and "kubectl 1.31 or newer" in err
    assert (await cluster.kubectl("logs", "p", binary=LEGACY))[0] == 0  # plain HTTP: fine


async def test_the_python_client_exec_and_portforward(cluster: Cluster) -> None:
    from kubernetes import client, config
    from kubernetes.stream import portforward, stream

    def run() -> tuple[str, bytes]:
        api = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        try:
            core: Any = client.CoreV1Api(api)
            out = stream(core.connect_get_namespaced_pod_exec, "p", "default", command=["sh", "-c", "echo hi"],
                         stderr=True, stdin=False, stdout=True, tty=False)
            pf = portforward(core.connect_get_namespaced_pod_portforward, "p", "default", ports="8888")
            sock = pf.socket(8888)
            sock.sendall(b"python")
            got = sock.recv(100)
            sock.close()
            return out, got
        finally:
            api.close()

    out, got = await asyncio.to_thread(run)
    assert (out, got) == ("hi\n", b"python")

