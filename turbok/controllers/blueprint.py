"""Building Sandboxes from a SandboxTemplate, shared by the warm pool and cold claims.

A template's blueprint is its ``podTemplate``, ``volumeClaimTemplates`` and
``service``. Hashes of the blueprint label pool sandboxes so that
``updateStrategy: Recreate`` can tell stale ones apart. The pod spec gets
upstream's secure defaults (``ApplySandboxSecureDefaults``): no service
account token mounted unless the template asks, and, while the template's
network policy is the managed default, public DNS resolvers instead of the
cluster's (``dnsPolicy: None``), so a sandbox cannot enumerate cluster DNS.
"""

from __future__ import annotations

import copy
from typing import Any

from turbok.controllers import labels as lb

__all__ = ["POOL_LABELS", "blueprint", "sandbox_from_template", "secure_defaults", "template_hashes"]

Obj = dict[str, Any]

#: What a warm pool labels its Sandboxes with and adoption takes away.
POOL_LABELS = (lb.WARM_POOL_SANDBOX, lb.POD_TEMPLATE_HASH, lb.TEMPLATE_HASH)
#: The resolvers upstream gives sandboxes under its default network policy.
PUBLIC_NAMESERVERS = ["8.8.8.8", "1.1.1.1"]


def secure_defaults(template: Obj, pod_spec: Obj) -> None:
    """Upstream's ApplySandboxSecureDefaults, in place."""
    pod_spec.setdefault("automountServiceAccountToken", False)
    spec = template.get("spec") or {}
    managed = spec.get("networkPolicyManagement") in (None, "", "Managed")
    if managed and spec.get("networkPolicy") is None and not pod_spec.get("dnsPolicy"):
        pod_spec["dnsPolicy"] = "None"
        pod_spec["dnsConfig"] = {"nameservers": list(PUBLIC_NAMESERVERS)}


def blueprint(template: Obj) -> Obj:
    spec = template.get("spec") or {}
    out: Obj = {"podTemplate": copy.deepcopy(spec.get("podTemplate") or {})}
    if spec.get("volumeClaimTemplates"):
        out["volumeClaimTemplates"] = copy.deepcopy(spec["volumeClaimTemplates"])
    if "service" in spec:
        out["service"] = spec["service"]
    return out


def template_hashes(template: Obj) -> tuple[str, str]:
    """(pod template hash, blueprint hash) of a template."""
    bp = blueprint(template)
    return lb.blueprint_hash(bp["podTemplate"]), lb.blueprint_hash(bp)


def sandbox_from_template(template: Obj, *, labels: dict[str, str], annotations: dict[str, str],
                          owner: Obj, name: str | None = None, generate_name: str | None = None,
                          pod_labels: dict[str, str] | None = None) -> Obj:
    spec = blueprint(template)
    secure_defaults(template, spec["podTemplate"].setdefault("spec", {}))
    pod_md = spec["podTemplate"].setdefault("metadata", {})
    if pod_labels:
        pod_md.setdefault("labels", {}).update(pod_labels)
    md: Obj = {"namespace": template["metadata"]["namespace"], "labels": labels, "annotations": annotations,
               "ownerReferences": [lb.owner_ref(owner)]}
    if name:
        md["name"] = name
    else:
        md["generateName"] = generate_name
    return {"apiVersion": lb.SANDBOX_API, "kind": "Sandbox", "metadata": md, "spec": spec}
