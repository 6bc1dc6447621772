"""The requirement catalog: every official AI Conformance checklist, per Kubernetes version.

The data is packaged YAML in ``checklists/``: verbatim copies of the CNCF
checklists (``AIConformance-1.33.yaml`` .. ``1.37``) and ``drafts.yaml`` for
requirements accepted upstream but not yet frozen (none since v1.37 froze
``workload_sandboxing``). ``newer_requirements`` lists what later checklists
add to a version's, for runs that check those as extras. Nothing here talks to
a cluster. Callers: the runner (which checklist
a cluster is measured against), reports (PRODUCT.yaml drafts start from the
checklist text), the validator (id, description and level must be unchanged)
and ``turbok conformance list``.

Versions are written ``1.35`` inside turbok; ``v1.35``, ``1.35`` and
``v1.35.2`` are all accepted as input.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from turbok.conformance.errors import UnsupportedVersionError

__all__ = [
    "Checklist",
    "Level",
    "Requirement",
    "checklist",
    "checklist_for_cluster",
    "draft_versions",
    "drafts",
    "frozen_versions",
    "newer_requirements",
    "normalize_version",
    "version_key",
]

Level = Literal["MUST", "SHOULD"]

_FILE = "AIConformance-{version}.yaml"
_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?$")


@dataclass(frozen=True)
class Requirement:
    """One requirement of one checklist version."""

    id: str
    category: str
    level: Level
    description: str
    version: str
    draft: bool = False
    source: str | None = None
    extra: bool = False  # added by a checklist newer than the one a run measures: checked, never counted

    @property
    def counted(self) -> bool:
        """Whether it belongs to the checklist measured (drafts and newer requirements are extras)."""
        return not self.draft and not self.extra

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "category": self.category,
            "level": self.level,
            "description": self.description,
            "version": self.version,
            "draft": self.draft,
        }
        if self.source:
            data["source"] = self.source
        return data


@dataclass(frozen=True)
class Checklist:
    """The requirements of one Kubernetes version, in checklist order.

    ``draft`` is true for a version whose checklist is not frozen yet; its
    ``requirements`` are the newest frozen ones plus the drafts.
    ``metadata`` is the checklist's metadata block (placeholders included);
    ``text`` the file as published, for drafting PRODUCT.yaml.
    """

    version: str
    draft: bool
    metadata: dict[str, Any]
    requirements: tuple[Requirement, ...]
    text: str = field(repr=False, default="")

    @property
    def categories(self) -> list[str]:
        seen: list[str] = []
        for r in self.requirements:
            if r.category not in seen:
                seen.append(r.category)
        return seen

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.requirements]

    def get(self, requirement_id: str) -> Requirement | None:
        for r in self.requirements:
            if r.id == requirement_id:
                return r
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "draft": self.draft,
            "requirements": [r.to_dict() for r in self.requirements],
        }


def normalize_version(text: str) -> str:
    """``v1.35.2`` -> ``1.35``; raises ``UnsupportedVersionError`` when it is no version."""
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise UnsupportedVersionError(f"{text!r} is not a Kubernetes version: write it like 1.35 or v1.35")
    return f"{int(m.group(1))}.{int(m.group(2))}"


def version_key(version: str) -> tuple[int, int]:
    major, minor = normalize_version(version).split(".")
    return int(major), int(minor)


@functools.cache
def frozen_versions() -> tuple[str, ...]:
    """Versions with an official checklist, oldest first."""
    names = [p.name for p in resources.files("turbok.conformance").joinpath("checklists").iterdir()]
    found = [m.group(1) for n in names if (m := re.fullmatch(r"AIConformance-(\d+\.\d+)\.yaml", n))]
    return tuple(sorted(found, key=version_key))


@functools.cache
def _drafts_file() -> list[dict[str, Any]]:
    text = resources.files("turbok.conformance").joinpath("checklists").joinpath("drafts.yaml").read_text("utf-8")
    data = yaml.safe_load(text) or {}
    return list(data.get("drafts") or [])


def draft_versions() -> tuple[str, ...]:
    """Versions that exist only as drafts (no frozen checklist yet)."""
    frozen = set(frozen_versions())
    found = {normalize_version(d["version"]) for d in _drafts_file()}
    return tuple(sorted(found - frozen, key=version_key))


def drafts() -> tuple[Requirement, ...]:
    """Every draft requirement, across draft versions."""
    return tuple(
        Requirement(
            id=d["id"],
            category=d["category"],
            level=d["level"],
            description=d["description"],
            version=normalize_version(d["version"]),
            draft=True,
            source=d.get("source"),
        )
        for d in _drafts_file()
    )


@functools.cache
def _frozen(version: str) -> Checklist:
    text = resources.files("turbok.conformance").joinpath("checklists").joinpath(_FILE.format(version=version)).read_text("utf-8")
    data = yaml.safe_load(text)
    reqs: list[Requirement] = []
    for category, items in (data.get("spec") or {}).items():
        for item in items or []:
            reqs.append(
                Requirement(
                    id=item["id"],
                    category=category,
                    level=item["level"],
                    description=item["description"],
                    version=version,
                )
            )
    return Checklist(version=version, draft=False, metadata=dict(data.get("metadata") or {}), requirements=tuple(reqs), text=text)


def checklist(version: str) -> Checklist:
    """The checklist of a version (frozen, or a draft built on the newest frozen one)."""
    v = normalize_version(version)
    if v in frozen_versions():
        return _frozen(v)
    if v in draft_versions():
        entries = [d for d in _drafts_file() if normalize_version(d["version"]) == v]
        base = _frozen(normalize_version(entries[0].get("basedOn") or frozen_versions()[-1]))
        extra = [r for r in drafts() if r.version == v]
        order = base.categories + [r.category for r in extra if r.category not in base.categories]
        merged = sorted(
            [Requirement(**{**r.__dict__, "version": v}) for r in base.requirements] + extra,
            key=lambda r: order.index(r.category),
        )
        metadata = {**base.metadata, "kubernetesVersion": f"v{v}"}
        return Checklist(version=v, draft=True, metadata=metadata, requirements=tuple(merged))
    known = ", ".join(frozen_versions() + draft_versions())
    raise UnsupportedVersionError(f"no AI Conformance checklist for Kubernetes {v}: known versions are {known}")


def newer_requirements(version: str) -> tuple[Requirement, ...]:
    """Requirements that checklists newer than ``version`` (frozen or draft) add, each from the first one that has it.

    They are marked ``extra``: a run against an older checklist checks them so a
    platform can see where it stands, and they never change its exit code.
    """
    base = normalize_version(version)
    have = {r.id for r in checklist(base).requirements}
    out: list[Requirement] = []
    for v in sorted(frozen_versions() + draft_versions(), key=version_key):
        if version_key(v) <= version_key(base):
            continue
        for r in checklist(v).requirements:
            if r.id not in have:
                have.add(r.id)
                out.append(Requirement(r.id, r.category, r.level, r.description, r.version, r.draft, r.source, extra=True))
    return tuple(out)


def checklist_for_cluster(major: int, minor: int) -> tuple[Checklist, str | None]:
    """The checklist to measure a cluster of version ``major.minor`` against, and a note.

    Newer than the newest frozen checklist: the newest, with a note. Older than
    the oldest: ``UnsupportedVersionError`` (pass ``--version`` to force one).
    """
    frozen = frozen_versions()
    wanted = (major, minor)
    if f"{major}.{minor}" in frozen:
        return _frozen(f"{major}.{minor}"), None
    newest, oldest = frozen[-1], frozen[0]
    if wanted > version_key(newest):
        return _frozen(newest), (
            f"cluster is Kubernetes {major}.{minor}, newer than the newest checklist ({newest}); using {newest}"
        )
    raise UnsupportedVersionError(
        f"cluster is Kubernetes {major}.{minor}; AI Conformance checklists start at {oldest}: "
        "upgrade the cluster or pass --version to check against a checklist anyway"
    )
