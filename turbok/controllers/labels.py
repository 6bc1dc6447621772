"""The upstream Agent Sandbox label, annotation and condition vocabulary.

Keys and reasons are the exact strings of kubernetes-sigs/agent-sandbox, so
that the official clients, dashboards and scripts that read them work
unchanged. ``name_hash`` is upstream's NameHash: FNV-1a 32-bit, 8 hex digits.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["name_hash", "blueprint_hash"]

# Labels
SANDBOX_NAME_HASH = "agents.x-k8s.io/sandbox-name-hash"
LAUNCH_TYPE = "agents.x-k8s.io/launch-type"
CREATED_BY = "agents.x-k8s.io/created-by"
WARM_POOL_SANDBOX = "agents.x-k8s.io/warm-pool-sandbox"
TEMPLATE_REF_HASH = "agents.x-k8s.io/sandbox-template-ref-hash"
POD_TEMPLATE_HASH = "agents.x-k8s.io/sandbox-pod-template-hash"
TEMPLATE_HASH = "agents.x-k8s.io/sandbox-template-hash"
CLAIM_UID = "agents.x-k8s.io/claim-uid"

# Annotations
POD_NAME = "agents.x-k8s.io/pod-name"
TEMPLATE_REF = "agents.x-k8s.io/sandbox-template-ref"
CLAIM_SANDBOX_NAME = "agents.x-k8s.io/sandbox-name"
CONTROLLER_FIRST_OBSERVED = "agents.x-k8s.io/controller-first-observed-at"
CLAIM_FIRST_READY = "agents.x-k8s.io/claim-first-ready-at"
CLIENT_FIRST_REQUESTED = "agents.x-k8s.io/client-first-requested-at"
#: turbok's own: which runtime isolates the sandbox, and its runtime id.
ISOLATION = "turbok.dev/isolation"
RUNTIME_ID = "turbok.dev/runtime-id"

RESERVED_PREFIXES = ("agents.x-k8s.io/", "extensions.agents.x-k8s.io/")

SANDBOX_API = "agents.x-k8s.io/v1beta1"
EXTENSIONS_API = "extensions.agents.x-k8s.io/v1beta1"


def name_hash(value: str) -> str:
    h = 0x811C9DC5
    for byte in value.encode():
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def blueprint_hash(value: Any) -> str:
    """A stable hash of a JSON-able value (template blueprints), rendered like ``name_hash``."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def owner_ref(obj: dict[str, Any], *, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": controller, "blockOwnerDeletion": True}


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None
