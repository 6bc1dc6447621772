"""The packaged deprecation data: complete against the guide, consistent, sourced, and queried right."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from turbok.upgrade.apis import ApiCatalog, ApiStatus
from turbok.upgrade.versions import Version

GUIDE = "https://kubernetes.io/docs/reference/using-api/deprecation-guide/#"


def V(minor: int) -> Version:
    return Version(1, minor)


def test_every_guide_removal_is_in_the_data_with_its_release_and_anchor(
        apis: ApiCatalog, guide_removals: list[dict[str, str | None]]) -> None:
    for r in guide_removals:
        e = apis.lookup(str(r["apiVersion"]), str(r["kind"]))
        assert e is not None, f"{r['apiVersion']} {r['kind']} missing"
        assert str(e.removed_in) == r["removedIn"], e
        assert e.source.startswith(GUIDE), e.source
        assert e.source.endswith(f"-v{str(r['removedIn']).replace('.', '')}"), e.source  # the release's section


def test_guide_entries_are_exactly_the_guide(apis: ApiCatalog, guide_removals: list[dict[str, str | None]]) -> None:
    from_guide = {(e.api_version, e.kind) for e in apis if e.source.startswith(GUIDE)}
    assert from_guide == {(str(r["apiVersion"]), str(r["kind"])) for r in guide_removals}


def test_the_guide_releases_with_removals_are_all_covered(apis: ApiCatalog) -> None:
    releases = {str(e.removed_in) for e in apis if e.source.startswith(GUIDE)}
    assert releases == {"1.16", "1.22", "1.25", "1.26", "1.27", "1.29", "1.32"}


def test_data_is_internally_consistent(apis: ApiCatalog) -> None:
    for e in apis:
        assert e.stage in ("alpha", "beta", "ga"), e
        assert e.source.startswith("https://"), e
        if e.removed_in is None:  # only GA versions are deprecated with no removal planned
            assert e.stage == "ga", e
            assert e.deprecated_in <= apis.newest_release
            continue
        assert e.stage != "ga", e
        assert e.deprecated_in <= e.removed_in, e
        if e.replacement is not None:
            assert e.replacement != e.api_version
            assert "/" in e.replacement or e.replacement == "v1"
        if e.removed_in > apis.newest_release:
            assert e.deprecated_in <= apis.newest_release, f"{e}: neither deprecated nor removed yet"


def test_the_data_file_names_its_sources_and_date() -> None:
    import turbok.upgrade

    text = (Path(turbok.upgrade.__file__).parent / "data" / "deprecated_apis.yaml").read_text()
    assert "https://kubernetes.io/docs/reference/using-api/deprecation-guide/" in text.split("schemaVersion")[0]
    doc = yaml.safe_load(text)
    assert doc["asOf"] and doc["sources"]["guide"] and doc["sources"]["lifecycle"]


@pytest.mark.parametrize(
    ("api_version", "kind", "target", "status"),
    [
        ("apps/v1beta1", "Deployment", 15, ApiStatus.DEPRECATED),
        ("apps/v1beta1", "Deployment", 16, ApiStatus.REMOVED),
        ("batch/v1beta1", "CronJob", 20, ApiStatus.SERVED),  # deprecated from 1.21
        ("batch/v1beta1", "CronJob", 21, ApiStatus.DEPRECATED),
        ("batch/v1beta1", "CronJob", 25, ApiStatus.REMOVED),
        ("apps/v1", "Deployment", 36, ApiStatus.SERVED),
        ("flowcontrol.apiserver.k8s.io/v1", "FlowSchema", 28, ApiStatus.UNAVAILABLE),  # introduced in 1.29
        ("resource.k8s.io/v1", "ResourceClaim", 33, ApiStatus.UNAVAILABLE),
        ("resource.k8s.io/v1beta1", "ResourceClaim", 35, ApiStatus.DEPRECATED),
        ("resource.k8s.io/v1beta1", "ResourceClaim", 31, ApiStatus.UNAVAILABLE),  # before its introduction
        ("example.com/v1", "Widget", 30, ApiStatus.UNKNOWN),  # custom resources are not judged
        ("v1", "Pod", 30, ApiStatus.SERVED),
    ],
)
def test_availability(apis: ApiCatalog, api_version: str, kind: str, target: int, status: ApiStatus) -> None:
    assert apis.availability(api_version, kind, V(target)).status is status


def test_replacements_follow_the_chain_to_what_the_target_serves(apis: ApiCatalog) -> None:
    fs = "flowcontrol.apiserver.k8s.io/v1beta1"
    assert apis.availability(fs, "FlowSchema", V(26)).replacement == "flowcontrol.apiserver.k8s.io/v1beta2"
    assert apis.availability(fs, "FlowSchema", V(33)).replacement == "flowcontrol.apiserver.k8s.io/v1"
    psp = apis.availability("extensions/v1beta1", "PodSecurityPolicy", V(22))
    assert (psp.status, psp.replacement) == (ApiStatus.REMOVED, "policy/v1beta1")
    assert apis.availability("extensions/v1beta1", "PodSecurityPolicy", V(25)).replacement is None


def test_deprecations_after_the_guide_come_from_the_lifecycle_tags(apis: ApiCatalog) -> None:
    vap = apis.lookup("admissionregistration.k8s.io/v1beta1", "ValidatingAdmissionPolicy")
    assert vap is not None and (str(vap.deprecated_in), str(vap.removed_in)) == ("1.31", "1.34")
    assert "github.com/kubernetes/api" in vap.source
    dra = apis.availability("resource.k8s.io/v1beta2", "ResourceClaim", V(36))
    assert dra.status is ApiStatus.DEPRECATED and dra.planned_removal and dra.replacement == "resource.k8s.io/v1"


def test_1_37_is_in_the_data(apis: ApiCatalog) -> None:
    assert str(apis.newest_release) == "1.37"
    ctb = apis.availability("certificates.k8s.io/v1beta1", "ClusterTrustBundle", V(37))
    assert (ctb.status, ctb.replacement) == (ApiStatus.DEPRECATED, "certificates.k8s.io/v1")
    assert apis.availability("certificates.k8s.io/v1", "ClusterTrustBundle", V(36)).status is ApiStatus.UNAVAILABLE
    assert apis.availability("networking.k8s.io/v1beta1", "ServiceCIDR", V(37)).status is ApiStatus.REMOVED
    endpoints = apis.availability("v1", "Endpoints", V(37))
    assert endpoints.status is ApiStatus.DEPRECATED and not endpoints.planned_removal
    assert endpoints.replacement == "discovery.k8s.io/v1 EndpointSlice"


@pytest.mark.parametrize(
    ("api_version", "kind", "target", "on"),
    [
        ("resource.k8s.io/v1beta1", "DeviceClass", 33, False),  # the list: DRA v1beta1/v1beta2,
        ("resource.k8s.io/v1beta2", "ResourceClaim", 35, False),
        ("networking.k8s.io/v1beta1", "ServiceCIDR", 33, False),  # ServiceCIDR/IPAddress v1beta1,
        ("networking.k8s.io/v1beta1", "IPAddress", 36, False),
        ("storage.k8s.io/v1beta1", "VolumeAttributesClass", 32, False),  # VolumeAttributesClass v1beta1
        ("resource.k8s.io/v1alpha3", "DeviceTaintRule", 36, False),  # alpha: always off
        ("resource.k8s.io/v1", "DeviceClass", 36, True),
        ("batch/v1beta1", "CronJob", 21, True),  # betas older than 1.24 were on by default
    ],
)
def test_which_versions_are_off_by_default(apis: ApiCatalog, api_version: str, kind: str, target: int,
                                          on: bool) -> None:
    assert apis.availability(api_version, kind, V(target)).enabled_by_default is on


def test_typed_list_kinds_are_judged_as_their_items(apis: ApiCatalog) -> None:
    assert apis.availability("batch/v1beta1", "CronJobList", V(25)).status is ApiStatus.REMOVED
    assert apis.availability("v1", "List", V(25)).status is ApiStatus.UNKNOWN


def test_kinds_cover_groups_for_live_listing(apis: ApiCatalog) -> None:
    kinds = apis.kinds()
    assert ("networking.k8s.io", "Ingress") in kinds and ("extensions", "Ingress") in kinds
    assert ("", "Pod") not in kinds  # core kinds older than the data are never listed
