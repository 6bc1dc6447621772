"""Snapshots and forks on a real control plane: a SandboxSnapshot of a running sandbox whose interpreter imported
numpy, two forks of it that diverge, a warm pool from it serving claims whose interpreter already holds numpy,
a sandbox put back to its snapshot, deletion, and idle auto-suspend with a transparent resume by the router."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ControlPlaneProcess
from tests.integration import heavyimage
from turbok.runtime.ids import sandbox_id

from .conftest import Kube, claim, pool

pytestmark = pytest.mark.integration

SNAPSHOT_API = "agents.turbok.dev/v1alpha1"
# The holder answers its state over loopback, asked by a process exec'd in the sandbox (through the router).
ASK = f"python3 -c \"{heavyimage.ASK_INSIDE}\""


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    images = heavyimage.build(tmp_path_factory.mktemp("images"))
    before = os.environ.get("TURBOK_IMAGES")
    os.environ["TURBOK_IMAGES"] = str(images)  # the control plane's images: the base one and numpy-sandbox
    try:
        process = ControlPlaneProcess(tmp_path_factory.mktemp("turbok-home")).start()
    finally:
        if before is None:
            os.environ.pop("TURBOK_IMAGES")
        else:
            os.environ["TURBOK_IMAGES"] = before
    yield process
    process.purge()


@pytest.fixture
def kube(cp: ControlPlaneProcess, request: pytest.FixtureRequest) -> Iterator[Kube]:
    name = "sn-" + request.node.name.replace("_", "-").lower()[:50].rstrip("-")
    k = Kube(cp, name)
    ns_res = k.api.resource("namespaces")
    k.api.create(ns_res, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield k
    k.api.delete(ns_res, name)
    k.close()


def pod_template(**annotations: str) -> dict:
    md = {"annotations": annotations} if annotations else {}
    return {"metadata": md, "spec": {"containers": [{
        "name": "main", "image": heavyimage.IMAGE,
        # Small requests: this 2-core node fits the source, its forks and a warm pool at once.
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}}}]}}


def numpy_sandbox(name: str, **annotations: str) -> dict:
    return {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": name},
            "spec": {"podTemplate": pod_template(**annotations)}}


def state(kube: Kube, name: str) -> dict:
    """The holder interpreter's state in sandbox ``name`` (its token, numpy loaded, pid), asked inside. A sandbox
    that started cold is Ready before its holder has imported numpy and listens: asked again for up to 60 s."""
    deadline = time.monotonic() + 60
    with kube.connect(name) as conn:
        while True:
            result = conn.commands.run(ASK, timeout=60)
            if "ConnectionRefusedError" not in result.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def run(kube: Kube, name: str, script: str) -> str:
    with kube.connect(name) as conn:
        result = conn.commands.run(script, timeout=60)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def take(kube: Kube, name: str, sandbox: str) -> dict:
    kube.create({"apiVersion": SNAPSHOT_API, "kind": "SandboxSnapshot", "metadata": {"name": name},
                 "spec": {"sandboxRef": {"name": sandbox}}})
    return kube.wait_condition(kube.api.resource("sandboxsnapshots.agents.turbok.dev"), name, timeout=90)


def snapshot_dirs(cp: ControlPlaneProcess) -> list[str]:
    root = cp.home / "pods" / ".snapshots"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def numpy_template(name: str, **annotations: str) -> dict:
    return {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
            "metadata": {"name": name}, "spec": {"podTemplate": pod_template(**annotations)}}


def fork_of(snapshot: dict, name: str) -> dict:
    """A Sandbox that starts from ``snapshot``: its source's pod template, naming the snapshot (as the CLI does)."""
    template = snapshot["status"]["podTemplate"]
    md = template.setdefault("metadata", {})
    md["annotations"] = {**(md.get("annotations") or {}), "turbok.dev/snapshot": snapshot["metadata"]["name"]}
    return {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": name},
            "spec": {"podTemplate": template}}


def restored_condition(kube: Kube, pod: str) -> dict:
    obj = kube.api.get(kube.api.resource("pods"), pod, kube.ns)
    return next((c for c in obj["status"].get("conditions") or [] if c["type"] == "PodRestored"), {})


def test_forks_of_a_snapshot_diverge_and_a_warm_pool_from_it_serves_claims_holding_numpy(kube: Kube) -> None:
    # The source: a claim's sandbox (an empty pool: a cold start, named like the claim) whose interpreter
    # imported numpy; the user sets it up, then snapshots it.
    kube.create(numpy_template("numpy"))
    kube.create(pool("cold", "numpy", 0))
    kube.create(claim("src", "cold"))
    kube.wait_condition(kube.claim, "src", reason="DependenciesReady", timeout=90)
    source = state(kube, "src")
    assert source["numpy"]
    run(kube, "src", "echo source > /app/who; mkdir -p /app/work")

    snap = take(kube, "after-setup", "src")
    assert snap["status"]["memoryBytes"] > 0 and snap["status"]["podSnapshotName"]
    # The source runs on: the same interpreter (token, pid), never restarted.
    after = state(kube, "src")
    assert (after["token"], after["pid"]) == (source["token"], source["pid"])
    assert kube.condition(kube.sandbox, "src")["status"] == "True"

    # Two forks: new Sandboxes of the source's pod template, naming the snapshot.
    for name in ("fork-a", "fork-b"):
        kube.create(fork_of(snap, name))
    for name in ("fork-a", "fork-b"):
        kube.wait_condition(kube.sandbox, name, timeout=90)
        forked = state(kube, name)
        assert forked["token"] == source["token"] and forked["numpy"], "the fork runs the snapshot's interpreter"
        restored = restored_condition(kube, name)
        assert restored["status"] == "True" and snap["status"]["podSnapshotName"] in restored["message"]
        pod = kube.api.get(kube.api.resource("pods"), name, kube.ns)
        assert pod["status"]["podIP"] != kube.get(kube.sandbox, "src")["status"]["podIPs"][0]
    # They diverge independently: what one writes, neither the other nor the source sees.
    run(kube, "fork-a", "echo a > /app/who; touch /app/work/a-only")
    run(kube, "fork-b", "echo b > /app/who")
    assert run(kube, "fork-a", "cat /app/who; ls /app/work") == "a\na-only\n"
    assert run(kube, "fork-b", "cat /app/who; ls /app/work") == "b\n"
    assert run(kube, "src", "cat /app/who; ls /app/work") == "source\n"

    # A warm pool from the snapshot: the same template, naming it; claims get sandboxes already holding numpy.
    kube.create(numpy_template("from-snap", **{"turbok.dev/snapshot": "after-setup"}))
    kube.create(pool("warm", "from-snap", 2))
    kube.wait(lambda: (kube.get(kube.pool, "warm") or {}).get("status", {}).get("readyReplicas") == 2, timeout=120,
              what="two warm sandboxes forked from the snapshot")
    asked = time.monotonic()
    kube.create(claim("user", "warm"))
    bound = kube.wait_condition(kube.claim, "user", reason="DependenciesReady", timeout=60)
    name = bound["status"]["sandbox"]["name"]
    assert name != "user", "a warm sandbox was adopted"
    assert restored_condition(kube, name).get("status") == "True"
    held = state(kube, name)
    assert held["token"] == source["token"] and held["numpy"]
    assert held["since_import"] > time.monotonic() - asked, "numpy was imported before the claim existed"
    assert run(kube, name, "cat /app/who") == "source\n"


def test_a_sandbox_is_put_back_to_its_snapshot_and_deleting_snapshots_frees_their_data(kube: Kube) -> None:
    from typer.testing import CliRunner

    from turbok.cli.main import app

    kube.create(numpy_sandbox("box"))
    kube.wait_condition(kube.sandbox, "box", timeout=90)
    before = state(kube, "box")
    run(kube, "box", "echo v1 > /app/v")
    cli = CliRunner()
    env = {**kube.cp.env}
    out = cli.invoke(app, ["sandbox", "snapshot", "box", "--name", "v1", "-n", kube.ns], env=env)
    assert out.exit_code == 0 and "snapshot v1 of sandbox box: ready" in out.output, out.output
    run(kube, "box", "echo v2 > /app/v; touch /app/later")
    listed = cli.invoke(app, ["sandbox", "snapshots", "box", "-n", kube.ns], env=env)
    assert listed.exit_code == 0 and "v1" in listed.output and "True" in listed.output
    out = cli.invoke(app, ["sandbox", "restore", "box", "v1", "-n", kube.ns], env=env)
    assert out.exit_code == 0, out.output
    assert run(kube, "box", "cat /app/v; ls /app") == "v1\nv\n"
    assert state(kube, "box")["token"] == before["token"]
    # A suspend and resume after the restore resumes its own state, not the snapshot again.
    run(kube, "box", "echo v3 > /app/v")
    kube.api.patch(kube.sandbox, "box", {"spec": {"operatingMode": "Suspended"}}, kube.ns)
    kube.wait(lambda: kube.get(kube.api.resource("pods"), "box") is None, timeout=60, what="box's Pod gone")
    kube.api.patch(kube.sandbox, "box", {"spec": {"operatingMode": "Running"}}, kube.ns)
    kube.wait_condition(kube.sandbox, "box", reason="DependenciesReady", timeout=60)
    assert run(kube, "box", "cat /app/v") == "v3\n"

    # Bad input: one clear line, a non-zero exit, nothing made.
    bad = cli.invoke(app, ["sandbox", "restore", "box", "nope", "-n", kube.ns], env=env)
    assert bad.exit_code != 0 and "no snapshot named 'nope'" in bad.output
    bad = cli.invoke(app, ["sandbox", "snapshot", "box", "--name", "Bad_Name", "-n", kube.ns], env=env)
    assert bad.exit_code != 0 and "invalid snapshot name" in bad.output
    # Forking by the CLI, then deleting: the PodSnapshot and the node's data go with the SandboxSnapshot.
    out = cli.invoke(app, ["sandbox", "fork", "v1", "copy", "-n", kube.ns], env=env)
    assert out.exit_code == 0 and "sandbox copy forked from snapshot v1" in out.output, out.output
    assert run(kube, "copy", "cat /app/v") == "v1\n"
    held = snapshot_dirs(kube.cp)
    uid = kube.api.get(kube.api.resource("podsnapshots.podsnapshot.gke.io"),
                       kube.get(kube.api.resource("sandboxsnapshots"), "v1")["status"]["podSnapshotName"],
                       kube.ns)["metadata"]["uid"]
    assert sandbox_id(uid) in held
    out = cli.invoke(app, ["sandbox", "snapshots", "--delete", "v1", "-n", kube.ns], env=env)
    assert out.exit_code == 0, out.output
    kube.wait(lambda: sandbox_id(uid) not in snapshot_dirs(kube.cp), timeout=30, what="snapshot data removed")
    assert run(kube, "copy", "cat /app/v") == "v1\n", "a fork does not need its snapshot"


def test_an_idle_sandbox_is_suspended_and_the_next_request_resumes_it(kube: Kube) -> None:
    kube.create({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": "sleepy"},
                 "spec": {"podTemplate": {"metadata": {"annotations": {"turbok.dev/idle-timeout": "10"}},
                                          "spec": {"containers": [{
                                              "name": "main", "image": "python-runtime-sandbox",
                                              "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]}}}})
    kube.wait_condition(kube.sandbox, "sleepy", timeout=60)
    run(kube, "sleepy", "echo in-memory > /dev/shm/note")
    time.sleep(5)
    run(kube, "sleepy", "true")  # a request: the idle clock starts again
    time.sleep(6)
    assert kube.get(kube.sandbox, "sleepy")["spec"].get("operatingMode", "Running") == "Running"
    suspended = kube.wait(lambda: (s := kube.get(kube.sandbox, "sleepy")) and
                          s["spec"].get("operatingMode") == "Suspended" and s, timeout=30, what="idle suspend")
    assert "turbok.dev/idle-suspended" in suspended["metadata"]["annotations"]
    kube.wait(lambda: kube.get(kube.api.resource("pods"), "sleepy") is None, timeout=30, what="its Pod hibernated")
    # The next router request resumes it transparently, with its memory.
    assert run(kube, "sleepy", "cat /dev/shm/note") == "in-memory\n"
    resumed = kube.get(kube.sandbox, "sleepy")
    assert resumed["spec"].get("operatingMode") == "Running"
    assert "turbok.dev/idle-suspended" not in (resumed["metadata"].get("annotations") or {})
    # A sandbox suspended by a user is not woken by a request: it answers 503 as before.
    kube.api.patch(kube.sandbox, "sleepy", {"spec": {"operatingMode": "Suspended"}}, kube.ns)
    kube.wait(lambda: kube.get(kube.api.resource("pods"), "sleepy") is None, timeout=30, what="suspended")
    from turbok.sdk.errors import RouterError

    with pytest.raises(RouterError), kube.connect("sleepy") as conn:
        conn.commands.run("true")
    assert kube.get(kube.sandbox, "sleepy")["spec"]["operatingMode"] == "Suspended"
