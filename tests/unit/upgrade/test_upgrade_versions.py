"""Versions: parsing what clusters report, ordering, and the release catalog's refusals."""

from __future__ import annotations

import pytest

from turbok.upgrade.errors import UnknownVersionError, VersionError
from turbok.upgrade.versions import ReleaseCatalog, Version, parse_version


@pytest.mark.parametrize(
    ("text", "expected", "suffix"),
    [
        ("1.32", Version(1, 32), ""),
        ("1.32.4", Version(1, 32, 4), ""),
        ("v1.32.4", Version(1, 32, 4), ""),
        ("v1.30.2-gke.1587003", Version(1, 30, 2), "-gke.1587003"),
        ("v1.33.1+k3s1", Version(1, 33, 1), "+k3s1"),
        (" 1.35.0-rc.1 ", Version(1, 35, 0), "-rc.1"),
    ],
)
def test_parse_accepts_what_clusters_report(text: str, expected: Version, suffix: str) -> None:
    v = parse_version(text)
    assert v == expected
    assert v.suffix == suffix


@pytest.mark.parametrize("text", ["", "banana", "1", "1.x", "2.0.0", "v1.32.4.5", "1.32.-1"])
def test_parse_refuses_non_versions_naming_the_flag(text: str) -> None:
    with pytest.raises(VersionError, match="--to"):
        parse_version(text, what="--to")


def test_ordering_puts_a_bare_minor_before_its_patches() -> None:
    assert Version(1, 32) < Version(1, 32, 0) < Version(1, 32, 4) < Version(1, 33)
    assert max(Version(1, 35, 1), Version(1, 35)) == Version(1, 35, 1)
    assert Version(1, 35, 7).mm == Version(1, 35)
    assert Version(1, 35, 7).add_minor(-3) == Version(1, 32)
    assert Version(1, 35).minors_since(Version(1, 32, 9)) == 3


def test_suffix_does_not_change_equality() -> None:
    assert parse_version("v1.32.4-eks-1") == parse_version("1.32.4")


def test_catalog_resolves_a_minor_to_its_newest_patch(releases: ReleaseCatalog) -> None:
    newest_patch = releases.latest_patch[Version(1, 35)]
    assert releases.resolve(Version(1, 35)) == Version(1, 35, newest_patch)
    assert releases.resolve(Version(1, 35, 1)) == Version(1, 35, 1)


def test_catalog_covers_every_release_from_116_to_its_newest(releases: ReleaseCatalog) -> None:
    assert releases.oldest == Version(1, 16)
    minors = releases.minors(releases.oldest, releases.newest)
    assert [m.minor for m in minors] == list(range(16, releases.newest.minor + 1))
    assert releases.newest >= Version(1, 36)


def test_catalog_refuses_unknown_minors_with_the_known_range(releases: ReleaseCatalog) -> None:
    with pytest.raises(UnknownVersionError, match=r"1\.99.*upgrade turbok.*1\.16 to"):
        releases.require(Version(1, 99))
    with pytest.raises(UnknownVersionError, match=r"--from: unknown Kubernetes release 1\.12"):
        releases.resolve(Version(1, 12, 3), what="--from")


def test_a_patch_newer_than_the_data_is_known_but_flagged(releases: ReleaseCatalog) -> None:
    latest = releases.latest(Version(1, 34))
    newer = Version(1, 34, (latest.patch or 0) + 5)
    assert releases.knows(newer)
    assert releases.is_newer_than_data(newer)
    assert not releases.is_newer_than_data(latest)
