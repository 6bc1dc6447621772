"""`turbok upgrade`: output formats and the CI exit codes (0, 2, 3; 1 for every usage or input error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from turbok.cli.main import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["upgrade", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.stdout, r.stderr


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_plan_table_names_every_step_and_its_rollback() -> None:
    code, out, _ = run("plan", "--from", "1.32.4", "--to", "1.35")
    assert code == 0
    assert "strategy minor" in out and "skipped" not in out and "NOT SUPPORTED" not in out
    assert "--emulated-version=1.32" in out and "rollback to the state after step" in out
    assert "(vendor (GKE, EKS))" in out and "(upstream)" in out
    assert "exit code 0" in out


def test_skip_plans_say_they_are_unsupported_and_quote_the_policy() -> None:
    code, out, _ = run("plan", "--from", "1.32.4", "--to", "1.35", "--strategy", "skip")
    assert code == 0
    assert "binaries skipped with emulation: 1.33, 1.34" in out
    assert "UNSUPPORTED UPSTREAM" in out and "require kube-apiserver to not skip minor versions" in " ".join(out.split())
    assert "NOT SUPPORTED upstream" in out


def test_plan_json_is_machine_readable() -> None:
    code, out, _ = run("plan", "--from", "1.32.4", "--to", "1.35", "-o", "json")
    plan = json.loads(out)
    assert code == 0 and plan["kind"] == "UpgradePlan" and plan["exitCode"] == 0
    assert plan["supportedUpstream"] is True and plan["strategy"] == "minor"
    assert [s["emulatedVersion"] for s in plan["steps"]] == [None, "1.32", "1.32", None, "1.33", "1.33", None,
                                                             "1.34", "1.34", None, None]
    labels = {s["kind"]: s["rollback"]["supportedBy"] for s in plan["steps"]}
    assert labels == {"preflight": "not-needed", "kube-apiserver": "vendor", "controllers": "upstream",
                      "emulated-version": "upstream", "nodes": "upstream"}


def test_a_plan_with_nothing_to_do_says_so() -> None:
    code, out, _ = run("plan", "--from", "1.36.9", "--to", "1.36")
    assert code == 0
    assert "None plan" not in out and "Nothing to do: the control plane already runs 1.36.9" in out


def test_flags_from_static_pods_become_blockers(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "kube-controller-manager.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: kube-controller-manager, namespace: kube-system}\n"
        "spec:\n  containers:\n  - name: kube-controller-manager\n    image: registry.k8s.io/kube-controller-manager:v1.36.3\n"
        "    command: [kube-controller-manager, --concurrent-service-syncs=5, --leader-elect=true]\n")
    (manifests / "etcd.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: etcd, namespace: kube-system}\n"
        "spec:\n  containers:\n  - name: etcd\n    image: registry.k8s.io/etcd:3.6.8-0\n    command: [etcd]\n")
    code, out, _ = run("plan", "--from", "1.36.3", "--to", "1.37", "--flags-from", str(manifests), "-o", "json")
    plan = json.loads(out)
    assert code == 3
    blockers = [(s["kind"], b["subject"]) for s in plan["steps"] for b in s["blockers"]]
    assert blockers == [("controllers", "kube-controller-manager --concurrent-service-syncs")]
    # the etcd static Pod says 3.6: 1.37 runs on etcd 3.7, one minor up, before the 1.37 kube-apiserver
    assert [s["components"]["etcd"] for s in plan["steps"] if s["kind"] == "etcd"] == ["3.7"]


def test_rollback_plan_and_refusal() -> None:
    code, out, _ = run("plan", "--from", "1.35.1", "--to", "1.34", "-o", "yaml")
    assert code == 0 and "direction: rollback" in out
    code, out, err = run("plan", "--from", "1.35.1", "--to", "1.33")
    assert code == 1 and out == ""
    assert "min compatibility version is 1.34" in one_error_line(err)


def test_plan_with_manifests_reports_blockers_with_exit_3(data_dir: Path) -> None:
    code, out, _ = run("plan", "--from", "1.31.2", "--to", "1.32", "-f", str(data_dir / "removed" / "v1.32.yaml"),
                       "-o", "json")
    plan = json.loads(out)
    assert code == 3 == plan["exitCode"]
    blockers = [b["subject"] for s in plan["steps"] for b in s["blockers"]]
    assert sorted(blockers) == ["FlowSchema/flowschema-flowcontrol-apiserver-k8s-io-v1beta3",
                                "PriorityLevelConfiguration/prioritylevelconfiguration-flowcontrol-apiserver-k8s-io-v1beta3"]


def test_check_exit_codes(data_dir: Path, tmp_path: Path) -> None:
    removed = str(data_dir / "removed")
    code, out, _ = run("check", "--to", "1.33", "-f", removed)
    assert code == 3 and "blocker" in out and "exit code 3" in out
    deprecated = tmp_path / "cron.yaml"
    deprecated.write_text("apiVersion: batch/v1beta1\nkind: CronJob\nmetadata: {name: c}\n")
    code, out, _ = run("check", "--to", "1.22", str(deprecated), "-o", "json")
    assert code == 2 and json.loads(out)["summary"] == {"deprecated": 1}
    clean = tmp_path / "ok.yaml"
    clean.write_text("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\n")
    code, out, _ = run("check", "--to", "1.36", "--manifests", str(clean))
    assert code == 0 and "No deprecated or removed APIs" in out


def test_check_flags_beta_apis_off_by_default_and_alpha_apis(tmp_path: Path) -> None:
    f = tmp_path / "dra.yaml"
    f.write_text("apiVersion: resource.k8s.io/v1beta2\nkind: DeviceClass\nmetadata: {name: gpu}\n---\n"
                 "apiVersion: networking.k8s.io/v1beta1\nkind: ServiceCIDR\nmetadata: {name: extra}\n---\n"
                 "apiVersion: resource.k8s.io/v1alpha3\nkind: DeviceTaintRule\nmetadata: {name: t}\n---\n"
                 "apiVersion: kueue.x-k8s.io/v1alpha1\nkind: Topology\nmetadata: {name: t}\n")
    code, out, _ = run("check", "--to", "1.34", str(f), "-o", "json")
    report = json.loads(out)
    kinds = {x["subject"]: x["kind"] for x in report["findings"]}
    # v1beta2 DeviceClass is not deprecated at 1.34, but kube-apiserver does not serve it by default
    assert kinds == {"DeviceClass/gpu": "off-by-default", "ServiceCIDR/extra": "deprecated",
                     "DeviceTaintRule/t": "alpha-api"}  # a CRD's v1alpha1 is not judged
    assert code == 2
    msg = next(x["message"] for x in report["findings"] if x["subject"] == "DeviceClass/gpu")
    assert "--runtime-config=resource.k8s.io/v1beta2=true" in msg
    cidr = next(x["message"] for x in report["findings"] if x["subject"] == "ServiceCIDR/extra")
    assert "also off by default" in cidr
    code, out, _ = run("check", "--to", "1.33", str(f), "-o", "json")
    assert {x["subject"]: x["kind"] for x in json.loads(out)["findings"]}["ServiceCIDR/extra"] == "off-by-default"
    code, out, _ = run("check", "--to", "1.36", str(f), "-o", "json")
    deprecated = next(x for x in json.loads(out)["findings"] if x["subject"] == "DeviceClass/gpu")
    assert deprecated["kind"] == "deprecated" and "also off by default" in deprecated["message"]


def test_check_judges_typed_lists_without_items(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("apiVersion: batch/v1beta1\nkind: CronJobList\nitems:\n- metadata: {name: a}\n---\n"
                 "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: policy/v1beta1, kind: PodSecurityPolicy, "
                 "metadata: {name: p}}\n")
    code, out, _ = run("check", "--to", "1.25", str(f), "-o", "json")
    subjects = sorted(x["subject"] for x in json.loads(out)["findings"])
    assert code == 3 and subjects == ["CronJob/a", "PodSecurityPolicy/p"]


def test_check_accepts_several_paths_after_one_flag(data_dir: Path) -> None:
    r = data_dir / "removed"
    code, out, _ = run("check", "--to", "1.36", "--manifests", str(r / "v1.16.yaml"), str(r / "v1.27.yaml"),
                       "-o", "json")
    assert code == 3 and json.loads(out)["inputs"]["manifests"]["files"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("plan", "--from", "1.32.4"), "Missing option '--to'"),
        (("plan", "--from", "1.32.4", "--to", "1.35", "--bogus"), "No such option: --bogus"),
        (("plan", "--from", "1.32.4", "--to", "1.35", "--strategy", "fast"), "--strategy"),
        (("plan", "--from", "1.32.4", "--to", "1.99"), "unknown Kubernetes release 1.99"),
        (("plan", "--from", "one.two", "--to", "1.35"), "'one.two' is not a Kubernetes version"),
        (("plan", "--to", "1.35"), "--from is required unless --kubeconfig"),
        (("check", "--to", "1.33"), "nothing to check"),
        (("check", "--to", "1.33", "--kubectl-version", "x"), "--kubectl-version: 'x' is not a Kubernetes version"),
        (("check", "--to", "1.99", "-f", "."), "unknown Kubernetes release 1.99"),
        (("apis", "--to", "latest"), "'latest' is not a Kubernetes version"),
        (("frobnicate",), "No such command 'frobnicate'"),
    ],
)
def test_usage_and_input_errors_exit_1_with_one_line(args: tuple[str, ...], message: str) -> None:
    code, _, err = run(*args)
    assert code == 1
    assert message in one_error_line(err)


def test_malformed_manifest_exits_1_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\ndata:\n  a: [1, 2\n")
    code, out, err = run("check", "--to", "1.33", "-f", str(bad))
    assert code == 1 and out == ""
    assert f"{bad}:" in one_error_line(err) and "invalid YAML" in err


def test_apis_lists_the_data_with_sources() -> None:
    code, out, _ = run("apis", "-o", "json")
    items = json.loads(out)["items"]
    assert code == 0 and len(items) > 50
    assert all(i["source"].startswith("https://") for i in items)
    code, out, _ = run("apis", "--to", "1.25", "-o", "json")
    kinds = {(i["apiVersion"], i["kind"]) for i in json.loads(out)["items"]}
    assert ("policy/v1beta1", "PodSecurityPolicy") in kinds and ("flowcontrol.apiserver.k8s.io/v1beta3", "FlowSchema") not in kinds
    code, out, _ = run("apis", "--to", "1.32")
    assert code == 0 and "FlowSchema" in out


def test_kubectl_version_alone_is_checked_against_the_target() -> None:
    code, out, _ = run("check", "--to", "1.35", "--kubectl-version", "1.33.2", "-o", "json")
    report = json.loads(out)
    assert code == 3 and [f["subject"] for f in report["findings"]] == ["kubectl local"]
    code, _, _ = run("check", "--to", "1.35", "--kubectl-version", "1.36.0")
    assert code == 0


def test_bare_group_prints_help_and_exits_1() -> None:
    code, out, _ = run()
    assert code == 1 and "plan" in out and "check" in out
