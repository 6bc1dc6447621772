"""What a Sandbox asks for on the cluster: its Pod, its PVCs, and how the Pod's metadata follows the Sandbox.

Pure functions over dicts, the shapes of upstream's ``sandbox_controller.go``
(``reconcilePod``'s create path, ``updatePodMetadata``, ``reconcilePVCs``,
``MergeVolumeClaimVolumes``, ``computeExtensionPodLabels``):

- The Pod is named like the Sandbox, labelled with the pod template's labels
  (system keys, ``agents.x-k8s.io/*``, skipped), ``sandbox-name-hash`` =
  NameHash(sandbox name), the extension labels (``warm-pool-sandbox`` while a
  pool owns the Sandbox, ``sandbox-template-ref-hash`` while a pool or claim
  does) and ``created-by`` (normalized); annotated with the template's
  annotations (system keys skipped) and the sorted lists of what was
  propagated (``propagated-labels``, ``propagated-annotations``); its spec is
  the template's, with one ``persistentVolumeClaim`` volume per
  ``volumeClaimTemplates`` entry replacing a template volume of the same name.
  The Sandbox is its controller (ownerReference, blockOwnerDeletion).
- turbok adds one annotation: ``turbok.dev/sandbox-identity`` = the Sandbox's
  uid, the key of the Pod's runtime state on the node (so a Pod made again for
  the same Sandbox, after a suspend, finds its disk and memory). Templates
  cannot set it, nor ``turbok.dev/on-delete`` (``labels.is_system_annotation``).
- A PVC per ``volumeClaimTemplates`` entry: ``<template name>-<sandbox name>``,
  the entry's labels plus ``sandbox-name-hash``, its annotations and spec,
  controlled by the Sandbox (kept while the Sandbox lives: suspend keeps data).
"""

from __future__ import annotations

import copy
from typing import Any

from turbok.controllers import labels as lb

__all__ = ["desired_pod", "desired_pvc", "extension_pod_labels", "merge_volume_claim_volumes", "pvc_name",
           "update_pod_metadata"]

Obj = dict[str, Any]

#: Extension-owned Pod labels, kept in step with ``extension_pod_labels`` (upstream's extensionPodLabelKeys).
EXTENSION_POD_LABEL_KEYS = (lb.WARM_POOL_SANDBOX, lb.TEMPLATE_REF_HASH)


def _template_metadata(sandbox: Obj) -> Obj:
    return ((sandbox.get("spec") or {}).get("podTemplate") or {}).get("metadata") or {}


def pvc_name(template_name: str, sandbox_name: str) -> str:
    return f"{template_name}-{sandbox_name}"


def extension_pod_labels(sandbox: Obj) -> dict[str, str]:
    """Labels the Pod carries because a SandboxWarmPool or SandboxClaim owns the Sandbox."""
    ref = lb.controller_of(sandbox)
    if ref is None or str(ref.get("apiVersion", "")).partition("/")[0] != lb.EXTENSIONS_GROUP:
        return {}
    labels = sandbox["metadata"].get("labels") or {}
    out: dict[str, str] = {}
    if ref.get("kind") == "SandboxWarmPool" and labels.get(lb.WARM_POOL_SANDBOX):
        out[lb.WARM_POOL_SANDBOX] = labels[lb.WARM_POOL_SANDBOX]
    if labels.get(lb.TEMPLATE_REF_HASH):
        out[lb.TEMPLATE_REF_HASH] = labels[lb.TEMPLATE_REF_HASH]
    return out


def _created_by(sandbox: Obj) -> str | None:
    value = (sandbox["metadata"].get("labels") or {}).get(lb.CREATED_BY)
    return lb.normalize_created_by(value) if value else None


def merge_volume_claim_volumes(existing: list[Obj], pvc_volumes: list[Obj]) -> list[Obj]:
    """StatefulSet semantics: a volume claim template's volume replaces a template volume of the same name."""
    if not pvc_volumes:
        return existing
    names = {v["name"] for v in pvc_volumes}
    return [v for v in existing if v.get("name") not in names] + pvc_volumes


def _pvc_volumes(sandbox: Obj) -> list[Obj]:
    name = sandbox["metadata"]["name"]
    return [{"name": vct["metadata"]["name"],
             "persistentVolumeClaim": {"claimName": pvc_name(vct["metadata"]["name"], name)}}
            for vct in (sandbox.get("spec") or {}).get("volumeClaimTemplates") or []]


def desired_pod(sandbox: Obj) -> Obj:
    """The Pod upstream's controller creates for ``sandbox``, plus turbok's identity annotation."""
    md = sandbox["metadata"]
    template_md = _template_metadata(sandbox)
    labels: dict[str, str] = {}
    for key, value in (template_md.get("labels") or {}).items():
        if not lb.is_system_label(key):
            labels[key] = value
    managed_labels = sorted(labels)
    labels[lb.SANDBOX_NAME_HASH] = lb.name_hash(md["name"])  # after the template's: it cannot override them
    labels.update(extension_pod_labels(sandbox))
    if (created_by := _created_by(sandbox)) is not None:
        labels[lb.CREATED_BY] = created_by
    annotations: dict[str, str] = {}
    for key, value in (template_md.get("annotations") or {}).items():
        if not lb.is_system_annotation(key):
            annotations[key] = value
    managed_annotations = sorted(annotations)
    if managed_labels:
        annotations[lb.PROPAGATED_LABELS] = ",".join(managed_labels)
    if managed_annotations:
        annotations[lb.PROPAGATED_ANNOTATIONS] = ",".join(managed_annotations)
    annotations[lb.SANDBOX_IDENTITY] = md["uid"]
    spec = copy.deepcopy(((sandbox.get("spec") or {}).get("podTemplate") or {}).get("spec") or {})
    volumes = merge_volume_claim_volumes(spec.get("volumes") or [], _pvc_volumes(sandbox))
    if volumes:
        spec["volumes"] = volumes
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": md["name"], "namespace": md["namespace"], "labels": labels, "annotations": annotations,
                     "ownerReferences": [lb.owner_ref(sandbox)]},
        "spec": spec,
    }


def _split(value: str) -> list[str]:
    return [k for k in value.split(",") if k]


def update_pod_metadata(pod: Obj, sandbox: Obj) -> bool:
    """Bring an existing Pod's labels and annotations in line with its Sandbox, in place (upstream's
    ``updatePodMetadata``); True when anything changed. Used after a warm pool's Sandbox is adopted."""
    md = pod["metadata"]
    labels: dict[str, str] = md.setdefault("labels", {})
    annotations: dict[str, str] = md.setdefault("annotations", {})
    before = (dict(labels), dict(annotations))
    template_md = _template_metadata(sandbox)
    template_labels: dict[str, str] = template_md.get("labels") or {}
    template_annotations: dict[str, str] = template_md.get("annotations") or {}

    labels[lb.SANDBOX_NAME_HASH] = lb.name_hash(sandbox["metadata"]["name"])
    managed_labels = []
    for key, value in template_labels.items():
        if lb.is_system_label(key):
            continue
        labels[key] = value
        managed_labels.append(key)
    # Labels the controller propagated before and the template no longer has go; system keys an older
    # controller recorded as propagated are scrubbed too, except the name hash.
    for key in _split(annotations.get(lb.PROPAGATED_LABELS, "")):
        if lb.is_system_label(key):
            if key != lb.SANDBOX_NAME_HASH:
                labels.pop(key, None)
        elif key not in template_labels:
            labels.pop(key, None)
    extension = extension_pod_labels(sandbox)
    for key in EXTENSION_POD_LABEL_KEYS:
        if key in extension:
            labels[key] = extension[key]
        else:
            labels.pop(key, None)
    if (created_by := _created_by(sandbox)) is not None:
        labels[lb.CREATED_BY] = created_by
    else:
        labels.pop(lb.CREATED_BY, None)

    managed_annotations = []
    for key, value in template_annotations.items():
        if lb.is_system_annotation(key):
            continue
        annotations[key] = value
        managed_annotations.append(key)
    for key in _split(annotations.get(lb.PROPAGATED_ANNOTATIONS, "")):
        if lb.is_system_annotation(key):
            if key not in (lb.PROPAGATED_LABELS, lb.PROPAGATED_ANNOTATIONS):
                annotations.pop(key, None)
        elif key not in template_annotations:
            annotations.pop(key, None)
    for key, keys in ((lb.PROPAGATED_LABELS, managed_labels), (lb.PROPAGATED_ANNOTATIONS, managed_annotations)):
        value = ",".join(sorted(keys))
        if annotations.get(key, "") != value:
            annotations[key] = value
    annotations[lb.SANDBOX_IDENTITY] = sandbox["metadata"]["uid"]
    return (labels, annotations) != before


def desired_pvc(sandbox: Obj, vct: Obj) -> Obj:
    md = sandbox["metadata"]
    vct_md = vct.get("metadata") or {}
    labels = dict(vct_md.get("labels") or {})
    labels[lb.SANDBOX_NAME_HASH] = lb.name_hash(md["name"])
    out_md: Obj = {"name": pvc_name(vct_md["name"], md["name"]), "namespace": md["namespace"], "labels": labels,
                   "ownerReferences": [lb.owner_ref(sandbox)]}
    if vct_md.get("annotations"):
        out_md["annotations"] = dict(vct_md["annotations"])
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": out_md,
            "spec": copy.deepcopy(vct.get("spec") or {})}
