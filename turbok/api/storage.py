"""PersistentVolumeClaims, PersistentVolumes and StorageClasses as kube-apiserver 1.37 defaults and validates them.

- PVC: ``volumeMode: Filesystem``; status starts ``Pending``; access modes,
  a positive ``resources.requests.storage`` and a valid class name required.
  The spec is immutable but for ``volumeName`` (set once, by binding) and,
  once Bound, a larger storage request.
- PV: ``persistentVolumeReclaimPolicy: Retain``, ``volumeMode: Filesystem``;
  status starts ``Pending``; exactly one volume source (``local`` needs
  ``nodeAffinity``), capacity ``storage`` only, access modes required; the
  source cannot change.
- StorageClass: ``reclaimPolicy: Delete``, ``volumeBindingMode: Immediate``;
  ``provisioner`` required and, with the parameters and policies, immutable.

Pure functions; ``turbok.store.strategy`` wires them to the kinds.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from turbok.api import validation as v
from turbok.api.meta import now
from turbok.api.status import Cause

__all__ = [
    "pv_prepare_create",
    "pvc_prepare_create",
    "set_pv_defaults",
    "set_pvc_defaults",
    "set_storage_class_defaults",
    "validate_pv",
    "validate_pv_update",
    "validate_pvc",
    "validate_pvc_update",
    "validate_storage_class",
    "validate_storage_class_update",
]

Obj = dict[str, Any]

_ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")
_VOLUME_MODES = ("Block", "Filesystem")
_RECLAIM_POLICIES = ("Delete", "Recycle", "Retain")
_BINDING_MODES = ("Immediate", "WaitForFirstConsumer")
#: The volume sources of a PersistentVolume, in the order kube-apiserver checks them.
PV_SOURCES = ("gcePersistentDisk", "awsElasticBlockStore", "hostPath", "glusterfs", "nfs", "rbd", "quobyte",
              "cinder", "cephfs", "fc", "flocker", "flexVolume", "azureFile", "vsphereVolume", "photonPersistentDisk",
              "portworxVolume", "azureDisk", "scaleIO", "local", "storageos", "csi", "iscsi")


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def set_pvc_defaults(pvc: Obj) -> None:
    spec = pvc.setdefault("spec", {})
    if isinstance(spec, dict) and not spec.get("volumeMode"):
        spec["volumeMode"] = "Filesystem"


def pvc_prepare_create(pvc: Obj) -> None:
    pvc["status"] = {"phase": "Pending"}


def _access_modes(modes: Any, path: str, message: str) -> list[Cause]:
    if not modes:
        return [v.required(path, message)]
    return [v.not_supported(path, m, _ACCESS_MODES) for m in modes if m not in _ACCESS_MODES]


def _class_name(spec: Obj) -> list[Cause]:
    name = spec.get("storageClassName")
    return v.dns1123_subdomain_causes("spec.storageClassName", name) if isinstance(name, str) and name else []


def _volume_mode(spec: Obj) -> list[Cause]:
    mode = spec.get("volumeMode")
    return [v.not_supported("spec.volumeMode", mode, _VOLUME_MODES)] if mode not in (None, *_VOLUME_MODES) else []


def validate_pvc(pvc: Obj) -> list[Cause]:
    spec = _spec(pvc)
    causes = _access_modes(spec.get("accessModes"), "spec.accessModes", "at least 1 access mode is required")
    requests = (spec.get("resources") or {}).get("requests") or {} if isinstance(spec.get("resources"), dict) else {}
    storage = requests.get("storage") if isinstance(requests, dict) else None
    if storage is None:
        causes.append(v.required("spec.resources[storage]"))
    else:
        number = v.quantity(storage)
        if number is None or number <= 0:
            causes.append(v.invalid("spec.resources[storage]", str(storage), "must be greater than zero"))
    causes += _class_name(spec)
    causes += _volume_mode(spec)
    return causes


def validate_pvc_update(new: Obj, old: Obj) -> list[Cause]:
    """The spec is immutable but for ``volumeName`` set once and, when Bound, a larger storage request."""
    causes = validate_pvc(new)
    new_spec, old_spec = _spec(new), copy.deepcopy(_spec(old))
    if not old_spec.get("volumeName"):
        old_spec["volumeName"] = new_spec.get("volumeName")
        if "volumeName" not in new_spec:
            old_spec.pop("volumeName")
    if old_spec.get("storageClassName") is None and new_spec.get("storageClassName") is not None:
        # Retroactive default StorageClass (GA in 1.28): the PV controller may set a class left nil.
        beta = ((old.get("metadata") or {}).get("annotations") or {}).get("volume.beta.kubernetes.io/storage-class")
        if beta is None or beta == new_spec["storageClassName"]:
            old_spec["storageClassName"] = new_spec["storageClassName"]
    bound = (old.get("status") or {}).get("phase") == "Bound"
    if bound:
        new_storage = v.quantity(((new_spec.get("resources") or {}).get("requests") or {}).get("storage"))
        old_storage = v.quantity(((old_spec.get("resources") or {}).get("requests") or {}).get("storage"))
        if isinstance(new_storage, Decimal) and isinstance(old_storage, Decimal) and new_storage < old_storage:
            causes.append(v.forbidden("spec.resources.requests.storage", "field can not be less than status."
                                                                         "capacity"))
        old_spec.setdefault("resources", {})["requests"] = (new_spec.get("resources") or {}).get("requests")
        for key in ("volumeAttributesClassName",):
            if key in new_spec:
                old_spec[key] = new_spec[key]
    if old_spec != new_spec:
        causes.append(v.forbidden("spec", "spec is immutable after creation except resources.requests and "
                                          "volumeAttributesClassName for bound claims"))
    return causes


def set_pv_defaults(pv: Obj) -> None:
    spec = pv.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    if not spec.get("persistentVolumeReclaimPolicy"):
        spec["persistentVolumeReclaimPolicy"] = "Retain"
    if not spec.get("volumeMode"):
        spec["volumeMode"] = "Filesystem"
    if isinstance(spec.get("hostPath"), dict):
        spec["hostPath"].setdefault("type", "")


def pv_prepare_create(pv: Obj) -> None:
    pv["status"] = {"phase": "Pending", "lastPhaseTransitionTime": now()}


def validate_pv(pv: Obj) -> list[Cause]:
    spec = _spec(pv)
    causes = _access_modes(spec.get("accessModes"), "spec.accessModes", "")
    capacity = spec.get("capacity")
    if not isinstance(capacity, dict) or not capacity:
        causes += [v.required("spec.capacity"), v.not_supported("spec.capacity", None, ["storage"])]
    else:
        for key, value in capacity.items():
            if key != "storage":
                causes.append(v.not_supported("spec.capacity", key, ["storage"]))
                continue
            number = v.quantity(value)
            if number is None or number <= 0:
                causes.append(v.invalid("spec.capacity[storage]", str(value), "must be greater than zero"))
    policy = spec.get("persistentVolumeReclaimPolicy")
    if policy not in _RECLAIM_POLICIES:
        causes.append(v.not_supported("spec.persistentVolumeReclaimPolicy", policy, _RECLAIM_POLICIES))
    causes += _class_name(spec)
    given = [s for s in PV_SOURCES if spec.get(s) is not None]
    if not given:
        causes.append(v.required("spec", "must specify a volume type"))
    for extra in given[1:]:
        causes.append(v.forbidden(f"spec.{extra}", "may not specify more than 1 volume type"))
    if given:
        source = spec[given[0]]
        if given[0] in ("hostPath", "local") and isinstance(source, dict) and not source.get("path"):
            causes.append(v.required(f"spec.{given[0]}.path"))
        if given[0] == "local" and not spec.get("nodeAffinity"):
            causes.append(v.required("spec.nodeAffinity", "Local volume requires node affinity"))
    causes += _volume_mode(spec)
    return causes


def validate_pv_update(new: Obj, old: Obj) -> list[Cause]:
    causes = validate_pv(new)
    new_spec, old_spec = _spec(new), _spec(old)
    if {s: new_spec.get(s) for s in PV_SOURCES} != {s: old_spec.get(s) for s in PV_SOURCES}:
        causes.append(v.forbidden("spec.persistentvolumesource", "spec.persistentvolumesource is immutable after "
                                                                 "creation"))
    if old_spec.get("volumeMode") != new_spec.get("volumeMode"):
        causes.append(v.invalid("spec.volumeMode", new_spec.get("volumeMode"), "field is immutable"))
    if old_spec.get("nodeAffinity") and old_spec.get("nodeAffinity") != new_spec.get("nodeAffinity"):
        causes.append(v.invalid("nodeAffinity", "", "field is immutable"))
    return causes


def set_storage_class_defaults(sc: Obj) -> None:
    if not sc.get("reclaimPolicy"):
        sc["reclaimPolicy"] = "Delete"
    if not sc.get("volumeBindingMode"):
        sc["volumeBindingMode"] = "Immediate"


def validate_storage_class(sc: Obj) -> list[Cause]:
    causes: list[Cause] = []
    provisioner = sc.get("provisioner")
    if not provisioner:
        causes.append(v.required("provisioner"))
    elif len(provisioner) > 63 or not all(ch.isalnum() or ch in "-._/" for ch in provisioner):
        causes.append(v.invalid("provisioner", provisioner, "must be a valid provisioner name"))
    if sc.get("reclaimPolicy") not in ("Delete", "Retain"):
        causes.append(v.not_supported("reclaimPolicy", sc.get("reclaimPolicy"), ["Delete", "Retain"]))
    if sc.get("volumeBindingMode") not in _BINDING_MODES:
        causes.append(v.not_supported("volumeBindingMode", sc.get("volumeBindingMode"), _BINDING_MODES))
    return causes


def validate_storage_class_update(new: Obj, old: Obj) -> list[Cause]:
    causes = validate_storage_class(new)
    if new.get("provisioner") != old.get("provisioner"):
        causes.append(v.forbidden("provisioner", "updates to provisioner are forbidden."))
    if (new.get("parameters") or {}) != (old.get("parameters") or {}):
        causes.append(v.forbidden("parameters", "updates to parameters are forbidden."))
    if new.get("reclaimPolicy") != old.get("reclaimPolicy"):
        causes.append(v.forbidden("reclaimPolicy", "updates to reclaimPolicy are forbidden."))
    if new.get("volumeBindingMode") != old.get("volumeBindingMode"):
        causes.append(v.invalid("volumeBindingMode", new.get("volumeBindingMode"), "field is immutable"))
    return causes
