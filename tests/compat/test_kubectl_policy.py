"""Real kubectl against ``turbok serve``: LimitRanges, ResourceQuotas and the pod template checks.

What a user types to bound a namespace (``kubectl apply`` of a LimitRange and a
ResourceQuota, ``kubectl get``/``describe``, ``kubectl create quota``) and what
kubectl prints when a write is refused (403 exceeded quota, 422 with field
causes), with what the server then holds.
"""

from __future__ import annotations

import json
import time

import yaml

from tests.compat.kubectl import MARKS, Kubectl

pytestmark = MARKS

LIMITS = """
apiVersion: v1
kind: LimitRange
metadata: {name: limits}
spec:
  limits:
  - type: Container
    default: {memory: 512Mi, cpu: 500m}
    max: {memory: 1Gi}
"""

QUOTA = """
apiVersion: v1
kind: ResourceQuota
metadata: {name: sandboxes}
spec:
  hard:
    count/sandboxes.agents.x-k8s.io: "2"
    limits.memory: 2Gi
"""


def sandbox_yaml(name: str, **resources: dict[str, str]) -> str:
    container: dict[str, object] = {"name": "main", "image": "python-runtime-sandbox"}
    if resources:
        container["resources"] = resources
    return yaml.safe_dump({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": name},
                           "spec": {"operatingMode": "Suspended",  # nothing to boot: these tests are about the API
                                    "podTemplate": {"spec": {"containers": [container]}}}})


def test_limit_range_apply_get_describe_and_its_defaults_on_a_sandbox(kubectl: Kubectl, ns: str) -> None:
    assert "limitrange/limits created" in kubectl("apply", "-n", ns, "-f", "-", stdin=LIMITS).stdout
    # "configured", as against kube-apiserver: the server's defaults differ from the list applied.
    assert "limitrange/limits configured" in kubectl("apply", "-n", ns, "-f", "-", stdin=LIMITS).stdout
    listed = kubectl("get", "limitranges", "-n", ns).stdout.splitlines()
    assert listed[0].split() == ["NAME", "CREATED", "AT"] and listed[1].startswith("limits ")
    described = kubectl("describe", "limits", "limits", "-n", ns).stdout
    assert "Container" in described and "512Mi" in described and "1Gi" in described
    kubectl("apply", "-n", ns, "-f", "-", stdin=sandbox_yaml("plain"))
    sb = json.loads(kubectl("get", "sandbox", "plain", "-n", ns, "-o", "json").stdout)
    assert sb["spec"]["podTemplate"]["spec"]["containers"][0]["resources"] == {
        "limits": {"memory": "512Mi", "cpu": "500m"}, "requests": {"memory": "512Mi", "cpu": "500m"}}
    big = kubectl("apply", "-n", ns, "-f", "-", stdin=sandbox_yaml("big", limits={"memory": "2Gi"}), ok=False)
    assert big.returncode != 0
    assert ('sandboxes.agents.x-k8s.io "big" is forbidden: maximum memory usage per Container is 1Gi, but limit '
            "is 2Gi") in big.stderr


def test_quota_counts_and_refuses_the_next_sandbox(kubectl: Kubectl, ns: str) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=QUOTA)
    for name in ("a", "b"):
        kubectl("apply", "-n", ns, "-f", "-", stdin=sandbox_yaml(name, limits={"memory": "256Mi"}))
    over = kubectl("apply", "-n", ns, "-f", "-", stdin=sandbox_yaml("c", limits={"memory": "256Mi"}), ok=False)
    assert over.returncode != 0
    assert ('sandboxes.agents.x-k8s.io "c" is forbidden: exceeded quota: sandboxes, requested: '
            "count/sandboxes.agents.x-k8s.io=1, used: count/sandboxes.agents.x-k8s.io=2, limited: "
            "count/sandboxes.agents.x-k8s.io=2") in over.stderr
    assert kubectl("get", "sandbox", "c", "-n", ns, ok=False).returncode != 0  # nothing written
    deadline = time.monotonic() + 30
    while True:
        status = json.loads(kubectl("get", "quota", "sandboxes", "-n", ns, "-o", "json").stdout).get("status", {})
        if status.get("used", {}).get("count/sandboxes.agents.x-k8s.io") == "2":
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["hard"] == {"count/sandboxes.agents.x-k8s.io": "2", "limits.memory": "2Gi"}
    assert status["used"]["limits.memory"] == "0"  # suspended sandboxes have no Pod: no memory counted
    described = kubectl("describe", "quota", "sandboxes", "-n", ns).stdout
    assert "count/sandboxes.agents.x-k8s.io" in described and "Used" in described and "Hard" in described
    created = kubectl("create", "quota", "claims", "-n", ns,
                      "--hard=count/sandboxclaims.extensions.agents.x-k8s.io=1")
    assert "resourcequota/claims created" in created.stdout
    assert "claims" in kubectl("get", "resourcequotas", "-n", ns).stdout


def test_invalid_pod_templates_are_refused_with_their_fields(kubectl: Kubectl, ns: str) -> None:
    bad = yaml.safe_load(sandbox_yaml("bad", limits={"cpu": "-1"}))
    bad["spec"]["podTemplate"]["spec"]["volumes"] = [{"name": "Bad_Name", "emptyDir": {}}]
    done = kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(bad), ok=False)
    assert done.returncode != 0
    assert 'The Sandbox "bad" is invalid' in done.stderr
    assert "spec.podTemplate.spec.volumes[0].name: Invalid value: \"Bad_Name\"" in done.stderr
    assert "spec.podTemplate.spec.containers[0].resources.limits[cpu]: Invalid value: \"-1\": must be greater " \
           "than or equal to 0" in done.stderr
    assert kubectl("get", "sandbox", "bad", "-n", ns, ok=False).returncode != 0
