"""A Pod's inputs with real runsc: env from a Secret and a ConfigMap, a configMap volume updated in place,
a claim whose size is exceeded, bounded emptyDirs, each probe type failing and passing, runAsNonRoot.

The node runs with local storage on real loop devices (bounded ext4 images) and, for the httpGet and
tcpSocket probes, on a pod network of its own (tests/integration/runtime/podnet.py: a unique bridge
and range per test process; traffic only between the host and the test's namespaces).
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runtime.conftest import images_dir
from tests.unit.node.conftest import NodeHarness, condition, container_status, pod
from turbok.api.kinds import default_registry
from turbok.node.clock import MonotonicClock
from turbok.node.node import NodeSettings
from turbok.runtime import loopdev
from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

pytestmark = pytest.mark.integration

Obj = dict[str, Any]
IMAGE = "python-runtime-sandbox"
SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


async def _node(tmp_path: Path, *, network: bool) -> AsyncIterator[NodeHarness]:
    if shutil.which("runsc") is None:
        pytest.skip("runsc (gVisor) is not installed")
    from turbok.runtime.pods_gvisor import GvisorPodRuntime

    images = ImageStore(images_dir())
    if not (images.builtin_dir(BASE_IMAGE) / "rootfs").is_dir():
        pytest.skip(f"the base image is not built in {images_dir()} (scripts/setup.sh builds it)")
    nets = None
    net = None
    if network:
        from tests.integration.runtime.podnet import Networks, require_root_network

        require_root_network()
        nets = Networks(tmp_path / "net")
        net = nets.make()
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    runtime = GvisorPodRuntime(tmp_path / "pods", images, network=net)
    h = NodeHarness(tmp_path, registry, runtime, MonotonicClock())  # type: ignore[arg-type]
    await h.start(settings=NodeSettings(relist_seconds=0.2), storage_root=tmp_path / "storage")
    storage = h.node.storage if h.node is not None else None
    try:
        yield h
    finally:
        await h.stop()
        await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                             return_exceptions=True)
        if storage is not None:
            await storage.unmount_all()
        if nets is not None:
            nets.cleanup()
        registry.db.close()


@pytest.fixture
async def gnode(tmp_path: Path) -> AsyncIterator[NodeHarness]:
    async for h in _node(tmp_path, network=False):
        yield h


@pytest.fixture
async def netnode(tmp_path: Path) -> AsyncIterator[NodeHarness]:
    async for h in _node(tmp_path, network=True):
        yield h


def main(**extra: Any) -> Obj:
    return {"name": "main", "image": IMAGE, "command": SLEEP, **extra}


async def run(h: NodeHarness, name: str, argv: list[str], container: str = "main") -> tuple[int, str]:
    p = h.pod(name)
    assert p is not None
    worker = h.node.workers[p["metadata"]["uid"]] if h.node is not None else None
    assert worker is not None
    stream = await h.runtime.exec(worker.rid, container, argv)
    out = await stream.process.stdout.read()
    err = await stream.process.stderr.read()
    return await stream.process.wait(), (out + err).decode()


async def test_env_from_a_secret_and_a_config_map(gnode: NodeHarness) -> None:
    gnode.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "default"},
                  "data": {"token": base64.b64encode(b"s3cr3t").decode()}})
    gnode.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "default"},
                  "data": {"MODE": "fast"}})
    gnode.create(pod("env", containers=[main(
        envFrom=[{"configMapRef": {"name": "app"}, "prefix": "APP_"}],
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
             {"name": "BOTH", "value": "$(APP_MODE)-$(TOKEN)"},
             {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])]))
    await gnode.wait_phase("env", "Running")
    code, out = await run(gnode, "env", ["/bin/sh", "-c", 'echo "$TOKEN|$APP_MODE|$BOTH|$ME"'])
    assert code == 0 and out.strip() == "s3cr3t|fast|fast-s3cr3t|env"


async def test_a_config_map_volume_is_updated_in_place(gnode: NodeHarness) -> None:
    kind = gnode.kinds.by_kind("v1", "ConfigMap")
    gnode.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "default"},
                  "data": {"level": "1"}})
    gnode.create(pod("cfg", containers=[main(volumeMounts=[{"name": "conf", "mountPath": "/etc/app"}])],
                     volumes=[{"name": "conf", "configMap": {"name": "app"}}]))
    await gnode.wait_phase("cfg", "Running")
    assert (await run(gnode, "cfg", ["cat", "/etc/app/level"]))[1] == "1"
    started = container_status(gnode.pod("cfg") or {}, "main")["containerID"]
    cm = gnode.registry.get(kind, "default", "app")
    cm["data"] = {"level": "2"}
    gnode.registry.update(kind, cm)
    for _ in range(100):
        if (await run(gnode, "cfg", ["cat", "/etc/app/level"]))[1] == "2":
            break
        await asyncio.sleep(0.1)
    assert (await run(gnode, "cfg", ["cat", "/etc/app/level"]))[1] == "2"
    assert container_status(gnode.pod("cfg") or {}, "main")["containerID"] == started  # not restarted
    code, _ = await run(gnode, "cfg", ["/bin/sh", "-c", "echo x > /etc/app/level"])
    assert code != 0  # read-only, as kubelet mounts it


def _need_loop_devices() -> None:
    why = loopdev.unavailable(loopdev.LOOP_CONTROL)
    if why or shutil.which("mkfs.ext4") is None:
        pytest.skip(f"bounded volumes need loop devices and mkfs.ext4: {why or 'mkfs.ext4 not found'}")


async def test_a_claim_whose_size_is_exceeded(gnode: NodeHarness) -> None:
    _need_loop_devices()
    gnode.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                  "metadata": {"name": "data", "namespace": "default"},
                  "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "32Mi"}}}})
    gnode.create(pod("pvc", containers=[main(volumeMounts=[{"name": "d", "mountPath": "/data"}])],
                     volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]))
    await gnode.wait_phase("pvc", "Running")
    pvc = gnode.registry.get(gnode.kinds.by_kind("v1", "PersistentVolumeClaim"), "default", "data")
    assert pvc["status"]["phase"] == "Bound" and pvc["status"]["capacity"] == {"storage": "32Mi"}
    code, out = await run(gnode, "pvc", ["/bin/sh", "-c", "dd if=/dev/zero of=/data/fits bs=1M count=24 2>&1"])
    assert code == 0, out
    code, out = await run(gnode, "pvc", ["/bin/sh", "-c", "dd if=/dev/zero of=/data/too-much bs=1M count=16 2>&1"])
    assert code != 0 and "No space left on device" in out
    # The data outlives the pod: a new pod of the same claim sees it.
    gnode.delete("pvc", grace_period_seconds=0)
    await gnode.wait_gone("pvc")
    gnode.create(pod("pvc2", containers=[main(volumeMounts=[{"name": "d", "mountPath": "/data"}])],
                     volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]))
    await gnode.wait_phase("pvc2", "Running", )
    code, out = await run(gnode, "pvc2", ["/bin/sh", "-c", "wc -c < /data/fits"])
    assert code == 0 and out.strip() == str(24 << 20)


async def test_an_empty_dir_size_limit_is_enforced(gnode: NodeHarness) -> None:
    _need_loop_devices()
    gnode.create(pod("scratch", containers=[main(volumeMounts=[{"name": "s", "mountPath": "/scratch"}])],
                     volumes=[{"name": "s", "emptyDir": {"sizeLimit": "20Mi"}}]))
    await gnode.wait_phase("scratch", "Running")
    code, out = await run(gnode, "scratch", ["/bin/sh", "-c", "dd if=/dev/zero of=/scratch/big bs=1M count=40 2>&1"])
    assert code != 0 and "No space left on device" in out


async def test_run_as_non_root_refuses_a_root_image(gnode: NodeHarness) -> None:
    gnode.create(pod("root", containers=[main()], securityContext={"runAsNonRoot": True}))
    p = await gnode.wait_pod("root", lambda p: container_status(p, "main").get("state", {}).get("waiting", {})
                             .get("reason") == "CreateContainerConfigError", "CreateContainerConfigError")
    assert "container has runAsNonRoot and image will run as root" in \
        container_status(p, "main")["state"]["waiting"]["message"]
    gnode.create(pod("user", containers=[main()], securityContext={"runAsNonRoot": True, "runAsUser": 1000}))
    await gnode.wait_phase("user", "Running")
    assert (await run(gnode, "user", ["id", "-u"]))[1].strip() == "1000"


async def test_exec_probes_fail_and_pass(gnode: NodeHarness) -> None:
    gnode.create(pod("probed", containers=[main(
        readinessProbe={"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
        livenessProbe={"exec": {"command": ["test", "!", "-e", "/tmp/die"]}, "periodSeconds": 1,
                       "failureThreshold": 2})]))
    await gnode.wait_phase("probed", "Running")
    await asyncio.sleep(1.5)
    assert condition(gnode.pod("probed") or {}, "Ready") == "False"
    await run(gnode, "probed", ["touch", "/tmp/ready"])
    await gnode.wait_ready("probed", timeout=10)
    await run(gnode, "probed", ["touch", "/tmp/die"])
    await gnode.wait_pod("probed", lambda p: container_status(p, "main").get("restartCount") == 1, "a restart",
                         timeout=15)
    await gnode.settle()
    messages = [e["message"] for e in gnode.events("probed", "Unhealthy")]
    assert any(m.startswith("Readiness probe failed: cat: /tmp/ready: No such file") for m in messages)
    assert any(m.startswith("Liveness probe failed") for m in messages)
    assert [e["message"] for e in gnode.events("probed", "Killing")] == \
        ["Container main failed liveness probe, will be restarted"]


SERVE = ["/bin/sh", "-c", "mkdir -p /srv && cd /srv && echo ok > healthz && "
         "exec python3 -m http.server 8080 --bind 0.0.0.0"]


async def test_http_and_tcp_probes_on_the_pod_network(netnode: NodeHarness) -> None:
    netnode.create(pod("web", containers=[{
        "name": "main", "image": IMAGE, "command": SERVE, "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 3},
        "startupProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1, "failureThreshold": 30}}]))
    p = await netnode.wait_ready("web", timeout=20)
    assert p["status"]["podIP"]
    assert container_status(p, "main")["started"] is True
    # The readiness page goes: HTTP 404, not ready; the tcp liveness probe still passes: no restart.
    await run(netnode, "web", ["rm", "/srv/healthz"])
    await netnode.wait_ready("web", ready=False, timeout=10)
    await netnode.settle()
    assert any(e["message"] == "Readiness probe failed: HTTP probe failed with statuscode: 404"
               for e in netnode.events("web", "Unhealthy"))
    assert container_status(netnode.pod("web") or {}, "main")["restartCount"] == 0
    # A tcp liveness probe on a port nothing listens on fails: the container is restarted.
    netnode.create(pod("deaf", containers=[{
        "name": "main", "image": IMAGE, "command": SERVE,
        "livenessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2}}]))
    await netnode.wait_pod("deaf", lambda p: container_status(p, "main").get("restartCount", 0) >= 1, "a restart",
                           timeout=20)
    await netnode.settle()
    ip = (netnode.pod("deaf") or {})["status"]["podIP"]
    assert any(e["message"] == f"Liveness probe failed: dial tcp {ip}:9999: connect: connection refused"
               for e in netnode.events("deaf", "Unhealthy"))
