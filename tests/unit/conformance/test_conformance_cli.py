"""``turbok conformance list|run|validate``: output formats and exit codes (0 pass, 1 fail, 2 usage)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tests.unit.conformance.support import DATA, Cluster
from turbok.cli.main import app

runner = CliRunner()
FAST = ["--poll-interval", "0.01", "--timeout", "3", "--negative-wait", "0.2", "--autoscaling-timeout", "3"]


def test_list_matrix() -> None:
    result = runner.invoke(app, ["conformance", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    row = next(line for line in result.stdout.splitlines() if "dra_support" in line)
    assert [c.strip() for c in row.split("│")[3:8]] == ["SHOULD", "MUST", "MUST", "", ""]
    row = next(line for line in result.stdout.splitlines() if "workload_sandboxing" in line)
    assert [c.strip() for c in row.split("│")[3:8]] == ["", "", "", "", "SHOULD"]  # frozen in 1.37
    assert "draft requirement" not in result.stdout


def test_list_json() -> None:
    result = runner.invoke(app, ["conformance", "list", "--version", "v1.36", "-o", "json"])
    assert result.exit_code == 0
    (cl,) = json.loads(result.stdout)["checklists"]
    assert cl["version"] == "1.36" and len(cl["requirements"]) == 14
    everything = json.loads(runner.invoke(app, ["conformance", "list", "-o", "json"]).stdout)
    assert [c["version"] for c in everything["checklists"]] == ["1.33", "1.34", "1.35", "1.36", "1.37"]
    assert [c["version"] for c in json.loads(runner.invoke(app, ["conformance", "list", "-o", "json", "--no-drafts"]).stdout)["checklists"]][-1] == "1.37"
    (cl,) = json.loads(runner.invoke(app, ["conformance", "list", "--version", "1.37", "-o", "json"]).stdout)["checklists"]
    assert cl["draft"] is False and len(cl["requirements"]) == 15


def test_list_usage_errors() -> None:
    result = runner.invoke(app, ["conformance", "list", "--version", "1.2"])
    assert result.exit_code == 2 and "no AI Conformance checklist for Kubernetes 1.2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["conformance", "list", "-o", "yaml"])
    assert result.exit_code == 2 and "unknown output format 'yaml'" in result.stderr


def test_validate_exit_codes(tmp_path: Path) -> None:
    good = DATA / "submissions" / "v1.34" / "aks" / "PRODUCT.yaml"
    bad = DATA / "submissions" / "v1.34" / "gke" / "PRODUCT.yaml"
    result = runner.invoke(app, ["conformance", "validate", str(good)])
    assert result.exit_code == 0 and "valid" in result.stdout
    result = runner.invoke(app, ["conformance", "validate", str(good), str(bad)], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert f"{bad}:5: error: metadata.contactEmailAddress: missing required field contactEmailAddress" in result.stdout
    result = runner.invoke(app, ["conformance", "validate", "-o", "json", str(bad)])
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and data["valid"] is False and data["files"][0]["errors"] == 1
    assert data["files"][0]["findings"][0] == {"severity": "error", "location": "metadata.contactEmailAddress", "line": 5,
                                               "message": "missing required field contactEmailAddress (or contact_email_address)"}
    result = runner.invoke(app, ["conformance", "validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "is not a file" in result.stderr


def test_run_conformant_json(conformant_cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = runner.invoke(app, ["conformance", "run", "--kubeconfig", str(conformant_cluster.kubeconfig), "--focus", "gang|inference",
                                 "--output-dir", str(out), "-o", "json", *FAST])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(r["id"], r["status"]) for r in data["results"] if r["selected"]] == [
        ("ai_inference", "Passed"), ("gang_scheduling", "Passed"), ("advanced_inference_ingress", "Passed"),
        ("disaggregated_inference", "Passed")]  # the last two: what the 1.36 checklist adds, run as extras
    assert data["reports"]["junit.xml"] == str(out / "junit.xml") and (out / "PRODUCT.yaml").exists()
    assert "Kueue admitted" in result.stderr  # progress went to stderr


def test_run_nonconformant_human(nonconformant_cluster: Cluster, tmp_path: Path) -> None:
    result = runner.invoke(app, ["conformance", "run", "--kubeconfig", str(nonconformant_cluster.kubeconfig), "--focus", "gang|secure",
                                 "--output-dir", str(tmp_path / "o"), *FAST], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "✘ Failed  gang_scheduling [MUST] no gang scheduling solution found" in result.stdout
    assert "0 passed, 2 failed" in result.stdout and f"reports in {tmp_path / 'o'}" in result.stdout


def test_run_usage_errors(conformant_cluster: Cluster, tmp_path: Path) -> None:
    kc = str(conformant_cluster.kubeconfig)
    for args, message in (
        (["--focus", "("], "--focus '(' is not a regular expression"),
        (["--version", "0.9"], "no AI Conformance checklist"),
        (["--prometheus", "prometheus"], "--prometheus: 'prometheus' is not NAMESPACE/SERVICE:PORT"),
        (["-o", "xml"], "unknown output format 'xml'"),
        (["--context", "nope"], "context 'nope' not found"),
    ):
        result = runner.invoke(app, ["conformance", "run", "--kubeconfig", kc, "--output-dir", str(tmp_path / "x"), *args])
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
    result = runner.invoke(app, ["conformance", "run", "--kubeconfig", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "x").exists()


def test_run_unreachable_cluster(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    kc.write_text(yaml.safe_dump({"current-context": "c", "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                                  "users": [{"name": "c", "user": {}}], "contexts": [{"name": "c", "context": {"cluster": "c", "user": "c"}}]}))
    result = runner.invoke(app, ["conformance", "run", "--kubeconfig", str(kc)])
    assert result.exit_code == 1 and "cannot reach http://127.0.0.1:9" in result.stderr


def test_dry_run(conformant_cluster: Cluster, tmp_path: Path) -> None:
    result = runner.invoke(app, ["conformance", "run", "--kubeconfig", str(conformant_cluster.kubeconfig), "--dry-run",
                                 "--output-dir", str(tmp_path / "dry")], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "dry run: nothing was created" in result.stdout and "Kueue" in result.stdout
    assert conformant_cluster.api.store.created == [] and not (tmp_path / "dry").exists()


def test_cleanup(conformant_cluster: Cluster) -> None:
    store = conformant_cluster.api.store
    store.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "turbok-conformance-zz9",
                                                                    "labels": {"app.kubernetes.io/managed-by": "turbok-conformance"}}})
    result = runner.invoke(app, ["conformance", "run", "--kubeconfig", str(conformant_cluster.kubeconfig), "--cleanup", "-o", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"deleted": 1, "errors": []}
    assert store.get("v1", "Namespace", "turbok-conformance-zz9") is None


def test_help_renders() -> None:
    for command in (["conformance"], ["conformance", "list"], ["conformance", "run"], ["conformance", "validate"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (command, result.output)
        assert "Usage:" in result.output
