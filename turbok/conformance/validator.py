"""Check a PRODUCT.yaml against the CNCF AI Conformance submission rules, with located messages.

The rules are those of cncf/k8s-ai-conformance (``instructions.md`` and
``scripts/validate.go``), applied against the packaged checklist of the
file's ``kubernetesVersion``:

- metadata: ``kubernetesVersion``, ``platformName``, ``platformVersion``,
  ``vendorName``, ``websiteUrl``, ``documentationUrl``, ``productLogoUrl``,
  ``description``, ``contactEmailAddress`` are required (``repoUrl`` is
  optional), each also accepted in snake_case (``website_url``); from v1.35
  on ``k8sConformanceUrl`` is required too and must look like
  ``https://github.com/cncf/k8s-conformance/tree/(master|main)/vX.Y/PRODUCT``;
  values must be non-empty strings, not ``[placeholders]`` and not the
  example values of the submission instructions (the "Turbo Encabulator" of
  "Yoyodyne": ``https://github.com/yoyo.dyne/turbo-encabulator``,
  ``https://yoyo.dyne/assets/turbo-encabulator.svg``...); ``productLogoUrl``
  must be an SVG, AI or EPS file ("not a PNG", the instructions say);
- spec: every category and requirement of the checklist, with ``id``,
  ``description`` and ``level`` unchanged (whitespace aside: YAML folding
  changes it), nothing added;
- status: one of ``Implemented``, ``Not Implemented``, ``Partially
  Implemented``, ``N/A`` (a SHOULD item may be left with an empty status and
  no evidence); MUST items must be ``Implemented``, except that a conditional
  MUST ("If the platform provides ...") may be ``N/A`` as the program's FAQ
  allows (a warning: the upstream script refuses it); ``N/A`` needs ``notes``;
  ``Implemented`` with notes that open by saying the requirement does not
  apply (``N/A``, "not applicable") contradicts itself (an error; the phrase
  later in the notes is a warning);
- evidence: a list; relative paths (a ``#fragment`` is ignored) must exist
  next to the PRODUCT.yaml; URLs are fetched only with ``check_urls``.

Findings are errors (the file would be refused) or warnings (worth a look:
a MUST item without evidence, a draft checklist, an unknown metadata field).
Not checked: the vendor's CNCF membership (needs the CNCF landscape online).
Callers: ``turbok conformance validate`` and the tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from turbok.conformance import catalog
from turbok.conformance.errors import ProductFileError, UnsupportedVersionError

__all__ = ["ALLOWED_STATUSES", "Finding", "ValidationResult", "check_url", "snake_case", "validate_file", "validate_text"]

ALLOWED_STATUSES = ("Implemented", "Not Implemented", "Partially Implemented", "N/A")
REQUIRED_METADATA = ("kubernetesVersion", "platformName", "platformVersion", "vendorName", "websiteUrl", "documentationUrl",
                     "productLogoUrl", "description", "contactEmailAddress")
OPTIONAL_METADATA = ("repoUrl",)
K8S_CONFORMANCE_URL = re.compile(r"^https://github\.com/cncf/k8s-conformance/tree/(master|main)/v\d+\.\d+/[^/]+/?$")
#: The fictional product of cncf/k8s-ai-conformance's instructions.md example, left in by copy and paste.
EXAMPLE_VALUES = re.compile(r"turbo[- ]encabulator|yoyo\.dyne|yoyodyne", re.I)
LOGO_FORMATS = (".svg", ".ai", ".eps")
_RASTER = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".ico", ".tif", ".tiff")
_NOT_APPLICABLE = re.compile(r"\b(not applicable|n/a|does not apply|doesn't apply|not relevant)\b", re.I)
USER_AGENT = "turbok-conformance-validator (+https://github.com/cncf/k8s-ai-conformance)"

Severity = Literal["error", "warning"]
Path_ = tuple[str | int, ...]


def snake_case(name: str) -> str:
    """``contactEmailAddress`` -> ``contact_email_address``; ``k8sConformanceUrl`` -> ``k8s_conformance_url``."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


@dataclass(frozen=True)
class Finding:
    severity: Severity
    location: str
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.severity}: {self.location}: {self.message}" if self.location else f"{where}: {self.severity}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "location": self.location, "line": self.line, "message": self.message}


@dataclass
class ValidationResult:
    source: str
    version: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.source, "kubernetesVersion": self.version, "valid": self.ok,
                "errors": len(self.errors), "warnings": len(self.warnings), "findings": [f.to_dict() for f in self.findings]}


def _lines(text: str, dups: list[tuple[Path_, int]]) -> dict[Path_, int]:
    """Line (1-based) of every mapping key and sequence item, by path; duplicate keys go to ``dups``."""
    lines: dict[Path_, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: Path_) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                k = str(key.value)
                if k in seen:
                    dups.append(((*path, k), key.start_mark.line + 1))
                seen.add(k)
                lines[(*path, k)] = key.start_mark.line + 1
                walk(value, (*path, k))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


class _Report:
    def __init__(self, result: ValidationResult, lines: dict[Path_, int]) -> None:
        self.result, self.lines = result, lines

    def add(self, severity: Severity, path: Path_, location: str, message: str) -> None:
        line = None
        p = path
        while line is None and p:
            line, p = self.lines.get(p), p[:-1]
        self.result.findings.append(Finding(severity, location, message, line))

    def error(self, path: Path_, location: str, message: str) -> None:
        self.add("error", path, location, message)

    def warn(self, path: Path_, location: str, message: str) -> None:
        self.add("warning", path, location, message)


def check_url(url: str, client: httpx.Client) -> str | None:
    """None when reachable (HEAD, then GET, below 400), else why not."""
    try:
        resp = client.head(url)
        if resp.status_code < 400:
            return None
        resp = client.get(url)
        return None if resp.status_code < 400 else f"status code {resp.status_code}"
    except httpx.HTTPError as e:
        return str(e) or type(e).__name__


def _metadata(doc: dict[str, Any], rep: _Report, version: str | None) -> None:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        rep.error(("metadata",), "metadata", "missing 'metadata' section" if meta is None else "'metadata' must be a mapping")
        return
    required = list(REQUIRED_METADATA)
    if version and catalog.version_key(version) >= (1, 35):
        required.append("k8sConformanceUrl")
    known = set(REQUIRED_METADATA) | set(OPTIONAL_METADATA) | {"k8sConformanceUrl"}
    for name in (*REQUIRED_METADATA, *OPTIONAL_METADATA, "k8sConformanceUrl"):
        snake = snake_case(name)
        present = [k for k in (name, snake) if k in meta]
        if len(present) == 2 and name != snake:
            rep.warn(("metadata", snake), f"metadata.{snake}", f"both {name} and {snake} are set; {name} is used")
        key = present[0] if present else name
        value, path, loc = meta.get(key), ("metadata", key), f"metadata.{key}"
        if not present or value is None:
            if name in required:
                rep.error(("metadata",), f"metadata.{name}", f"missing required field {name} (or {snake})")
            continue
        if not isinstance(value, str):
            rep.error(path, loc, f"must be a string, not {type(value).__name__}")
            continue
        if not value.strip():
            if name in required:
                rep.error(path, loc, "is empty")
            continue
        if value.startswith("[") and value.endswith("]"):
            rep.error(path, loc, f"still has the placeholder value {value}")
        elif EXAMPLE_VALUES.search(value):
            rep.error(path, loc, f"{value!r} is the example of the submission instructions (Yoyodyne's Turbo "
                                 "Encabulator), not your product's")
        elif name == "k8sConformanceUrl" and not K8S_CONFORMANCE_URL.match(value):
            rep.error(path, loc, f"invalid URL {value}: expected https://github.com/cncf/k8s-conformance/tree/master/vX.Y/PRODUCT")
        elif name.endswith("Url") and name != "k8sConformanceUrl" and not re.match(r"https?://", value):
            rep.warn(path, loc, f"{value!r} does not look like a URL")
        elif name == "productLogoUrl":
            _logo(value, path, loc, rep)
        elif name == "contactEmailAddress" and "@" not in value:
            rep.warn(path, loc, f"{value!r} does not look like an email address")
    for key in meta:
        if key not in known and key not in {snake_case(k) for k in known}:
            rep.warn(("metadata", key), f"metadata.{key}", "not a field of the submission format")


def _logo(url: str, path: Path_, loc: str, rep: _Report) -> None:
    """The logo must be SVG, AI or EPS (instructions.md: "must be in SVG, AI or EPS format -- not a PNG")."""
    file = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1].lower()
    suffix = "." + file.rsplit(".", 1)[1] if "." in file else ""
    if suffix in _RASTER:
        rep.error(path, loc, f"the logo is a {suffix[1:].upper()} file: the program asks for SVG, AI or EPS "
                             "(instructions.md: \"not a PNG\")")
    elif suffix not in LOGO_FORMATS:
        rep.warn(path, loc, f"cannot tell the logo's format from {url}: it must be SVG, AI or EPS")


def _spec(doc: dict[str, Any], rep: _Report, checklist: catalog.Checklist, base_dir: Path, urls: list[tuple[Path_, str, str]]) -> None:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        rep.error(("spec",), "spec", "missing 'spec' section" if spec is None else "'spec' must be a mapping of categories")
        return
    where: dict[str, str] = {}
    for cat, items in spec.items():
        if not isinstance(items, list):
            rep.error(("spec", cat), f"spec.{cat}", "must be a list of requirements")
            continue
        if cat not in checklist.categories:
            rep.error(("spec", cat), f"spec.{cat}", f"category is not in the v{checklist.version} checklist")
        seen: set[str] = set()
        for i, item in enumerate(items):
            path: Path_ = ("spec", cat, i)
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                rep.error(path, f"spec.{cat}[{i}]", "must be a mapping with an id")
                continue
            rid = item["id"]
            if rid in seen:
                rep.error((*path, "id"), f"spec.{cat}[{rid}]", "requirement listed twice")
            seen.add(rid)
            where.setdefault(rid, cat)
            req = checklist.get(rid)
            if req is None:
                rep.error((*path, "id"), f"spec.{cat}[{rid}]", f"requirement is not in the v{checklist.version} checklist")
                continue
            if req.category != cat:
                rep.error((*path, "id"), f"spec.{cat}[{rid}]", f"belongs in category {req.category}")
            _item(item, req, path, f"spec.{cat}[{rid}]", rep, base_dir, urls)
    for cat in checklist.categories:
        if cat not in spec:
            rep.error(("spec",), f"spec.{cat}", "missing category")
            continue
        for req in checklist.requirements:
            if req.category == cat and req.id not in where:
                rep.error(("spec", cat), f"spec.{cat}[{req.id}]", "missing requirement")


def _squash(text: str) -> str:
    """Whitespace-insensitive form: YAML folding and line wrapping change whitespace, not the text."""
    return " ".join(text.split())


def _item(item: dict[str, Any], req: catalog.Requirement, path: Path_, loc: str, rep: _Report, base_dir: Path,
          urls: list[tuple[Path_, str, str]]) -> None:
    desc = item.get("description")
    if not isinstance(desc, str) or _squash(desc) != _squash(req.description):
        if not isinstance(desc, str):
            rep.error((*path, "description"), f"{loc}.description", "missing or not a string: copy it unchanged from the checklist")
        else:
            got, want = _squash(desc), _squash(req.description)
            at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
            rep.error((*path, "description"), f"{loc}.description",
                      f"differs from the checklist at character {at + 1} ({got[at:at + 30]!r} instead of {want[at:at + 30]!r}): "
                      "id, description and level must be submitted unchanged")
    if item.get("level") != req.level:
        rep.error((*path, "level"), f"{loc}.level", f"is {item.get('level')!r}; the checklist says {req.level}")
    status, evidence, notes = item.get("status", ""), item.get("evidence"), item.get("notes")
    if status is None:
        status = ""
    if not isinstance(status, str):
        rep.error((*path, "status"), f"{loc}.status", f"must be a string, not {type(status).__name__}")
        return
    if evidence is None:
        evidence = []
    if not isinstance(evidence, list):
        rep.error((*path, "evidence"), f"{loc}.evidence", f"must be a list of URLs or relative file paths, not a {type(evidence).__name__}")
        evidence = []
    if req.level == "SHOULD" and status == "" and not evidence:
        return
    if status not in ALLOWED_STATUSES:
        rep.error((*path, "status"), f"{loc}.status", f"invalid status {status!r}: must be one of {', '.join(ALLOWED_STATUSES)}")
    elif req.level == "MUST" and status == "N/A" and req.description.startswith("If "):
        # The program's FAQ lets conditional MUSTs ("If the platform provides ...") be N/A with a justification;
        # scripts/validate.go upstream refuses any MUST that is not Implemented, hence the warning.
        rep.warn((*path, "status"), f"{loc}.status", "N/A accepted for a conditional MUST (FAQ); the upstream validate.go refuses it")
    elif req.level == "MUST" and status != "Implemented":
        rep.error((*path, "status"), f"{loc}.status", f"is {status!r} but the requirement is MUST: it must be 'Implemented'")
    if status == "N/A" and not (isinstance(notes, str) and notes.strip()):
        rep.error((*path, "notes"), f"{loc}.notes", "notes are required to justify N/A")
    if status == "Implemented" and isinstance(notes, str):
        m = _NOT_APPLICABLE.search(notes)
        if m and not notes[: m.start()].strip(" \t\n-:.("):
            rep.error((*path, "notes"), f"{loc}.notes", f"status is 'Implemented' but the notes say it does not apply "
                                                        f"({notes.strip()[:60]!r}): use 'N/A' with these notes, or correct them")
        elif m:
            rep.warn((*path, "notes"), f"{loc}.notes", f"status is 'Implemented' but the notes say {m.group(0)!r}: "
                                                       "check that the requirement really is implemented")
    if req.level == "MUST" and not [e for e in evidence if e]:
        rep.warn((*path, "evidence"), f"{loc}.evidence", "MUST requirement without evidence")
    for j, entry in enumerate(evidence):
        epath = (*path, "evidence", j)
        if not isinstance(entry, str):
            rep.error(epath, f"{loc}.evidence[{j}]", f"must be a string, not {type(entry).__name__}")
            continue
        if not entry.strip():
            rep.warn(epath, f"{loc}.evidence[{j}]", "empty evidence entry")
        elif re.match(r"https?://", entry):
            urls.append((epath, f"{loc}.evidence[{j}]", entry))
        elif Path(entry).is_absolute():
            rep.error(epath, f"{loc}.evidence[{j}]", f"{entry} is an absolute path: use a path relative to PRODUCT.yaml or a URL")
        else:
            target = base_dir / entry.split("#", 1)[0]
            if not target.exists():
                rep.error(epath, f"{loc}.evidence[{j}]", f"evidence file {entry} not found (looked for {target})")


def validate_text(text: str, *, source: str = "PRODUCT.yaml", base_dir: Path | None = None, check_urls: bool = False,
                  url_checker: Callable[[str], str | None] | None = None) -> ValidationResult:
    """Validate PRODUCT.yaml text; relative evidence resolves against ``base_dir``."""
    result = ValidationResult(source)
    base = base_dir or Path(".")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        result.findings.append(Finding("error", "", f"not valid YAML: {problem}", mark.line + 1 if mark else None))
        return result
    dups: list[tuple[Path_, int]] = []
    rep = _Report(result, _lines(text, dups))
    for path, line in dups:
        result.findings.append(Finding("warning", ".".join(str(p) for p in path), "key given twice; the last one wins", line))
    if not isinstance(doc, dict):
        rep.error((), "", "the file must be a YAML mapping with metadata and spec")
        return result
    found_meta = doc.get("metadata")
    meta: dict[str, Any] = found_meta if isinstance(found_meta, dict) else {}
    raw = meta.get("kubernetesVersion", meta.get("kubernetes_version"))
    key = "kubernetesVersion" if "kubernetesVersion" in meta else "kubernetes_version"
    checklist = None
    path_version = re.search(r"(?:^|/)v(\d+\.\d+)/", source)
    if isinstance(raw, str) and raw.strip():
        try:
            checklist = catalog.checklist(raw)
            result.version = checklist.version
        except UnsupportedVersionError as e:
            rep.error(("metadata", key), f"metadata.{key}", str(e))
    if checklist is None and path_version:
        try:
            checklist = catalog.checklist(path_version.group(1))
            result.version = checklist.version
        except UnsupportedVersionError:
            pass
    if checklist is not None and path_version and path_version.group(1) != checklist.version:
        rep.error(("metadata", key), f"metadata.{key}", f"says {checklist.version} but the file lives under v{path_version.group(1)}/")
    if checklist is not None and checklist.draft:
        rep.warn(("metadata", key), f"metadata.{key}", f"the v{checklist.version} checklist is a draft: submissions open once it is frozen")
    _metadata(doc, rep, result.version)
    urls: list[tuple[Path_, str, str]] = []
    if checklist is not None:
        _spec(doc, rep, checklist, base, urls)
    if check_urls:
        for k, v in meta.items():
            if isinstance(v, str) and re.match(r"https?://", v):
                urls.append((("metadata", k), f"metadata.{k}", v))
        checker = url_checker or _default_checker()
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda u: checker(u[2]), urls))
        for (path, loc, url), why in zip(urls, answers, strict=True):
            if why:
                rep.error(path, loc, f"{url} is not reachable ({why})")
    return result


def _default_checker() -> Callable[[str], str | None]:
    client = httpx.Client(timeout=30, follow_redirects=True, headers={"User-Agent": USER_AGENT})
    return lambda url: check_url(url, client)


def validate_file(path: Path, *, check_urls: bool = False, url_checker: Callable[[str], str | None] | None = None) -> ValidationResult:
    """Validate a PRODUCT.yaml on disk (evidence resolves next to it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProductFileError(f"cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ProductFileError(f"{path} is not UTF-8 text") from e
    return validate_text(text, source=str(path), base_dir=path.parent, check_urls=check_urls, url_checker=url_checker)
