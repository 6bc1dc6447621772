"""Reading objects from manifests: multi-document YAML, Helm output, Lists, JSON, and bad input."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from turbok.upgrade.errors import ManifestError
from turbok.upgrade.manifests import objects_from_text, read_manifests


def test_multi_document_yaml_with_empty_documents_and_comments() -> None:
    text = "---\n# nothing here\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: ns}\n---\n---\n" \
           "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: b\n...\n"
    objs, skipped = objects_from_text(text, "m.yaml")
    assert [(o.kind, o.name, o.namespace, o.line) for o in objs] == [("ConfigMap", "a", "ns", 4), ("Deployment", "b", "", 9)]
    assert skipped == 0


def test_helm_template_output_keeps_the_template_name() -> None:
    text = ("---\n# Source: shop/templates/ingress.yaml\napiVersion: extensions/v1beta1\nkind: Ingress\n"
            "metadata:\n  name: web\n---\n# Source: shop/templates/empty.yaml\n---\n"
            "# Source: shop/templates/sa.yaml\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n")
    objs, _ = objects_from_text(text, "out.yaml")
    assert [(o.kind, o.template, o.line) for o in objs] == [("Ingress", "shop/templates/ingress.yaml", 2),
                                                           ("ServiceAccount", "shop/templates/sa.yaml", 10)]
    assert objs[0].where() == "out.yaml:2 (shop/templates/ingress.yaml)"


def test_helm_dry_run_report_reads_only_the_manifests() -> None:
    text = ("NAME: shop\nLAST DEPLOYED: Mon Jul  1 10:00:00 2026\nNAMESPACE: default\nSTATUS: pending-install\n"
            "REVISION: 1\nUSER-SUPPLIED VALUES:\nreplicas: 2\n\nHOOKS:\n---\n# Source: shop/templates/job.yaml\n"
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nMANIFEST:\n---\n"
            "# Source: shop/templates/pdb.yaml\napiVersion: policy/v1beta1\nkind: PodDisruptionBudget\n"
            "metadata:\n  name: web\n\nNOTES:\n1. Get the application URL: kubectl get svc\n")
    objs, skipped = objects_from_text(text, "dry-run.txt")
    assert [(o.kind, o.line) for o in objs] == [("Job", 11), ("PodDisruptionBudget", 18)]
    assert skipped == 0  # the values and notes sections are not documents


def test_lists_and_typed_lists() -> None:
    text = ("apiVersion: v1\nkind: List\nitems:\n- apiVersion: batch/v1beta1\n  kind: CronJob\n  metadata: {name: c}\n"
            "- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n---\n"
            "apiVersion: rbac.authorization.k8s.io/v1beta1\nkind: RoleBindingList\nitems:\n"
            "- metadata: {name: rb, namespace: ns}\n")
    objs, _ = objects_from_text(text, "l.yaml")
    assert [(o.api_version, o.kind, o.name, o.item) for o in objs] == [
        ("batch/v1beta1", "CronJob", "c", 0), ("v1", "Service", "s", 1),
        ("rbac.authorization.k8s.io/v1beta1", "RoleBinding", "rb", 0)]
    assert objs[2].namespace == "ns" and objs[2].where() == "l.yaml:11 items[0]"


def test_json_list_from_kubectl_get(tmp_path: Path) -> None:
    (tmp_path / "all.json").write_text('{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"apps/v1beta2",'
                                       '"kind":"DaemonSet","metadata":{"name":"d","namespace":"x"}}]}')
    result = read_manifests([str(tmp_path)])
    assert [(o.api_version, o.kind, o.namespace) for o in result.objects] == [("apps/v1beta2", "DaemonSet", "x")]


def test_non_objects_are_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text("replicas: 2\nimage: {tag: v1}\n")
    (tmp_path / "Chart.yaml").write_text("name: shop\nversion: 0.1.0\n")
    (tmp_path / "list.yml").write_text("- a\n- b\n")
    (tmp_path / "notes.txt").write_text("not read")
    sub = tmp_path / "nested"
    sub.mkdir()
    (sub / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    result = read_manifests([str(tmp_path)])
    assert (result.files, len(result.objects), result.skipped) == (4, 1, 3)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: [oops\n")
    with pytest.raises(ManifestError, match=rf"^{p}:\d+: invalid YAML") as e:
        read_manifests([str(p)])
    assert e.value.line >= 4  # in the second document, not the first


def test_unrendered_helm_templates_get_a_hint(tmp_path: Path) -> None:
    p = tmp_path / "deploy.yaml"
    p.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n  labels:\n"
                 "    {{- include \"x\" . | nindent 4 }}\n")
    with pytest.raises(ManifestError, match="helm template"):
        read_manifests([str(p)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: v1\nmetadata: {name: x}\n", "string apiVersion and kind"),
        ("apiVersion: 1\nkind: Pod\n", "string apiVersion and kind"),
        ("apiVersion: v1\nkind: Pod\nmetadata: [1]\n", "metadata must be a mapping"),
        ("apiVersion: v1\nkind: List\nitems: [3]\n", r"items\[0\] of a List is not an object"),
        ("apiVersion: v1\nkind: List\nitems:\n- metadata: {name: x}\n", "needs apiVersion and kind"),
    ],
)
def test_objects_that_are_not_objects_are_errors(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        objects_from_text(text, "x.yaml")


def test_missing_paths_and_empty_directories_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file or directory"):
        read_manifests([str(tmp_path / "nope")])
    with pytest.raises(ManifestError, match="no \\*.yaml"):
        read_manifests([str(tmp_path)])
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError, match="not a text file"):
        read_manifests([str(tmp_path / "bin.yaml")])


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"))
    result = read_manifests(["-"])
    assert [o.where() for o in result.objects] == ["<stdin>:1"]


def test_document_content_on_the_separator_line() -> None:
    objs, _ = objects_from_text("--- {apiVersion: v1, kind: Pod, metadata: {name: p}}\n", "s.yaml")
    assert [(o.kind, o.line) for o in objs] == [("Pod", 1)]
