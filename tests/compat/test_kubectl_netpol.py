"""kubectl and networking.k8s.io/v1 NetworkPolicy on ``turbok serve``: apply, get, describe, refusals, templates.

Run with every kubectl found (PATH, the kube assets' 1.37, Debian's 1.20), as
tests/compat/test_kubectl_core.py does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.compat.kubectl import EXT, KUBECTL, Kubectl, client_minor, make_kubectl
from tests.conftest import ControlPlaneProcess
from tests.kube_cluster import CACHE
from turbok.controllers.labels import name_hash

REPO = Path(__file__).resolve().parents[2]
_CANDIDATES = {
    "path": KUBECTL,
    "current": str(CACHE / "bin" / "kubectl"),
    "debian-1.20": os.environ.get("TURBOK_LEGACY_KUBECTL") or str(REPO / ".cache" / "kubernetes-client" / "usr" /
                                                                   "bin" / "kubectl"),
}

pytestmark = [pytest.mark.compat]

POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "pypi-only"},
          "spec": {"podSelector": {"matchLabels": {"app": "agent"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "151.101.0.0/16", "except": ["151.101.1.0/24"]}}],
                               "ports": [{"port": 443}, {"protocol": "UDP", "port": 53}]}]}}


def _binaries() -> list[object]:
    return [pytest.param(path, id=name, marks=pytest.mark.skipif(
        path is None or not Path(path).exists(), reason=f"no kubectl at {path or 'PATH'}"))
        for name, path in _CANDIDATES.items()]


@pytest.fixture(params=_binaries())
def kube(request: pytest.FixtureRequest, control_plane: ControlPlaneProcess,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kubectl, int, str]]:
    binary = request.param
    run = make_kubectl(control_plane, tmp_path_factory.mktemp("kube-cache"), binary)
    test = request.node.name.split("[")[0].removeprefix("test_")[:20].replace("_", "-").strip("-")
    ns = f"np-{request.node.callspec.id.replace('.', '-')}-{test}"
    run("create", "namespace", ns)
    yield run, client_minor(binary), ns
    run("delete", "namespace", ns, "--wait=false", ok=False)


def test_a_user_applies_gets_describes_changes_and_deletes_a_network_policy(kube: tuple[Kubectl, int, str]) -> None:
    run, _, ns = kube
    run("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(POLICY))
    lines = run("get", "networkpolicies", "-n", ns).stdout.splitlines()
    assert lines[0].split() == ["NAME", "POD-SELECTOR", "AGE"]
    assert lines[1].split()[:2] == ["pypi-only", "app=agent"]
    stored = json.loads(run("get", "netpol", "pypi-only", "-n", ns, "-o", "json").stdout)
    assert stored["spec"]["egress"][0]["ports"] == [{"port": 443, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]
    assert stored["metadata"]["generation"] == 1
    described = run("describe", "networkpolicy", "pypi-only", "-n", ns).stdout
    assert "PodSelector:" in described and "151.101.0.0/16" in described
    changed = {**POLICY, "spec": {**POLICY["spec"], "egress": [{"ports": [{"port": 8443}]}]}}  # type: ignore[dict-item]
    run("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(changed))
    again = json.loads(run("get", "netpol", "pypi-only", "-n", ns, "-o", "json").stdout)
    assert again["spec"]["egress"] == [{"ports": [{"port": 8443, "protocol": "TCP"}]}]
    assert again["metadata"]["generation"] == 2
    run("delete", "netpol", "pypi-only", "-n", ns)
    assert run("get", "netpol", "pypi-only", "-n", ns, ok=False).returncode != 0


def test_a_bad_policy_is_refused_with_kubes_causes(kube: tuple[Kubectl, int, str]) -> None:
    run, _, ns = kube
    bad = {**POLICY, "spec": {"podSelector": {}, "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.1/8"}}], "ports": [{"port": 80, "endPort": 70}]}]}}
    done = run("apply", "-n", ns, "-f", "-", ok=False, stdin=yaml.safe_dump(bad))
    assert done.returncode != 0
    assert "spec.egress[0].ports[0].endPort: Invalid value: 70: must be greater than or equal to `port`" in done.stderr
    assert "spec.egress[0].to[0].ipBlock.cidr" in done.stderr
    assert run("get", "netpol", "-n", ns).stdout.strip() == "" or "No resources" in run(
        "get", "netpol", "-n", ns).stderr


def test_a_template_gets_upstreams_network_policy(kube: tuple[Kubectl, int, str]) -> None:
    run, _, ns = kube
    template = {"apiVersion": EXT, "kind": "SandboxTemplate", "metadata": {"name": "coder"},
                "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}},
                         "networkPolicy": {"egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                                                       "ports": [{"port": 443}]}]}}}
    run("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(template))
    for _ in range(100):
        got = run("get", "netpol", "coder-network-policy", "-n", ns, "-o", "json", ok=False)
        if got.returncode == 0:
            break
    policy = json.loads(got.stdout)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"agents.x-k8s.io/sandbox-template-ref-hash":
                                                             name_hash("coder")}}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "SandboxTemplate"
