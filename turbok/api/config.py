"""Secrets and ConfigMaps as kube-apiserver 1.37 decodes, defaults and validates them.

- Secret ``data`` and ConfigMap ``binaryData`` hold base64: a value that is not
  is a decoding error (400), as Go's ``[]byte`` refuses it. A Secret's
  ``stringData`` is merged into ``data`` (it wins) and is not stored.
- Keys are config keys (``[-._a-zA-Z0-9]+``, not ``.``/``..``); the whole
  payload at most 1 MiB; a Secret's ``type`` (default ``Opaque``) names the
  keys it must have (``kubernetes.io/tls``: ``tls.crt`` and ``tls.key``...).
- ``type`` cannot change; once ``immutable: true``, neither can the data
  nor ``immutable`` itself.

Pure functions; ``turbok.store.strategy`` wires them to the kinds.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from turbok.api import validation as v
from turbok.api.status import BadRequest, Cause

__all__ = ["MAX_SIZE", "decode_configmap", "decode_secret", "validate_configmap", "validate_configmap_update",
           "validate_secret", "validate_secret_update"]

Obj = dict[str, Any]

#: Largest Secret or ConfigMap payload (kube's ``MaxSecretSize``).
MAX_SIZE = 1024 * 1024
_B64 = re.compile(r"[A-Za-z0-9+/]")
_REQUIRED_KEYS = {"kubernetes.io/tls": ("tls.crt", "tls.key"), "kubernetes.io/ssh-auth": ("ssh-privatekey",),
                  "kubernetes.io/dockercfg": (".dockercfg",), "kubernetes.io/dockerconfigjson": (".dockerconfigjson",)}
_JSON_KEYS = {"kubernetes.io/dockercfg": ".dockercfg", "kubernetes.io/dockerconfigjson": ".dockerconfigjson"}


def _bad_base64(kind: str, value: Any) -> BadRequest:
    if not isinstance(value, str):
        return BadRequest(f'{kind} in version "v1" cannot be handled as a {kind}: illegal base64 data: not a string')
    position = next((i for i, ch in enumerate(value) if not (_B64.match(ch) or ch == "=")), len(value))
    return BadRequest(f'{kind} in version "v1" cannot be handled as a {kind}: illegal base64 data at input byte '
                      f"{position}", kind=kind)


def _decoded(kind: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise _bad_base64(kind, value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_base64(kind, value) from None


def decode_secret(secret: Obj) -> None:
    """What decoding does to a Secret: base64 checked, ``stringData`` merged into ``data``."""
    data = secret.get("data")
    if isinstance(data, dict):
        for value in data.values():
            _decoded("Secret", value)
    strings = secret.pop("stringData", None)
    if isinstance(strings, dict) and strings:
        merged = data if isinstance(data, dict) else {}
        for key, value in strings.items():
            merged[key] = base64.b64encode(str(value).encode()).decode()
        secret["data"] = merged
    if not secret.get("type"):
        secret["type"] = "Opaque"


def decode_configmap(cm: Obj) -> None:
    binary = cm.get("binaryData")
    if isinstance(binary, dict):
        for value in binary.values():
            _decoded("ConfigMap", value)


def _keys(values: Any, field: str) -> tuple[list[Cause], int]:
    causes: list[Cause] = []
    size = 0
    for key, value in (values or {}).items() if isinstance(values, dict) else ():
        causes += [Cause(f"{field}[{key}]", c.message, c.reason) for c in v.config_map_key_causes("", str(key))]
        size += len(key) + len(str(value))
    return causes, size


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def validate_secret(secret: Obj) -> list[Cause]:
    data = _map(secret.get("data"))
    causes, _ = _keys(data, "data")
    size = sum([len(_decoded("Secret", value)) for value in data.values()])
    if size > MAX_SIZE:
        causes.append(Cause("data", f"Too long: may not be more than {MAX_SIZE} bytes", "FieldValueTooLong"))
    kind = secret.get("type")
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    if kind == "kubernetes.io/service-account-token":
        if not annotations.get("kubernetes.io/service-account.name"):
            causes.append(v.required("metadata.annotations[kubernetes.io/service-account.name]"))
    elif kind == "kubernetes.io/basic-auth":
        if "username" not in data and "password" not in data:
            causes += [v.required("data[username]"), v.required("data[password]")]
    else:
        for key in _REQUIRED_KEYS.get(str(kind), ()):
            if key not in data:
                causes.append(v.required(f"data[{key}]"))
        json_key = _JSON_KEYS.get(str(kind))
        if json_key and json_key in data:
            try:
                json.loads(_decoded("Secret", data[json_key]))
            except ValueError as e:
                causes.append(v.invalid(f"data[{json_key}]", "<secret contents redacted>", str(e)))
    return causes


def _immutable(new: Obj, old: Obj, fields: tuple[str, ...]) -> list[Cause]:
    if old.get("immutable") is not True:
        return []
    causes = [v.forbidden(f, "field is immutable when `immutable` is set") for f in fields
              if (new.get(f) or {}) != (old.get(f) or {})]
    if new.get("immutable") is not True:
        causes.append(v.forbidden("immutable", "field is immutable when `immutable` is set"))
    return causes


def validate_secret_update(new: Obj, old: Obj) -> list[Cause]:
    causes = validate_secret(new)
    if new.get("type") != old.get("type"):
        causes.append(v.invalid("type", new.get("type"), "field is immutable"))
    return causes + _immutable(new, old, ("data",))


def validate_configmap(cm: Obj) -> list[Cause]:
    causes, size = _keys(cm.get("data"), "data")
    binary_causes, binary_size = _keys(cm.get("binaryData"), "binaryData")
    causes += binary_causes
    binary = _map(cm.get("binaryData"))
    for key in cm.get("data") or {}:
        if key in binary:
            causes.append(v.invalid(f"data[{key}]", key, "duplicate of key present in binaryData"))
    if size + binary_size > MAX_SIZE:
        causes.append(Cause("", f"Too long: may not be more than {MAX_SIZE} bytes", "FieldValueTooLong"))
    return causes


def validate_configmap_update(new: Obj, old: Obj) -> list[Cause]:
    return validate_configmap(new) + _immutable(new, old, ("data", "binaryData"))
