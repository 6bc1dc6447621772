"""`turbok upgrade` against a cluster double over HTTP on 127.0.0.1: live objects, skew, feature gates.

The double (conftest.py) replays a kubeadm cluster at 1.31.4; nothing here
needs a real cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from typer.testing import CliRunner

from tests.doubles import KubeApiDouble, Reject
from turbok.cli.main import app
from turbok.upgrade.apis import api_catalog
from turbok.upgrade.cluster import ClusterReader, connect
from turbok.upgrade.skew import Component

pytestmark = pytest.mark.integration

runner = CliRunner()


def upgrade(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["upgrade", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.stdout, r.stderr


def by_subject(findings: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        out.setdefault(f["subject"], []).append(f)
    return out


def test_check_reads_live_objects_helm_releases_skew_and_gates(kubeadm_131_double: tuple[KubeApiDouble, Path]) -> None:
    api, kubeconfig = kubeadm_131_double
    code, out, _ = upgrade("check", "--to", "1.33", "--kubeconfig", str(kubeconfig), "-o", "json")
    report = json.loads(out)
    assert code == 3 == report["exitCode"]
    assert report["inputs"]["cluster"]["apiserver"] == "1.31.4"
    found = by_subject(report["findings"])

    [web_] = found["Deployment/web -n shop"]  # what the user's manifest says, from last-applied
    assert (web_["kind"], web_["apiVersion"], web_["replacement"]) == ("removed", "apps/v1beta2", "apps/v1")
    assert web_["where"] == "cluster:shop/Deployment/web [last-applied]"

    [fs] = found["FlowSchema/batch-jobs"]  # a client still writing v1beta3, which 1.32 removes
    assert fs["removedIn"] == "1.32" and "managedFields: flow-operator" in fs["where"]

    [psp] = found["PodSecurityPolicy/shop-restricted -n shop"]  # from the deployed Helm release
    assert psp["where"].startswith("helm:shop/sh.helm.release.v1.shop.v3") and psp["replacement"] == ""
    assert "psp.yaml" in psp["where"]

    assert "Ingress/web -n shop" not in found  # managedFields history at a removed version
    assert "Ingress/old" not in " ".join(found)  # superseded Helm revision

    [n2] = found["kubelet n2"]
    assert n2["kind"] == "skew" and "with the control plane at 1.33" in n2["message"]
    gates = {s: f[0]["severity"] for s, f in found.items() if s.startswith("feature gate")}
    assert gates == {"feature gate InPlacePodVerticalScaling": "warning",
                     "feature gate AllowServiceLBStatusOnNonLB": "info"}
    assert any("last-applied-configuration is not JSON" in n for n in report["notes"])
    # it asked for metadata only, and with the token
    lists = [r for r in api.requests if r.path == "/apis/apps/v1/deployments"]
    assert lists and lists[0].query.get("limit") == "500"


def test_check_table_output(kubeadm_131_double: tuple[KubeApiDouble, Path]) -> None:
    _, kubeconfig = kubeadm_131_double
    code, out, _ = upgrade("check", "--to", "1.33", "--kubeconfig", str(kubeconfig))
    assert code == 3
    assert "cluster: http://127.0.0.1" in out and "running 1.31.4" in out
    assert "Deployment/web -n shop" in out and "exit code 3" in out


def test_snapshot_reads_control_plane_nodes_and_gates(kubeadm_131_double: tuple[KubeApiDouble, Path]) -> None:
    _, kubeconfig = kubeadm_131_double
    conn = connect(kubeconfig)
    with conn.client:
        snap = ClusterReader(conn.client, conn.server).snapshot()
    v = snap.versions
    assert [str(i.version) for i in v.of(Component.APISERVER)] == ["1.31.4"]
    assert [str(i.version) for i in v.of(Component.SCHEDULER)] == ["1.30.2"]
    assert sorted(str(i.version) for i in v.of(Component.KUBELET)) == ["1.29.10", "1.30.1", "1.31.4"]
    assert sorted(i.name for i in v.of(Component.KUBE_PROXY)) == ["n1", "n2"]  # n3 reports none
    assert snap.feature_gates is not None and len(snap.feature_gates) == 5


def test_plan_from_the_cluster(kubeadm_131_double: tuple[KubeApiDouble, Path]) -> None:
    _, kubeconfig = kubeadm_131_double
    code, out, _ = upgrade("plan", "--to", "1.33", "--kubeconfig", str(kubeconfig), "-o", "json")
    plan = json.loads(out)
    assert code == 3
    start = plan["from"]
    assert start["kube-apiserver"]["binary"] == "1.31.4"
    assert start["kube-scheduler"]["binary"] == "1.30.2" and start["kubelet"] == "1.29.10"
    kinds = [s["kind"] for s in plan["steps"]]
    # the 1.30 scheduler catches up first (a 1.32 binary emulating 1.31 is compatible back to 1.31 only);
    # then one minor at a time: 1.32 emulating 1.31, switch; 1.33 emulating 1.32, switch; kubelets 1.29 move
    # before the control plane becomes compatible back to 1.32 only (KEP-4330: min compatibility - 2)
    assert kinds == ["preflight", "controllers", "kube-apiserver", "controllers", "emulated-version",
                     "kube-apiserver", "controllers", "nodes", "emulated-version", "nodes"]
    assert plan["steps"][1]["components"]["kube-scheduler"]["binary"].startswith("1.31.")
    assert plan["steps"][2]["emulatedVersion"] == "1.31" and plan["steps"][5]["emulatedVersion"] == "1.32"
    assert plan["supportedUpstream"] is True
    blockers = {s["step"]: [b["subject"] for b in s["blockers"]] for s in plan["steps"] if s["blockers"]}
    assert blockers == {5: ["FlowSchema/batch-jobs"]}  # breaks when the control plane behaves as 1.32
    already = [f["subject"] for f in plan["findings"] if f["kind"] == "removed"]
    assert sorted(already) == ["Deployment/web -n shop", "PodSecurityPolicy/shop-restricted -n shop"]
    assert any(f["subject"] == "feature gate InPlacePodVerticalScaling" for f in plan["findings"])


def test_refused_reads_become_notes(kubeadm_131_double: tuple[KubeApiDouble, Path]) -> None:
    api, kubeconfig = kubeadm_131_double

    def forbid(event: Any) -> None:
        raise Reject(403, "Forbidden", 'secrets is forbidden: User "ci" cannot list resource "secrets"')

    api.store.on("read", forbid, group="", resource="secrets")
    code, out, _ = upgrade("check", "--to", "1.33", "--kubeconfig", str(kubeconfig), "-o", "json")
    report = json.loads(out)
    assert code == 3
    assert any(n.startswith("Helm releases (secrets) not read") and "403" in n for n in report["notes"])
    assert "PodSecurityPolicy/shop-restricted -n shop" not in by_subject(report["findings"])


def test_wrong_token_and_unreachable_cluster_exit_1(kubeadm_131_double: tuple[KubeApiDouble, Path],
                                                    tmp_path: Path) -> None:
    api, _ = kubeadm_131_double
    wrong = api.write_kubeconfig(tmp_path / "wrong", token="nope")
    code, out, err = upgrade("check", "--to", "1.33", "--kubeconfig", str(wrong))
    assert code == 1 and out == "" and "refused the kubeconfig's credentials (401" in err
    config = yaml.safe_load(wrong.read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"  # discard port: nothing listens
    gone = tmp_path / "gone"
    gone.write_text(yaml.safe_dump(config))
    code, _, err = upgrade("plan", "--to", "1.33", "--kubeconfig", str(gone))
    assert code == 1 and "cannot reach the apiserver at http://127.0.0.1:9" in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1


def test_lists_are_read_page_by_page(tmp_path: Path) -> None:
    pages = {
        "": {"metadata": {"continue": "page-2"}, "items": [
            {"metadata": {"name": "a", "namespace": "x", "uid": "1",
                          "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                          json.dumps({"apiVersion": "apps/v1beta1", "kind": "Deployment"})}}}]},
        "page-2": {"metadata": {}, "items": [
            {"metadata": {"name": "b", "namespace": "x", "uid": "2",
                          "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                          json.dumps({"apiVersion": "extensions/v1beta1", "kind": "Deployment"})}}}]},
    }
    seen: list[str] = []

    async def paged(request: web.Request) -> web.Response:
        token = request.query.get("continue", "")
        seen.append(token)
        return web.json_response({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", **pages[token]})

    fixture = {"version": {"major": "1", "minor": "35", "gitVersion": "v1.35.2"},
               "resources": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "deployments", "namespaced": True}]}
    api = KubeApiDouble(fixture, routes=[("GET", "/apis/apps/v1/deployments", paged)])
    with api.running():
        conn = connect(api.write_kubeconfig(tmp_path / "kc"))
        with conn.client:
            objs = ClusterReader(conn.client, conn.server).objects(api_catalog().kinds())
    assert seen == ["", "page-2"]
    assert [(o.name, o.api_version) for o in objs] == [("a", "apps/v1beta1"), ("b", "extensions/v1beta1")]


def test_kinds_served_only_in_a_non_preferred_version_are_found(tmp_path: Path) -> None:
    # a 1.20 cluster: batch/v1 is preferred but CronJob lives in batch/v1beta1 only
    cron = {"apiVersion": "batch/v1beta1", "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "ops", "uid": "c1",
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                         json.dumps({"apiVersion": "batch/v1beta1", "kind": "CronJob"})}}}
    fixture = {"version": {"major": "1", "minor": "20", "gitVersion": "v1.20.15"},
               "resources": [{"apiVersion": "batch/v1", "kind": "Job", "name": "jobs", "namespaced": True},
                             {"apiVersion": "batch/v1beta1", "kind": "CronJob", "name": "cronjobs", "namespaced": True}],
               "objects": [cron]}
    api = KubeApiDouble(fixture)
    with api.running():
        code, out, _ = upgrade("check", "--to", "1.25", "--kubeconfig", str(api.write_kubeconfig(tmp_path / "kc")),
                               "-o", "json")
    [f] = json.loads(out)["findings"]
    assert code == 3 and (f["subject"], f["removedIn"], f["replacement"]) == ("CronJob/nightly -n ops", "1.25", "batch/v1")


def _cluster_132(pods: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": {"major": "1", "minor": "32", "gitVersion": "v1.32.4", "platform": "linux/amd64"},
            "resources": [{"apiVersion": "v1", "kind": "Pod", "name": "pods", "namespaced": True},
                          {"apiVersion": "v1", "kind": "Node", "name": "nodes", "namespaced": False}],
            "objects": pods}


def _apiserver_pod(*args: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kube-apiserver-cp1", "namespace": "kube-system",
                         "labels": {"component": "kube-apiserver", "tier": "control-plane"}},
            "spec": {"containers": [{"name": "kube-apiserver", "image": "registry.k8s.io/kube-apiserver:v1.32.4",
                                     "command": ["kube-apiserver", *args]}]}}


def test_a_132_apiserver_s_emulation_is_read_from_its_pod_not_version(tmp_path: Path) -> None:
    """/version reports emulationMinor from 1.33 on: for 1.32, the Pod's flag is the witness, or a note says so."""
    from tests.integration.upgrade.conftest import TOKEN

    api = KubeApiDouble(_cluster_132([_apiserver_pod("--emulated-version=1.31")]), token=TOKEN)
    with api.running():
        conn = connect(api.write_kubeconfig(tmp_path / "kc"))
        with conn.client:
            snap = ClusterReader(conn.client, conn.server).snapshot()
    assert snap.apiserver.emulating and str(snap.apiserver.emulated) == "1.31"
    assert any("does not report its emulated version" in n for n in snap.notes)
    hidden = KubeApiDouble(_cluster_132([]), token=TOKEN)
    with hidden.running():
        conn = connect(hidden.write_kubeconfig(tmp_path / "kc2"))
        with conn.client:
            snap = ClusterReader(conn.client, conn.server).snapshot()
    assert not snap.apiserver.emulating
    assert any("--from-emulated-version" in n and "assumed it emulates nothing" in n for n in snap.notes)
