"""A container's environment as kubelet makes it: sources, precedence, $(VAR), downward API, service links."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from turbok.api.kinds import CONFIG_MAP, SECRET, SERVICE, default_registry
from turbok.embedded.client import EmbeddedClient
from turbok.node.env import (
    EnvError,
    container_env,
    expand,
    expand_command,
    field_value,
    resource_value,
    service_env,
)
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

Obj = dict[str, Any]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[EmbeddedClient]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    registry.ensure_namespace("other")
    yield EmbeddedClient(registry)
    registry.db.close()


def pod(container: Obj, **spec: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "u-1", "labels": {"app": "x", "b": 'q"t'},
                         "annotations": {"note": "hi"}},
            "spec": {"nodeName": "node1", "serviceAccountName": "robot", "containers": [container], **spec}}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def env_of(client: EmbeddedClient, container: Obj, warnings: list[tuple[str, str]] | None = None,
                 **spec: Any) -> dict[str, str]:
    p = pod(container, **spec)
    return await container_env(client, p, container, node_name="node1", host_ip="10.0.0.5", pod_ip="10.213.0.7",
                               allocatable={"cpu": Decimal(4), "memory": Decimal(8 * 2**30)},
                               warn=(lambda r, m: warnings.append((r, m))) if warnings is not None else None)


def test_expand_follows_kubelet_syntax() -> None:
    ctx = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", ctx) == "1-two"
    assert expand("$(MISSING) stays", ctx) == "$(MISSING) stays"
    assert expand("$$(A) escaped, $$ dollar", ctx) == "$(A) escaped, $ dollar"
    assert expand("unterminated $(A", ctx) == "unterminated $(A"
    assert expand("$A and trailing $", ctx) == "$A and trailing $"
    assert expand("$()", ctx) == "$()"
    # The first context that has the name wins (the container's own vars before the service links).
    assert expand("$(A)", {"A": "mine"}, {"A": "service"}) == "mine"
    assert expand_command(["echo", "$(B)", "$(NOPE)"], ctx) == ["echo", "two", "$(NOPE)"]


async def test_sources_precedence_and_expansion(client: EmbeddedClient) -> None:
    await client.create(CONFIG_MAP, {"metadata": {"name": "cm", "namespace": "default"},
                                     "data": {"COLOR": "blue", "SIZE": "L", "1ok": "digits are allowed now"}})
    await client.create(SECRET, {"metadata": {"name": "s", "namespace": "default"},
                                 "data": {"PASSWORD": b64("hunter2"), "COLOR": b64("red")}})
    container = {"name": "c", "image": "i",
                 "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "s"}, "prefix": "S_"}],
                 "env": [{"name": "GREETING", "value": "$(COLOR)/$(S_COLOR)/$(UNSET)"},
                         {"name": "SIZE", "value": "overridden"},
                         {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "PASSWORD"}}},
                         {"name": "C2", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "COLOR"}}},
                         {"name": "LATER", "value": "$(PW)!"},
                         {"name": "EMPTY"}]}
    env = await env_of(client, container)
    assert env["COLOR"] == "blue" and env["S_PASSWORD"] == "hunter2" and env["S_COLOR"] == "red"
    assert env["GREETING"] == "blue/red/$(UNSET)"
    assert env["SIZE"] == "overridden"  # env wins over envFrom
    assert env["PW"] == "hunter2" and env["C2"] == "blue" and env["LATER"] == "hunter2!"
    assert env["EMPTY"] == "" and env["1ok"] == "digits are allowed now"


async def test_envfrom_skips_invalid_names_with_an_event(client: EmbeddedClient) -> None:
    # Under 1.37's relaxed rule every valid ConfigMap key is a valid name (digits first included); only a
    # prefix the API would refuse (a '=') can make one invalid here: skipped, with kubelet's Event.
    await client.create(CONFIG_MAP, {"metadata": {"name": "cm", "namespace": "default"},
                                     "data": {"GOOD": "1", "9lives": "x"}})
    warnings: list[tuple[str, str]] = []
    env = await env_of(client, {"name": "c", "image": "i", "envFrom": [
        {"configMapRef": {"name": "cm"}}, {"configMapRef": {"name": "cm"}, "prefix": "A="}]}, warnings)
    assert env["GOOD"] == "1" and env["9lives"] == "x" and not any(k.startswith("A=") for k in env)
    assert warnings == [("InvalidEnvironmentVariableNames",
                         "Keys [A=9lives, A=GOOD] from the EnvFrom configMap default/cm were skipped since they are "
                         "considered invalid environment variable names.")]


@pytest.mark.parametrize(("var", "message"), [
    ({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}, 'configmap "nope" not found'),
    ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}, 'secret "nope" not found'),
    ({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "missing"}}},
     "couldn't find key missing in ConfigMap default/cm"),
    ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "missing"}}},
     "couldn't find key missing in Secret default/s"),
])
async def test_missing_required_reference_is_an_error(client: EmbeddedClient, var: Obj, message: str) -> None:
    await client.create(CONFIG_MAP, {"metadata": {"name": "cm", "namespace": "default"}, "data": {"k": "v"}})
    await client.create(SECRET, {"metadata": {"name": "s", "namespace": "default"}, "data": {"k": b64("v")}})
    with pytest.raises(EnvError) as err:
        await env_of(client, {"name": "c", "image": "i", "env": [var]})
    assert str(err.value) == message
    # Marked optional, the same reference is simply left out.
    ref = next(iter(var["valueFrom"].values()))
    ref["optional"] = True
    env = await env_of(client, {"name": "c", "image": "i", "env": [var]})
    assert "X" not in env


async def test_missing_envfrom_source(client: EmbeddedClient) -> None:
    with pytest.raises(EnvError, match='^secret "gone" not found$'):
        await env_of(client, {"name": "c", "image": "i", "envFrom": [{"secretRef": {"name": "gone"}}]})
    env = await env_of(client, {"name": "c", "image": "i",
                                "envFrom": [{"secretRef": {"name": "gone", "optional": True}}]})
    assert not any(k.startswith("gone") for k in env)


async def test_secret_in_another_namespace_is_not_visible(client: EmbeddedClient) -> None:
    await client.create(SECRET, {"metadata": {"name": "s", "namespace": "other"}, "data": {"k": b64("v")}})
    with pytest.raises(EnvError, match='secret "s" not found'):
        await env_of(client, {"name": "c", "image": "i",
                              "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})


async def test_downward_api_fields(client: EmbeddedClient) -> None:
    def ref(path: str) -> Obj:
        return {"name": path.replace(".", "_").replace("[", "_").replace("]", "").replace("'", ""),
                "valueFrom": {"fieldRef": {"fieldPath": path}}}

    paths = ["metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels['app']",
             "metadata.annotations['note']", "metadata.labels", "spec.nodeName", "spec.serviceAccountName",
             "status.podIP", "status.podIPs", "status.hostIP", "status.hostIPs"]
    env = await env_of(client, {"name": "c", "image": "i", "env": [ref(p) for p in paths]})
    assert env["metadata_name"] == "p" and env["metadata_namespace"] == "default" and env["metadata_uid"] == "u-1"
    assert env["metadata_labels_app"] == "x" and env["metadata_annotations_note"] == "hi"
    assert env["metadata_labels"] == 'app="x"\nb="q\\"t"'  # Go's %q, sorted keys
    assert env["spec_nodeName"] == "node1" and env["spec_serviceAccountName"] == "robot"
    assert env["status_podIP"] == env["status_podIPs"] == "10.213.0.7"
    assert env["status_hostIP"] == env["status_hostIPs"] == "10.0.0.5"
    with pytest.raises(ValueError, match="field label not supported: spec.containers"):
        field_value(pod({}), {"fieldPath": "spec.containers"})
    with pytest.raises(ValueError, match="unsupported fieldPath: status.phase"):
        field_value(pod({}), {"fieldPath": "status.phase"})
    with pytest.raises(EnvError, match="field label not supported"):
        await env_of(client, {"name": "c", "image": "i",
                              "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]})


def test_resource_field_ref_divisors_and_defaults() -> None:
    c = {"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}, "requests": {"cpu": "250m"}}}
    p = pod(c)
    alloc = {"cpu": Decimal(4), "memory": Decimal(8 * 2**30), "ephemeral-storage": Decimal(10**10)}

    def value(resource: str, divisor: str | None = None, **extra: Any) -> str:
        sel: Obj = {"resource": resource, **extra}
        if divisor:
            sel["divisor"] = divisor
        return resource_value(p, c, sel, alloc)

    assert value("limits.cpu") == "2"  # 1.5 cores rounded up
    assert value("limits.cpu", "1m") == "1500"
    assert value("requests.cpu", "1m") == "250"
    assert value("limits.memory") == str(2**30)
    assert value("limits.memory", "1Mi") == "1024"
    assert value("requests.memory") == str(2**30)  # a request defaults to the limit
    assert value("limits.ephemeral-storage", "1G") == "10"  # no limit: the node's allocatable
    assert value("limits.cpu", containerName="c") == "2"
    with pytest.raises(ValueError, match="unsupported container resource : limits.gpu"):
        value("limits.gpu")
    with pytest.raises(ValueError, match="container nope not found"):
        value("limits.cpu", containerName="nope")


async def test_service_links(client: EmbeddedClient) -> None:
    db = await client.create(SERVICE, {"metadata": {"name": "my-db", "namespace": "default"},
                                       "spec": {"ports": [{"name": "sql", "port": 5432, "protocol": "TCP"},
                                                          {"name": "metrics", "port": 9187}]}})
    ip = db["spec"]["clusterIP"]
    await client.create(SERVICE, {"metadata": {"name": "headless", "namespace": "default"},
                                  "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})
    await client.create(SERVICE, {"metadata": {"name": "elsewhere", "namespace": "other"},
                                  "spec": {"ports": [{"port": 80}]}})
    env = await env_of(client, {"name": "c", "image": "i", "env": [
        {"name": "DSN", "value": "postgres://$(MY_DB_SERVICE_HOST):$(MY_DB_SERVICE_PORT)/x"},
        {"name": "MY_DB_SERVICE_HOST", "value": "overridden"}]})
    # Service links are visible to $(VAR) in values defined before an override takes the name.
    assert env["DSN"] == f"postgres://{ip}:5432/x"
    assert env["MY_DB_SERVICE_HOST"] == "overridden"
    assert env["MY_DB_SERVICE_PORT"] == "5432" and env["MY_DB_SERVICE_PORT_SQL"] == "5432"
    assert env["MY_DB_SERVICE_PORT_METRICS"] == "9187"
    assert env["MY_DB_PORT"] == f"tcp://{ip}:5432"
    assert env["MY_DB_PORT_9187_TCP_ADDR"] == ip and env["MY_DB_PORT_5432_TCP_PROTO"] == "tcp"
    assert not any(k.startswith(("HEADLESS_", "ELSEWHERE_")) for k in env)
    off = await env_of(client, {"name": "c", "image": "i"}, enableServiceLinks=False)
    assert not any(k.startswith("MY_DB_") for k in off)


async def test_kubernetes_service_is_linked_even_without_service_links(client: EmbeddedClient) -> None:
    svc = await client.create(SERVICE, {"metadata": {"name": "kubernetes", "namespace": "default"},
                                        "spec": {"ports": [{"name": "https", "port": 443}]}})
    ip = svc["spec"]["clusterIP"]
    container = {"name": "c", "image": "i"}
    p = pod(container, enableServiceLinks=False)
    p["metadata"]["namespace"] = "other"
    env = await container_env(client, p, container, node_name="n", host_ip="", pod_ip="")
    assert env["KUBERNETES_SERVICE_HOST"] == ip and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["KUBERNETES_PORT_443_TCP"] == f"tcp://{ip}:443"


def test_service_env_ipv6() -> None:
    env = service_env([{"metadata": {"name": "v6"}, "spec": {"clusterIP": "fd00::1", "ports": [{"port": 80}]}}])
    assert env["V6_PORT"] == "tcp://[fd00::1]:80"
