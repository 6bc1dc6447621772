"""Which built-in API versions a Kubernetes release serves: the packaged deprecation data.

``data/deprecated_apis.yaml`` holds every removal the Kubernetes Deprecated
API Migration Guide lists (1.16 to 1.32) plus the deprecations and removals the
k8s.io/api prerelease-lifecycle tags add up to 1.37, each with its source; the
release each built-in apiVersion + kind was introduced in; and which beta
versions kube-apiserver serves only when ``--runtime-config`` turns them on.
``ApiCatalog`` answers, for an apiVersion + kind and a target release: served,
deprecated (still served, warns), removed, or not yet available; whether it is
on by default there; and what to migrate to.

Custom resources and anything else the data does not name are "unknown" and
never reported: turbok only knows the built-in APIs.

Called by the checker and by ``turbok upgrade apis``. Reads the data file once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

import yaml

from turbok.upgrade.errors import DataError, VersionError
from turbok.upgrade.versions import Version, parse_version

__all__ = ["ApiCatalog", "ApiStatus", "Availability", "DeprecatedApi", "api_catalog", "stage_of"]


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
    removed_in: Version | None  # None: deprecated with no removal planned (a GA version such as v1 Endpoints)
    replacement: str | None
    replacement_since: Version | None
    source: str
    notes: str
    replacement_kind: str | None = None

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]


@dataclass(frozen=True)
class Availability:
    """The answer for one apiVersion + kind at one release.

    ``entry`` is the deprecation record (for deprecated/removed), ``replacement``
    the apiVersion to use at the target (the data's replacement, followed while
    that one is itself removed), ``introduced_in`` set for ``UNAVAILABLE``.
    ``stage`` is ``alpha``, ``beta`` or ``ga`` (read off the version string);
    ``enabled_by_default`` is False for alpha versions and for beta versions
    kube-apiserver serves only with ``--runtime-config`` (KEP-3136).
    """

    status: ApiStatus
    entry: DeprecatedApi | None = None
    replacement: str | None = None
    introduced_in: Version | None = None
    planned_removal: bool = False
    stage: str = "ga"
    enabled_by_default: bool = True


@dataclass(frozen=True)
class ApiCatalog:
    """The deprecation data, indexed by ``(apiVersion, kind)``."""

    entries: dict[tuple[str, str], DeprecatedApi]
    introduced: dict[tuple[str, str], Version]
    newest_release: Version
    as_of: str
    off_by_default: frozenset[tuple[str, str]] = frozenset()

    def __iter__(self) -> Iterator[DeprecatedApi]:
        return iter(self.entries.values())

    def lookup(self, api_version: str, kind: str) -> DeprecatedApi | None:
        return self.entries.get((api_version, kind))

    def availability(self, api_version: str, kind: str, target: Version) -> Availability:
        """What a ``target`` control plane (its emulated version) does with ``api_version``/``kind``.

        A typed list kind (``DeploymentList``) is judged as its items' kind.
        """
        target = target.mm
        if kind.endswith("List") and kind != "List" and not self._known(api_version, kind):
            kind = kind[: -len("List")]
        stage = stage_of(api_version)
        on = stage != "alpha" and (api_version, kind) not in self.off_by_default
        entry = self.entries.get((api_version, kind))
        if entry is not None:
            if entry.removed_in is not None and target >= entry.removed_in:
                return Availability(ApiStatus.REMOVED, entry, self._replacement(entry, kind, target), stage=stage,
                                    enabled_by_default=on)
            introduced = self.introduced.get((api_version, kind))
            if introduced is not None and target < introduced:
                return Availability(ApiStatus.UNAVAILABLE, entry, introduced_in=introduced, stage=stage,
                                    enabled_by_default=on)
            if target >= entry.deprecated_in:
                planned = entry.removed_in is not None and entry.removed_in > self.newest_release
                return Availability(ApiStatus.DEPRECATED, entry, self._replacement(entry, kind, target),
                                    planned_removal=planned, stage=stage, enabled_by_default=on)
            return Availability(ApiStatus.SERVED, entry, stage=stage, enabled_by_default=on)
        introduced = self.introduced.get((api_version, kind))
        if introduced is not None:
            if target < introduced:
                return Availability(ApiStatus.UNAVAILABLE, introduced_in=introduced, stage=stage, enabled_by_default=on)
            return Availability(ApiStatus.SERVED, stage=stage, enabled_by_default=on)
        return Availability(ApiStatus.UNKNOWN, stage=stage, enabled_by_default=on)

    def _known(self, api_version: str, kind: str) -> bool:
        return (api_version, kind) in self.entries or (api_version, kind) in self.introduced

    def _replacement(self, entry: DeprecatedApi, kind: str, target: Version) -> str | None:
        """The replacement to use at ``target``, following the chain (v1beta1 -> v1beta2 -> v1).

        Prefers the first replacement neither deprecated nor removed at
        ``target``; else the first still served; None when the chain ends
        without one (PodSecurityPolicy).
        """
        if entry.replacement_kind and entry.replacement:
            return f"{entry.replacement} {entry.replacement_kind}"
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
            if available and nxt is not None and (nxt.removed_in is None or target < nxt.removed_in) and served is None:
                served = replacement
            replacement = nxt.replacement if nxt is not None else None
        return served

    def kinds(self) -> set[tuple[str, str]]:
        """Every ``(group, kind)`` with a deprecated version: what a live cluster is searched for."""
        return {(e.group, e.kind) for e in self.entries.values()}


def stage_of(api_version: str) -> str:
    """``alpha``, ``beta`` or ``ga``, from the version part of an apiVersion (``v1alpha3``, ``v2beta1``, ``v1``)."""
    version = api_version.rpartition("/")[2]
    if re.fullmatch(r"v\d+alpha\d+", version):
        return "alpha"
    if re.fullmatch(r"v\d+beta\d+", version):
        return "beta"
    return "ga"


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
            removed = raw["removedIn"]
            e = DeprecatedApi(
                api_version=str(raw["apiVersion"]),
                kind=str(raw["kind"]),
                stage=str(raw["stage"]),
                deprecated_in=_version(raw["deprecatedIn"], where),
                removed_in=_version(removed, where) if removed is not None else None,
                replacement=raw.get("replacement"),
                replacement_since=_version(since, where) if since is not None else None,
                source=str(raw["source"]),
                notes=str(raw.get("notes") or ""),
                replacement_kind=raw.get("replacementKind"),
            )
            if (e.api_version, e.kind) in entries:
                raise DataError(f"turbok/upgrade/data/deprecated_apis.yaml lists {where} twice")
            if e.removed_in is not None and e.removed_in < e.deprecated_in:
                raise DataError(f"turbok/upgrade/data/deprecated_apis.yaml: {where} is removed before it is deprecated")
            entries[(e.api_version, e.kind)] = e
        introduced = {
            (str(i["apiVersion"]), str(i["kind"])): _version(i["introducedIn"], f"{i['apiVersion']} {i['kind']}")
            for i in data["introduced"]
        }
        off = frozenset((str(i["apiVersion"]), str(i["kind"])) for i in data["introduced"]
                        if i.get("enabledByDefault") is False)
        return ApiCatalog(entries, introduced, _version(data["newestRelease"], "newestRelease"), str(data["asOf"]), off)
    except (KeyError, TypeError) as e:
        raise DataError(f"turbok/upgrade/data/deprecated_apis.yaml is malformed: missing or wrong field {e}") from e


@functools.cache
def api_catalog() -> ApiCatalog:
    """The packaged deprecation data (read once)."""
    text = resources.files("turbok.upgrade").joinpath("data/deprecated_apis.yaml").read_text(encoding="utf-8")
    return _load(yaml.safe_load(text))
