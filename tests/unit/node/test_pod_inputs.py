"""A Pod's inputs through the whole node (fake runtime): env and volumes from Secrets and ConfigMaps, their
absence (FailedMount, CreateContainerConfigError), updates reaching a running pod, claims, runAsNonRoot."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from tests.unit.node.conftest import NodeHarness, container_status, pod
from turbok.node.testing import FakePodRuntime
from turbok.runtime.cri import VolumeConfig
from turbok.runtime.disk import Disks


class UpdatingRuntime(FakePodRuntime):
    """The fake runtime, also recording ``update_volume``."""

    updates: list[tuple[str, VolumeConfig]]

    async def update_volume(self, id: str, volume: VolumeConfig) -> None:
        self.updates.append((id, volume))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, **data: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
            "data": {k: b64(v) for k, v in data.items()}}


def config_map(name: str, **data: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": dict(data)}


def waiting(p: dict[str, object], name: str = "main") -> dict[str, str]:
    return dict(container_status(p, name).get("state", {}).get("waiting") or {})


async def test_a_missing_config_map_volume_keeps_the_pod_creating_until_it_exists(node: NodeHarness) -> None:
    node.create(pod("cfg", containers=[{"name": "main", "image": "i",
                                        "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"}]}],
                    volumes=[{"name": "conf", "configMap": {"name": "app"}}]))
    p = await node.wait_pod("cfg", lambda p: waiting(p).get("reason") == "ContainerCreating", "ContainerCreating")
    assert p["status"]["phase"] == "Pending"
    await node.settle()
    [event] = node.events("cfg", "FailedMount")
    assert event["type"] == "Warning"
    assert event["message"] == 'MountVolume.SetUp failed for volume "conf" : configmap "app" not found'
    assert node.runtime.calls == [] or all(c[0] != "run_pod_sandbox" for c in node.runtime.calls)
    node.create(config_map("app", setting="on"))
    await node.wait_phase("cfg", "Running")
    [sb] = node.runtime.sandboxes.values()
    [volume] = sb.config.volumes
    assert volume.kind == "files" and volume.files == {"setting": (b"on", 0o644)}


async def test_env_from_a_missing_secret_is_a_config_error_until_it_exists(node: NodeHarness) -> None:
    node.create(config_map("app", MODE="fast"))
    node.create(pod("env", containers=[{"name": "main", "image": "i", "command": ["run", "$(MODE)"],
                                        "envFrom": [{"configMapRef": {"name": "app"}}],
                                        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                                                                "key": "token"}}}]}]))
    p = await node.wait_pod("env", lambda p: waiting(p).get("reason") == "CreateContainerConfigError", "config error")
    assert waiting(p)["message"] == 'secret "creds" not found'
    await node.settle()
    failed = node.events("env", "Failed")
    assert failed and failed[0]["message"] == 'Error: secret "creds" not found'
    assert failed[0]["involvedObject"]["fieldPath"] == "spec.containers{main}"
    node.create(secret("creds", token="t0ps3cret"))
    # The Secret's appearance starts it at once: the clock stands still, so no timed retry can.
    await node.wait_phase("env", "Running")
    [sb] = node.runtime.sandboxes.values()
    config = sb.configs["main"]
    assert config.env["TOKEN"] == "t0ps3cret" and config.env["MODE"] == "fast"
    assert list(config.command) == ["run", "fast"]


async def test_config_map_changes_reach_a_running_pod(harness: NodeHarness) -> None:
    runtime = UpdatingRuntime(harness.tmp / "pods")
    runtime.updates = []
    harness.runtime = runtime
    await harness.start()
    harness.create(config_map("app", level="1"))
    harness.create(pod("live", volumes=[{"name": "conf", "configMap": {"name": "app"}}]))
    await harness.wait_phase("live", "Running")
    cm = harness.registry.get(harness.kinds.by_kind("v1", "ConfigMap"), "default", "app")
    cm["data"] = {"level": "2"}
    harness.registry.update(harness.kinds.by_kind("v1", "ConfigMap"), cm)
    await harness.wait(lambda: runtime.updates, what="update_volume")
    [(sid, volume)] = runtime.updates
    assert sid in runtime.sandboxes and volume.name == "conf" and volume.files == {"level": (b"2", 0o644)}


async def test_run_as_non_root_refuses_a_root_image(node: NodeHarness) -> None:
    node.create(pod("nonroot", securityContext={"runAsNonRoot": True}))
    p = await node.wait_pod("nonroot", lambda p: waiting(p).get("reason") == "CreateContainerConfigError")
    uid = p["metadata"]["uid"]
    assert waiting(p)["message"] == f'container has runAsNonRoot and image will run as root (pod: "nonroot_default({uid})", ' \
                                    "container: main)"
    assert not node.runtime.started()


async def test_a_claim_is_mounted_from_local_storage(harness: NodeHarness) -> None:
    await harness.start(storage_root=harness.tmp / "storage")
    assert harness.node is not None and harness.node.storage is not None
    storage = harness.node.storage
    storage.disks = Disks(bounded=False)  # plain directories in a unit test (bounds: tests/integration/node)
    storage.volumes.disks = storage.disks
    try:
        harness.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "data", "namespace": "default"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        harness.create(pod("withpvc", containers=[{"name": "main", "image": "i",
                                                   "volumeMounts": [{"name": "d", "mountPath": "/data"}]}],
                           volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]))
        await harness.wait_phase("withpvc", "Running")
        [sb] = harness.runtime.sandboxes.values()
        volumes: Sequence[VolumeConfig] = sb.config.volumes
        assert [(v.name, v.kind) for v in volumes] == [("d", "host")]
        assert volumes[0].host_path is not None and volumes[0].host_path.is_dir()
    finally:
        await harness.stop()
        await storage.unmount_all()
