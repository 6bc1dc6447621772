"""A Sandbox's Ready condition from its Pod, for the Pods the node never gives an address."""

from __future__ import annotations

import pytest

from turbok.api.podtemplate import NETWORK_ANNOTATION
from turbok.controllers.sandboxstatus import conditions

Obj = dict


def _ready(pod: Obj) -> tuple[str, str, str, str]:
    sandbox: Obj = {"metadata": {"name": "s", "uid": "u"}, "spec": {}}
    out, _ = conditions(sandbox, pod=pod, pod_error=False, errors=[], service=None)
    return next(c for c in out if c[0] == "Ready")


def _running_ready_pod(annotations: dict[str, str], ips: list[str]) -> Obj:
    status: Obj = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    if ips:
        status["podIP"], status["podIPs"] = ips[0], [{"ip": ip} for ip in ips]
    return {"metadata": {"name": "s", "annotations": annotations}, "status": status}


@pytest.mark.parametrize("network", ["none", "loopback"])
def test_a_pod_without_a_network_is_ready_without_an_ip(network: str) -> None:
    assert _ready(_running_ready_pod({NETWORK_ANNOTATION: network}, [])) == (
        "Ready", "True", "DependenciesReady", "Pod is Ready")


def test_a_networked_pod_waits_for_its_ip() -> None:
    assert _ready(_running_ready_pod({}, []))[1:] == ("False", "DependenciesNotReady",
                                                      "Pod is Ready but has no podIPs yet")
    assert _ready(_running_ready_pod({}, ["10.213.0.2"]))[1:3] == ("True", "DependenciesReady")
