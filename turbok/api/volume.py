"""Pod volumes as kube-apiserver defaults and validates them (``SetDefaults_Volume``, ``ValidateVolumes``).

Pure functions over a pod spec's ``volumes``; ``turbok.api.podtemplate``
calls them for Pods and for the pod templates of Sandboxes.
"""

from __future__ import annotations

from typing import Any

from turbok.api import validation as v
from turbok.api.status import Cause

__all__ = ["SOURCES", "set_volume_defaults", "validate_volumes"]

Obj = dict[str, Any]

#: Every volume source of a v1 Volume, in the order kube-apiserver checks them.
SOURCES = ("hostPath", "emptyDir", "gitRepo", "gcePersistentDisk", "awsElasticBlockStore", "secret", "nfs", "iscsi",
           "glusterfs", "flocker", "persistentVolumeClaim", "rbd", "quobyte", "cinder", "cephfs", "downwardAPI", "fc",
           "flexVolume", "configMap", "azureFile", "vsphereVolume", "photonPersistentDisk", "portworxVolume",
           "azureDisk", "storageos", "projected", "scaleIO", "csi", "ephemeral", "image")
_DEFAULT_MODE = 0o644
_MAX_MODE = 0o777
_HOST_PATH_TYPES = ("", "BlockDevice", "CharDevice", "Directory", "DirectoryOrCreate", "File", "FileOrCreate",
                    "Socket")


def set_volume_defaults(volume: Obj) -> None:
    if not any(s in volume for s in SOURCES):
        volume["emptyDir"] = {}
    for key in ("secret", "configMap", "downwardAPI", "projected"):
        source = volume.get(key)
        if isinstance(source, dict):
            source.setdefault("defaultMode", _DEFAULT_MODE)
    downward = volume.get("downwardAPI")
    if isinstance(downward, dict):
        _field_ref_defaults(downward.get("items"))
    host = volume.get("hostPath")
    if isinstance(host, dict):
        host.setdefault("type", "")
    projected = volume.get("projected")
    for source in (projected.get("sources") or []) if isinstance(projected, dict) else []:
        if not isinstance(source, dict):
            continue
        if isinstance(source.get("downwardAPI"), dict):
            _field_ref_defaults(source["downwardAPI"].get("items"))
        if isinstance(source.get("serviceAccountToken"), dict):
            source["serviceAccountToken"].setdefault("expirationSeconds", 3600)


def _field_ref_defaults(items: Any) -> None:
    for item in items if isinstance(items, list) else []:
        ref = item.get("fieldRef") if isinstance(item, dict) else None
        if isinstance(ref, dict):
            ref.setdefault("apiVersion", "v1")


def validate_volumes(volumes: Any, path: str, causes: list[Cause]) -> set[str]:
    """Append the causes for ``volumes``; return the names of the valid ones (mounts may name only those)."""
    valid: set[str] = set()
    for i, volume in enumerate(volumes if isinstance(volumes, list) else []):
        if not isinstance(volume, dict):
            continue
        where = f"{path}[{i}]"
        found = _source(volume, where)
        name = volume.get("name")
        if not isinstance(name, str) or not name:
            found.append(v.required(f"{where}.name"))
        else:
            found += v.dns1123_label_causes(f"{where}.name", name)
        if name in valid:
            found.append(v.duplicate(f"{where}.name", name))
        if found:
            causes.extend(found)
        elif isinstance(name, str):
            valid.add(name)
    return valid


def _source(volume: Obj, path: str) -> list[Cause]:
    causes: list[Cause] = []
    given = [s for s in SOURCES if volume.get(s) is not None]
    for extra in given[1:]:
        causes.append(v.forbidden(f"{path}.{extra}", "may not specify more than 1 volume type"))
    if not given:
        return []  # defaulted to an emptyDir (``set_volume_defaults``)
    kind = given[0]
    source = volume[kind]
    if not isinstance(source, dict):
        return causes
    where = f"{path}.{kind}"
    if kind == "emptyDir":
        size = source.get("sizeLimit")
        if size is not None and (v.quantity(size) is None or v.quantity(size) < 0):
            causes.append(v.forbidden(f"{where}.sizeLimit", "SizeLimit field must be a valid resource quantity"))
    elif kind == "secret":
        if not source.get("secretName"):
            causes.append(v.required(f"{where}.secretName"))
        causes += _mode(source.get("defaultMode"), f"{where}.defaultMode")
        causes += _key_paths(source.get("items"), f"{where}.items")
    elif kind == "configMap":
        if not source.get("name"):
            causes.append(v.required(f"{where}.name"))
        causes += _mode(source.get("defaultMode"), f"{where}.defaultMode")
        causes += _key_paths(source.get("items"), f"{where}.items")
    elif kind == "persistentVolumeClaim":
        if not source.get("claimName"):
            causes.append(v.required(f"{where}.claimName"))
    elif kind == "hostPath":
        if not source.get("path"):
            causes.append(v.required(f"{where}.path"))
        kind_ = source.get("type", "")
        if kind_ not in _HOST_PATH_TYPES:
            causes.append(v.not_supported(f"{where}.type", kind_, _HOST_PATH_TYPES))
    elif kind == "downwardAPI":
        causes += _mode(source.get("defaultMode"), f"{where}.defaultMode")
        causes += _downward_items(source.get("items"), f"{where}.items")
    elif kind == "projected":
        causes += _mode(source.get("defaultMode"), f"{where}.defaultMode")
        causes += _projections(source.get("sources"), f"{where}.sources")
    return causes


def _mode(mode: Any, path: str) -> list[Cause]:
    if mode is None:
        return []
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= _MAX_MODE:
        return [v.invalid(path, mode, "must be a number between 0 and 0777 (octal), both inclusive")]
    return []


def _relative_path(value: Any, path: str) -> list[Cause]:
    if not isinstance(value, str) or not value:
        return [v.required(path)]
    causes = []
    if value.startswith("/"):
        causes.append(v.invalid(path, value, "must be a relative path"))
    if ".." in value.split("/"):
        causes.append(v.invalid(path, value, "must not contain '..'"))
    elif value.startswith(".."):
        causes.append(v.invalid(path, value, "must not start with '..'"))
    return causes


def _key_paths(items: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        where = f"{path}[{i}]"
        key = item.get("key")
        if not key:
            causes.append(v.required(f"{where}.key"))
        causes += _relative_path(item.get("path"), f"{where}.path")
        causes += _mode(item.get("mode"), f"{where}.mode")
    return causes


def _downward_items(items: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        where = f"{path}[{i}]"
        causes += _relative_path(item.get("path"), f"{where}.path")
        causes += _mode(item.get("mode"), f"{where}.mode")
        has_field, has_resource = item.get("fieldRef") is not None, item.get("resourceFieldRef") is not None
        if has_field and has_resource:
            causes.append(v.invalid(where, "resource", "fieldRef and resourceFieldRef can not be specified "
                                                       "simultaneously"))
        elif not has_field and not has_resource:
            causes.append(v.required(where, "one of fieldRef and resourceFieldRef is required"))
    return causes


def _projections(sources: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    kinds = ("secret", "configMap", "downwardAPI", "serviceAccountToken", "clusterTrustBundle", "podCertificate")
    for i, source in enumerate(sources if isinstance(sources, list) else []):
        if not isinstance(source, dict):
            continue
        where = f"{path}[{i}]"
        given = [k for k in kinds if source.get(k) is not None]
        if len(given) > 1:
            causes.append(v.forbidden(where, "may not specify more than 1 volume type per source"))
        for kind in given:
            item = source[kind]
            if not isinstance(item, dict):
                continue
            if kind in ("secret", "configMap"):
                if not item.get("name"):
                    causes.append(v.required(f"{where}.{kind}.name"))
                causes += _key_paths(item.get("items"), f"{where}.{kind}.items")
            elif kind == "downwardAPI":
                causes += _downward_items(item.get("items"), f"{where}.downwardAPI.items")
            elif kind == "serviceAccountToken":
                seconds = item.get("expirationSeconds")
                if isinstance(seconds, int) and seconds < 600:
                    causes.append(v.invalid(f"{where}.serviceAccountToken.expirationSeconds", seconds,
                                            "may not specify a duration less than 10 minutes"))
                causes += _relative_path(item.get("path"), f"{where}.serviceAccountToken.path")
    return causes
