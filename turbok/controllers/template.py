"""SandboxTemplate: its name-hash label, and the NetworkPolicy its sandboxes share, as upstream makes them.

Sandboxes built from a template carry ``agents.x-k8s.io/sandbox-template-ref-hash``;
the template carries the same label so selectors can join them.

``networkPolicyManagement: Managed`` (the default) keeps one NetworkPolicy per
template, ``<template>-network-policy`` in its namespace, controlled by the
template (deleted with it by the garbage collector), selecting the template's
Pods by that label, with ``policyTypes: [Ingress, Egress]`` and:

- the template's ``networkPolicy.ingress``/``egress`` when it has a
  ``networkPolicy`` (an empty list there denies that direction);
- else upstream's secure default: ingress only from the sandbox router
  (``app: sandbox-router`` in ``agent-sandbox-system``), egress to every
  address except the private ranges (10/8, 172.16/12, 192.168/16), link-local
  (169.254/16, the metadata server) and their IPv6 counterparts.

A policy drifting from that is put back; one of the same name that the
template does not control is left alone and the template's reconcile fails
(upstream's words). ``Unmanaged`` deletes the policy the template controls and
writes none. Upstream's ``extensions/controllers/sandboxtemplate_controller.go``;
the node enforces the policy (``turbok.node.netpolicy``, docs/sandboxes.md
"Network policy").
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable
from typing import Any

from turbok.api.kinds import Kind
from turbok.api.networkpolicy import set_defaults
from turbok.api.status import NotFound
from turbok.controllers import labels as lb
from turbok.controllers.base import DONE, Key, PermanentError, Reconciler, Result
from turbok.controllers.client import Client, Obj

__all__ = ["ROUTER_PEER", "TemplateReconciler", "default_policy_spec", "desired_policy_spec", "policy_name"]

NETWORKING_API = "networking.k8s.io/v1"
#: Upstream's default ingress peer: the sandbox router's Pods.
ROUTER_PEER: Obj = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agent-sandbox-system"}},
                    "podSelector": {"matchLabels": {"app": "sandbox-router"}}}
#: What upstream's default egress leaves out of "everywhere": private, link-local (metadata) and their IPv6 kin.
DEFAULT_EXCEPT_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]
DEFAULT_EXCEPT_V6 = ["fc00::/7", "fe80::/10"]


def policy_name(template_name: str) -> str:
    return f"{template_name}-network-policy"


def _selector(template_name: str) -> Obj:
    return {"matchLabels": {lb.TEMPLATE_REF_HASH: lb.name_hash(template_name)}}


def default_policy_spec(template_name: str) -> Obj:
    """Upstream's buildDefaultNetworkPolicySpec."""
    return {
        "podSelector": _selector(template_name),
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [copy.deepcopy(ROUTER_PEER)]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(DEFAULT_EXCEPT_V4)}},
                           {"ipBlock": {"cidr": "::/0", "except": list(DEFAULT_EXCEPT_V6)}}]}],
    }


def desired_policy_spec(template: Obj) -> Obj:
    """The spec of the template's NetworkPolicy (the template must be Managed)."""
    name = template["metadata"]["name"]
    custom = (template.get("spec") or {}).get("networkPolicy")
    if custom is None:
        return default_policy_spec(name)
    spec: Obj = {"podSelector": _selector(name), "policyTypes": ["Ingress", "Egress"]}
    for direction in ("ingress", "egress"):
        if custom.get(direction):  # Go's omitempty: an empty list is no list
            spec[direction] = copy.deepcopy(custom[direction])
    return spec


def _normal(spec: Any) -> Obj:
    """A spec as the API stores it (ports' protocol defaulted), for comparing like Go's Semantic.DeepEqual."""
    policy = {"spec": copy.deepcopy(spec) if isinstance(spec, dict) else {}}
    set_defaults(policy)
    out: Obj = policy["spec"]
    return out


class TemplateReconciler(Reconciler):
    concurrency = 1

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.kind = client.kinds.by_kind(lb.EXTENSIONS_API, "SandboxTemplate")
        self.policy_kind: Kind = client.kinds.by_kind(NETWORKING_API, "NetworkPolicy")

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> Iterable[Key]:
        if kind.key != self.policy_kind.key:
            return ()
        owner = lb.controller_of(obj)
        if owner is None or owner.get("kind") != "SandboxTemplate" or owner.get("apiVersion") != lb.EXTENSIONS_API:
            return ()
        return ((obj["metadata"].get("namespace", ""), str(owner.get("name"))),)

    async def reconcile(self, namespace: str, name: str) -> Result:
        template = await self.client.try_get(self.kind, namespace, name)
        if template is None:
            return DONE
        md = template["metadata"]
        if md.get("deletionTimestamp"):
            return DONE
        labels = md.setdefault("labels", {})
        if labels.get(lb.TEMPLATE_REF_HASH) != lb.name_hash(name):
            labels[lb.TEMPLATE_REF_HASH] = lb.name_hash(name)
            template = await self.client.update(self.kind, template)
        await self._policy(template)
        return DONE

    async def _policy(self, template: Obj) -> None:
        md = template["metadata"]
        namespace, np_name = md["namespace"], policy_name(md["name"])
        management = (template.get("spec") or {}).get("networkPolicyManagement") or "Managed"
        existing = await self.client.try_get(self.policy_kind, namespace, np_name)
        controlled = existing is not None and (lb.controller_of(existing) or {}).get("uid") == md["uid"]
        if management == "Unmanaged":
            if controlled:
                assert existing is not None
                with contextlib.suppress(NotFound):
                    await self.client.delete(self.policy_kind, namespace, np_name, uid=existing["metadata"]["uid"])
            return
        desired = desired_policy_spec(template)
        if existing is not None:
            if not controlled:
                raise PermanentError(f"refusing to update NetworkPolicy {np_name!r} as it is not controlled by "
                                     f"SandboxTemplate {md['name']!r}")
            if _normal(existing.get("spec")) == _normal(desired):
                return
            existing["spec"] = desired
            await self.client.update(self.policy_kind, existing)
            return
        await self.client.create(self.policy_kind, {
            "apiVersion": NETWORKING_API, "kind": "NetworkPolicy",
            "metadata": {"name": np_name, "namespace": namespace, "ownerReferences": [lb.owner_ref(template)]},
            "spec": desired,
        })
