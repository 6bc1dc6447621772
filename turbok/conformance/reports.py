"""Write what a run found: results.json, junit.xml, e2e.log, evidence files and a PRODUCT.yaml draft.

Layout of the output directory (PRODUCT.yaml refers to evidence by paths
relative to itself, as the CNCF submission rules want)::

    results.json          machine-readable, schema turbok.dev/conformance-results/v1 (docs/conformance.md)
    junit.xml             one testcase per requirement: failure / error (Unknown) / skipped
    e2e.log               every step of every check, in order, with the summary
    evidence/<id>.md      per check: requirement, result, steps, manifests applied, logs and metrics seen
    PRODUCT.yaml          the checklist of the run's version with status, evidence and notes filled in

Called by the CLI after ``Runner.run`` (also after an interrupted run).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import yaml

from turbok import __version__
from turbok.conformance import catalog
from turbok.conformance.catalog import Requirement
from turbok.conformance.results import CheckResult, RunReport, Status

__all__ = ["junit_xml", "product_yaml", "write_reports"]

EVIDENCE_DIR = "evidence"


def _timestamp(report: RunReport) -> str:
    return report.started_at or ""


def _origin(r: Requirement) -> str:
    """``draft `` or ``newer `` for requirements outside the checklist measured, else nothing."""
    return "draft " if r.draft else ("newer " if r.extra else "")


def evidence_markdown(report: RunReport, result: CheckResult) -> str:
    r = result.requirement
    lines = [
        f"# {r.id}: {result.status.value}",
        "",
        f"Requirement ({_origin(r)}v{r.version}, {r.level}, {r.category}): {r.description}",
        "",
        f"Checked by turbok {__version__} (`turbok conformance run`, run {report.run_id}) on {result.started_at or report.started_at} "
        f"against {report.cluster.server} (context {report.cluster.context}, Kubernetes {report.cluster.git_version or '?'}, "
        f"engine {report.cluster.engine}).",
        "",
        "## Result",
        "",
        f"**{result.status.value}**{' (N/A)' if result.not_applicable else ''}: {result.reason}",
        "",
        "## Steps",
        "",
    ]
    lines += [f"- `+{s.elapsed:7.2f}s` {s.message}" for s in result.steps] or ["- (none)"]
    for art in result.artifacts:
        fence = "~~~~" if "```" in art.content else "```"
        lines += ["", f"## {art.title}", "", f"{fence}{art.language}", art.content.rstrip("\n"), fence]
    if result.details:
        lines += ["", "## Details", "", "```json", json.dumps(result.details, indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"


def e2e_log(report: RunReport) -> str:
    out = [
        f"turbok conformance run {report.run_id} (turbok {__version__})",
        f"cluster: {report.cluster.server} (context {report.cluster.context}), Kubernetes {report.cluster.git_version or '?'}, "
        f"engine {report.cluster.engine}",
        f"checklist: {report.checklist_version}{' (draft)' if report.checklist_draft else ''}",
        f"started: {report.started_at}",
    ]
    out += [f"note: {n}" for n in report.notes]
    if report.namespace:
        out.append(f"test namespace: {report.namespace}")
    for res in report.results:
        r = res.requirement
        if not res.selected:
            out.append(f"--- {r.id} [{r.level}] ({r.category}): not selected")
            continue
        out.append(f"--- {r.id} [{r.level}{', draft' if r.draft else ''}] ({r.category}) started {res.started_at}")
        out += [f"  [+{s.elapsed:8.2f}s] {s.message}" for s in res.steps]
        out.append(f"  => {res.status.value}{' (N/A)' if res.not_applicable else ''}: {res.reason} ({res.duration:.1f}s)")
    c = report.counts()
    out.append(f"SUMMARY: {c['Passed']} passed, {c['Failed']} failed, {c['Skipped']} skipped, {c['Unknown']} unknown; "
               f"MUST requirements satisfied: {'yes' if report.must_satisfied else 'no'}; exit code {report.exit_code}")
    if report.interrupted:
        out.append("INTERRUPTED: the run was stopped with Ctrl-C")
    out.append(f"cleanup: deleted {report.cleanup_deleted} object(s)")
    out += [f"cleanup: left behind {x} (run `turbok conformance run --cleanup`)" for x in report.cleanup_leftovers]
    out.append(f"finished: {report.finished_at} ({report.duration:.1f}s)")
    return "\n".join(out) + "\n"


def junit_xml(report: RunReport) -> str:
    """JUnit XML: one testsuite, one testcase per requirement (not selected ones are skipped)."""
    c = report.counts()
    not_selected = sum(1 for r in report.results if not r.selected)
    totals = {"tests": str(len(report.results)), "failures": str(c["Failed"]), "errors": str(c["Unknown"]),
              "skipped": str(c["Skipped"] + not_selected), "time": f"{report.duration:.3f}"}
    root = ET.Element("testsuites", {"name": "turbok AI conformance", **totals})
    suite = ET.SubElement(root, "testsuite", {"name": f"AI Conformance v{report.checklist_version}", **totals,
                                              "timestamp": _timestamp(report).rstrip("Z"), "hostname": report.cluster.server})
    props = ET.SubElement(suite, "properties")
    for name, value in (("runId", report.run_id), ("context", report.cluster.context), ("gitVersion", report.cluster.git_version),
                        ("engine", report.cluster.engine), ("checklist", report.checklist_version), ("turbokVersion", __version__)):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for res in report.results:
        r = res.requirement
        tag = f"{r.level}, {_origin(r)}v{r.version}" if not r.counted else r.level
        case = ET.SubElement(suite, "testcase", {"name": f"[{tag}] {r.id}", "classname": f"ai-conformance.{r.category}",
                                                 "time": f"{res.duration:.3f}"})
        if not res.selected or res.status is Status.SKIPPED:
            ET.SubElement(case, "skipped", {"message": res.reason})
        elif res.status is Status.FAILED:
            ET.SubElement(case, "failure", {"message": res.reason, "type": "Failed"}).text = res.reason
        elif res.status is Status.UNKNOWN:
            ET.SubElement(case, "error", {"message": res.reason, "type": "Unknown"}).text = res.reason
        if res.steps:
            ET.SubElement(case, "system-out").text = "\n".join(f"+{s.elapsed:.2f}s {s.message}" for s in res.steps)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_STATUS = {Status.PASSED: "Implemented", Status.FAILED: "Not Implemented"}


def product_yaml(report: RunReport) -> str:
    """A PRODUCT.yaml draft for the run's checklist: metadata placeholders kept, status/evidence/notes filled."""
    checklist = catalog.checklist(report.checklist_version)
    by_id = {r.requirement.id: r for r in report.results}
    spec: dict[str, list[dict[str, Any]]] = {}
    for req in checklist.requirements:
        res = by_id.get(req.id)
        item: dict[str, Any] = {"id": req.id, "description": req.description, "level": req.level}
        if res is None or not res.selected:
            item.update(status="", evidence=[], notes="TODO: not checked by this run (--focus/--skip)")
        elif res.status in _STATUS:
            item.update(status=_STATUS[res.status], evidence=[res.evidence] if res.evidence else [], notes=res.reason)
        elif res.status is Status.SKIPPED and res.not_applicable:
            item.update(status="N/A", evidence=[res.evidence] if res.evidence else [], notes=res.reason)
        else:
            item.update(status="", evidence=[],
                        notes=f"TODO: verify manually ({res.status.value}: {res.reason})" + (f"; see {res.evidence}" if res.evidence else ""))
        spec.setdefault(req.category, []).append(item)
    metadata = dict(checklist.metadata)
    metadata["kubernetesVersion"] = f"v{checklist.version}"
    header = (
        f"# PRODUCT.yaml draft for the Kubernetes AI Conformance v{checklist.version} checklist"
        f"{' (DRAFT checklist, not frozen)' if checklist.draft else ''}.\n"
        f"# Generated by turbok {__version__} (run {report.run_id}, {report.started_at}) against {report.cluster.server}.\n"
        "# Before submitting: replace every [placeholder] in metadata, review each status and note, keep evidence files\n"
        "# next to this file, then run `turbok conformance validate PRODUCT.yaml`.\n"
    )
    return header + yaml.safe_dump({"metadata": metadata, "spec": spec}, sort_keys=False, allow_unicode=True, width=1000)


def write_reports(report: RunReport, output_dir: Path) -> dict[str, Path]:
    """Write every report into ``output_dir`` (created); returns name -> path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / EVIDENCE_DIR).mkdir(exist_ok=True)
    for res in report.results:
        if res.selected and res.steps:
            rel = f"{EVIDENCE_DIR}/{res.requirement.id}.md"
            (output_dir / rel).write_text(evidence_markdown(report, res))
            res.evidence = rel
    paths = {
        "results.json": output_dir / "results.json",
        "junit.xml": output_dir / "junit.xml",
        "e2e.log": output_dir / "e2e.log",
        "PRODUCT.yaml": output_dir / "PRODUCT.yaml",
    }
    paths["results.json"].write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    paths["junit.xml"].write_text(junit_xml(report))
    paths["e2e.log"].write_text(e2e_log(report))
    paths["PRODUCT.yaml"].write_text(product_yaml(report))
    return paths
