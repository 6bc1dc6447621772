"""The catalog is the four official checklists, exactly, plus the 1.37 draft requirement."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from tests.unit.conformance.support import DATA
from turbok.conformance import catalog
from turbok.conformance.errors import UnsupportedVersionError

OFFICIAL = DATA / "checklists"
VERSIONS = ("1.33", "1.34", "1.35", "1.36")


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


def test_draft_workload_sandboxing() -> None:
    (draft,) = catalog.drafts()
    assert (draft.id, draft.category, draft.level, draft.version, draft.draft) == ("workload_sandboxing", "security", "SHOULD", "1.37", True)
    assert "strong isolation from the host node kernel" in draft.description
    assert catalog.draft_versions() == ("1.37",)
    for v in VERSIONS:
        assert catalog.checklist(v).get("workload_sandboxing") is None
    cl = catalog.checklist("v1.37")
    assert cl.draft and cl.version == "1.37"
    assert cl.get("workload_sandboxing") is not None and cl.get("workload_sandboxing").draft  # type: ignore[union-attr]
    # the draft builds on the newest frozen checklist, categories kept together
    base = catalog.checklist("1.36")
    assert [r.id for r in cl.requirements if r.id != "workload_sandboxing"] == base.ids
    ids = [r.id for r in cl.requirements]
    i = ids.index("workload_sandboxing")
    assert cl.requirements[i - 1].id == "secure_accelerator_access" and cl.requirements[i + 1].category == "operator"


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
    assert cl.version == "1.36" and note is not None and "newer than the newest checklist (1.36)" in note
    with pytest.raises(UnsupportedVersionError, match="start at 1.33.*--version"):
        catalog.checklist_for_cluster(1, 31)
