"""Protobuf bodies kubectl v1.37 sends for built-in kinds decode to the JSON a client would have sent.

The bodies in tests/data/protobuf were captured from kubectl (see SOURCE there); a few edge cases are
written here with the wire format by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from turbok.api.status import BadRequest
from turbok.apiserver import protobuf

from .conftest import Api
from .test_protobuf_crds import PROTO, envelope, field

DATA = Path(__file__).resolve().parents[2] / "data" / "protobuf"


def body(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


def test_secret_configmap_serviceaccount_quota() -> None:
    assert protobuf.decode(body("secret-generic")) == {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "data": {"a": "Yg==", "c": "ZA=="}}
    assert protobuf.decode(body("configmap"))["data"] == {"x": "1", "y": "2"}
    assert protobuf.decode(body("serviceaccount")) == {"apiVersion": "v1", "kind": "ServiceAccount",
                                                        "metadata": {"name": "sa1"}}
    assert protobuf.decode(body("resourcequota"))["spec"] == {"hard": {"cpu": "4", "pods": "10"}}


def test_services_keep_int_or_string_ports_and_types() -> None:
    svc = protobuf.decode(body("service-svc1"))
    assert svc["spec"] == {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                           "selector": {"app": "svc1"}, "type": "ClusterIP"}
    assert protobuf.decode(body("service-svc2"))["spec"]["type"] == "NodePort"
    assert protobuf.decode(body("service-ext1"))["spec"]["externalName"] == "example.com"


def test_a_pod_with_many_field_types() -> None:
    """The copy ``kubectl debug --copy-to`` made of a Pod applied from this manifest (abridged):

    securityContext {runAsUser: 0, runAsNonRoot: false, fsGroup: 2000}; terminationGracePeriodSeconds: 0;
    automountServiceAccountToken: false; tolerations [{..., tolerationSeconds: 0}]; volumes emptyDir
    {sizeLimit: 64Mi}, configMap {defaultMode: 0o440, optional: true}, persistentVolumeClaim, projected;
    containers[0].ports [{containerPort: 8080, name: http}, {containerPort: 9090, hostPort: 0}];
    env [{name: A, value: ""}, ...]; resources {requests: {cpu: 250m}, ...}.
    """
    pod: dict[str, Any] = protobuf.decode(body("pod-debug-copy"))
    spec = pod["spec"]
    # Go pointers: a zero is a value and is kept.
    assert spec["terminationGracePeriodSeconds"] == 0
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsUser"] == 0 and spec["securityContext"]["runAsNonRoot"] is False
    assert spec["tolerations"] == [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0}]
    # Plain Go fields with omitempty: a zero is what JSON leaves out.
    main = spec["containers"][0]
    assert main["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                             {"containerPort": 9090, "protocol": "TCP"}]
    assert main["env"][0] == {"name": "A"}
    assert main["env"][3]["valueFrom"]["resourceFieldRef"] == {"resource": "limits.memory", "divisor": "1Mi"}
    # Inlined structs (Volume.volumeSource) and quantities.
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
    assert volumes["cfg"]["configMap"] == {"name": "cm1", "items": [{"key": "x", "path": "x.txt"}],
                                           "defaultMode": 0o440, "optional": True}
    assert main["resources"] == {"limits": {"cpu": "1", "ephemeral-storage": "1Gi", "memory": "128Mi"},
                                 "requests": {"cpu": "250m", "memory": "64Mi"}}
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert main["securityContext"]["capabilities"] == {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}
    assert "creationTimestamp" not in pod["metadata"]


def test_hand_written_edge_cases() -> None:
    # A negative int32 is a ten-byte varint; a Time is RFC 3339; an unknown field number is dropped.
    spec = field(5, (-5) & (2**64 - 1)) + field(10, "n1")  # PodSpec: activeDeadlineSeconds = 5, nodeName = 10
    pod = protobuf.decode(envelope("v1", "Pod", field(2, spec) + field(99, "ignored")))
    assert pod["spec"] == {"activeDeadlineSeconds": -5, "nodeName": "n1"}
    meta = field(9, field(1, 1_700_000_000))
    pod = protobuf.decode(envelope("v1", "Pod", field(1, meta)))
    assert pod["metadata"]["deletionTimestamp"] == "2023-11-14T22:13:20Z"
    # Binding and Eviction, as the scheduler and kubectl drain send them.
    binding = protobuf.decode(envelope("v1", "Binding", field(1, field(1, "p")) + field(2, field(3, "n1"))))
    assert binding == {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"name": "n1"}}
    eviction = protobuf.decode(envelope("policy/v1", "Eviction", field(1, field(1, "p")) +
                                        field(2, field(1, 7))))
    assert eviction["deleteOptions"] == {"gracePeriodSeconds": 7}


@pytest.mark.parametrize("raw", [field(1, field(2, b"\xff\xfe")),  # a name that is not UTF-8
                                 field(2, 5),  # a message field holding a number
                                 b"\x0a\x05ab"])  # truncated
def test_malformed_pods_are_400(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        protobuf.decode(envelope("v1", "Pod", raw))


async def test_kubectl_create_secret_over_protobuf_is_stored(api: Api) -> None:
    response = await api.post("/api/v1/namespaces/default/secrets", data=body("secret-generic"), headers=PROTO)
    assert response.status == 201, await response.text()
    assert (await response.json())["data"] == {"a": "Yg==", "c": "ZA=="}
    response = await api.post("/api/v1/namespaces/default/services", data=body("service-svc1"), headers=PROTO)
    assert response.status == 201, await response.text()
