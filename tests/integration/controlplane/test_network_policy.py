"""Templates' network policies on ``turbok serve``: the controller writes them, the node holds each sandbox to its own.

Nothing here sends a packet beyond the host: the tests read what the node put in
the kernel (the pod network's verdict maps) and each sandbox's resolv.conf. What the
rules let through is tested with a stand-in internet in
tests/integration/runtime/test_pod_network_policy.py and tests/integration/node/.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.integration.controlplane.conftest import Kube, claim, pool, template
from turbok.controllers.labels import TEMPLATE_REF_HASH, name_hash

pytestmark = pytest.mark.integration


def _map(name: str) -> dict[str, str]:
    """The elements of the pod network's verdict map ``name`` (address -> chain), on this host."""
    done = subprocess.run(["nft", "-j", "list", "map", "inet", "turbok", name], capture_output=True, text=True)
    if done.returncode != 0:
        return {}
    for item in json.loads(done.stdout)["nftables"]:
        if "map" in item:
            return {k: v["goto"]["target"] for k, v in item["map"].get("elem") or []}
    return {}


def _chain(name: str) -> str:
    return subprocess.run(["nft", "list", "chain", "inet", "turbok", name], capture_output=True, text=True).stdout


def _pod_ip(kube: Kube, template_name: str) -> str:
    pods = kube.api.resource("pods")

    def found() -> str | None:
        for p in kube.api.list(pods, kube.ns).get("items", []):
            if (p["metadata"].get("labels") or {}).get(TEMPLATE_REF_HASH) == name_hash(template_name):
                ip: str | None = (p.get("status") or {}).get("podIP")
                return ip
        return None

    got: str = kube.wait(found, what=f"a Pod of template {template_name} with an address")
    return got


#: Run in a sandbox: one DNS query for a cluster name to the pods' resolver; prints its rcode and id.
_ASK_CLUSTER_NAME = (
    "import socket, struct; "
    "name = b\"\".join(bytes([len(p)]) + p.encode() for p in \"db.default.svc.cluster.local\".split(\".\")); "
    "q = struct.pack(\"!HHHHHH\", 0x4242, 0x0100, 1, 0, 0, 0) + name + bytes(1) + struct.pack(\"!HH\", 1, 1); "
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); "
    "s.sendto(q, (\"10.213.0.1\", 53)); r = s.recv(512); print(r[3] & 15, r[:2].hex())"
)


def test_a_templates_sandboxes_are_held_to_its_network_policy(kube: Kube) -> None:
    if subprocess.run(["nft", "list", "table", "inet", "turbok"], capture_output=True).returncode != 0:
        pytest.skip("no pod network on this machine (nftables, root)")
    egress: list[Any] = [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]}]
    kube.create(template("open"))  # upstream's secure default
    kube.create(template("narrow", networkPolicy={"egress": egress}))
    for name in ("open", "narrow"):
        kube.create(pool(f"{name}-pool", name, 1))
        kube.create(claim(f"{name}-claim", f"{name}-pool"))
    netpols = kube.api.resource("networkpolicies")
    for name in ("open", "narrow"):
        kube.wait_condition(kube.claim, f"{name}-claim", timeout=120)
        policy = kube.get(netpols, f"{name}-network-policy")
        assert policy is not None and policy["spec"]["podSelector"]["matchLabels"] == {
            TEMPLATE_REF_HASH: name_hash(name)}
    open_ip, narrow_ip = _pod_ip(kube, "open"), _pod_ip(kube, "narrow")
    # The node bound each sandbox to its template's rules: its own chain, with its own allowances.
    egress_map = kube.wait(lambda: (m := _map("egress")) and open_ip in m and narrow_ip in m and m,
                           what="both sandboxes in the egress map")
    assert egress_map[open_ip] != egress_map[narrow_ip]
    narrow_rules = _chain(egress_map[narrow_ip])
    assert "ip daddr 203.0.113.0/24" in narrow_rules and "tcp dport 443 accept" in narrow_rules
    open_rules = _chain(egress_map[open_ip])
    assert "ip daddr 0.0.0.0/0" in open_rules and "169.254.0.0/16" in open_rules and "10.0.0.0/8" in open_rules
    assert open_ip in _map("ingress")  # upstream's default lets the router in (the host always may)
    # DNS: the secure default names public resolvers; a template with its own policy asks turbok's.
    sandboxes = {name: (kube.get(kube.claim, f"{name}-claim") or {})["status"]["sandbox"]["name"]
                 for name in ("open", "narrow")}
    with kube.connect(sandboxes["open"]) as conn:
        assert conn.commands.run("cat /etc/resolv.conf").stdout == "nameserver 8.8.8.8\nnameserver 1.1.1.1\n"
    with kube.connect(sandboxes["narrow"]) as conn:
        lines = conn.commands.run("cat /etc/resolv.conf").stdout.splitlines()
    assert lines[0] == "nameserver 10.213.0.1" and lines[1].startswith(f"search {kube.ns}.svc.cluster.local ")
    # The node's resolver answers it there (a cluster name: answered on the host, never forwarded, so nothing
    # here leaves the machine): NXDOMAIN, with the query's own id.
    with kube.connect(sandboxes["narrow"]) as conn:
        got = conn.commands.run(f"python3 -c '{_ASK_CLUSTER_NAME}'", timeout=20)
    assert got.stdout.split() == ["3", "4242"], (got.stdout, got.stderr)
    # The template's policy changes: the running sandbox follows.
    kube.api.patch(kube.template, "narrow", {"spec": {"networkPolicy": {"egress": [{"ports": [{"port": 8443}]}]}}},
                   kube.ns)
    kube.wait(lambda: "tcp dport 8443 accept" in _chain(_map("egress").get(narrow_ip, "none")),
              what="the narrow sandbox's new rules")


def test_a_claim_adopting_a_warm_sandbox_keeps_its_address_and_rules_and_gains_its_own(kube: Kube) -> None:
    # Adoption relabels the running Pod (the pool's labels go, the claim's identity and additionalPodMetadata
    # come); nothing reboots, so the node must follow the labels on the sandbox's own address.
    if subprocess.run(["nft", "list", "table", "inet", "turbok"], capture_output=True).returncode != 0:
        pytest.skip("no pod network on this machine (nftables, root)")
    kube.create(template("warm", networkPolicy={"egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                                                            "ports": [{"port": 443}]}]}))
    kube.create(pool("warm-pool", "warm", 1))
    warm_ip = _pod_ip(kube, "warm")
    kube.wait(lambda: "ip daddr 203.0.113.0/24" in _chain(_map("egress").get(warm_ip, "none")),
              what="the warm sandbox bound to its template's rules")
    # A policy of the user's, for the sandboxes of claims labelled for it.
    kube.create({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "data-team"},
                 "spec": {"podSelector": {"matchLabels": {"sandbox.users.io/team": "data"}},
                          "policyTypes": ["Egress"],
                          "egress": [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}], "ports": [{"port": 5432}]}]}})
    kube.create(claim("data-claim", "warm-pool",
                      additionalPodMetadata={"labels": {"sandbox.users.io/team": "data"}}))
    kube.wait_condition(kube.claim, "data-claim", timeout=120)
    events = kube.api.list(kube.api.resource("events"), kube.ns).get("items", [])
    assert any(e.get("reason") == "SandboxAdopted" for e in events)
    pods = kube.api.resource("pods")

    def adopted_pod() -> Any:
        for p in kube.api.list(pods, kube.ns).get("items", []):
            if (p["metadata"].get("labels") or {}).get("sandbox.users.io/team") == "data":
                return p
        return None

    adopted = kube.wait(adopted_pod, what="the adopted Pod relabelled")
    assert adopted["status"]["podIP"] == warm_ip  # the same sandbox, not a new one
    rules = kube.wait(lambda: (c := _chain(_map("egress").get(warm_ip, "none"))) and "198.51.100.0/24" in c and c,
                      what="the adopted sandbox bound to the claim's policy too")
    assert "ip daddr 203.0.113.0/24" in rules and "tcp dport 443 accept" in rules and "tcp dport 5432 accept" in rules
    # The pool's replacement sandbox: the template's rules, not the claim's.
    fresh = kube.wait(lambda: [ip for ip in _map("egress") if ip != warm_ip and
                               "203.0.113.0/24" in _chain(_map("egress")[ip]) and
                               (p := _pod_of(kube, ip)) is not None and p["metadata"]["namespace"] == kube.ns],
                      what="the pool's replacement sandbox bound", timeout=120)
    assert "198.51.100.0/24" not in _chain(_map("egress")[fresh[0]])


def _pod_of(kube: Kube, ip: str) -> Any:
    for p in kube.api.list(kube.api.resource("pods"), kube.ns).get("items", []):
        if (p.get("status") or {}).get("podIP") == ip:
            return p
    return None
