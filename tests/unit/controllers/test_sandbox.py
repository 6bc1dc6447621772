"""Sandbox reconciler: runtime state follows the object; status says what is true."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from turbok.api import meta as m
from turbok.api.status import Invalid
from turbok.controllers import labels as lb
from turbok.runtime.base import Phase, RuntimeState, sandbox_id
from turbok.runtime.errors import ImageNotFound, RuntimeError_

from .conftest import Cluster, sandbox


def _rid(obj: dict) -> str:
    return sandbox_id(obj["metadata"]["uid"])


async def test_running_sandbox_is_started_with_its_pod_template_and_reports_ready(cluster: Cluster) -> None:
    spec = sandbox("web")
    container = spec["spec"]["podTemplate"]["spec"]["containers"][0]
    container.update(command=["python3", "-c"], args=["print(1)"], env=[{"name": "A", "value": "1"}],
                     resources={"limits": {"cpu": "250m", "memory": "128Mi"}})
    created = cluster.create(spec)
    obj = await cluster.wait_condition(cluster.sandbox, "web", "Ready", reason="DependenciesReady")
    started = cluster.runtime.started[_rid(created)]
    assert started.hostname == "web"
    assert list(started.command) == ["python3", "-c"] and list(started.args) == ["print(1)"]
    assert started.env["A"] == "1"
    assert started.cpu_millis == 250 and started.memory_bytes == 128 * 2**20
    assert started.network == "none"
    status = obj["status"]
    assert m.condition(obj, "Suspended")["reason"] == "NotSuspended"
    assert m.condition(obj, "Isolated")["reason"] == "GVisor"
    assert status["selector"] == f"{lb.SANDBOX_NAME_HASH}={lb.name_hash('web')}"
    assert status["nodeName"]
    assert "serviceFQDN" not in status


async def test_service_true_reports_a_service_fqdn(cluster: Cluster) -> None:
    cluster.create(sandbox("svc", service=True))
    obj = await cluster.wait_condition(cluster.sandbox, "svc", "Ready")
    assert obj["status"]["serviceFQDN"] == "svc.default.svc.cluster.local"


async def test_suspend_stops_the_runtime_and_resume_starts_it_again(cluster: Cluster) -> None:
    rid = _rid(cluster.create(sandbox("s")))
    await cluster.wait_condition(cluster.sandbox, "s", "Ready")
    cluster.patch(cluster.sandbox, "s", {"spec": {"operatingMode": "Suspended"}})
    obj = await cluster.wait_condition(cluster.sandbox, "s", "Suspended", reason="PodTerminated")
    assert m.condition(obj, "Ready")["reason"] == "SandboxSuspended"
    assert rid not in cluster.runtime.running()
    assert (cluster.runtime.root / rid).exists(), "suspend keeps the disk"
    cluster.patch(cluster.sandbox, "s", {"spec": {"operatingMode": "Running"}})
    await cluster.wait_condition(cluster.sandbox, "s", "Ready", reason="DependenciesReady")
    assert rid in cluster.runtime.running()


async def test_suspend_hibernates_where_the_runtime_can_and_stops_when_that_fails(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = cluster.runtime
    hibernated: set[str] = set()
    broken: set[str] = set()
    plain_state = rt.state

    async def hibernate(id: str) -> None:
        if id in broken:
            raise RuntimeError_(f"sandbox {id}: runsc checkpoint failed: no space left")
        await rt.stop(id)
        hibernated.add(id)

    async def state(id: str) -> RuntimeState:
        if id in hibernated and id not in rt.running():
            return RuntimeState(id, Phase.STOPPED, rt.isolation, reason="Hibernated")
        return await plain_state(id)

    monkeypatch.setattr(rt, "supports_hibernation", True)
    monkeypatch.setattr(rt, "hibernate", hibernate)
    monkeypatch.setattr(rt, "state", state)
    keep, fail = _rid(cluster.create(sandbox("keep"))), _rid(cluster.create(sandbox("fail")))
    broken.add(fail)
    for name in ("keep", "fail"):
        await cluster.wait_condition(cluster.sandbox, name, "Ready")
        cluster.patch(cluster.sandbox, name, {"spec": {"operatingMode": "Suspended"}})
    kept = m.condition(await cluster.wait_condition(cluster.sandbox, "keep", "Suspended", reason="PodTerminated"),
                       "Suspended")
    assert keep in hibernated and "with its memory" in kept["message"]
    failed = m.condition(await cluster.wait_condition(cluster.sandbox, "fail", "Suspended", reason="PodTerminated"),
                         "Suspended")
    assert fail not in rt.running() and fail not in hibernated and "memory" not in failed["message"]
    event_kind = cluster.kinds.by_kind("v1", "Event")
    await cluster.wait(lambda: any(e["reason"] == "HibernationFailed" and "no space left" in e["message"]
                                   for e in cluster.registry.list(event_kind, "default").items),
                       what="a warning event for the failed hibernation")


async def test_shutdown_time_retain_stops_and_keeps_the_object(cluster: Cluster) -> None:
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rid = _rid(cluster.create(sandbox("t", shutdownTime=soon)))
    await cluster.wait_condition(cluster.sandbox, "t", "Ready")
    obj = await cluster.wait_condition(cluster.sandbox, "t", "Ready", "False", reason="SandboxExpired", timeout=5)
    assert set(obj["status"]) == {"conditions"}
    await cluster.wait(lambda: rid not in cluster.runtime.running(), what="runtime stopped")


async def test_shutdown_time_delete_removes_object_and_runtime(cluster: Cluster) -> None:
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rid = _rid(cluster.create(sandbox("d", shutdownTime=past, shutdownPolicy="Delete")))
    await cluster.wait(lambda: cluster.get(cluster.sandbox, "d") is None, what="sandbox deleted")
    await cluster.wait(lambda: not (cluster.runtime.root / rid).exists(), what="runtime removed")


async def test_deleting_the_object_removes_the_runtime_sandbox(cluster: Cluster) -> None:
    rid = _rid(cluster.create(sandbox("gone")))
    await cluster.wait_condition(cluster.sandbox, "gone", "Ready")
    cluster.registry.delete(cluster.sandbox, "default", "gone")
    await cluster.wait(lambda: not (cluster.runtime.root / rid).exists(), what="runtime removed")


async def test_two_containers_are_refused_as_invalid_configuration(cluster: Cluster) -> None:
    spec = sandbox("two")
    spec["spec"]["podTemplate"]["spec"]["containers"].append({"name": "side", "image": "busybox"})
    rid = _rid(cluster.create(spec))
    obj = await cluster.wait_condition(cluster.sandbox, "two", "Ready", "False", reason="InvalidConfiguration")
    assert "one container" in m.condition(obj, "Ready")["message"]
    assert rid not in cluster.runtime.started


async def test_secret_env_is_refused_unless_optional(cluster: Cluster) -> None:
    spec = sandbox("sec")
    spec["spec"]["podTemplate"]["spec"]["containers"][0]["env"] = [
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    cluster.create(spec)
    obj = await cluster.wait_condition(cluster.sandbox, "sec", "Ready", "False", reason="InvalidConfiguration")
    assert "KEY" in m.condition(obj, "Ready")["message"]
    cluster.patch(cluster.sandbox, "sec", {"spec": {"podTemplate": {"spec": {"containers": [
        {"name": "main", "image": "python-runtime-sandbox",
         "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}}]}]}}}})
    await cluster.wait_condition(cluster.sandbox, "sec", "Ready", reason="DependenciesReady")


async def test_unknown_image_is_reported_not_crashed(cluster: Cluster) -> None:
    cluster.runtime.fail_start = ImageNotFound("image 'nope:1' is not in the local image table", reference="nope:1")
    cluster.create(sandbox("img"))
    obj = await cluster.wait_condition(cluster.sandbox, "img", "Ready", "False", reason="InvalidConfiguration")
    assert "nope:1" in m.condition(obj, "Ready")["message"]


async def test_exited_main_process_with_restart_never_is_finished(cluster: Cluster) -> None:
    spec = sandbox("job")
    spec["spec"]["podTemplate"]["spec"]["restartPolicy"] = "Never"
    rid = _rid(cluster.create(spec))
    await cluster.wait_condition(cluster.sandbox, "job", "Ready")
    cluster.runtime.exit(rid, 3)
    cluster.suite.sandboxes.enqueue(("default", "job"), 0.0)
    obj = await cluster.wait_condition(cluster.sandbox, "job", "Finished", reason="PodFailed")
    assert m.condition(obj, "Ready")["reason"] == "PodFailed"
    assert rid not in cluster.runtime.running()


async def test_exited_main_process_with_restart_always_is_restarted(cluster: Cluster) -> None:
    rid = _rid(cluster.create(sandbox("svc2")))
    await cluster.wait_condition(cluster.sandbox, "svc2", "Ready")
    cluster.runtime.exit(rid, 0)
    cluster.suite.sandboxes.enqueue(("default", "svc2"), 0.0)
    await cluster.wait(lambda: rid in cluster.runtime.running(), what="restart")
    assert m.condition(cluster.get(cluster.sandbox, "svc2"), "Finished") is None


async def test_network_annotation_on_the_pod_template_asks_for_a_private_loopback(cluster: Cluster) -> None:
    spec = sandbox("net")
    spec["spec"]["podTemplate"]["metadata"] = {"annotations": {"turbok.dev/network": "loopback"}}
    rid = _rid(cluster.create(spec))
    await cluster.wait_condition(cluster.sandbox, "net", "Ready")
    assert cluster.runtime.started[rid].network == "loopback"
    bad = sandbox("badnet")
    bad["spec"]["podTemplate"]["metadata"] = {"annotations": {"turbok.dev/network": "host"}}
    with pytest.raises(Invalid) as refused:  # the API refuses it...
        cluster.create(bad)
    assert refused.value.causes[0].field == "spec.podTemplate.metadata.annotations[turbok.dev/network]"
    # ...and one stored before the API checked is refused by the controller, with the same words.
    cluster.registry.admission.admit = lambda *args: None  # type: ignore[method-assign]
    cluster.create(bad)
    obj = await cluster.wait_condition(cluster.sandbox, "badnet", "Ready", "False", reason="InvalidConfiguration")
    assert refused.value.causes[0].message in m.condition(obj, "Ready")["message"]


async def test_a_failed_start_is_retried_later_not_in_a_loop(cluster: Cluster) -> None:
    from turbok.runtime.errors import SandboxStartFailed

    cluster.runtime.fail_start = SandboxStartFailed("runsc run failed (exit 1): boom")
    rid = _rid(cluster.create(sandbox("flaky")))
    obj = await cluster.wait_condition(cluster.sandbox, "flaky", "Ready", "False", reason="DependenciesNotReady")
    await asyncio.sleep(0.5)
    assert cluster.runtime.attempts[rid] == 1, "the next attempt waits for its retry time"
    assert "boom" in m.condition(cluster.get(cluster.sandbox, "flaky"), "Ready")["message"]
    assert obj is not None
    cluster.runtime.fail_start = None
    await cluster.wait_condition(cluster.sandbox, "flaky", "Ready", reason="DependenciesReady", timeout=10)
    assert cluster.runtime.attempts[rid] == 2


async def test_claims_start_before_a_pools_refill(cluster: Cluster) -> None:
    from .conftest import claim, pool, template

    cluster.suite.sandboxes.starts.slots = 1
    gate = asyncio.Event()
    original = cluster.runtime.start
    order: list[str] = []

    async def slow_start(spec):  # type: ignore[no-untyped-def]
        order.append(spec.hostname)
        await gate.wait()
        return await original(spec)

    cluster.runtime.start = slow_start  # type: ignore[method-assign]
    cluster.create(template())
    cluster.create(pool(replicas=3))
    await cluster.wait(lambda: len(order) == 1, what="first refill booting")
    cluster.create(claim("urgent", env=[{"name": "A", "value": "1"}]))
    cluster.patch(cluster.template, "tpl", {"spec": {"envVarsInjectionPolicy": "Allowed"}})
    await cluster.wait(lambda: cluster.get(cluster.sandbox, "urgent") is not None, what="cold sandbox created")
    await asyncio.sleep(0.1)
    gate.set()
    await cluster.wait_condition(cluster.claim, "urgent", "Ready", timeout=10)
    assert order[1] == "urgent", f"the claim's sandbox booted right after the one in progress: {order}"
