"""Where and when the node asks for the sandboxd agent (``podspec.agent``): a Sandbox's Pod gets it in its first
container on upstream's ports it does not serve itself, on demand (a warm pool's too); ``turbok.dev/sandboxd``
turns it off or makes it eager."""

from __future__ import annotations

from typing import Any

from turbok.node import podspec


def _pod(*, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
         ports: list[int] | None = None, identity: bool = True) -> dict[str, Any]:
    notes = {"turbok.dev/sandbox-identity": "uid-1"} if identity else {}
    return {"metadata": {"name": "p", "labels": labels or {}, "annotations": {**notes, **(annotations or {})}},
            "spec": {"containers": [{"name": "main", "image": "i",
                                     "ports": [{"containerPort": p} for p in ports or []]},
                                    {"name": "side", "image": "i"}]}}


def test_a_sandbox_pod_gets_the_agent_in_its_first_container_on_demand() -> None:
    assert podspec.agent(_pod()) == {"agent_container": "main", "agent_ports": (8080, 9090),
                                     "agent_on_demand": True}


def test_a_warm_pool_pod_waiting_for_a_claim_pays_no_agent_either() -> None:
    assert podspec.agent(_pod(labels={podspec.WARM_POOL_LABEL: "abc"}))["agent_on_demand"] is True


def test_the_annotation_makes_it_eager_or_turns_it_off() -> None:
    assert podspec.agent(_pod(annotations={podspec.AGENT_ANNOTATION: "eager"}))["agent_on_demand"] is False
    assert podspec.agent(_pod(annotations={podspec.AGENT_ANNOTATION: "off"})) == {}


def test_a_port_the_pod_serves_itself_is_left_to_it_and_a_plain_pod_has_no_agent() -> None:
    assert podspec.agent(_pod(ports=[9090]))["agent_ports"] == (8080,)
    assert podspec.agent(_pod(identity=False)) == {}
