"""Real kubectl against ``turbok serve``: what users type, with what kube-apiserver would answer.

Every test drives the kubectl on PATH (v1.32 here) with the control plane's
kubeconfig, over TLS with the bearer token, and checks both kubectl's output
and exit code and, where it matters, what the server then holds. Each test
works in namespaces of its own, so the session's control plane is shared
safely. A kubectl 1.20 (Debian 12's ``kubernetes-client``, which validates
against OpenAPI v2 protobuf) is exercised when ``TURBOK_LEGACY_KUBECTL``
names one, as ``scripts/test.sh`` does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.kubectl import (
    EXT,
    KUBECTL,
    MARKS,
    MODERN,
    Kubectl,
    items,
    make_kubectl,
    pool_yaml,
)
from tests.conftest import ControlPlaneProcess

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "agent-sandbox" / "examples"

pytestmark = MARKS


# ---------------------------------------------------------------- discovery, auth, explain


def test_discovery_and_version(kubectl: Kubectl) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    resources = kubectl("api-resources").stdout
    for line in ("sandboxes", "sandboxclaims", "sandboxtemplates", "sandboxwarmpools", "namespaces"):
        assert line in resources
    assert "swp" in resources and "extensions.agents.x-k8s.io/v1beta1" in resources
    crds = kubectl("get", "crd").stdout
    assert "sandboxes.agents.x-k8s.io" in crds and "CREATED AT" in crds
    kubectl("wait", "--for=condition=Established", "crd/sandboxwarmpools.extensions.agents.x-k8s.io", "--timeout=10s")


def test_a_wrong_token_is_refused(kubectl: Kubectl) -> None:
    done = kubectl("--token=not-the-token", "get", "sandboxes", ok=False)
    assert done.returncode == 1
    assert "Unauthorized" in done.stderr


def test_explain_reads_the_upstream_schemas(kubectl: Kubectl) -> None:
    spec = kubectl("explain", "sandboxwarmpool.spec").stdout
    assert "replicas\t<integer>" in spec and "sandboxTemplateRef\t<Object> -required-" in spec
    ports = kubectl("explain", "sandbox.spec.podTemplate.spec.containers.ports").stdout
    assert "containerPort\t<integer> -required-" in ports


@pytest.mark.skipif(not MODERN, reason="the kubectl on PATH is older than 1.27: no `explain --output`")
def test_explain_through_openapi_v2_protobuf(kubectl: Kubectl) -> None:
    legacy = kubectl("explain", "sandboxwarmpool.spec", "--output=plaintext-openapiv2").stdout
    assert "replicas\t<integer>" in legacy and "-required-" in legacy


# ---------------------------------------------------------------- the upstream examples


def test_the_upstream_examples_apply_and_list_with_their_printer_columns(kubectl: Kubectl) -> None:
    for namespace in ("hermes-demo", "sandbox-test"):
        kubectl("create", "namespace", namespace, ok=False)
    try:
        for path in sorted(EXAMPLES.glob("*.yaml")):
            out = kubectl("apply", "-f", str(path)).stdout
            assert "created" in out or "configured" in out or "unchanged" in out, out
        templates = kubectl("get", "sandboxtemplates", "-A").stdout.splitlines()
        assert templates[0].split() == ["NAMESPACE", "NAME", "AGE"]
        names = {line.split()[1] for line in templates[1:]}
        assert {"aider-browser-template", "hermes-agent", "python-counter-template",
                "python-sandbox-template"} <= names
        pools = kubectl("get", "swp", "-n", "hermes-demo").stdout.splitlines()
        assert pools[0].split() == ["NAME", "READY", "DESIRED", "AGE"]
        assert pools[1].split()[:1] == ["hermes-pool"] and pools[1].split()[2] == "2"
        claims = kubectl("get", "sandboxclaims", "-n", "hermes-demo").stdout.splitlines()
        assert claims[0].split()[:4] == ["NAME", "READY", "SANDBOX", "REASON"]
        assert {"hermes-alice", "hermes-mallory"} == {line.split()[0] for line in claims[1:]}
        sandbox = kubectl("get", "sandbox", "hello-world", "-o", "yaml").stdout
        assert yaml.safe_load(sandbox)["spec"]["podTemplate"]["spec"]["restartPolicy"] == "Never"
    finally:
        kubectl("delete", "-f", str(EXAMPLES / "aider-sandbox__claim.yaml"), "-f",
                str(EXAMPLES / "aider-sandbox__warmpool.yaml"), "-f", str(EXAMPLES / "aider-sandbox__template.yaml"),
                "-f", str(EXAMPLES / "hello-world-sandbox__hello-world.yaml"), "--wait=false", ok=False)
        kubectl("delete", "namespace", "hermes-demo", "sandbox-test", "--wait=false", ok=False)


# ---------------------------------------------------------------- everyday verbs


def test_get_output_formats(kubectl: Kubectl, ns: str) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml("p1", 0, labels={"team": "red"}))
    kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml("p2", 0, labels={"team": "blue"}))
    as_yaml = yaml.safe_load(kubectl("get", "swp", "p1", "-n", ns, "-o", "yaml").stdout)
    assert as_yaml["kind"] == "SandboxWarmPool" and as_yaml["metadata"]["namespace"] == ns
    as_json = json.loads(kubectl("get", "swp", "p1", "-n", ns, "-o", "json").stdout)
    assert as_json["metadata"]["uid"] == as_yaml["metadata"]["uid"]
    assert kubectl("get", "swp", "-n", ns, "-o", "jsonpath={.items[*].metadata.name}").stdout == "p1 p2"
    assert kubectl("get", "swp", "p2", "-n", ns, "-o", "jsonpath={.spec.sandboxTemplateRef.name}").stdout == "t"
    assert kubectl("get", "swp", "-n", ns, "-o", "name").stdout.split() == [
        "sandboxwarmpool.extensions.agents.x-k8s.io/p1", "sandboxwarmpool.extensions.agents.x-k8s.io/p2"]
    assert kubectl("get", "swp", "-n", ns, "-l", "team=red", "-o", "name").stdout.strip().endswith("/p1")
    assert kubectl("get", "swp", "-n", ns, "-l", "team in (red,blue),team!=red", "-o", "name").stdout.strip() \
        .endswith("/p2")
    by_field = kubectl("get", "swp", "-n", ns, "--field-selector", "metadata.name=p2", "-o", "name").stdout
    assert by_field.strip().endswith("/p2")
    labels = kubectl("get", "swp", "-n", ns, "--show-labels").stdout
    assert "LABELS" in labels and "team=red" in labels
    wide = kubectl("get", "sandboxwarmpools.extensions.agents.x-k8s.io", "-n", ns, "-o", "wide").stdout
    assert wide.splitlines()[0].split() == ["NAME", "READY", "DESIRED", "AGE"]
    nothing = kubectl("get", "swp", "-n", ns, "-l", "team=green")
    assert nothing.stdout == "" and "No resources found" in nothing.stderr
    missing = kubectl("get", "swp", "nope", "-n", ns, ok=False)
    assert missing.returncode == 1
    assert 'sandboxwarmpools.extensions.agents.x-k8s.io "nope" not found' in missing.stderr


def test_apply_twice_then_changed(kubectl: Kubectl, ns: str) -> None:
    manifest = pool_yaml("p", 0, labels={"a": "1", "b": "2"})
    assert "created" in kubectl("apply", "-n", ns, "-f", "-", stdin=manifest).stdout
    assert "unchanged" in kubectl("apply", "-n", ns, "-f", "-", stdin=manifest).stdout
    changed = pool_yaml("p", 1, labels={"a": "1"})  # replicas changed, label b no longer declared
    assert "configured" in kubectl("apply", "-n", ns, "-f", "-", stdin=changed).stdout
    obj = json.loads(kubectl("get", "swp", "p", "-n", ns, "-o", "json").stdout)
    assert obj["spec"]["replicas"] == 1 and obj["metadata"]["generation"] == 2
    assert obj["metadata"]["labels"] == {"a": "1"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    assert "unchanged" in kubectl("apply", "-n", ns, "-f", "-", stdin=changed).stdout
    dry = kubectl("apply", "-n", ns, "--dry-run=server", "-f", "-", stdin=pool_yaml("p", 0, labels={"a": "1"}))
    assert "(server dry run)" in dry.stdout
    assert kubectl("get", "swp", "p", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "1"
    diff = kubectl("diff", "-n", ns, "-f", "-", stdin=pool_yaml("p", 0, labels={"a": "1"}), ok=False)
    assert diff.returncode == 1 and "-  replicas: 1" in diff.stdout and "+  replicas: 0" in diff.stdout


def test_scale_label_annotate_patch(kubectl: Kubectl, ns: str) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml("p", 0))
    assert "scaled" in kubectl("scale", "-n", ns, "swp", "p", "--replicas=0").stdout
    scale = json.loads(kubectl("get", "--raw",
                               f"/apis/{EXT}/namespaces/{ns}/sandboxwarmpools/p/scale").stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 0
    assert "labeled" in kubectl("label", "-n", ns, "swp", "p", "tier=web").stdout
    assert "annotated" in kubectl("annotate", "-n", ns, "swp", "p", "note=hello world").stdout
    assert "patched" in kubectl("patch", "-n", ns, "swp", "p", "--type=merge",
                                "-p", '{"spec":{"sandboxTemplateRef":{"name":"t2"}}}').stdout
    assert "patched" in kubectl("patch", "-n", ns, "swp", "p", "--type=json",
                                "-p", '[{"op":"add","path":"/metadata/labels/extra","value":"x"}]').stdout
    obj = json.loads(kubectl("get", "swp", "p", "-n", ns, "-o", "json").stdout)
    assert obj["metadata"]["labels"] == {"tier": "web", "extra": "x"}
    assert obj["metadata"]["annotations"]["note"] == "hello world"
    assert obj["spec"]["sandboxTemplateRef"]["name"] == "t2"
    assert "labeled" in kubectl("label", "-n", ns, "swp", "p", "tier-").stdout  # "unlabeled" from 1.21 on
    bad_json = kubectl("patch", "-n", ns, "swp", "p", "--type=json",
                       "-p", '[{"op":"remove","path":"/spec/nothing"}]', ok=False)
    assert bad_json.returncode == 1 and "nothing" in bad_json.stderr
    bad_type = kubectl("patch", "-n", ns, "swp", "p", "--type=merge", "-p", '{"spec":{"replicas":"many"}}', ok=False)
    assert bad_type.returncode == 1 and "spec.replicas" in bad_type.stderr
    strategic = kubectl("patch", "-n", ns, "swp", "p", "-p", '{"spec":{"replicas":1}}', ok=False)
    assert strategic.returncode == 1 and "strategic merge patch" in strategic.stderr
    after = json.loads(kubectl("get", "swp", "p", "-n", ns, "-o", "json").stdout)
    assert after["spec"] == obj["spec"]  # failed patches changed nothing
    assert after["metadata"]["labels"] == {"extra": "x"}


def wait_deleted(kubectl: Kubectl, ns: str, ref: str, timeout: float) -> None:
    """`kubectl wait --for=delete`; kubectl 1.20's fails when the object is already gone, so poll there."""
    if MODERN:
        kubectl("wait", "-n", ns, "--for=delete", ref, f"--timeout={timeout:.0f}s")
        return
    deadline = time.monotonic() + timeout
    while kubectl("get", "-n", ns, ref, "--ignore-not-found", "-o", "name").stdout.strip():
        assert time.monotonic() < deadline, f"{ref} still exists after {timeout:.0f}s"
        time.sleep(0.2)


def test_delete_and_garbage_collection(kubectl: Kubectl, ns: str) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml("owner", 0))
    owner = json.loads(kubectl("get", "swp", "owner", "-n", ns, "-o", "json").stdout)
    dependent = {"apiVersion": EXT, "kind": "SandboxTemplate", "metadata": {"name": "dep", "ownerReferences": [
        {"apiVersion": EXT, "kind": "SandboxWarmPool", "name": "owner", "uid": owner["metadata"]["uid"]}]},
        "spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
    kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(dependent))
    assert 'deleted' in kubectl("delete", "-n", ns, "swp", "owner").stdout
    wait_deleted(kubectl, ns, "sandboxtemplate/dep", 20)
    gone = kubectl("get", "swp", "owner", "-n", ns, ok=False)
    assert gone.returncode == 1 and "NotFound" in gone.stderr
    again = kubectl("delete", "-n", ns, "swp", "owner", ok=False)
    assert again.returncode == 1 and "not found" in again.stderr
    assert kubectl("delete", "-n", ns, "swp", "owner", "--ignore-not-found").returncode == 0
    for name in ("a", "b", "c"):
        kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml(name, 0, labels={"batch": "x"}))
    kubectl("delete", "-n", ns, "swp", "-l", "batch=x")
    assert items(kubectl, "swp", "-n", ns) == []


def test_finalizers_hold_a_deletion(kubectl: Kubectl, ns: str) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml("held", 0))
    kubectl("patch", "-n", ns, "swp", "held", "--type=merge", "-p", '{"metadata":{"finalizers":["example.com/x"]}}')
    kubectl("delete", "-n", ns, "swp", "held", "--wait=false")
    held = json.loads(kubectl("get", "swp", "held", "-n", ns, "-o", "json").stdout)
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["example.com/x"]
    refused = kubectl("patch", "-n", ns, "swp", "held", "--type=json",
                      "-p", '[{"op":"add","path":"/metadata/finalizers/-","value":"example.com/y"}]', ok=False)
    assert refused.returncode == 1 and "no new finalizers" in refused.stderr
    kubectl("patch", "-n", ns, "swp", "held", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    wait_deleted(kubectl, ns, "swp/held", 10)


def test_namespaces_contain_and_delete_their_objects(kubectl: Kubectl) -> None:
    names = ["compat-ns-one", "compat-ns-two"]
    for name in names:
        kubectl("delete", "namespace", name, "--ignore-not-found")
    assert "created" in kubectl("create", "namespace", names[0]).stdout
    manifest = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": names[1]}})
    assert "created" in kubectl("apply", "-f", "-", stdin=manifest).stdout
    assert "unchanged" in kubectl("apply", "-f", "-", stdin=manifest).stdout
    for name in names:
        kubectl("apply", "-n", name, "-f", "-", stdin=pool_yaml("p", 0))
    listed = kubectl("get", "swp", "-A").stdout.splitlines()
    assert listed[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert {(line.split()[0], line.split()[1]) for line in listed[1:]} >= {(names[0], "p"), (names[1], "p")}
    mismatch = kubectl("apply", "-n", names[0], "-f", "-", stdin=pool_yaml("q", 0, namespace=names[1]), ok=False)
    assert mismatch.returncode == 1 and "namespace" in mismatch.stderr
    statuses = kubectl("get", "ns", names[0]).stdout.splitlines()
    assert statuses[0].split() == ["NAME", "STATUS", "AGE"] and statuses[1].split()[1] == "Active"
    assert "labeled" in kubectl("label", "ns", names[0], "team=compat").stdout
    assert kubectl("get", "ns", "-l", "team=compat", "-o", "name").stdout.strip() == f"namespace/{names[0]}"
    started = time.monotonic()
    assert "deleted" in kubectl("delete", "namespace", names[0]).stdout  # waits until it is gone
    assert time.monotonic() - started < 30
    assert kubectl("get", "ns", names[0], ok=False).returncode == 1
    left = kubectl("get", "swp", "-n", names[0])
    assert "No resources found" in left.stderr
    assert [o["metadata"]["namespace"] for o in items(kubectl, "swp", "-A")].count(names[1]) == 1
    missing = kubectl("apply", "-n", "compat-ns-none", "-f", "-", stdin=pool_yaml("p", 0), ok=False)
    assert missing.returncode == 1 and 'namespaces "compat-ns-none" not found' in missing.stderr
    kubectl("delete", "namespace", names[1])


def test_wait_for_a_claim_to_be_ready(kubectl: Kubectl, control_plane: ControlPlaneProcess) -> None:
    kubectl("create", "namespace", "sandbox-test", ok=False)
    try:
        kubectl("apply", "-f", str(EXAMPLES / "python-sandbox-template.yaml"))
        kubectl("apply", "-f", str(EXAMPLES / "python-sandbox-warmpool.yaml"))
        claim = {"apiVersion": EXT, "kind": "SandboxClaim", "metadata": {"name": "compat-claim"},
                 "spec": {"warmPoolRef": {"name": "python-sandbox-warmpool"}}}
        kubectl("apply", "-n", "sandbox-test", "-f", "-", stdin=json.dumps(claim))
        waited = kubectl("wait", "-n", "sandbox-test", "--for=condition=Ready", "sandboxclaim/compat-claim",
                         "--timeout=90s", ok=False, timeout=120)
        if waited.returncode != 0:
            described = kubectl("describe", "-n", "sandbox-test", "sandboxclaim/compat-claim", ok=False).stdout
            raise AssertionError(f"the claim did not become Ready (are the images built? `turbok image "
                                 f"build-base`):\n{waited.stderr}\n{described}")
        assert "condition met" in waited.stdout
        row = kubectl("get", "sandboxclaim", "compat-claim", "-n", "sandbox-test").stdout.splitlines()[1].split()
        assert row[:3] == ["compat-claim", "True", "compat-claim"] or row[1] == "True"
        described = kubectl("describe", "-n", "sandbox-test", "sandboxclaim/compat-claim").stdout
        assert "Name:         compat-claim" in described and "Events:" in described
    finally:
        kubectl("delete", "namespace", "sandbox-test", "--wait=false", ok=False)


def test_get_watch_prints_changes(kubectl: Kubectl, ns: str, control_plane: ControlPlaneProcess,
                                  tmp_path: Path) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml("p", 0))
    assert KUBECTL is not None
    with open(tmp_path / "watch.out", "w") as out:  # a file, not a pipe: kubectl may write while we wait
        watch = subprocess.Popen([KUBECTL, "get", "swp", "-n", ns, "--watch", "--output-watch-events"],
                                 env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}, stdout=out,
                                 stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while "ADDED" not in (tmp_path / "watch.out").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        kubectl("label", "-n", ns, "swp", "p", "seen=yes")
        kubectl("delete", "-n", ns, "swp", "p")
        while "DELETED" not in (tmp_path / "watch.out").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watch.terminate()
        watch.wait(10)
    lines = [line.split() for line in (tmp_path / "watch.out").read_text().splitlines()]
    assert lines[0] == ["EVENT", "NAME", "READY", "DESIRED", "AGE"]
    events = [line[:2] for line in lines[1:]]
    # The label change is one MODIFIED; the pool controller's status writes may add more.
    assert events[0] == ["ADDED", "p"] and events[-1] == ["DELETED", "p"]
    assert ["MODIFIED", "p"] in events[1:-1] and set(map(tuple, events[1:-1])) == {("MODIFIED", "p")}


def test_describe_and_events(kubectl: Kubectl, ns: str) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml("p", 0, labels={"team": "red"}))
    described = kubectl("describe", "-n", ns, "swp", "p").stdout
    assert "Name:         p" in described and "team=red" in described and "Replicas:  0" in described
    assert "Kind:         SandboxWarmPool" in described
    # kubectl aligns the Events line with the longest key, which depends on whether status is written yet.
    assert re.search(r"^Events:\s+<none>$", described, re.MULTILINE)
    assert "Status:       Active" in kubectl("describe", "namespace", ns).stdout
    pool = json.loads(kubectl("get", "swp", "p", "-n", ns, "-o", "json").stdout)
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "p.scaled"}, "type": "Normal",
             "involvedObject": {"apiVersion": EXT, "kind": "SandboxWarmPool", "name": "p", "namespace": ns,
                                "uid": pool["metadata"]["uid"]},
             "reason": "Scaled", "message": "scaled to 0", "count": 1, "source": {"component": "compat-test"},
             "firstTimestamp": pool["metadata"]["creationTimestamp"],
             "lastTimestamp": pool["metadata"]["creationTimestamp"]}
    kubectl("create", "-n", ns, "-f", "-", stdin=json.dumps(event))
    described = kubectl("describe", "-n", ns, "swp", "p").stdout
    assert "Scaled" in described and "scaled to 0" in described and "compat-test" in described
    listed = kubectl("get", "events", "-n", ns).stdout.splitlines()
    # kube-apiserver's event columns: the object as kind/name.
    assert listed[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert "Scaled" in listed[1] and "sandboxwarmpool/p" in listed[1]


# ---------------------------------------------------------------- bad input


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("a wrong type", {"spec": {"replicas": "three", "sandboxTemplateRef": {"name": "t"}}},
     'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string"'),
    ("a missing required field", {"spec": {"replicas": 1}}, "spec.sandboxTemplateRef: Required value"),
    ("a negative count", {"spec": {"replicas": -1, "sandboxTemplateRef": {"name": "t"}}},
     "should be greater than or equal to 0"),
    ("an unknown field", {"spec": {"replicas": 0, "colour": "red", "sandboxTemplateRef": {"name": "t"}}},
     'unknown field "spec.colour"'),
    ("an invalid name", {"metadata": {"name": "Bad_Name"}}, "a lowercase RFC 1123 subdomain"),
    ("a name too long", {"metadata": {"name": "x" * 254}}, "must be no more than 253 characters"),
    ("an unknown kind", {"kind": "SandboxWarmPoo"}, 'no matches for kind "SandboxWarmPoo"'),
    ("an unserved version", {"apiVersion": "extensions.agents.x-k8s.io/v1alpha1"},
     'no matches for kind "SandboxWarmPool" in version "extensions.agents.x-k8s.io/v1alpha1"'),
    ("an invalid label", {"metadata": {"name": "p", "labels": {"bad key": "x"}}}, "metadata.labels"),
]
#: What kubectl before 1.27 says instead, validating against the served OpenAPI v2 itself.
CLIENT_SIDE = {
    "a wrong type": 'ValidationError(SandboxWarmPool.spec.replicas): invalid type for '
                    'io.x-k8s.agents.extensions.v1beta1.SandboxWarmPool.spec.replicas: got "string", expected "integer"',
    "a missing required field": 'ValidationError(SandboxWarmPool.spec): missing required field "sandboxTemplateRef"',
    "an unknown field": 'ValidationError(SandboxWarmPool.spec): unknown field "colour"',
}


@pytest.fixture(scope="module")
def bad_input_ns(kubectl: Kubectl) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A namespace holding one object, and what the namespace holds: no bad manifest may change it."""
    ns = "compat-bad-input"
    kubectl("create", "namespace", ns)
    kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml("keep", 0, labels={"v": "1"}))
    # Let the pool controller write its status first: only what a bad manifest does may change nothing.
    deadline = time.monotonic() + 10
    while "status" not in items(kubectl, "swp", "-n", ns)[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    yield ns, items(kubectl, "swp,sandboxtemplates", "-n", ns)
    kubectl("delete", "namespace", ns, "--wait=false", ok=False)


@pytest.mark.parametrize(("what", "change", "message"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("verb", ["apply", "create"])
def test_bad_manifests_get_a_clear_error_and_change_nothing(kubectl: Kubectl, bad_input_ns: tuple[str, Any],
                                                            what: str, change: dict[str, Any], message: str,
                                                            verb: str) -> None:
    ns, before = bad_input_ns
    doc = yaml.safe_load(pool_yaml("p", 0))
    doc.update(change)
    done = kubectl(verb, "-n", ns, "-f", "-", stdin=yaml.safe_dump(doc), ok=False)
    assert done.returncode == 1, done.stdout
    assert (message if MODERN else CLIENT_SIDE.get(what, message)) in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # one clear error (kubectl adds a hint line for CRDs)
    assert items(kubectl, "swp,sandboxtemplates", "-n", ns) == before


def test_broken_yaml_and_server_side_apply(kubectl: Kubectl, ns: str) -> None:
    broken = kubectl("apply", "-n", ns, "-f", "-", stdin="apiVersion: v1\nkind: [unclosed\n", ok=False)
    assert broken.returncode == 1 and "error" in broken.stderr.lower()
    ssa = kubectl("apply", "--server-side", "-n", ns, "-f", "-", stdin=pool_yaml("p", 0), ok=False)
    assert ssa.returncode == 1 and "server-side apply is not supported" in ssa.stderr
    assert items(kubectl, "swp", "-n", ns) == []


def test_conflicting_updates_are_refused(kubectl: Kubectl, ns: str) -> None:
    kubectl("apply", "-n", ns, "-f", "-", stdin=pool_yaml("p", 0))
    stale = json.loads(kubectl("get", "swp", "p", "-n", ns, "-o", "json").stdout)
    kubectl("label", "-n", ns, "swp", "p", "moved=on")
    stale["spec"]["replicas"] = 1
    done = kubectl("replace", "-n", ns, "-f", "-", stdin=json.dumps(stale), ok=False)
    assert done.returncode == 1 and "the object has been modified" in done.stderr
    assert kubectl("get", "swp", "p", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "0"


def test_a_crash_loses_nothing_and_old_watches_get_410(make_control_plane: Callable[..., ControlPlaneProcess],
                                                        tmp_path: Path) -> None:
    import signal

    cp = make_control_plane(tmp_path / "home")
    assert cp.api_url.startswith("https://127.0.0.1:")
    run = make_kubectl(cp, tmp_path / "cache", KUBECTL or "kubectl")
    run("create", "namespace", "durable")
    for name in ("a", "b"):
        run("apply", "-n", "durable", "-f", "-", stdin=pool_yaml(name, 0, labels={"tier": name}))
    run("scale", "-n", "durable", "swp", "b", "--replicas=0")
    # The warm-pool controller writes status shortly after each change: wait for it, so that
    # "before" is the settled state and a write after the restart is a real difference.
    deadline = time.monotonic() + 30
    while True:
        before = items(run, "swp", "-n", "durable")
        if all(p.get("status", {}).get("observedGeneration") == p["metadata"]["generation"] for p in before):
            break
        assert time.monotonic() < deadline, f"warm pools never observed: {before}"
        time.sleep(0.1)
    rv = json.loads(run("get", "--raw", f"/apis/{EXT}/namespaces/durable/sandboxwarmpools").stdout)[
        "metadata"]["resourceVersion"]
    cp.stop(signal.SIGKILL)  # a crash, not a clean shutdown
    cp.start()
    run = make_kubectl(cp, tmp_path / "cache2", KUBECTL or "kubectl")
    assert items(run, "swp", "-n", "durable") == before
    old_watch = f"/apis/{EXT}/namespaces/durable/sandboxwarmpools?watch=true&resourceVersion={int(rv) - 1}"
    watch = run("get", "--raw", old_watch)
    event = json.loads(watch.stdout.splitlines()[0])
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    run("apply", "-n", "durable", "-f", "-", stdin=pool_yaml("c", 0))
    assert int(json.loads(run("get", "swp", "c", "-n", "durable", "-o", "json").stdout)["metadata"][
        "resourceVersion"]) > int(rv)


# ---------------------------------------------------------------- turbok's own verbs


def test_turbok_get_apply_delete(control_plane: ControlPlaneProcess, kubectl: Kubectl, ns: str,
                                 tmp_path: Path) -> None:
    manifest = tmp_path / "pool.yaml"
    manifest.write_text(pool_yaml("tp", 0, labels={"by": "turbok"}))

    def turbok(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "turbok", *args, "--kubeconfig", str(control_plane.kubeconfig)],
                              text=True,
                              capture_output=True, timeout=60, env={**os.environ, "COLUMNS": "200"})

    assert turbok("apply", "-n", ns, "-f", str(manifest)).stdout.strip() == "sandboxwarmpool/tp created"
    manifest.write_text(pool_yaml("tp", 1, labels={"by": "turbok"}))
    assert turbok("apply", "-n", ns, "-f", str(manifest)).stdout.strip() == "sandboxwarmpool/tp configured"
    assert "unchanged" in kubectl("apply", "-n", ns, "-f", str(manifest)).stdout  # kubectl agrees with turbok
    table = turbok("get", "swp", "-n", ns).stdout
    assert "NAME" in table and "DESIRED" in table and "tp" in table and " 1 " in table
    manifest.write_text(pool_yaml("tp", -3))
    bad = turbok("apply", "-n", ns, "-f", str(manifest))
    assert bad.returncode == 1 and "spec.replicas" in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    assert turbok("delete", "swp", "tp", "-n", ns).returncode == 0
    missing = turbok("delete", "swp", "tp", "-n", ns)
    assert missing.returncode == 1 and "not found" in missing.stdout + missing.stderr


# ---------------------------------------------------------------- kubectl 1.20 (Debian 12's)


LEGACY = os.environ.get("TURBOK_LEGACY_KUBECTL")


@pytest.mark.skipif(not LEGACY, reason="no legacy kubectl: set TURBOK_LEGACY_KUBECTL to a kubectl 1.20 binary "
                                       "(Debian 12's kubernetes-client)")
def test_legacy_kubectl_validates_with_openapi_v2_protobuf(control_plane: ControlPlaneProcess, ns: str,
                                                          tmp_path: Path) -> None:
    assert LEGACY is not None
    old = make_kubectl(control_plane, tmp_path / "cache", LEGACY)
    assert "created" in old("apply", "-n", ns, "-f", "-", stdin=pool_yaml("p", 0)).stdout
    assert "unchanged" in old("apply", "-n", ns, "-f", "-", stdin=pool_yaml("p", 0)).stdout
    unknown = yaml.safe_load(pool_yaml("q", 0))
    unknown["spec"]["colour"] = "red"
    done = old("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(unknown), ok=False)
    assert done.returncode == 1 and 'unknown field "colour"' in done.stderr
    wrong = old("apply", "-n", ns, "-f", "-", stdin=pool_yaml("q", 0).replace("replicas: 0", "replicas: x"), ok=False)
    assert wrong.returncode == 1 and "spec.replicas" in wrong.stderr
    assert "p" in old("get", "swp", "-n", ns).stdout
