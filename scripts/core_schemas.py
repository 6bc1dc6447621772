#!/usr/bin/env python3
"""Regenerate turbok/api/schemas/core.json: built-in kinds' schemas as a real kube-apiserver serves them.

turbok serves core/v1 Pods, Services, Secrets... with the OpenAPI v3 schemas
of kube-apiserver 1.37 (the newest of ../shared/kube), made structural the way
turbok's validator reads CRD schemas:

- every ``$ref`` inlined (no built-in kind is recursive);
- ObjectMeta as ``{"type": "object"}`` (``turbok.api.meta`` owns metadata);
- Quantity and IntOrString as CRDs write them, RawExtension as any object (``x-kubernetes-int-or-string``,
  Quantity with kube's pattern), Time and MicroTime as date-time strings;
- Go zero-value defaults (``""``, ``{}``, ``0`` on non-required fields) dropped: kube applies them
  in Go code, and a default in a schema would be written into every object.

Run it (as root; it starts etcd and kube-apiserver on loopback ports) when moving
to a new Kubernetes minor:

    .venv/bin/python scripts/core_schemas.py [--assets DIR] [--from-dumps DIR]

``--from-dumps`` reads saved ``/openapi/v3`` documents (``api__v1.json``,
``apis__discovery.k8s.io__v1.json``...) instead of starting a server.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "turbok" / "api" / "schemas" / "core.json"
VERSION = "1.37.2"

#: group-version path -> the kinds taken from it.
KINDS: dict[str, list[str]] = {
    "api/v1": ["Pod", "Binding", "Service", "Endpoints", "PersistentVolumeClaim", "PersistentVolume", "Secret",
               "ConfigMap", "ServiceAccount", "Node", "LimitRange", "ResourceQuota",
               "Eviction"],  # policy/v1, described in api/v1's document (it is a Pod subresource)
    "apis/discovery.k8s.io/v1": ["EndpointSlice"],
    "apis/coordination.k8s.io/v1": ["Lease"],
    "apis/storage.k8s.io/v1": ["StorageClass"],
    "apis/networking.k8s.io/v1": ["NetworkPolicy"],
    "apis/resource.k8s.io/v1": ["DeviceClass", "ResourceClaim", "ResourceClaimTemplate", "ResourceSlice"],
}
#: Kind -> the list path whose server-side Table gives the kind's printer columns.
TABLES: dict[str, str] = {
    "Pod": "api/v1/pods", "Service": "api/v1/services", "Endpoints": "api/v1/endpoints",
    "PersistentVolumeClaim": "api/v1/persistentvolumeclaims", "PersistentVolume": "api/v1/persistentvolumes",
    "Secret": "api/v1/secrets", "ConfigMap": "api/v1/configmaps", "ServiceAccount": "api/v1/serviceaccounts",
    "Node": "api/v1/nodes", "LimitRange": "api/v1/limitranges", "ResourceQuota": "api/v1/resourcequotas",
    "Event": "api/v1/events", "Namespace": "api/v1/namespaces",
    "EndpointSlice": "apis/discovery.k8s.io/v1/endpointslices", "Lease": "apis/coordination.k8s.io/v1/leases",
    "StorageClass": "apis/storage.k8s.io/v1/storageclasses",
    "NetworkPolicy": "apis/networking.k8s.io/v1/networkpolicies",
    "DeviceClass": "apis/resource.k8s.io/v1/deviceclasses", "ResourceClaim": "apis/resource.k8s.io/v1/resourceclaims",
    "ResourceClaimTemplate": "apis/resource.k8s.io/v1/resourceclaimtemplates",
    "ResourceSlice": "apis/resource.k8s.io/v1/resourceslices",
}
_TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                     r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
_SPECIAL: dict[str, dict[str, Any]] = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {"type": "object"},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {
        "anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": _QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": True},
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {
        "anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": {"type": "string", "format": "date-time"},
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime": {"type": "string", "format": "date-time"},
    # Any JSON object (a DRA driver's opaque parameters): kept as sent, as a CRD's embedded resource.
    "io.k8s.apimachinery.pkg.runtime.RawExtension": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, ctx: ssl.SSLContext | None, token: str | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get(url, ctx, token)
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer in {timeout:.0f} s")


def _get(url: str, ctx: ssl.SSLContext | None, token: str | None, accept: str = "application/json") -> bytes:
    headers = {"Accept": accept, **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        data: bytes = r.read()
        return data


def fetch_from_server(assets: Path) -> dict[str, dict[str, Any]]:
    """Start etcd and kube-apiserver on loopback, read the OpenAPI v3 documents and the printer columns
    (``"tables"``: the column definitions of an empty server-side Table of each kind), stop them."""
    bin_dir = assets / VERSION
    work = Path(tempfile.mkdtemp(prefix="core-schemas-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        token = secrets.token_hex(16)
        tokens = work / "tokens.csv"
        tokens.write_text(f"{token},admin,admin-uid,system:masters\n")
        tokens.chmod(0o600)
        subprocess.run(["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
                       check=True, capture_output=True)
        ep, pp, api = _free_port(), _free_port(), _free_port()
        log = open(work / "log", "wb")  # noqa: SIM115 - closed with the processes
        procs.append(subprocess.Popen(
            [str(bin_dir / "etcd"), "--data-dir", str(work / "etcd"), "--unsafe-no-fsync",
             "--listen-client-urls", f"http://127.0.0.1:{ep}", "--advertise-client-urls", f"http://127.0.0.1:{ep}",
             "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
             "--initial-cluster", f"default=http://127.0.0.1:{pp}"], stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            [str(bin_dir / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{ep}",
             "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none",
             "--secure-port", str(api), "--cert-dir", str(work / "certs"), "--token-auth-file", str(tokens),
             "--authorization-mode", "RBAC", "--service-account-issuer", "https://kubernetes.default.svc",
             "--service-account-key-file", str(work / "sa.pub"),
             "--service-account-signing-key-file", str(work / "sa.key"),
             "--service-cluster-ip-range", "127.96.0.0/16"], stdout=log, stderr=log))
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        base = f"https://127.0.0.1:{api}"
        _wait(f"{base}/readyz", ctx, token)
        documents = {gv: json.loads(_get(f"{base}/openapi/v3/{gv}", ctx, token)) for gv in KINDS}
        documents["tables"] = {kind: json.loads(_get(f"{base}/{path}", ctx, token, _TABLE))["columnDefinitions"]
                               for kind, path in TABLES.items()}
        return documents
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def _structural(schema: Any, defs: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(schema, list):
        return [_structural(s, defs, seen) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "allOf" in schema and len(schema["allOf"]) == 1 and "$ref" in schema["allOf"][0]:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        target = _resolve(schema["allOf"][0]["$ref"], defs, seen)
        return {**target, **{k: _structural(v, defs, seen) for k, v in merged.items() if k != "default"},
                **({"default": merged["default"]} if _keep_default(merged.get("default")) else {})}
    if "$ref" in schema:
        return _resolve(schema["$ref"], defs, seen)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "default" and not _keep_default(value):
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs, seen) for name, v in value.items()}
        else:
            out[key] = _structural(value, defs, seen)
    return out


def _keep_default(value: Any) -> bool:
    return value not in ("", {}, [], 0, False, None)


def _resolve(ref: str, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    name = ref.rsplit("/", 1)[-1]
    if name in _SPECIAL:
        return dict(_SPECIAL[name])
    if name in seen:
        raise SystemExit(f"{name} is recursive: turbok's schemas cannot inline it")
    return _structural(defs[name], defs, (*seen, name))


def build(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for gv, kinds in KINDS.items():
        defs = documents[gv]["components"]["schemas"]
        for kind in kinds:
            candidates = [n for n in defs if n.endswith(f".{kind}")]
            name = next((n for n in candidates if any(g.get("kind") == kind for g in
                                                      defs[n].get("x-kubernetes-group-version-kind", []))),
                        candidates[0] if len(candidates) == 1 else None)
            if name is None:
                raise SystemExit(f"{kind} not found in /openapi/v3/{gv}")
            schema = _structural(defs[name], defs, (name,))
            schema.pop("x-kubernetes-group-version-kind", None)
            out[kind] = schema
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, help="unpacked ../shared/kube (default: run its unpack.sh)")
    parser.add_argument("--from-dumps", type=Path, help="a folder of saved /openapi/v3 documents")
    args = parser.parse_args()
    if args.from_dumps:
        documents = {gv: json.loads((args.from_dumps / (gv.replace("/", "__") + ".json")).read_text()) for gv in KINDS}
        tables = args.from_dumps / "tables.json"
        if tables.exists():
            documents["tables"] = json.loads(tables.read_text())
    else:
        assets = args.assets
        if assets is None:
            unpack = REPO.parent / "shared" / "kube" / "unpack.sh"
            assets = Path(subprocess.run([str(unpack)], check=True, capture_output=True, text=True).stdout.strip())
        documents = fetch_from_server(assets)
    schemas = build(documents)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": f"kube-apiserver v{VERSION} /openapi/v3, made structural by "
                                         "scripts/core_schemas.py; tables: the columnDefinitions of its "
                                         "server-side Tables", "kinds": schemas,
                               "tables": documents.get("tables", {})}, sort_keys=True) + "\n")
    os.replace(tmp, OUT)
    print(f"wrote {OUT.relative_to(REPO)}: {', '.join(schemas)} ({OUT.stat().st_size // 1024} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
