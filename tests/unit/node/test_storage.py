"""Local storage: the default StorageClass, provisioning, binding as the PV controller does, reclaim, protection.

Disks are plain directories here (``Disks(bounded=False)``); the size bound itself is tested with real
loop devices in tests/integration/node/test_storage_bounds.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from turbok.api.kinds import (
    EVENT,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    STORAGE_CLASS,
    default_registry,
)
from turbok.embedded.client import EmbeddedClient
from turbok.node.storage import (
    DEFAULT_CLASS_ANNOTATION,
    MIN_VOLUME_BYTES,
    PROVISIONER,
    PVC_PROTECTION,
    LocalStorage,
    StorageError,
)
from turbok.runtime.disk import Disks
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

Obj = dict[str, Any]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[EmbeddedClient]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    yield EmbeddedClient(registry)
    registry.db.close()


@pytest.fixture
async def storage(client: EmbeddedClient, tmp_path: Path) -> AsyncIterator[LocalStorage]:
    s = LocalStorage(client, tmp_path / "storage", node_name="node1", disks=Disks(bounded=False))
    await s.ensure_class()
    yield s
    await s.stop()
    await s.unmount_all()  # plain directories are bound onto themselves: leave no mount behind


def claim(name: str = "data", size: str = "1Gi", **spec: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, **spec}}


def using(name: str, claim_name: str, node: str = "node1") -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}],
                     "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim_name}}]}}


async def reasons(client: EmbeddedClient, name: str) -> list[str]:
    events = await client.list(EVENT, "default")
    return [e["reason"] for e in sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))
            if e["involvedObject"]["name"] == name]


async def settle(storage: LocalStorage, rounds: int = 4) -> None:
    for _ in range(rounds):
        await storage.sync()


async def test_default_class_is_made_once_and_kept(client: EmbeddedClient, storage: LocalStorage) -> None:
    sc = await client.get(STORAGE_CLASS, "", "standard")
    assert sc["provisioner"] == PROVISIONER and sc["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true"
    assert sc["reclaimPolicy"] == "Delete" and sc["volumeBindingMode"] == "Immediate"
    sc["metadata"]["labels"] = {"mine": "yes"}
    await client.update(STORAGE_CLASS, sc)
    await storage.ensure_class()
    assert (await client.get(STORAGE_CLASS, "", "standard"))["metadata"]["labels"] == {"mine": "yes"}


async def test_claim_is_provisioned_and_bound(client: EmbeddedClient, storage: LocalStorage) -> None:
    created = await client.create(PERSISTENT_VOLUME_CLAIM, claim())
    await settle(storage)
    pvc = await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data")
    uid = created["metadata"]["uid"]
    assert pvc["spec"]["storageClassName"] == "standard"  # the default class, given retroactively
    assert pvc["spec"]["volumeName"] == f"pvc-{uid}"
    assert pvc["status"] == {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
    annotations = pvc["metadata"]["annotations"]
    assert annotations["pv.kubernetes.io/bind-completed"] == "yes"
    assert annotations["pv.kubernetes.io/bound-by-controller"] == "yes"
    assert annotations["volume.kubernetes.io/storage-provisioner"] == PROVISIONER
    assert PVC_PROTECTION in pvc["metadata"]["finalizers"]
    pv = await client.get(PERSISTENT_VOLUME, "", f"pvc-{uid}")
    assert pv["status"]["phase"] == "Bound"
    assert pv["spec"]["claimRef"]["uid"] == uid and pv["spec"]["claimRef"]["name"] == "data"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete" and pv["spec"]["capacity"] == {"storage": "1Gi"}
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == PROVISIONER
    assert "kubernetes.io/pv-protection" in pv["metadata"]["finalizers"]
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == \
        ["node1"]
    # Plain directories here: the claim is told its size is not enforced.
    assert await reasons(client, "data") == ["Provisioning", "VolumeSizeNotEnforced", "ProvisioningSucceeded"]
    path = await storage.claim_path("default", "data")
    assert path == storage.volumes.path(f"pvc-{uid}") and path.is_dir()
    assert path.stat().st_mode & 0o777 == 0o777


async def test_tiny_claim_gets_the_minimum(client: EmbeddedClient, storage: LocalStorage) -> None:
    await client.create(PERSISTENT_VOLUME_CLAIM, claim(size="1Mi"))
    await settle(storage)
    pvc = await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data")
    assert pvc["status"]["capacity"]["storage"] == f"{MIN_VOLUME_BYTES >> 20}Mi"


async def test_deleting_a_claim_waits_for_its_pods_then_reclaims(client: EmbeddedClient,
                                                                 storage: LocalStorage) -> None:
    await client.create(PERSISTENT_VOLUME_CLAIM, claim())
    await settle(storage)
    pv_name = (await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data"))["spec"]["volumeName"]
    path = await storage.claim_path("default", "data")
    (path / "file").write_text("kept while in use")
    await client.create(POD, using("user", "data"))
    await client.delete(PERSISTENT_VOLUME_CLAIM, "default", "data")
    await settle(storage)
    pvc = await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data")  # protected: a running pod uses it
    assert pvc["metadata"]["deletionTimestamp"] and (path / "file").exists()
    with pytest.raises(StorageError, match="PVC is being deleted"):
        await storage.claim_path("default", "data")
    pod = await client.get(POD, "default", "user")
    pod["status"] = {**pod.get("status", {}), "phase": "Succeeded"}
    await client.update_status(POD, pod)
    await settle(storage)
    assert await client.try_get(PERSISTENT_VOLUME_CLAIM, "default", "data") is None
    assert await client.try_get(PERSISTENT_VOLUME, "", pv_name) is None
    assert not storage.volumes.exists(pv_name)


async def test_retain_keeps_released_volume(client: EmbeddedClient, storage: LocalStorage) -> None:
    await client.create(STORAGE_CLASS, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                        "metadata": {"name": "keep"}, "provisioner": PROVISIONER,
                                        "reclaimPolicy": "Retain"})
    await client.create(PERSISTENT_VOLUME_CLAIM, claim(storageClassName="keep"))
    await settle(storage)
    pv_name = (await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data"))["spec"]["volumeName"]
    await client.delete(PERSISTENT_VOLUME_CLAIM, "default", "data")
    await settle(storage)
    pv = await client.get(PERSISTENT_VOLUME, "", pv_name)
    assert pv["status"]["phase"] == "Released" and storage.volumes.exists(pv_name)
    # A new claim of the same name does not get the released volume (its claimRef names the old uid).
    await client.create(PERSISTENT_VOLUME_CLAIM, claim(storageClassName="keep"))
    await settle(storage)
    assert (await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data"))["spec"]["volumeName"] != pv_name


async def test_static_volume_smallest_fit(client: EmbeddedClient, storage: LocalStorage) -> None:
    for name, size in (("big", "10Gi"), ("small", "2Gi"), ("tiny", "1Mi")):
        await client.create(PERSISTENT_VOLUME, {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                     "hostPath": {"path": f"/tmp/{name}"}, "persistentVolumeReclaimPolicy": "Retain"}})
    await settle(storage)
    assert (await client.get(PERSISTENT_VOLUME, "", "small"))["status"]["phase"] == "Available"
    await client.create(PERSISTENT_VOLUME_CLAIM, claim(storageClassName="manual"))
    await settle(storage)
    pvc = await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data")
    assert pvc["spec"]["volumeName"] == "small" and pvc["status"]["capacity"] == {"storage": "2Gi"}
    pv = await client.get(PERSISTENT_VOLUME, "", "small")
    assert pv["status"]["phase"] == "Bound"
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
    # Not made by this node's provisioner: never mounted from its hostPath.
    with pytest.raises(StorageError, match="was not made by turbok.dev/local-path"):
        await storage.claim_path("default", "data")


async def test_claims_that_cannot_be_provisioned_stay_pending(client: EmbeddedClient,
                                                              storage: LocalStorage) -> None:
    await client.create(STORAGE_CLASS, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                        "metadata": {"name": "ebs"}, "provisioner": "ebs.csi.aws.com"})
    await client.create(PERSISTENT_VOLUME_CLAIM, claim("a", storageClassName="missing"))
    await client.create(PERSISTENT_VOLUME_CLAIM, claim("b", storageClassName="ebs"))
    await client.create(PERSISTENT_VOLUME_CLAIM, claim("c", storageClassName=""))
    await client.create(PERSISTENT_VOLUME_CLAIM, claim("d", volumeMode="Block"))
    await settle(storage)
    for name in "abcd":
        assert (await client.get(PERSISTENT_VOLUME_CLAIM, "default", name))["status"]["phase"] == "Pending"
    assert await reasons(client, "a") == ["ProvisioningFailed"]  # once, though synced four times
    assert await reasons(client, "b") == ["ExternalProvisioning"]
    assert await reasons(client, "c") == ["FailedBinding"]
    assert await reasons(client, "d") == ["ProvisioningFailed"]
    with pytest.raises(StorageError, match="PVC is not bound"):
        await storage.claim_path("default", "a")
    with pytest.raises(StorageError, match='persistentvolumeclaim "zzz" not found'):
        await storage.claim_path("default", "zzz")


async def test_wait_for_first_consumer(client: EmbeddedClient, storage: LocalStorage) -> None:
    await client.create(STORAGE_CLASS, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                        "metadata": {"name": "late"}, "provisioner": PROVISIONER,
                                        "volumeBindingMode": "WaitForFirstConsumer"})
    await client.create(PERSISTENT_VOLUME_CLAIM, claim(storageClassName="late"))
    await settle(storage)
    pvc = await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data")
    assert pvc["status"]["phase"] == "Pending" and await reasons(client, "data") == ["WaitForFirstConsumer"]
    await client.create(POD, using("consumer", "data"))
    await settle(storage)
    assert (await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data"))["status"]["phase"] == "Bound"


async def test_follows_changes_once_started(client: EmbeddedClient, tmp_path: Path) -> None:
    s = LocalStorage(client, tmp_path / "s2", node_name="node1", disks=Disks(bounded=False), resync=3600)
    await s.start()
    try:
        await client.create(PERSISTENT_VOLUME_CLAIM, claim())
        deadline = asyncio.get_running_loop().time() + 20  # a deadline, not a count: slow under a loaded machine
        while (pvc := await client.get(PERSISTENT_VOLUME_CLAIM, "default", "data")).get("status", {}).get(
                "phase") != "Bound" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert pvc["status"]["phase"] == "Bound"
    finally:
        await s.stop()
        await s.unmount_all()


async def test_bounded_empty_dirs_are_released_with_the_pod(storage: LocalStorage) -> None:
    sid = "tk" + "0" * 22
    path = await storage.empty_dir(sid, "scratch", 1 << 20)
    (path / "x").write_text("x")
    assert path.is_dir()
    await storage.release_pod(sid)
    assert not path.exists() and not (storage.empty_dirs_root / sid).exists()
    with pytest.raises(Exception, match="invalid"):
        await storage.empty_dir("../escape", "v", 1 << 20)
