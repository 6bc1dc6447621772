"""What the differential tests share: the cases, and what of an answer two API servers must agree on.

tests/compat/test_differential.py sends the cases of tests/data/differential/*.yaml to a real
kube-apiserver and to turbok; tests/unit/apiserver/test_core_recorded.py replays them against turbok
alone and compares with kube-apiserver's answers recorded in ``RECORDED``.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml

from tests.kube_cluster import SERVICE_RANGE
from turbok.api.kinds import default_registry

DATA = Path(__file__).resolve().parent / "data" / "differential"
#: kube-apiserver's answers to the cases, for replaying them without it: written by the differential
#: tests when TURBOK_RECORD_DIFFERENTIAL=1.
RECORDED = DATA / "recorded.json"
NAMESPACE = "diff"
CLUSTER_SCOPED = {"PersistentVolume", "Node", "StorageClass", "DeviceClass", "ResourceSlice"}
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def cases(*, tables: bool) -> list[dict[str, Any]]:
    out = []
    for path in sorted(DATA.glob("*.yaml")):
        if (path.name == "tables.yaml") == tables:
            out += yaml.safe_load(path.read_text())
    return out


CASES = cases(tables=False)
TABLE_CASES = cases(tables=True)


def path_of(body: dict[str, Any]) -> str:
    kind, api_version = body["kind"], body["apiVersion"]
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    plural = default_registry().by_kind(api_version, kind).plural
    return f"{root}/{plural}" if kind in CLUSTER_SCOPED else f"{root}/namespaces/{NAMESPACE}/{plural}"


def answer(status: int, body: dict[str, Any], loose: bool = False) -> list[Any]:
    """Code, reason and causes; ``loose`` leaves out the causes' messages (where they quote a Go library)."""
    if status < 300:
        return [status]
    causes = [[c.get("field"), c.get("reason"), "" if loose else (c.get("message") or "").split("\n")[0]]
              for c in (body.get("details") or {}).get("causes") or []]
    return [status, body.get("reason"), causes]


def normal(obj: dict[str, Any]) -> dict[str, Any]:
    """What both servers must store alike: no server-owned metadata, no cluster-only additions."""
    out = copy.deepcopy(obj)
    md = out.get("metadata") or {}
    out["metadata"] = {k: md[k] for k in ("name", "namespace", "labels", "annotations", "finalizers", "generation")
                       if k in md}
    spec = out.get("spec")
    if out.get("kind") == "Pod" and isinstance(spec, dict):
        token = [v["name"] for v in spec.get("volumes") or [] if v["name"].startswith("kube-api-access-")]
        spec["volumes"] = [v for v in spec.get("volumes") or [] if v["name"] not in token]
        if not spec["volumes"]:
            del spec["volumes"]
        for key in ("containers", "initContainers"):
            for c in spec.get(key) or []:
                c["volumeMounts"] = [m for m in c.get("volumeMounts") or [] if m["name"] not in token]
                if not c["volumeMounts"]:
                    del c["volumeMounts"]
    if out.get("kind") == "Node":
        # kube's admission taints a new Node not-ready and its node lifecycle controller lifts it; turbok has
        # no such controller, so it adds none. A Node's status is the node's to write (kube serializes Go zero
        # values into it).
        out.pop("status", None)
        if isinstance(spec, dict):
            spec["taints"] = [t for t in spec.get("taints") or [] if t.get("key") != "node.kubernetes.io/not-ready"]
            if not spec["taints"]:
                del spec["taints"]
            if not spec:
                out.pop("spec")
    if out.get("kind") == "PersistentVolume":
        out["status"].pop("lastPhaseTransitionTime", None)
    # kube's StorageObjectInUseProtection admission adds these and kube-controller-manager's protection
    # controllers take them off; turbok has neither (docs/api.md).
    protection = ("kubernetes.io/pvc-protection", "kubernetes.io/pv-protection")
    if out["metadata"].get("finalizers"):
        out["metadata"]["finalizers"] = [f for f in out["metadata"]["finalizers"] if f not in protection]
        if not out["metadata"]["finalizers"]:
            del out["metadata"]["finalizers"]
    if out.get("kind") == "Service" and isinstance(spec, dict):
        network = ipaddress.ip_network(SERVICE_RANGE)
        for key in ("clusterIP", "clusterIPs"):
            values = spec.get(key)
            for ip in values if isinstance(values, list) else [values]:
                if ip and ip != "None":
                    assert ipaddress.ip_address(ip) in network, f"{ip} is outside {SERVICE_RANGE}"
            if values and values != "None" and values != ["None"]:
                spec[key] = "<allocated>"
        for port in spec.get("ports") or []:
            if "nodePort" in port:
                port["nodePort"] = "<allocated>"
    return out


def cells(table: dict[str, Any]) -> list[Any]:
    """A row's cells with what differs by the moment or the draw left out: ages, ClusterIPs, node ports."""
    names = [c["name"] for c in table["columnDefinitions"]]
    row = dict(zip(names, table["rows"][0]["cells"], strict=True))
    for name in ("Age", "Last Seen", "First Seen"):
        row.pop(name, None)
    if row.get("Cluster-IP") not in (None, "None", "<none>"):
        row["Cluster-IP"] = "<allocated>"
    if isinstance(row.get("Restarts"), str):
        row["Restarts"] = re.sub(r"\(.* ago\)", "(ago)", row["Restarts"])
    return [row, table["rows"][0].get("conditions")]
