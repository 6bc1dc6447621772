"""Reports of a run: results.json, junit.xml, e2e.log, evidence files and the PRODUCT.yaml draft."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from tests.unit.conformance.support import Cluster, fast_options
from turbok.conformance import catalog
from turbok.conformance.reports import write_reports
from turbok.conformance.results import RunReport
from turbok.conformance.validator import validate_file


def _write(cluster: Cluster, tmp_path: Path, **settings: object) -> tuple[RunReport, Path]:
    report = cluster.run(**settings)
    out = tmp_path / "out"
    paths = write_reports(report, out)
    assert set(paths) == {"results.json", "junit.xml", "e2e.log", "PRODUCT.yaml"} and all(p.exists() for p in paths.values())
    return report, out


def test_results_json(conformant_cluster: Cluster, tmp_path: Path) -> None:
    report, out = _write(conformant_cluster, tmp_path)
    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == "turbok.dev/conformance-results/v1"
    assert data["checklist"] == {"version": "1.35", "draft": False}
    assert data["cluster"]["gitVersion"] == "v1.35.2" and data["cluster"]["engine"] == "kubernetes"
    assert data["summary"] == {"passed": 16, "failed": 0, "skipped": 0, "unknown": 0, "mustSatisfied": True, "exitCode": 0}
    ids = [r["id"] for r in data["results"]]
    assert ids == catalog.checklist("1.35").ids + [r.id for r in catalog.newer_requirements("1.35")]
    assert [r["id"] for r in data["results"] if r["extra"]][-1] == "workload_sandboxing"
    first = data["results"][0]
    assert set(first) == {"id", "category", "level", "draft", "extra", "selected", "status", "reason", "notApplicable",
                          "startedAt", "durationSeconds", "evidence", "details", "steps"}
    assert first["evidence"] == "evidence/dra_support.md" and first["steps"][0]["message"]
    assert data["cleanup"] == {"deleted": 1, "leftovers": []}  # the namespace; checks clean their own objects
    assert data["runId"] == report.run_id


def test_junit_is_valid_and_complete(nonconformant_cluster: Cluster, tmp_path: Path) -> None:
    report, out = _write(nonconformant_cluster, tmp_path, skip="autoscaling")
    root = ET.parse(out / "junit.xml").getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(report.results) == int(suite.get("tests", "-1"))
    assert int(suite.get("failures", "-1")) == len([c for c in cases if c.find("failure") is not None]) == 13
    assert int(suite.get("skipped", "-1")) == len([c for c in cases if c.find("skipped") is not None]) == 3
    assert int(suite.get("errors", "-1")) == len([c for c in cases if c.find("error") is not None]) == 0
    names = {c.get("name"): c for c in cases}
    assert "[MUST] gang_scheduling" in names and "[SHOULD, newer v1.37] workload_sandboxing" in names
    gang = names["[MUST] gang_scheduling"]
    assert gang.get("classname") == "ai-conformance.schedulingOrchestration"
    assert gang.find("failure").get("message").startswith("no gang scheduling solution found")  # type: ignore[union-attr]
    assert names["[MUST] cluster_autoscaling"].find("skipped").get("message") == "not selected (--focus/--skip)"  # type: ignore[union-attr]
    for case in cases:  # at most one outcome element per testcase, float times
        assert len([e for e in case if e.tag in ("failure", "error", "skipped")]) <= 1
        float(case.get("time", "x"))
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}  # type: ignore[union-attr]
    assert props["runId"] == report.run_id and props["checklist"] == "1.35"


def test_unknown_is_a_junit_error(conformant_cluster: Cluster, tmp_path: Path) -> None:
    conformant_cluster.sim.scale_down = False
    _, out = _write(conformant_cluster, tmp_path, focus="cluster_autoscaling", options=fast_options(autoscaling_timeout=1.5))
    case = next(c for c in ET.parse(out / "junit.xml").getroot().iter("testcase") if c.get("name") == "[MUST] cluster_autoscaling")
    err = case.find("error")
    assert err is not None and err.get("type") == "Unknown" and err.get("message", "").startswith("scale-up verified")


def test_e2e_log_and_evidence(conformant_cluster: Cluster, tmp_path: Path) -> None:
    report, out = _write(conformant_cluster, tmp_path, focus="gang")
    log = (out / "e2e.log").read_text()
    assert f"turbok conformance run {report.run_id}" in log
    assert "--- gang_scheduling [MUST] (schedulingOrchestration)" in log
    assert "  => Passed: Kueue admitted 3 co-scheduled pods" in log
    assert "--- ai_inference [MUST] (networking): not selected" in log
    assert "SUMMARY: 1 passed, 0 failed, 0 skipped, 0 unknown" in log
    evidence = (out / "evidence" / "gang_scheduling.md").read_text()
    assert evidence.startswith("# gang_scheduling: Passed\n")
    assert "## Job tc-gang-scheduling-" in evidence and "kueue.x-k8s.io/queue-name" in evidence
    assert sorted(p.name for p in (out / "evidence").iterdir()) == ["gang_scheduling.md"]


def test_product_yaml_draft(conformant_cluster: Cluster, tmp_path: Path) -> None:
    conformant_cluster.api.store.remove(conformant_cluster.api.store.resource_for("v1", "ConfigMap"), "kube-system", "cluster-autoscaler-status")
    _, out = _write(conformant_cluster, tmp_path)
    text = (out / "PRODUCT.yaml").read_text()
    assert text.startswith("# PRODUCT.yaml draft for the Kubernetes AI Conformance v1.35 checklist.")
    doc = yaml.safe_load(text)
    items = {i["id"]: i for cat in doc["spec"].values() for i in cat}
    assert list(items) == catalog.checklist("1.35").ids  # the draft requirement is not part of the v1.35 file
    assert items["gang_scheduling"]["status"] == "Implemented" and items["gang_scheduling"]["evidence"] == ["evidence/gang_scheduling.md"]
    assert items["cluster_autoscaling"]["status"] == "N/A" and items["cluster_autoscaling"]["notes"].startswith("no cluster autoscaler found")
    assert doc["metadata"]["kubernetesVersion"] == "v1.35" and doc["metadata"]["vendorName"] == "[Vendor Name]"

    # Until the submitter fills in the metadata the validator refuses it, for exactly that reason.
    result = validate_file(out / "PRODUCT.yaml")
    assert {f.location for f in result.errors} == {f"metadata.{k}" for k in (
        "platformName", "platformVersion", "vendorName", "websiteUrl", "repoUrl", "documentationUrl", "productLogoUrl",
        "description", "contactEmailAddress", "k8sConformanceUrl")}
    doc["metadata"].update(platformName="Turbo", platformVersion="1.0", vendorName="Acme", websiteUrl="https://y.example",
                           repoUrl="https://github.com/y/t", documentationUrl="https://y.example/docs", productLogoUrl="https://y.example/l.svg",
                           description="d", contactEmailAddress="t@y.example",
                           k8sConformanceUrl="https://github.com/cncf/k8s-conformance/tree/master/v1.35/turbo")
    (out / "PRODUCT.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    result = validate_file(out / "PRODUCT.yaml")
    assert result.ok, result.errors


def test_product_yaml_of_a_failing_cluster(nonconformant_cluster: Cluster, tmp_path: Path) -> None:
    _, out = _write(nonconformant_cluster, tmp_path, version="1.36", focus="gang|virtualized|workload")
    doc = yaml.safe_load((out / "PRODUCT.yaml").read_text())
    items = {i["id"]: i for cat in doc["spec"].values() for i in cat}
    assert items["gang_scheduling"]["status"] == "Not Implemented"
    assert items["virtualized_accelerator"]["status"] == "N/A"
    assert items["ai_inference"] == {**items["ai_inference"], "status": "", "evidence": [], "notes": "TODO: not checked by this run (--focus/--skip)"}
    errors = {(f.location, f.message) for f in validate_file(out / "PRODUCT.yaml").errors}
    assert ("spec.schedulingOrchestration[gang_scheduling].status",
            "is 'Not Implemented' but the requirement is MUST: it must be 'Implemented'") in errors
