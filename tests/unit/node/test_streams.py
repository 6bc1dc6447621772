"""The node's side of the Pod streams over a fake runtime: which attempt's log, the kubelet's refusals,
exec through the runtime, port-forward into the pod network or to the router's socket; the router's
mirror Pod and Service kept as a kubelet keeps a static Pod's mirror."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from turbok.api.kinds import default_registry
from turbok.api.status import ApiError, BadRequest
from turbok.embedded.client import EmbeddedClient
from turbok.node import routerpod
from turbok.node.routerpod import RouterPod
from turbok.node.streams import NodeStreams, pick_attempt
from turbok.node.suspend import runtime_id
from turbok.node.testing import FakePodRuntime
from turbok.runtime.cri import ContainerConfig, PodSandboxConfig
from turbok.runtime.network import NotAttached, PortNotListening
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

Obj = dict[str, Any]


def pod(state: Obj | None = None, *, restarts: int = 0, last: Obj | None = None, node: str = "n1") -> Obj:
    status: Obj = {"phase": "Running", "podIP": "10.213.0.9"}
    if state is not None:
        entry: Obj = {"name": "c", "state": state, "restartCount": restarts}
        if last is not None:
            entry["lastState"] = {"terminated": last}
        status["containerStatuses"] = [entry]
    return {"metadata": {"name": "p", "namespace": "default", "uid": "uid-1"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}, "status": status}


RUNNING = {"running": {"startedAt": "2024-05-01T12:00:00Z"}}
ENDED = {"exitCode": 1, "reason": "Error", "containerID": "gvisor://x"}


@pytest.mark.parametrize(("state", "restarts", "last", "previous", "want"), [
    (RUNNING, 0, None, False, 0),
    (RUNNING, 2, ENDED, False, 2),
    (RUNNING, 2, ENDED, True, 1),
    ({"terminated": ENDED}, 0, None, False, 0),
    ({"waiting": {"reason": "CrashLoopBackOff"}}, 3, ENDED, False, 3),  # back-off: the last that ran
    ({"waiting": {"reason": "CrashLoopBackOff"}}, 3, ENDED, True, 3),
])
def test_which_attempt_as_the_kubelet_picks(state: Obj, restarts: int, last: Obj | None, previous: bool,
                                            want: int) -> None:
    assert pick_attempt(pod(state, restarts=restarts, last=last), "c", previous=previous) == want


@pytest.mark.parametrize(("state", "previous", "message"), [
    (None, False, 'container "c" in pod "p" is not available'),
    (RUNNING, True, 'previous terminated container "c" in pod "p" not found'),
    ({"waiting": {"reason": "ContainerCreating"}}, False, 'container "c" in pod "p" is waiting to start: ContainerCreating'),
    ({"waiting": {"reason": "ErrImagePull"}}, False, 'container "c" in pod "p" is waiting to start: image can\'t be pulled'),
    ({"waiting": {"reason": "ImagePullBackOff"}}, False,
     'container "c" in pod "p" is waiting to start: trying and failing to pull image'),
    ({"waiting": {}}, False, 'container "c" in pod "p" is waiting to start - no logs yet'),
])
def test_the_kubelets_refusals(state: Obj | None, previous: bool, message: str) -> None:
    with pytest.raises(BadRequest) as e:
        pick_attempt(pod(state), "c", previous=previous)
    assert e.value.message == message


class Connector:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[tuple[str, int]] = []

    async def connect(self, target: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.asked.append((target, port))
        if isinstance(self.answer, Exception):
            raise self.answer
        result: tuple[asyncio.StreamReader, asyncio.StreamWriter] = self.answer
        return result


async def booted(tmp_path: Path, *, attempt: int = 0) -> tuple[FakePodRuntime, str]:
    runtime = FakePodRuntime(tmp_path / "pods")
    rid = runtime_id(pod())
    await runtime.run_pod_sandbox(PodSandboxConfig(id=rid, name="p", namespace="default", uid="uid-1", hostname="p"))
    await runtime.start_container(rid, ContainerConfig(name="c", image="i", attempt=attempt))
    return runtime, rid


def write_log(runtime: FakePodRuntime, rid: str, attempt: int, text: bytes) -> None:
    path = runtime.log_path(rid, "c", attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(b"2024-05-01T12:00:00.000000001Z stdout F " + line + b"\n" for line in text.splitlines()))


async def test_logs_come_from_the_attempts_file_and_outlive_the_reader(tmp_path: Path) -> None:
    runtime, rid = await booted(tmp_path, attempt=1)
    write_log(runtime, rid, 0, b"first run")
    write_log(runtime, rid, 1, b"second run")
    the_pod = pod(RUNNING, restarts=1, last=ENDED)

    async def read(streams: NodeStreams, **kw: Any) -> bytes:
        return b"".join([c async for c in await streams.logs(the_pod, "c", **kw)])

    assert await read(NodeStreams(runtime)) == b"second run\n"
    assert await read(NodeStreams(runtime), previous=True) == b"first run\n"
    # A new NodeStreams (the control plane restarted) reads the same files.
    assert await read(NodeStreams(runtime, node_name="n1"), timestamps=True) == (
        b"2024-05-01T12:00:00.000000001Z second run\n")
    write_log(runtime, rid, 1, b"")
    runtime.log_path(rid, "c", 1).unlink()
    assert await read(NodeStreams(runtime)) == b""  # started, nothing written yet


async def test_follow_ends_when_the_attempt_is_over(tmp_path: Path) -> None:
    runtime, rid = await booted(tmp_path)
    write_log(runtime, rid, 0, b"bye")
    runtime.exit(rid, "c", 0)
    chunks = await NodeStreams(runtime).logs(pod(RUNNING), "c", follow=True)
    assert b"".join([c async for c in chunks]) == b"bye\n"  # not running: -f ends at the end of the file


async def test_exec_needs_a_running_container_and_attach_detaches(tmp_path: Path) -> None:
    runtime, rid = await booted(tmp_path)
    runtime.exec_handler = lambda _id, _name, argv: (7, " ".join(argv).encode())
    streams = NodeStreams(runtime, node_name="n1")
    session = await streams.exec(pod(RUNNING), "c", ["echo", "hi"], stdin=False, stdout=True, stderr=True, tty=False)
    assert session.stdout is not None and await session.stdout.read() == b"echo hi"
    assert await session.wait() == 7
    with pytest.raises(ApiError) as e:
        await streams.exec(pod(RUNNING, node="elsewhere"), "c", ["true"], stdin=False, stdout=True, stderr=False,
                           tty=False)
    assert e.value.message == "pod does not exist"
    runtime.exit(rid, "c", 0)
    with pytest.raises(ApiError) as e:
        await streams.exec(pod(RUNNING), "c", ["true"], stdin=False, stdout=True, stderr=False, tty=False)
    assert e.value.message == 'container not found ("c")'
    with pytest.raises(ApiError) as e:
        await streams.attach(pod(RUNNING), "c", stdin=True, stdout=True, stderr=False, tty=False)
    assert e.value.message == 'container not found ("c")'


async def test_port_forward_goes_to_the_pods_address(tmp_path: Path) -> None:
    runtime = FakePodRuntime(tmp_path)
    pair: Any = ("reader", "writer")
    ok = Connector(pair)
    assert await NodeStreams(runtime, network=ok).port_forward(pod(RUNNING), 8080) == pair
    assert ok.asked == [(runtime_id(pod()), 8080)]
    with pytest.raises(ApiError) as e:
        await NodeStreams(runtime, network=Connector(PortNotListening("nothing"))).port_forward(pod(RUNNING), 9)
    assert e.value.message == "dial tcp4 10.213.0.9:9: connect: connection refused"
    with pytest.raises(ApiError, match="no address"):
        await NodeStreams(runtime, network=Connector(NotAttached("pod x has no address"))).port_forward(pod(), 9)
    with pytest.raises(ApiError, match="without a pod network"):
        await NodeStreams(runtime).port_forward(pod(RUNNING), 9)


# ------------------------------------------------------------------ the router's mirror Pod


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[EmbeddedClient]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    yield EmbeddedClient(registry)
    registry.db.close()


async def test_the_router_pod_and_service_are_made_and_kept(client: EmbeddedClient, tmp_path: Path) -> None:
    kinds = client.kinds
    pods, services = kinds.by_kind("v1", "Pod"), kinds.by_kind("v1", "Service")
    router = RouterPod(client, node_name="n1", socket_path=tmp_path / "router.sock", host_ip="10.213.0.1")
    await router.start()
    try:
        made = await client.get(pods, routerpod.NAMESPACE, "sandbox-router-n1")
        assert routerpod.MIRROR in made["metadata"]["annotations"] and router.is_mirror(made)
        assert made["spec"]["nodeName"] == "n1" and made["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in made["status"]["conditions"]}["Ready"] == "True"
        svc = await client.get(services, routerpod.NAMESPACE, routerpod.SERVICE)
        assert svc["spec"]["selector"] == routerpod.LABELS
        assert all(made["metadata"]["labels"][k] == v for k, v in routerpod.LABELS.items())
        port = svc["spec"]["ports"][0]
        assert port["port"] == 8080 and port["targetPort"] == "proxy"
        assert made["spec"]["containers"][0]["ports"][0] == {"name": "proxy", "containerPort": 8080, "protocol": "TCP"}
        # Deleted (gracefully: it is bound to a node): removed and made again, as a kubelet does.
        await client.delete(pods, routerpod.NAMESPACE, made["metadata"]["name"])
        await client.delete(services, routerpod.NAMESPACE, routerpod.SERVICE)
        for _ in range(100):
            again = await client.try_get(pods, routerpod.NAMESPACE, "sandbox-router-n1")
            if (again is not None and again["metadata"]["uid"] != made["metadata"]["uid"]
                    and (again.get("status") or {}).get("phase") == "Running"
                    and await client.try_get(services, routerpod.NAMESPACE, routerpod.SERVICE) is not None):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the router's mirror Pod or Service was not made again")
    finally:
        await router.stop()


async def test_a_port_forward_to_the_router_pod_reaches_its_socket(client: EmbeddedClient, tmp_path: Path) -> None:
    long_dir = tmp_path / ("d" * 90)  # past sun_path's 108 bytes: connected through /proc/self/fd
    long_dir.mkdir()
    router = RouterPod(client, node_name="n1", socket_path=long_dir / "router.sock")
    from turbok.sandboxd.router import bind_unix_socket

    sock = bind_unix_socket(router.socket_path)
    assert router.socket_path.stat().st_mode & 0o777 == 0o600

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"router: " + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(hello, sock=sock)
    try:
        mirror = router.pod(None)
        streams = NodeStreams(FakePodRuntime(tmp_path), router=router)
        reader, writer = await streams.port_forward(mirror, 8080)
        writer.write(b"hello\n")
        assert await reader.read() == b"router: hello\n"
        writer.close()
        with pytest.raises(ApiError, match="serves port 8080"):
            await streams.port_forward(mirror, 9090)
        with pytest.raises(ApiError, match="inside the turbok control plane"):
            await streams.exec(mirror, routerpod.CONTAINER, ["sh"], stdin=True, stdout=True, stderr=False, tty=True)
        assert [c async for c in await streams.logs(mirror, routerpod.CONTAINER)] == []
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(ApiError, match="does not answer"):
        await NodeStreams(FakePodRuntime(tmp_path), router=router).port_forward(router.pod(None), 8080)
