"""Helpers for driving a real control plane (real gVisor sandboxes) from tests."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ControlPlaneProcess
from turbok.client.kubeconfig import load_kubeconfig
from turbok.client.rest import RestClient
from turbok.sdk.client import SandboxConnection

Obj = dict[str, Any]
EXT = "extensions.agents.x-k8s.io/v1beta1"


class Kube:
    def __init__(self, cp: ControlPlaneProcess, namespace: str) -> None:
        self.cp = cp
        self.ns = namespace
        self.api = RestClient(load_kubeconfig(cp.kubeconfig))
        self.sandbox = self.api.resource("sandboxes.agents.x-k8s.io")
        self.claim = self.api.resource("sandboxclaims")
        self.pool = self.api.resource("sandboxwarmpools")
        self.template = self.api.resource("sandboxtemplates")

    def create(self, obj: Obj) -> Obj:
        res = self.api.resource_for(obj["apiVersion"], obj["kind"])
        return self.api.create(res, obj, self.ns)

    def get(self, res: Any, name: str) -> Obj | None:
        from turbok.api.status import NotFound

        try:
            return self.api.get(res, name, self.ns)
        except NotFound:
            return None

    def wait(self, predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.cp.log()[-3000:]}")
            time.sleep(0.05)

    def condition(self, res: Any, name: str, type_: str = "Ready") -> Obj | None:
        obj = self.get(res, name)
        for cond in (obj or {}).get("status", {}).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return None

    def wait_condition(self, res: Any, name: str, type_: str = "Ready", status: str = "True",
                       reason: str | None = None, timeout: float = 60.0) -> Obj:
        def check() -> Obj | None:
            cond = self.condition(res, name, type_)
            if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
                return self.get(res, name)
            return None

        result: Obj = self.wait(check, timeout, f"{res.kind} {name} {type_}={status} {reason or ''}")
        return result

    def connect(self, sandbox_name: str) -> SandboxConnection:
        return SandboxConnection(self.cp.router_url, self.cp.router_token, self.ns, sandbox_name, timeout=60)

    def close(self) -> None:
        self.api.close()


def template(name: str, **spec: Any) -> Obj:
    return {"apiVersion": EXT, "kind": "SandboxTemplate", "metadata": {"name": name},
            "spec": {"podTemplate": {"spec": {"containers": [{
                "name": "main", "image": "python-runtime-sandbox",
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}}}]}}, **spec}}


def pool(name: str, template_name: str, replicas: int) -> Obj:
    return {"apiVersion": EXT, "kind": "SandboxWarmPool", "metadata": {"name": name},
            "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": template_name}}}


def claim(name: str, pool_name: str, **spec: Any) -> Obj:
    return {"apiVersion": EXT, "kind": "SandboxClaim", "metadata": {"name": name},
            "spec": {"warmPoolRef": {"name": pool_name}, **spec}}


def sandbox(name: str, **spec: Any) -> Obj:
    return {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": name},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}},
                     **spec}}


@pytest.fixture
def kube(control_plane: ControlPlaneProcess, request: pytest.FixtureRequest) -> Iterator[Kube]:
    """A fresh namespace on the shared control plane, deleted (with its sandboxes) afterwards."""
    # Parametrized tests share a prefix; a hash of the whole name keeps their namespaces apart while the
    # previous one is still terminating.
    digest = hashlib.sha256(request.node.name.encode()).hexdigest()[:6]
    name = "it-" + request.node.name.replace("_", "-").lower()[:50].rstrip("-") + "-" + digest
    k = Kube(control_plane, name)
    ns_res = k.api.resource("namespaces")
    k.api.create(ns_res, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield k
    k.api.delete(ns_res, name)
    k.close()
