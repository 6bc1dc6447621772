"""The official ``k8s-agent-sandbox`` client, unchanged, asking for a volume: its claim's PVC is read through core/v1.

A template whose ``volumeClaimTemplatesPolicy`` lets claims bring their own volumes; the client's
``create_sandbox(..., volume_claim_templates=...)`` in its default LocalTunnel mode; the PVC upstream
names ``<template name>-<sandbox name>`` must then exist (owned by the Sandbox, bound to a local
volume by the node), be mounted where the Pod says, and hold what the sandbox writes there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from k8s_agent_sandbox import SandboxClient
from kubernetes import client as kclient
from kubernetes import config

from tests.conftest import ControlPlaneProcess

NS = "compat-volumes"
EXT = ("extensions.agents.x-k8s.io", "v1beta1")


@pytest.fixture(scope="module")
def api(control_plane: ControlPlaneProcess) -> Iterator[kclient.ApiClient]:
    api = config.new_client_from_config(str(control_plane.kubeconfig))
    core = kclient.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    objects = kclient.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(*EXT, NS, "sandboxtemplates", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
        "metadata": {"name": "with-volumes"},
        "spec": {"volumeClaimTemplatesPolicy": "Allowed",
                 "podTemplate": {"spec": {"containers": [{
                     "name": "python-runtime", "image": "python-runtime-sandbox",
                     "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]}}}})
    objects.create_namespaced_custom_object(*EXT, NS, "sandboxwarmpools", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
        "metadata": {"name": "volumes-pool"}, "spec": {"replicas": 0, "sandboxTemplateRef": {"name": "with-volumes"}}})
    yield api
    core.delete_namespace(NS)
    api.close()


def test_the_claims_pvc_is_read_through_core_v1(api: kclient.ApiClient) -> None:
    core: Any = kclient.CoreV1Api(api)
    scratch = [{"metadata": {"name": "scratch"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}]
    c: Any
    with SandboxClient(api_client=api) as c:  # LocalTunnel, the client's default
        sb = c.create_sandbox("volumes-pool", namespace=NS, sandbox_ready_timeout=90, volume_claim_templates=scratch)
        pvc = core.read_namespaced_persistent_volume_claim(f"scratch-{sb.sandbox_id}", NS)
        assert pvc.spec.resources.requests["storage"] == "64Mi"
        assert [(o.kind, o.name) for o in pvc.metadata.owner_references] == [("Sandbox", sb.sandbox_id)]
        assert pvc.status.phase == "Bound" and pvc.spec.volume_name
        volume = core.read_persistent_volume(pvc.spec.volume_name)
        assert volume.spec.claim_ref.name == pvc.metadata.name
        result = sb.commands.run("sh -c 'echo kept > /scratch/note && cat /scratch/note && df -P /scratch'")
        assert result.exit_code == 0 and result.stdout.startswith("kept\n"), result
    deadline = time.monotonic() + 30
    while kclient.CustomObjectsApi(api).list_namespaced_custom_object(*EXT, NS, "sandboxclaims")["items"]:
        assert time.monotonic() < deadline, "the client's claim was not deleted"
        time.sleep(0.1)
