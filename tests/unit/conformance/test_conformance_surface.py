"""The public surface of turbok.conformance, and the import rule: a client of the cluster it checks."""

from __future__ import annotations

import subprocess
import sys

import turbok.conformance as conformance
from turbok.conformance import catalog
from turbok.conformance.checks import REGISTRY


def test_public_surface() -> None:
    assert sorted(conformance.__all__) == sorted([
        "CheckOptions", "CheckResult", "Checklist", "ClusterConfig", "ConformanceError", "KubeClient", "Requirement",
        "RunReport", "RunSettings", "Runner", "Status", "ValidationResult", "checklist", "checklist_for_cluster",
        "draft_versions", "frozen_versions", "load_kubeconfig", "validate_file", "validate_text", "write_reports"])
    for name in conformance.__all__:
        assert getattr(conformance, name) is not None


def test_one_check_per_requirement() -> None:
    ids = {r.id for v in catalog.frozen_versions() + catalog.draft_versions() for r in catalog.checklist(v).requirements}
    assert set(REGISTRY) == ids
    for cls in REGISTRY.values():
        assert len(cls.plan) > 40


def test_does_not_import_the_engine() -> None:
    code = (
        "import sys, turbok.conformance, turbok.cli.conformance, turbok.conformance.runner\n"
        "bad = [m for m in sys.modules if m.split('.')[:2] in (['turbok','store'], ['turbok','apiserver'], ['turbok','controllers'])]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
