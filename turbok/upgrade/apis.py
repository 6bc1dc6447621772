"""Which built-in API versions a Kubernetes release serves: the packaged deprecation data.

``data/deprecated_apis.yaml`` holds every removal the Kubernetes Deprecated
API Migration Guide lists (1.16 to 1.32) plus the deprecations and removals the
k8s.io/api prerelease-lifecycle tags add up to 1.36, each with its source; and
the release each built-in apiVersion + kind was introduced in. ``ApiCatalog``
answers, for an apiVersion + kind and a target release: served, deprecated
(still served, warns), removed, or not yet available; and what to migrate to.

Custom resources and anything else the data does not name are "unknown" and
never reported: turbok only knows the built-in APIs.

Called by the checker and by ``turbok upgrade apis``. Reads the data file once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

import yaml

from turbok.upgrade.errors import DataError, VersionError
from turbok.upgrade.versions import Version, parse_version

__all__ = ["ApiCatalog", "ApiStatus", "Availability", "DeprecatedApi", "api_catalog"]


class ApiStatus(StrEnum):
    """How a target release treats an apiVersion + kind."""

    SERVED = "served"
    DEPRECATED = "deprecated"
    REMOVED = "removed"
    UNAVAILABLE = "unavailable"  # introduced after the target release
    UNKNOWN = "unknown"  # not a built-in API turbok has data for


@dataclass(frozen=True)
class DeprecatedApi:
    """One deprecated apiVersion + kind, as the data file records it."""

    api_version: str
    kind: str
    stage: str
    deprecated_in: Version
    removed_in: Version
    replacement: str | None
    replacement_since: Version | None
    source: str
    notes: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]


@dataclass(frozen=True)
class Availability:
    """The answer for one apiVersion + kind at one release.

    ``entry`` is the deprecation record (for deprecated/removed), ``replacement``
    the apiVersion to use at the target (the data's replacement, followed while
    that one is itself removed), ``introduced_in`` set for ``UNAVAILABLE``.
    """

    status: ApiStatus
    entry: DeprecatedApi | None = None
    replacement: str | None = None
    introduced_in: Version | None = None
    planned_removal: bool = False


@dataclass(frozen=True)
class ApiCatalog:
    """The deprecation data, indexed by ``(apiVersion, kind)``."""

    entries: dict[tuple[str, str], DeprecatedApi]
    introduced: dict[tuple[str, str], Version]
    newest_release: Version
    as_of: str

    def __iter__(self) -> Iterator[DeprecatedApi]:
        return iter(self.entries.values())

    def lookup(self, api_version: str, kind: str) -> DeprecatedApi | None:
        return self.entries.get((api_version, kind))

    def availability(self, api_version: str, kind: str, target: Version) -> Availability:
        """What a ``target`` control plane (its emulated version) does with ``api_version``/``kind``."""
        target = target.mm
        entry = self.entries.get((api_version, kind))
        if entry is not None:
            if target >= entry.removed_in:
                return Availability(ApiStatus.REMOVED, entry, self._replacement(entry, kind, target))
            introduced = self.introduced.get((api_version, kind))
            if introduced is not None and target < introduced:
                return Availability(ApiStatus.UNAVAILABLE, entry, introduced_in=introduced)
            if target >= entry.deprecated_in:
                return Availability(ApiStatus.DEPRECATED, entry, self._replacement(entry, kind, target),
                                    planned_removal=entry.removed_in > self.newest_release)
            return Availability(ApiStatus.SERVED, entry)
        introduced = self.introduced.get((api_version, kind))
        if introduced is not None:
            if target < introduced:
                return Availability(ApiStatus.UNAVAILABLE, introduced_in=introduced)
            return Availability(ApiStatus.SERVED)
        return Availability(ApiStatus.UNKNOWN)

    def _replacement(self, entry: DeprecatedApi, kind: str, target: Version) -> str | None:
        """The replacement to use at ``target``, following the chain (v1beta1 -> v1beta2 -> v1).

        Prefers the first replacement neither deprecated nor removed at
        ``target``; else the first still served; None when the chain ends
        without one (PodSecurityPolicy).
        """
        served: str | None = None
        seen = {entry.api_version}
        replacement = entry.replacement
        while replacement is not None and replacement not in seen:
            seen.add(replacement)
            nxt = self.entries.get((replacement, kind))
            introduced = self.introduced.get((replacement, kind))
            available = introduced is None or introduced <= target
            if available and (nxt is None or target < nxt.deprecated_in):
                return replacement
            if available and nxt is not None and target < nxt.removed_in and served is None:
                served = replacement
            replacement = nxt.replacement if nxt is not None else None
        return served

    def kinds(self) -> set[tuple[str, str]]:
        """Every ``(group, kind)`` with a deprecated version: what a live cluster is searched for."""
        return {(e.group, e.kind) for e in self.entries.values()}


def _version(value: Any, where: str) -> Version:
    try:
        return parse_version(str(value), what=where)
    except VersionError as e:
        raise DataError(f"turbok/upgrade/data/deprecated_apis.yaml: {e}") from e


def _load(data: dict[str, Any]) -> ApiCatalog:
    entries: dict[tuple[str, str], DeprecatedApi] = {}
    try:
        for raw in data["apis"]:
            where = f"{raw['apiVersion']} {raw['kind']}"
            since = raw.get("replacementSince")
            e = DeprecatedApi(
                api_version=str(raw["apiVersion"]),
                kind=str(raw["kind"]),
                stage=str(raw["stage"]),
                deprecated_in=_version(raw["deprecatedIn"], where),
                removed_in=_version(raw["removedIn"], where),
                replacement=raw.get("replacement"),
                replacement_since=_version(since, where) if since is not None else None,
                source=str(raw["source"]),
                notes=str(raw.get("notes") or ""),
            )
            if (e.api_version, e.kind) in entries:
                raise DataError(f"turbok/upgrade/data/deprecated_apis.yaml lists {where} twice")
            if e.removed_in < e.deprecated_in:
                raise DataError(f"turbok/upgrade/data/deprecated_apis.yaml: {where} is removed before it is deprecated")
            entries[(e.api_version, e.kind)] = e
        introduced = {
            (str(i["apiVersion"]), str(i["kind"])): _version(i["introducedIn"], f"{i['apiVersion']} {i['kind']}")
            for i in data["introduced"]
        }
        return ApiCatalog(entries, introduced, _version(data["newestRelease"], "newestRelease"), str(data["asOf"]))
    except (KeyError, TypeError) as e:
        raise DataError(f"turbok/upgrade/data/deprecated_apis.yaml is malformed: missing or wrong field {e}") from e


@functools.cache
def api_catalog() -> ApiCatalog:
    """The packaged deprecation data (read once)."""
    text = resources.files("turbok.upgrade").joinpath("data/deprecated_apis.yaml").read_text(encoding="utf-8")
    return _load(yaml.safe_load(text))
