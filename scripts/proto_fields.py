#!/usr/bin/env python3
"""Regenerate turbok/api/schemas/proto_fields.json: how to read the protobuf bodies kubectl sends.

kubectl's typed clients send built-in objects as ``application/vnd.kubernetes.protobuf``.
turbok decodes them generically (``turbok.apiserver.protobuf``) from a table of every
message of the API groups it serves, derived from upstream's own sources:

- ``generated.proto`` (go-to-protobuf's output) gives each message's fields: number,
  type (a scalar or another message), ``repeated`` or ``map<K, V>``;
- ``types.go`` gives what the proto cannot: the JSON name, whether the Go field is
  inlined in JSON (``json:""``: ``Volume.volumeSource``, ``Probe.handler``), and whether a
  zero value on the wire means something (a pointer, or a field JSON never omits) or
  nothing (a plain Go field with ``omitempty``, which gogo-protobuf always writes).

Sources: kubernetes/api (core/v1, discovery/v1, coordination/v1, storage/v1, policy/v1, networking/v1)
and kubernetes/apimachinery (meta/v1; resource, intstr and runtime are read by hand in
``protobuf.py``). Run it with two checkouts, or bare mirrors and a revision:

    .venv/bin/python scripts/proto_fields.py --api DIR --apimachinery DIR [--rev REV]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "turbok" / "api" / "schemas" / "proto_fields.json"

#: (repository, folder, proto package) of every package read.
PACKAGES = [
    ("api", "core/v1", "k8s.io.api.core.v1"),
    ("api", "discovery/v1", "k8s.io.api.discovery.v1"),
    ("api", "coordination/v1", "k8s.io.api.coordination.v1"),
    ("api", "storage/v1", "k8s.io.api.storage.v1"),
    ("api", "policy/v1", "k8s.io.api.policy.v1"),
    ("api", "networking/v1", "k8s.io.api.networking.v1"),
    ("apimachinery", "pkg/apis/meta/v1", "k8s.io.apimachinery.pkg.apis.meta.v1"),
]
#: Messages protobuf.py reads by hand: only their names are needed.
SPECIAL = ("k8s.io.apimachinery.pkg.api.resource.Quantity", "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
           "k8s.io.apimachinery.pkg.runtime.RawExtension", "k8s.io.apimachinery.pkg.runtime.Unknown",
           "k8s.io.apimachinery.pkg.apis.meta.v1.Time", "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime",
           "k8s.io.apimachinery.pkg.apis.meta.v1.Duration", "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1")

_FIELD = re.compile(r"^\s*(?:(optional|repeated|required)\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")
_MAP = re.compile(r"^\s*map<\s*([\w.]+)\s*,\s*([\w.]+)\s*>\s+(\w+)\s*=\s*(\d+)\s*;")
_GO_FIELD = re.compile(r"^\s*(?:(\w+)\s+)?([*\[\]\w.]+(?:\[[\w.]+\][*\w.\[\]]+)?)\s+`([^`]*)`")
_SCALARS = {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "double", "float", "sint32", "sint64",
            "fixed32", "fixed64"}


def _read(root: Path, rev: str | None, path: str) -> str:
    if rev is None:
        return (root / path).read_text()
    return subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def parse_proto(text: str, package: str) -> dict[str, list[dict[str, Any]]]:
    """Messages of one generated.proto: name -> fields (number, proto name, type, repeated/map)."""
    messages: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for line in text.splitlines():
        code = line.split("//", 1)[0]
        m = re.match(r"^message\s+(\w+)\s*\{", code)
        if m:
            current = messages.setdefault(f"{package}.{m.group(1)}", [])
            continue
        if code.strip() == "}":
            current = None
            continue
        if current is None:
            continue
        if mm := _MAP.match(code):
            current.append({"number": int(mm.group(4)), "name": mm.group(3), "map": [_qualify(mm.group(1), package),
                                                                                 _qualify(mm.group(2), package)]})
        elif fm := _FIELD.match(code):
            current.append({"number": int(fm.group(4)), "name": fm.group(3), "type": _qualify(fm.group(2), package),
                            "repeated": fm.group(1) == "repeated"})
    return messages


def _qualify(type_: str, package: str) -> str:
    if type_ in _SCALARS:
        return type_
    if type_.startswith("."):
        return type_[1:]
    return type_ if "." in type_ else f"{package}.{type_}"


def parse_go(text: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Struct fields of a types.go with a protobuf tag: struct -> number -> (json name, inline, keep zero)."""
    structs: dict[str, dict[int, dict[str, Any]]] = {}
    current: dict[int, dict[str, Any]] | None = None
    for line in text.splitlines():
        m = re.match(r"^type\s+(\w+)\s+struct\s*\{", line)
        if m:
            current = structs.setdefault(m.group(1), {})
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is None or line.strip().startswith("//"):
            continue
        fm = _GO_FIELD.match(line)
        if not fm:
            continue
        go_type, tags = fm.group(2), fm.group(3)
        proto = re.search(r'protobuf:"([^"]*)"', tags)
        if not proto:
            continue
        parts = proto.group(1).split(",")
        if len(parts) < 2 or not parts[1].isdigit():
            continue  # protobuf:"-": not on the wire
        json_tag = re.search(r'json:"([^"]*)"', tags)
        json_parts = (json_tag.group(1) if json_tag else "").split(",")
        inline = json_parts[0] == "" and fm.group(1) is None
        omitempty = "omitempty" in json_parts[1:] or "omitzero" in json_parts[1:]
        pointer = go_type.startswith("*")
        current[int(parts[1])] = {"json": json_parts[0], "inline": inline, "keep_zero": pointer or not omitempty}
    return structs


def build(sources: dict[str, tuple[Path, str | None]]) -> dict[str, Any]:
    messages: dict[str, list[list[Any]]] = {}
    for repo, folder, package in PACKAGES:
        root, rev = sources[repo]
        protos = parse_proto(_read(root, rev, f"{folder}/generated.proto"), package)
        go: dict[str, dict[int, dict[str, Any]]] = {}
        listing = (os.listdir(root / folder) if rev is None else subprocess.run(
            ["git", "-C", str(root), "ls-tree", "--name-only", f"{rev}:{folder}"], check=True, capture_output=True,
            text=True).stdout.split())
        for name in sorted(listing):
            if name.endswith(".go") and not name.endswith("_test.go") and not name.startswith(("zz_", "generated")):
                go.update(parse_go(_read(root, rev, f"{folder}/{name}")))
        for full, fields in protos.items():
            if full in SPECIAL:
                continue
            struct = go.get(full.rsplit(".", 1)[1], {})
            rows = []
            for f in sorted(fields, key=lambda f: f["number"]):
                info = struct.get(f["number"], {"json": f["name"], "inline": False, "keep_zero": False})
                flags = ("i" if info["inline"] else "") + ("z" if info["keep_zero"] else "")
                if "map" in f:
                    rows.append([f["number"], info["json"] or f["name"], "map", f["map"][0], f["map"][1], flags])
                else:
                    rows.append([f["number"], info["json"] or f["name"], f["type"], "r" if f["repeated"] else "",
                                 flags])
            messages[full] = rows
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", type=Path, required=True, help="kubernetes/api (checkout or bare repository)")
    parser.add_argument("--apimachinery", type=Path, required=True, help="kubernetes/apimachinery")
    parser.add_argument("--rev", help="read this revision of bare repositories instead of checkouts")
    args = parser.parse_args()
    sources = {"api": (args.api, args.rev), "apimachinery": (args.apimachinery, args.rev)}
    revs = {}
    for repo, (root, rev) in sources.items():
        revs[repo] = subprocess.run(["git", "-C", str(root), "rev-parse", rev or "HEAD"], check=True,
                                    capture_output=True, text=True).stdout.strip()
    table = {"source": f"kubernetes/api@{revs['api']} and kubernetes/apimachinery@{revs['apimachinery']}: "
                       "generated.proto (field numbers, types) and types.go (JSON names, inlining, pointers), "
                       "by scripts/proto_fields.py. Rows: [number, jsonName, type, 'r' (repeated) or '', flags] "
                       "or [number, jsonName, 'map', keyType, valueType, flags]; flags 'i' inline in JSON, "
                       "'z' a zero value is kept (a Go pointer, or a field JSON never omits).",
             "messages": build(sources)}
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, separators=(",", ":"), sort_keys=True) + "\n")
    os.replace(tmp, OUT)
    print(f"wrote {OUT.relative_to(REPO)}: {len(table['messages'])} messages ({OUT.stat().st_size // 1024} KiB)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
