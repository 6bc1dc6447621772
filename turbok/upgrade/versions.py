"""Kubernetes versions: parsing, ordering, and the catalog of known releases.

A ``Version`` is ``major.minor`` or ``major.minor.patch``; strings from the
wild (``v1.32.4``, ``v1.30.2-gke.1587003``, ``1.33.1+k3s1``) parse too, keeping
the suffix for display. The ``ReleaseCatalog`` is read from the packaged
``data/releases.yaml`` and answers "is this a release we know?" and "which is
the newest patch of 1.35?". Unknown minors are refused (their rules are not
known); patches newer than the data are accepted and flagged by the caller.

Called by the planner, the skew rules and the CLI. No I/O beyond reading the
packaged data file once.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from turbok.upgrade.errors import DataError, UnknownVersionError, VersionError

__all__ = ["ReleaseCatalog", "Version", "catalog", "parse_version"]

_VERSION_RE = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?([-+][0-9A-Za-z.+-]*)?\s*$")


@functools.total_ordering
@dataclass(frozen=True)
class Version:
    """A Kubernetes version; ``patch`` is None when only the minor is meant.

    Ordering compares major, minor, then patch with a missing patch sorting
    before ``.0``; the suffix never takes part in comparisons.
    """

    major: int
    minor: int
    patch: int | None = None
    suffix: str = field(default="", compare=False)

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}"
        return base if self.patch is None else f"{base}.{self.patch}"

    def _key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, -1 if self.patch is None else self.patch)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    @property
    def mm(self) -> Version:
        """The same version without its patch: ``1.32.4`` -> ``1.32``."""
        return Version(self.major, self.minor)

    def add_minor(self, n: int) -> Version:
        """``1.32.x`` plus ``n`` minors, as a minor version (no patch)."""
        return Version(self.major, self.minor + n)

    def minors_since(self, other: Version) -> int:
        """How many minors ``self`` is ahead of ``other`` (negative when behind)."""
        if self.major != other.major:
            raise VersionError(f"cannot compare {self} with {other}: different major versions")
        return self.minor - other.minor

    def same_minor(self, other: Version) -> bool:
        return self.major == other.major and self.minor == other.minor


def parse_version(text: str, *, what: str = "version") -> Version:
    """Parse ``1.32``, ``1.32.4``, ``v1.32.4`` or a vendor string like ``v1.32.4-eks-abc``.

    Raises ``VersionError`` naming ``what`` (e.g. ``--from``) on anything else.
    """
    m = _VERSION_RE.match(text or "")
    if m is None:
        raise VersionError(f"{what}: {text!r} is not a Kubernetes version (expected MAJOR.MINOR or MAJOR.MINOR.PATCH, e.g. 1.32 or 1.32.4)")
    major, minor = int(m.group(1)), int(m.group(2))
    patch = int(m.group(3)) if m.group(3) is not None else None
    if major != 1:
        raise VersionError(f"{what}: {text!r} is not a Kubernetes 1.x version")
    return Version(major, minor, patch, m.group(4) or "")


@dataclass(frozen=True)
class ReleaseCatalog:
    """The minors turbok knows and the newest patch of each (``data/releases.yaml``)."""

    latest_patch: dict[Version, int]
    as_of: str

    @property
    def oldest(self) -> Version:
        return min(self.latest_patch)

    @property
    def newest(self) -> Version:
        return max(self.latest_patch)

    def knows(self, v: Version) -> bool:
        return v.mm in self.latest_patch

    def require(self, v: Version, *, what: str = "version") -> None:
        """Raise ``UnknownVersionError`` unless ``v``'s minor is a known release."""
        if not self.knows(v):
            hint = " (newer than this turbok's data: upgrade turbok)" if v.mm > self.newest else ""
            raise UnknownVersionError(
                f"{what}: unknown Kubernetes release {v}{hint}; turbok knows {self.oldest} to {self.newest} "
                f"(release data as of {self.as_of})"
            )

    def latest(self, minor: Version) -> Version:
        """The newest known patch release of ``minor``'s minor (e.g. 1.35 -> 1.35.7)."""
        self.require(minor)
        return Version(minor.major, minor.minor, self.latest_patch[minor.mm])

    def resolve(self, v: Version, *, what: str = "version") -> Version:
        """``v`` with a patch: its own, or the newest known patch of its minor."""
        self.require(v, what=what)
        return v if v.patch is not None else self.latest(v)

    def is_newer_than_data(self, v: Version) -> bool:
        """True for a patch beyond the newest this data knows (accepted, but worth a warning)."""
        return v.patch is not None and self.knows(v) and v.patch > self.latest_patch[v.mm]

    def minors(self, start: Version, end: Version) -> list[Version]:
        """Known minors from ``start`` to ``end`` inclusive, ascending."""
        return [m for m in sorted(self.latest_patch) if start.mm <= m <= end.mm]


def _load(data: dict[str, Any]) -> ReleaseCatalog:
    try:
        latest = {parse_version(k): int(v["latestPatch"]) for k, v in data["releases"].items()}
        return ReleaseCatalog(latest_patch=latest, as_of=str(data["asOf"]))
    except (KeyError, TypeError, ValueError, VersionError) as e:
        raise DataError(f"turbok/upgrade/data/releases.yaml is malformed: {e}") from e


@functools.cache
def catalog() -> ReleaseCatalog:
    """The packaged release catalog (read once)."""
    text = resources.files("turbok.upgrade").joinpath("data/releases.yaml").read_text(encoding="utf-8")
    return _load(yaml.safe_load(text))
