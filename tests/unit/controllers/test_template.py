"""The template controller: the name-hash label and the NetworkPolicy upstream makes from a template."""

from __future__ import annotations

from typing import Any

from tests.unit.controllers.conftest import Cluster, template
from turbok.controllers import labels as lb
from turbok.controllers.template import policy_name

Obj = dict[str, Any]


def _kind(cluster: Cluster) -> Any:
    return cluster.kinds.by_kind("networking.k8s.io/v1", "NetworkPolicy")


def _policy(cluster: Cluster, name: str = "tpl") -> Obj | None:
    return cluster.get(_kind(cluster), policy_name(name))


async def test_a_template_without_a_policy_gets_upstreams_secure_default(cluster: Cluster) -> None:
    made = cluster.create(template())
    np = await cluster.wait(lambda: _policy(cluster), what="the template's NetworkPolicy")
    assert np["metadata"]["name"] == "tpl-network-policy"
    assert np["metadata"].get("labels") is None  # upstream labels it with nothing
    [owner] = np["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate", "name": "tpl",
                     "uid": made["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    spec = np["spec"]
    assert spec["podSelector"] == {"matchLabels": {lb.TEMPLATE_REF_HASH: lb.name_hash("tpl")}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agent-sandbox-system"}},
        "podSelector": {"matchLabels": {"app": "sandbox-router"}}}]}]
    assert spec["egress"] == [{"to": [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                     "169.254.0.0/16"]}},
        {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}}]}]


async def test_a_templates_own_rules_replace_the_default_and_follow_its_changes(cluster: Cluster) -> None:
    egress = [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]}]
    cluster.create(template(networkPolicy={"egress": egress}))
    np = await cluster.wait(lambda: _policy(cluster), what="the policy")
    assert np["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                                     "ports": [{"port": 443, "protocol": "TCP"}]}]
    assert "ingress" not in np["spec"] and np["spec"]["policyTypes"] == ["Ingress", "Egress"]  # ingress: deny all
    version = np["metadata"]["resourceVersion"]
    cluster.patch(cluster.template, "tpl", {"spec": {"networkPolicy": {"egress": [{"ports": [{"port": 53,
                                                                                            "protocol": "UDP"}]}]}}})
    np = await cluster.wait(lambda: (p := _policy(cluster)) and p["metadata"]["resourceVersion"] != version and p,
                            what="the policy updated")
    assert np["spec"]["egress"] == [{"ports": [{"port": 53, "protocol": "UDP"}]}]


async def test_drift_is_put_back_and_an_unchanged_policy_is_not_rewritten(cluster: Cluster) -> None:
    cluster.create(template())
    np = await cluster.wait(lambda: _policy(cluster), what="the policy")
    kind = _kind(cluster)
    cluster.patch(kind, np["metadata"]["name"], {"spec": {"egress": [{}]}})  # someone opens everything
    fixed = await cluster.wait(lambda: (p := _policy(cluster)) and p["spec"]["egress"] != [{}] and p,
                               what="the drift undone")
    assert fixed["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"
    version = fixed["metadata"]["resourceVersion"]
    cluster.patch(cluster.template, "tpl", {"metadata": {"annotations": {"touched": "yes"}}})
    for _ in range(20):
        await cluster.wait(lambda: True)
    assert (_policy(cluster) or {})["metadata"]["resourceVersion"] == version


async def test_unmanaged_removes_the_templates_policy_and_leaves_others_alone(cluster: Cluster) -> None:
    cluster.create(template())
    await cluster.wait(lambda: _policy(cluster), what="the policy")
    cluster.patch(cluster.template, "tpl", {"spec": {"networkPolicyManagement": "Unmanaged"}})
    await cluster.wait(lambda: _policy(cluster) is None, what="the policy removed")
    # A policy of that name the user wrote: an Unmanaged template keeps its hands off, a Managed one refuses.
    mine = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "other-network-policy", "namespace": "default"}, "spec": {"podSelector": {}}}
    cluster.create(mine)
    cluster.create(template("other", networkPolicyManagement="Unmanaged"))
    cluster.create(template("third"))
    await cluster.wait(lambda: _policy(cluster, "third"), what="the managed template's policy")
    kept = _policy(cluster, "other")
    assert kept is not None and kept["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    cluster.patch(cluster.template, "other", {"spec": {"networkPolicyManagement": "Managed"}})
    for _ in range(20):
        await cluster.wait(lambda: True)
    assert (_policy(cluster, "other") or {})["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


async def test_the_policy_goes_with_its_template(cluster: Cluster) -> None:
    cluster.create(template())
    await cluster.wait(lambda: _policy(cluster), what="the policy")
    cluster.registry.delete(cluster.template, "default", "tpl")
    await cluster.wait(lambda: _policy(cluster) is None, what="the policy collected")
