"""A claim's spec is immutable, but for what the PV controller writes: volumeName once, a nil class set."""

from __future__ import annotations

import copy
from typing import Any

from turbok.api.storage import validate_pvc_update

Obj = dict[str, Any]


def claim(**spec: Any) -> Obj:
    return {"metadata": {"name": "c", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, **spec}}


def test_the_default_class_may_be_set_on_a_claim_without_one() -> None:
    old = claim()
    new = copy.deepcopy(old)
    new["spec"]["storageClassName"] = "standard"
    assert validate_pvc_update(new, old) == []
    # ...but not changed once set, nor set against the beta annotation.
    changed = claim(storageClassName="other")
    assert validate_pvc_update(changed, claim(storageClassName="standard"))
    annotated = claim()
    annotated["metadata"]["annotations"] = {"volume.beta.kubernetes.io/storage-class": "gold"}
    new = copy.deepcopy(annotated)
    new["spec"]["storageClassName"] = "standard"
    assert validate_pvc_update(new, annotated)


def test_volume_name_is_set_once() -> None:
    old = claim(storageClassName="standard")
    new = copy.deepcopy(old)
    new["spec"]["volumeName"] = "pv-1"
    assert validate_pvc_update(new, old) == []
    again = copy.deepcopy(new)
    again["spec"]["volumeName"] = "pv-2"
    assert validate_pvc_update(again, new)
