"""Reading Kubernetes objects out of manifest files: plain YAML, JSON, Helm output, Lists.

Accepts files, directories (searched recursively for ``*.yaml``, ``*.yml``,
``*.json``) and ``-`` for stdin. Understands:

* multi-document YAML (``---``), empty documents, comments;
* ``helm template`` output, whose ``# Source: chart/templates/x.yaml`` comments
  name the template each object came from, and the ``helm install --dry-run``
  report (``NAME:`` ... ``MANIFEST:`` ... ``NOTES:``);
* ``kind: List`` and typed lists (``RoleBindingList``), whose items are
  checked one by one (items of typed lists inherit the list's apiVersion).

A document that is valid YAML but no Kubernetes object (a Helm ``values.yaml``,
a ``Chart.yaml``) is skipped and counted; a document that cannot be parsed, or
claims to be an object but is not one, raises ``ManifestError`` naming the file
and line. Called by the checker; pure apart from reading the given paths.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from turbok.upgrade.errors import ManifestError

__all__ = ["ManifestObject", "ReadResult", "objects_from_text", "read_manifests"]

_SUFFIXES = {".yaml", ".yml", ".json"}
_DOC_SEPARATOR = re.compile(r"^---(\s.*)?$")
_SOURCE_COMMENT = re.compile(r"^#\s*Source:\s*(\S.*?)\s*$")
_HELM_SECTION = re.compile(r"^(NAME|LAST DEPLOYED|NAMESPACE|STATUS|REVISION|TEST SUITE|CHART|VERSION|APP VERSION|USER-SUPPLIED VALUES|COMPUTED VALUES|HOOKS|MANIFEST|NOTES):")


@dataclass(frozen=True)
class ManifestObject:
    """One object found in a manifest (or in a live cluster, with ``path`` like ``cluster:``).

    ``line`` is the 1-based line its document starts on; ``item`` the index in
    a List, or None; ``template`` the Helm ``# Source:`` it came from.
    """

    api_version: str
    kind: str
    name: str
    namespace: str
    path: str
    line: int = 0
    item: int | None = None
    template: str = ""
    origin: str = ""  # for live objects: "last-applied", "managedFields (manager)", "helm release"
    body: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # the document, for rehearsals

    def where(self) -> str:
        loc = f"{self.path}:{self.line}" if self.line else self.path
        if self.item is not None:
            loc += f" items[{self.item}]"
        if self.template:
            loc += f" ({self.template})"
        if self.origin:
            loc += f" [{self.origin}]"
        return loc

    def ref(self) -> str:
        """``kind/name`` with ``-n namespace`` when namespaced."""
        ref = f"{self.kind}/{self.name or '<unnamed>'}"
        return f"{ref} -n {self.namespace}" if self.namespace else ref


@dataclass
class ReadResult:
    """Objects found, plus how many files were read and documents skipped as non-objects."""

    objects: list[ManifestObject] = field(default_factory=list)
    files: int = 0
    skipped: int = 0


def read_manifests(paths: Iterable[str]) -> ReadResult:
    """Read every object under ``paths``; raises ``ManifestError`` on the first bad one."""
    result = ReadResult()
    for raw in paths:
        for path, text in _sources(raw):
            result.files += 1
            objs, skipped = objects_from_text(text, path)
            result.objects.extend(objs)
            result.skipped += skipped
    return result


def _sources(raw: str) -> Iterator[tuple[str, str]]:
    if raw == "-":
        yield "<stdin>", sys.stdin.read()
        return
    p = Path(raw)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIXES)
        if not files:
            raise ManifestError("no *.yaml, *.yml or *.json files in this directory", path=raw)
        for f in files:
            yield str(f), _read(f)
    elif p.is_file():
        yield raw, _read(p)
    else:
        raise ManifestError("no such file or directory", path=raw)


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError("not a text file (not UTF-8)", path=str(p)) from e
    except OSError as e:
        raise ManifestError(f"cannot read: {e.strerror}", path=str(p)) from e


def objects_from_text(text: str, path: str) -> tuple[list[ManifestObject], int]:
    """Objects in one file's text, and the number of non-object documents skipped."""
    out: list[ManifestObject] = []
    skipped = 0
    for start, chunk in _documents(_strip_helm_report(text)):
        template = ""
        for text_line in chunk.splitlines():
            m = _SOURCE_COMMENT.match(text_line)
            if m:
                template = m.group(1)
        if not chunk.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in chunk.splitlines()):
            continue
        try:
            doc = yaml.safe_load(chunk)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = start + (mark.line if mark is not None else 0)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            hint = (" (this looks like an unrendered Helm template: run `helm template` and check its output)"
                    if "{{" in chunk else "")
            raise ManifestError(f"invalid YAML: {problem}{hint}", path=path, line=at) from e
        found = list(_objects(doc, path, start, template))
        if found:
            out.extend(found)
        elif doc is not None:
            skipped += 1
    return out, skipped


def _strip_helm_report(text: str) -> str:
    """Keep only the manifests of a ``helm install/upgrade --dry-run`` report; other text unchanged."""
    if not text.startswith("NAME:"):
        return text
    kept: list[str] = []
    keep = False
    for line in text.splitlines():
        m = _HELM_SECTION.match(line)
        if m:
            keep = m.group(1) in ("HOOKS", "MANIFEST")
            kept.append("")  # keep line numbers aligned with the file
            continue
        kept.append(line if keep else "")
    return "\n".join(kept)


def _documents(text: str) -> Iterator[tuple[int, str]]:
    """Split on ``---`` lines, yielding (1-based start line, text) per document."""
    start, lines = 1, list[str]()
    for n, line in enumerate(text.splitlines(), start=1):
        m = _DOC_SEPARATOR.match(line)
        if m or line.rstrip() == "...":
            yield start, "\n".join(lines)
            rest = (m.group(1) or "").strip() if m else ""
            if rest and not rest.startswith("#"):
                start, lines = n, [rest]  # "--- key: value" starts the next document on this line
            else:
                start, lines = n + 1, []
            continue
        lines.append(line)
    yield start, "\n".join(lines)


def _objects(doc: Any, path: str, line: int, template: str) -> Iterator[ManifestObject]:
    if not isinstance(doc, dict) or ("apiVersion" not in doc and "kind" not in doc):
        return  # not a Kubernetes object: values files, Chart.yaml, plain lists
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not api_version or not isinstance(kind, str) or not kind:
        raise ManifestError("a Kubernetes object needs string apiVersion and kind fields", path=path, line=line)
    items = doc.get("items")
    if kind.endswith("List") and isinstance(items, list):
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ManifestError(f"items[{i}] of a {kind} is not an object", path=path, line=line)
            if kind != "List":
                # items of a typed list (RoleBindingList) are served at the list's apiVersion
                item = {"apiVersion": api_version, "kind": kind[: -len("List")], **item}
            elif "apiVersion" not in item or "kind" not in item:
                raise ManifestError(f"items[{i}] of a List needs apiVersion and kind", path=path, line=line)
            for obj in _objects(item, path, line, template):
                yield ManifestObject(obj.api_version, obj.kind, obj.name, obj.namespace, path, line, i, template,
                                     body=obj.body)
        return
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ManifestError(f"{kind}: metadata must be a mapping", path=path, line=line)
    yield ManifestObject(api_version, kind, _name(doc), str((metadata or {}).get("namespace") or ""), path, line,
                         template=template, body=doc)


def _name(doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata") or {}
    return str(metadata.get("name") or metadata.get("generateName") or "") if isinstance(metadata, dict) else ""
