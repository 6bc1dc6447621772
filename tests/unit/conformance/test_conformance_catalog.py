"""The catalog is the five official checklists (1.33 .. 1.37), exactly; no draft requirement is pending."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from tests.unit.conformance.support import DATA
from turbok.conformance import catalog
from turbok.conformance.errors import UnsupportedVersionError

OFFICIAL = DATA / "checklists"
VERSIONS = ("1.33", "1.34", "1.35", "1.36", "1.37")


def _official(version: str) -> list[tuple[str, str, str, str]]:
    data = yaml.safe_load((OFFICIAL / f"AIConformance-{version}.yaml").read_text())
    return [(cat, item["id"], item["level"], item["description"]) for cat, items in data["spec"].items() for item in items]


def test_frozen_versions_are_the_official_ones() -> None:
    assert catalog.frozen_versions() == VERSIONS
    assert sorted(p.name for p in OFFICIAL.glob("AIConformance-*.yaml")) == [f"AIConformance-{v}.yaml" for v in VERSIONS]


@pytest.mark.parametrize("version", VERSIONS)
def test_catalog_matches_official_checklist(version: str) -> None:
    cl = catalog.checklist(version)
    got = [(r.category, r.id, r.level, r.description) for r in cl.requirements]
    assert got == _official(version)
    assert not cl.draft
    assert all(r.version == version and not r.draft for r in cl.requirements)
    official_meta = yaml.safe_load((OFFICIAL / f"AIConformance-{version}.yaml").read_text())["metadata"]
    assert cl.metadata == official_meta


@pytest.mark.parametrize("version", VERSIONS)
def test_packaged_checklist_is_byte_identical(version: str) -> None:
    packaged = resources.files("turbok.conformance").joinpath("checklists").joinpath(f"AIConformance-{version}.yaml").read_bytes()
    assert packaged == (OFFICIAL / f"AIConformance-{version}.yaml").read_bytes()


def test_known_level_changes_between_versions() -> None:
    assert catalog.checklist("1.33").get("dra_support").level == "SHOULD"  # type: ignore[union-attr]
    assert catalog.checklist("1.34").get("dra_support").level == "MUST"  # type: ignore[union-attr]
    assert catalog.checklist("1.36").get("dra_support") is None
    assert "k8sConformanceUrl" in catalog.checklist("1.35").metadata
    assert {r.id for r in catalog.checklist("1.36").requirements} - {r.id for r in catalog.checklist("1.35").requirements} == {
        "advanced_inference_ingress", "high_performance_networking", "disaggregated_inference"}


def test_1_37_is_1_36_plus_workload_sandboxing() -> None:
    """cncf/k8s-ai-conformance 287b44f: 1.36's fourteen requirements unchanged, plus workload_sandboxing."""
    cl, base = catalog.checklist("v1.37"), catalog.checklist("1.36")
    assert not cl.draft and cl.version == "1.37" and cl.metadata["kubernetesVersion"] == "v1.37"
    old = [(r.category, r.id, r.level, r.description) for r in base.requirements]
    assert [(r.category, r.id, r.level, r.description) for r in cl.requirements if r.id != "workload_sandboxing"] == old
    ws = cl.get("workload_sandboxing")
    assert ws is not None and (ws.category, ws.level, ws.draft) == ("security", "SHOULD", False)
    assert "process, memory, filesystem, and network access" in ws.description and "co-located pods" in ws.description
    ids = cl.ids
    i = ids.index("workload_sandboxing")
    assert ids[i - 1] == "secure_accelerator_access" and cl.requirements[i + 1].category == "operator"
    assert catalog.drafts() == () and catalog.draft_versions() == ()
    for v in VERSIONS[:-1]:
        assert catalog.checklist(v).get("workload_sandboxing") is None


def test_newer_requirements_are_extras_from_the_first_checklist_that_has_them() -> None:
    (ws,) = catalog.newer_requirements("1.36")
    assert (ws.id, ws.version, ws.extra, ws.counted) == ("workload_sandboxing", "1.37", True, False)
    newer = catalog.newer_requirements("1.35")
    assert [(r.id, r.version) for r in newer] == [("advanced_inference_ingress", "1.36"),
                                                  ("high_performance_networking", "1.36"),
                                                  ("disaggregated_inference", "1.36"), ("workload_sandboxing", "1.37")]
    assert catalog.newer_requirements("1.37") == ()


@pytest.mark.parametrize(("text", "expected"), [("1.35", "1.35"), ("v1.35", "1.35"), ("v1.35.2", "1.35"), ("1.35.0-gke.1", "1.35")])
def test_normalize_version(text: str, expected: str) -> None:
    assert catalog.normalize_version(text) == expected


@pytest.mark.parametrize("text", ["", "latest", "1", "v1.x"])
def test_normalize_rejects_garbage(text: str) -> None:
    with pytest.raises(UnsupportedVersionError, match="not a Kubernetes version"):
        catalog.normalize_version(text)


def test_unknown_version() -> None:
    with pytest.raises(UnsupportedVersionError, match=r"no AI Conformance checklist for Kubernetes 1\.32.*1\.33, 1\.34, 1\.35, 1\.36, 1\.37"):
        catalog.checklist("1.32")


def test_checklist_for_cluster_versions() -> None:
    cl, note = catalog.checklist_for_cluster(1, 34)
    assert cl.version == "1.34" and note is None
    cl, note = catalog.checklist_for_cluster(1, 38)
    assert cl.version == "1.37" and note is not None and "newer than the newest checklist (1.37)" in note
    with pytest.raises(UnsupportedVersionError, match="start at 1.33.*--version"):
        catalog.checklist_for_cluster(1, 31)
