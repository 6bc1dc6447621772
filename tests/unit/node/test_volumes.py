"""A Pod's volumes as the runtime gets them, their updates, service-account tokens and container mounts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from turbok.api.kinds import CONFIG_MAP, PERSISTENT_VOLUME_CLAIM, SECRET, SERVICE_ACCOUNT, default_registry
from turbok.embedded.client import EmbeddedClient
from turbok.node.env import ContainerConfigError
from turbok.node.storage import LocalStorage
from turbok.node.volumes import (
    MountError,
    ServiceAccountTokens,
    VolumeError,
    container_mounts,
    pod_volumes,
    refresh_volumes,
)
from turbok.runtime.cri import Mount
from turbok.runtime.disk import Disks
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

Obj = dict[str, Any]
SID = "tk" + "1" * 22


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[EmbeddedClient]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    yield EmbeddedClient(registry)
    registry.db.close()


def pod(*volumes: Obj, containers: list[Obj] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "u-1", "labels": {"app": "a"}},
            "spec": {"nodeName": "node1", "volumes": list(volumes),
                     "containers": containers or [{"name": "c", "image": "i",
                                                   "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}}}]}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_config_map_and_secret_files(client: EmbeddedClient) -> None:
    await client.create(CONFIG_MAP, {"metadata": {"name": "cm", "namespace": "default"},
                                     "data": {"a.conf": "A", "b": "B"}, "binaryData": {"blob": b64(b"\x00\x01")}})
    await client.create(SECRET, {"metadata": {"name": "s", "namespace": "default"},
                                 "data": {"key": b64(b"secret-bytes")}})
    volumes = await pod_volumes(client, pod(
        {"name": "all", "configMap": {"name": "cm"}},
        {"name": "some", "configMap": {"name": "cm", "defaultMode": 0o600,
                                       "items": [{"key": "a.conf", "path": "conf/a.conf", "mode": 0o400},
                                                 {"key": "blob", "path": "blob.bin"}]}},
        {"name": "sec", "secret": {"secretName": "s", "defaultMode": 0o400}},
        {"name": "opt", "secret": {"secretName": "absent", "optional": True}}))
    by = {v.name: v for v in volumes}
    assert all(v.kind == "files" for v in volumes)
    assert by["all"].files == {"a.conf": (b"A", 0o644), "b": (b"B", 0o644), "blob": (b"\x00\x01", 0o644)}
    assert by["some"].files == {"conf/a.conf": (b"A", 0o400), "blob.bin": (b"\x00\x01", 0o600)}
    assert by["sec"].files == {"key": (b"secret-bytes", 0o400)}
    assert by["opt"].files == {}


async def test_missing_sources_fail_the_mount_in_kubelets_words(client: EmbeddedClient) -> None:
    await client.create(CONFIG_MAP, {"metadata": {"name": "cm", "namespace": "default"}, "data": {"a": "1"}})
    with pytest.raises(VolumeError) as err:
        await pod_volumes(client, pod(
            {"name": "cfg", "configMap": {"name": "nope"}},
            {"name": "sec", "secret": {"secretName": "nope"}},
            {"name": "key", "configMap": {"name": "cm", "items": [{"key": "zz", "path": "zz"}]}},
            {"name": "fine", "emptyDir": {}}))
    assert err.value.reason == "FailedMount"
    assert err.value.messages == [
        'MountVolume.SetUp failed for volume "cfg" : configmap "nope" not found',
        'MountVolume.SetUp failed for volume "sec" : secret "nope" not found',
        'MountVolume.SetUp failed for volume "key" : configmap references non-existent config key: zz',
    ]
    assert str(err.value) == err.value.messages[0]


@pytest.mark.parametrize(("volume", "match"), [
    ({"name": "h", "hostPath": {"path": "/etc"}}, "hostPath volumes are not supported"),
    ({"name": "n", "nfs": {"server": "x", "path": "/"}}, "nfs volumes are not supported"),
    ({"name": "e", "emptyDir": {"medium": "HugePages"}}, "medium 'HugePages' is not supported"),
    ({"name": "c", "persistentVolumeClaim": {"claimName": "x"}}, "no local storage"),
])
async def test_unsupported_volumes_are_refused(client: EmbeddedClient, volume: Obj, match: str) -> None:
    with pytest.raises(VolumeError, match=match):
        await pod_volumes(client, pod(volume))


async def test_empty_dirs(client: EmbeddedClient, tmp_path: Path) -> None:
    storage = LocalStorage(client, tmp_path / "st", node_name="node1", disks=Disks(bounded=False))
    warnings: list[tuple[str, str]] = []
    try:
        p = pod({"name": "plain", "emptyDir": {}}, {"name": "mem", "emptyDir": {"medium": "Memory"}},
                {"name": "mem-small", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                {"name": "bounded", "emptyDir": {"sizeLimit": "32Mi"}})
        volumes = await pod_volumes(client, p, storage=storage, sandbox_id=SID,
                                    allocatable={"memory": Decimal(8 << 30)}, warn=lambda r, m: warnings.append((r, m)))
        by = {v.name: v for v in volumes}
        assert by["plain"].kind == "emptyDir" and by["plain"].size_bytes is None
        assert (by["mem"].kind, by["mem"].size_bytes) == ("memory", 256 << 20)  # the pod's memory limit
        assert by["mem-small"].size_bytes == 64 << 20
        # Without loop devices (plain directories here) a sizeLimit cannot be enforced: said, not dropped.
        assert (by["bounded"].kind, by["bounded"].size_bytes) == ("emptyDir", 32 << 20)
        assert [r for r, _ in warnings] == ["SizeLimitNotEnforced"]
    finally:
        await storage.unmount_all()


async def test_downward_api_and_projected(client: EmbeddedClient, tmp_path: Path) -> None:
    await client.create(CONFIG_MAP, {"metadata": {"name": "cm", "namespace": "default"}, "data": {"k": "v"}})
    await client.create(SECRET, {"metadata": {"name": "s", "namespace": "default"}, "data": {"t": b64(b"T")}})
    sa = await client.create(SERVICE_ACCOUNT, {"metadata": {"name": "default", "namespace": "default"}})
    tokens = ServiceAccountTokens(tmp_path / "keys" / "sa.key", node_name="node1", now=lambda: 1_000_000.0)
    p = pod({"name": "dw", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400},
        {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}]}},
        {"name": "proj", "projected": {"defaultMode": 0o440, "sources": [
            {"configMap": {"name": "cm", "items": [{"key": "k", "path": "cm/k"}]}},
            {"secret": {"name": "s"}},
            {"downwardAPI": {"items": [{"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}}]}},
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600, "audience": "vault"}}]}})
    by = {v.name: v for v in await pod_volumes(client, p, tokens=tokens)}
    assert by["dw"].files == {"labels": (b'app="a"', 0o644), "name": (b"p", 0o400), "mem": (b"256", 0o644)}
    files = dict(by["proj"].files)
    token, mode = files.pop("token")
    assert files == {"cm/k": (b"v", 0o440), "t": (b"T", 0o440), "uid": (b"u-1", 0o440)} and mode == 0o440
    head, body, sig = token.decode().split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    assert claims["sub"] == "system:serviceaccount:default:default" and claims["aud"] == ["vault"]
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["kubernetes.io"]["pod"] == {"name": "p", "uid": "u-1"}
    assert claims["kubernetes.io"]["serviceaccount"]["uid"] == sa["metadata"]["uid"]
    key = (tmp_path / "keys" / "sa.key").read_bytes()
    assert (tmp_path / "keys" / "sa.key").stat().st_mode & 0o777 == 0o600
    expected = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(sig + "==") == expected
    # A status field is not allowed in a downwardAPI volume.
    with pytest.raises(VolumeError, match="unsupported fieldPath: status.podIP"):
        await pod_volumes(client, pod({"name": "bad", "downwardAPI": {"items": [
            {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}}))
    # No ServiceAccount: no token, as TokenRequest would answer.
    p["spec"]["serviceAccountName"] = "ghost"
    with pytest.raises(VolumeError, match='failed to fetch token: serviceaccounts "ghost" not found'):
        await pod_volumes(client, p, tokens=tokens)


async def test_tokens_are_refreshed_at_80_percent(client: EmbeddedClient, tmp_path: Path) -> None:
    now = [1000.0]
    tokens = ServiceAccountTokens(tmp_path / "sa.key", now=lambda: now[0])
    p, sa = pod(), {"metadata": {"name": "default", "uid": "sa-1"}}
    first = tokens.token(p, sa, expiration=1000)
    now[0] += 799
    assert tokens.token(p, sa, expiration=1000) == first
    now[0] += 2
    assert tokens.token(p, sa, expiration=1000) != first


async def test_refresh_finds_changed_content(client: EmbeddedClient) -> None:
    await client.create(CONFIG_MAP, {"metadata": {"name": "cm", "namespace": "default"}, "data": {"k": "v1"}})
    p = pod({"name": "cfg", "configMap": {"name": "cm"}}, {"name": "scratch", "emptyDir": {}})
    applied = await pod_volumes(client, p)
    assert (await refresh_volumes(client, p, applied)).changed == []
    cm = await client.get(CONFIG_MAP, "default", "cm")
    cm["data"] = {"k": "v2", "new": "n"}
    await client.update(CONFIG_MAP, cm)
    result = await refresh_volumes(client, p, applied)
    assert [v.name for v in result.changed] == ["cfg"] and result.failures == []
    assert result.changed[0].files == {"k": (b"v2", 0o644), "new": (b"n", 0o644)}
    await client.delete(CONFIG_MAP, "default", "cm")
    gone = await refresh_volumes(client, p, applied)
    assert gone.changed == [] and gone.failures == [
        'MountVolume.SetUp failed for volume "cfg" : configmap "cm" not found']


async def test_claims_mount_the_bound_volume(client: EmbeddedClient, tmp_path: Path) -> None:
    storage = LocalStorage(client, tmp_path / "st", node_name="node1", disks=Disks(bounded=False))
    try:
        await storage.ensure_class()
        p = pod({"name": "data", "persistentVolumeClaim": {"claimName": "c1"}})
        with pytest.raises(VolumeError, match='persistentvolumeclaim "c1" not found'):
            await pod_volumes(client, p, storage=storage)
        await client.create(PERSISTENT_VOLUME_CLAIM, {
            "metadata": {"name": "c1", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        await storage.sync()
        [volume] = await pod_volumes(client, p, storage=storage)
        assert volume.kind == "host" and volume.host_path is not None and volume.host_path.is_dir()
    finally:
        await storage.unmount_all()


def test_container_mounts() -> None:
    p = pod({"name": "cfg", "configMap": {"name": "cm"}}, {"name": "data", "emptyDir": {}},
            {"name": "ro-claim", "persistentVolumeClaim": {"claimName": "x", "readOnly": True}})
    c = {"name": "c", "volumeMounts": [
        {"name": "cfg", "mountPath": "/etc/cfg"},
        {"name": "data", "mountPath": "/data", "subPath": "one"},
        {"name": "data", "mountPath": "/per-pod", "subPathExpr": "$(POD)/logs"},
        {"name": "ro-claim", "mountPath": "/ro"},
        {"name": "data", "mountPath": "/explicit", "readOnly": True}]}
    assert container_mounts(p, c, env={"POD": "p"}) == [
        Mount("cfg", "/etc/cfg", read_only=True),
        Mount("data", "/data", sub_path="one"),
        Mount("data", "/per-pod", sub_path="p/logs"),
        Mount("ro-claim", "/ro", read_only=True),
        Mount("data", "/explicit", read_only=True)]


@pytest.mark.parametrize(("mount", "env", "match"), [
    ({"name": "nope", "mountPath": "/x"}, {}, 'cannot find volume "nope" to mount into container "c"'),
    ({"name": "data", "mountPath": "/x", "subPath": "/abs"}, {}, "must not be an absolute path"),
    ({"name": "data", "mountPath": "/x", "subPath": "a/../../b"}, {}, "must not contain '..'"),
    ({"name": "data", "mountPath": "/x", "subPathExpr": "$(A)/$(B)"}, {"A": "a", "B": ""}, "missing value for B"),
])
def test_bad_mounts(mount: Obj, env: dict[str, str], match: str) -> None:
    with pytest.raises(MountError, match=match) as err:
        container_mounts(pod({"name": "data", "emptyDir": {}}), {"name": "c", "volumeMounts": [mount]}, env=env)
    assert isinstance(err.value, ContainerConfigError)
