"""The upstream Agent Sandbox label, annotation and condition vocabulary, and turbok's few additions.

Keys and reasons are the exact strings of kubernetes-sigs/agent-sandbox, so
that the official clients, dashboards and scripts that read them work
unchanged. ``name_hash`` is upstream's NameHash: FNV-1a 32-bit, 8 hex digits.
The ``turbok.dev/`` keys are turbok's own (docs/architecture.md, "Controllers
and the node"): the node reads them from the Pod.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["blueprint_hash", "controller_of", "is_system_annotation", "is_system_label", "name_hash",
           "normalize_created_by", "owner_ref"]

# Labels
SANDBOX_NAME_HASH = "agents.x-k8s.io/sandbox-name-hash"
LAUNCH_TYPE = "agents.x-k8s.io/launch-type"
CREATED_BY = "agents.x-k8s.io/created-by"
WARM_POOL_SANDBOX = "agents.x-k8s.io/warm-pool-sandbox"
TEMPLATE_REF_HASH = "agents.x-k8s.io/sandbox-template-ref-hash"
POD_TEMPLATE_HASH = "agents.x-k8s.io/sandbox-pod-template-hash"
TEMPLATE_HASH = "agents.x-k8s.io/sandbox-template-hash"
CLAIM_UID = "agents.x-k8s.io/claim-uid"
#: On an unowned Pod, Service or PVC: a Sandbox may adopt it.
ADOPTABLE = "agents.x-k8s.io/adoptable"

# Annotations
POD_NAME = "agents.x-k8s.io/pod-name"
TEMPLATE_REF = "agents.x-k8s.io/sandbox-template-ref"
CLAIM_SANDBOX_NAME = "agents.x-k8s.io/sandbox-name"
#: On the Pod: the template labels and annotations the controller put there (sorted, comma-separated).
PROPAGATED_LABELS = "agents.x-k8s.io/propagated-labels"
PROPAGATED_ANNOTATIONS = "agents.x-k8s.io/propagated-annotations"
TRACE_CONTEXT = "opentelemetry.io/trace-context"
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"

#: turbok's own, on the Pod: the Sandbox's uid. The node keys the pod's runtime state by it
#: (runtime id ``sandbox_id(identity)``), so that a new Pod of the same Sandbox finds its disk and memory.
SANDBOX_IDENTITY = "turbok.dev/sandbox-identity"
#: turbok's own, on the Pod, written just before the controller deletes it: ``hibernate`` (keep memory,
#: processes and disk) or ``stop`` (keep the disk). Without it, deleting the Pod removes its state.
ON_DELETE = "turbok.dev/on-delete"
HIBERNATE, STOP = "hibernate", "stop"
#: turbok's own, on the Sandbox: ``disk`` suspends without keeping memory.
SUSPEND = "turbok.dev/suspend"
#: turbok's own, on a SandboxTemplate whose Pods name ResourceClaims: ``hold`` lets its warm pools keep
#: sandboxes, and so their devices, while unclaimed; without it they keep none (docs/dra.md).
WARM_POOL_DEVICES = "turbok.dev/warm-pool-devices"
#: turbok's own condition type, mirrored from the Pod (written by the node) to the Sandbox's ``Isolated``.
POD_ISOLATED = "turbok.dev/Isolated"

RESERVED_PREFIXES = ("agents.x-k8s.io/", "extensions.agents.x-k8s.io/")
#: Pod annotations only the controller writes: a template that sets them could take over another
#: sandbox's kept state (identity), choose how its Pod's state is torn down, or throw it away at every start
#: (``turbok.dev/restore-from``, set for one Pod by ``turbok sandbox restore``).
_TURBOK_POD_ANNOTATIONS = frozenset({SANDBOX_IDENTITY, ON_DELETE, "turbok.dev/restore-from"})

SANDBOX_API = "agents.x-k8s.io/v1beta1"
EXTENSIONS_API = "extensions.agents.x-k8s.io/v1beta1"
EXTENSIONS_GROUP = "extensions.agents.x-k8s.io"


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


def is_system_label(key: str) -> bool:
    """A label a pod template may not set on its Pod (upstream's ``isSystemLabel``)."""
    return key.startswith(RESERVED_PREFIXES)


def is_system_annotation(key: str) -> bool:
    """An annotation a pod template may not set on its Pod (upstream's ``isSystemAnnotation``, plus turbok's)."""
    return key.startswith(RESERVED_PREFIXES) or key == TRACE_CONTEXT or key in _TURBOK_POD_ANNOTATIONS


def normalize_created_by(value: str) -> str:
    """The created-by label as upstream puts it on a Pod: a known client, or ``unknown``."""
    return value if value in ("go-client", "python-client", "controller") else "unknown"


def owner_ref(obj: dict[str, Any], *, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": controller, "blockOwnerDeletion": True}


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None
