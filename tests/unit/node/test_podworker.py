"""Pod workers: a Pod bound here runs as the kubelet runs it, with the kubelet's status and Events."""

from __future__ import annotations

import asyncio

from tests.unit.node.conftest import NodeHarness, condition, container_status, pod
from turbok.node import podspec
from turbok.node.node import NodeSettings
from turbok.node.suspend import runtime_id
from turbok.node.testing import FakeSandbox
from turbok.runtime.cri import PodSandboxConfig, PodSandboxState, PodSandboxStatus
from turbok.runtime.errors import RuntimeError_


async def test_a_bound_pod_runs_and_reports_the_kubelets_status(node: NodeHarness) -> None:
    node.create(pod("web", terminationGracePeriodSeconds=5))
    got = await node.wait_ready("web")
    status = got["status"]
    assert status["phase"] == "Running"
    assert [c["type"] for c in status["conditions"]] == [
        "PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled",
        "turbok.dev/Isolated"]
    assert all(c["status"] == "True" for c in status["conditions"])
    assert status["conditions"][-1]["reason"] == "GVisor"
    assert status["podIP"] and status["podIPs"] == [{"ip": status["podIP"]}]
    assert status["hostIP"] == "10.0.0.5" and status["hostIPs"] == [{"ip": "10.0.0.5"}]
    assert status["startTime"] and status["qosClass"] == "BestEffort"
    main = container_status(got, "main")
    assert main["ready"] and main["started"] and main["restartCount"] == 0
    assert "running" in main["state"] and main["state"]["running"]["startedAt"]
    assert main["containerID"].startswith("gvisor://") and main["imageID"].startswith("sha256:")
    assert main["image"] == "python-runtime-sandbox" and main["lastState"] == {}
    await node.settle()
    assert node.reasons("web") == ["Pulled", "Created", "Started"]
    started = node.events("web", "Started")[0]
    assert started["involvedObject"]["fieldPath"] == "spec.containers{main}"
    assert started["source"] == {"component": "kubelet", "host": "node1"}
    assert started["message"] == "Started container main"


def _rid(h: NodeHarness, name: str) -> str:
    got = h.pod(name)
    assert got is not None
    return runtime_id(got)


async def _end(h: NodeHarness, name: str, code: int, container: str = "main", reason: str = "") -> None:
    """``container`` of Pod ``name`` ends on its own; the node's next relist (1 s) notices."""
    h.runtime.exit(_rid(h, name), container, code, reason=reason)
    await h.clock.advance(1.0)
    await h.settle()


async def test_a_crash_loop_backs_off_as_the_kubelet_and_ready_does_not_flap(node: NodeHarness) -> None:
    node.create(pod("crash"))
    await node.wait_ready("crash")
    rid = _rid(node, "crash")
    await _end(node, "crash", 1)
    # the first end restarts at once
    got = await node.wait_pod("crash", lambda p: container_status(p, "main")["restartCount"] == 1)
    assert container_status(got, "main")["lastState"]["terminated"]["exitCode"] == 1
    assert node.runtime.started(rid) == ["main", "main"]
    for wait in (10, 20, 40, 80, 160, 300, 300):
        await _end(node, "crash", 2)
        got = await node.wait_pod("crash", lambda p: "waiting" in container_status(p, "main")["state"])
        waiting = container_status(got, "main")["state"]["waiting"]
        assert waiting["reason"] == "CrashLoopBackOff"
        assert waiting["message"].startswith(f"back-off {wait}s restarting failed container=main pod=crash_default(")
        assert condition(got, "Ready") == "False" and got["status"]["phase"] == "Running"
        starts = len(node.runtime.started(rid))
        await node.clock.advance(wait - 1.5)
        await node.settle()
        assert len(node.runtime.started(rid)) == starts, f"restarted before its {wait}s back-off"
        assert condition(node.pod("crash") or {}, "Ready") == "False", "Ready flapped during the back-off"
        await node.clock.advance(2.0)
        restarted = starts + 1
        await node.wait(lambda: len(node.runtime.started(rid)) == restarted,  # noqa: B023
                        what=f"restart after {wait}s")
    await node.settle()
    backoffs = node.events("crash", "BackOff")
    assert len(backoffs) == 1 and backoffs[0]["count"] == 7  # one Event, counted
    assert backoffs[0]["type"] == "Warning"


async def test_the_back_off_starts_afresh_after_ten_minutes_running(node: NodeHarness) -> None:
    node.create(pod("steady"))
    await node.wait_ready("steady")
    rid = _rid(node, "steady")
    await _end(node, "steady", 1)  # at once
    await node.wait(lambda: len(node.runtime.started(rid)) == 2)
    await _end(node, "steady", 1)  # 10 s
    await node.clock.advance(10.0)
    await node.wait(lambda: len(node.runtime.started(rid)) == 3)
    await node.clock.advance(600.0)  # runs for ten minutes
    await _end(node, "steady", 1)
    await node.wait(lambda: len(node.runtime.started(rid)) == 4, what="an immediate restart")
    got = await node.wait_pod("steady", lambda p: container_status(p, "main")["restartCount"] == 3)
    assert "running" in container_status(got, "main")["state"]


async def test_restart_policies_decide_the_phase(node: NodeHarness) -> None:
    for name, policy, code, phase in (("never-ok", "Never", 0, "Succeeded"), ("never-bad", "Never", 3, "Failed"),
                                      ("onfail-ok", "OnFailure", 0, "Succeeded")):
        node.create(pod(name, restartPolicy=policy))
        await node.wait_ready(name)
        await _end(node, name, code)
        got = await node.wait_phase(name, phase)
        main = container_status(got, "main")
        assert main["state"]["terminated"]["exitCode"] == code
        assert main["state"]["terminated"]["reason"] == ("Completed" if code == 0 else "Error")
        assert main["restartCount"] == 0 and not main["ready"]
        assert condition(got, "Ready") == "False"
        assert [c["reason"] for c in got["status"]["conditions"] if c["type"] == "Ready"] == ["PodCompleted"]
        assert ("stop_pod_sandbox", _rid(node, name)) in node.runtime.calls  # logs kept, nothing runs
        assert node.runtime.running(_rid(node, name)) == []


async def test_on_failure_restarts_a_failed_container_and_reports_oom(node: NodeHarness) -> None:
    node.create(pod("oom", restartPolicy="OnFailure"))
    await node.wait_ready("oom")
    await _end(node, "oom", 137, reason="OOMKilled")
    got = await node.wait_pod("oom", lambda p: container_status(p, "main")["restartCount"] == 1)
    last = container_status(got, "main")["lastState"]["terminated"]
    assert last["reason"] == "OOMKilled" and last["exitCode"] == 137
    assert got["status"]["phase"] == "Running"


def _c(name: str, **kw: object) -> dict[str, object]:
    return {"name": name, "image": "python-runtime-sandbox", **kw}


async def test_init_containers_run_in_order_each_to_completion_before_the_app(node: NodeHarness) -> None:
    node.create(pod("init", containers=[_c("app")], initContainers=[_c("first"), _c("second")]))
    got = await node.wait_pod("init", lambda p: "initContainerStatuses" in p.get("status", {}))
    rid = _rid(node, "init")
    await node.settle()
    assert node.runtime.started(rid) == ["first"]
    assert got["status"]["phase"] == "Pending"
    assert condition(got, "Initialized") == "False"
    init = [c for c in got["status"]["conditions"] if c["type"] == "Initialized"][0]
    assert init["reason"] == "ContainersNotInitialized"
    assert init["message"] == "containers with incomplete status: [first second]"
    assert container_status(got, "app")["state"]["waiting"]["reason"] == "PodInitializing"
    await _end(node, "init", 0, "first")
    await node.wait(lambda: node.runtime.started(rid) == ["first", "second"], what="second init")
    await _end(node, "init", 0, "second")
    got = await node.wait_ready("init")
    assert node.runtime.started(rid) == ["first", "second", "app"]
    assert condition(got, "Initialized") == "True"
    for name in ("first", "second"):
        done = container_status(got, name, init=True)["state"]["terminated"]
        assert done["exitCode"] == 0 and done["reason"] == "Completed"


async def test_a_failed_init_container_fails_a_pod_that_never_restarts(node: NodeHarness) -> None:
    node.create(pod("badinit", containers=[_c("app")], initContainers=[_c("setup")], restartPolicy="Never"))
    await node.wait_pod("badinit", lambda p: "running" in container_status(p, "setup", init=True)["state"])
    await _end(node, "badinit", 1, "setup")
    got = await node.wait_phase("badinit", "Failed")
    assert node.runtime.started(_rid(node, "badinit")) == ["setup"]
    assert container_status(got, "setup", init=True)["state"]["terminated"]["exitCode"] == 1


async def test_a_failed_init_container_is_retried_with_back_off(node: NodeHarness) -> None:
    node.create(pod("retry", containers=[_c("app")], initContainers=[_c("setup")], restartPolicy="OnFailure"))
    await node.wait_pod("retry", lambda p: "running" in container_status(p, "setup", init=True)["state"])
    rid = _rid(node, "retry")
    await _end(node, "retry", 1, "setup")
    await node.wait(lambda: node.runtime.started(rid) == ["setup", "setup"])
    await _end(node, "retry", 1, "setup")
    got = await node.wait_pod("retry", lambda p: "waiting" in container_status(p, "setup", init=True)["state"])
    assert got["status"]["phase"] == "Pending"
    await node.clock.advance(11.0)
    await node.wait(lambda: node.runtime.started(rid) == ["setup"] * 3)
    await _end(node, "retry", 0, "setup")
    await node.wait_ready("retry")
    assert node.runtime.started(rid)[-1] == "app"


async def test_a_sidecar_starts_before_the_app_and_keeps_running(node: NodeHarness) -> None:
    node.create(pod("side", containers=[_c("app")], initContainers=[_c("proxy", restartPolicy="Always")]))
    got = await node.wait_ready("side")
    rid = _rid(node, "side")
    assert node.runtime.started(rid) == ["proxy", "app"]
    assert "running" in container_status(got, "proxy", init=True)["state"]
    assert set(node.runtime.running(rid)) == {"proxy", "app"}


async def test_deleting_a_pod_kills_it_within_its_grace_period_and_removes_it(node: NodeHarness) -> None:
    node.create(pod("bye", terminationGracePeriodSeconds=7))
    await node.wait_ready("bye")
    rid = _rid(node, "bye")
    node.delete("bye")
    marked = node.pod("bye")
    assert marked is not None and marked["metadata"]["deletionGracePeriodSeconds"] == 7  # graceful, as kube
    await node.wait_gone("bye")
    await node.reaped()  # the sandbox is stopped before the Pod goes, removed after
    stops = [c for c in node.runtime.calls if c[0] == "stop_container"]
    assert stops == [("stop_container", rid, "main", "7")]
    assert node.runtime.calls.index(stops[0]) < node.runtime.calls.index(("remove_pod_sandbox", rid))
    assert rid not in node.runtime.sandboxes  # nothing of it is left
    await node.settle()
    killing = node.events("bye", "Killing")
    assert [e["message"] for e in killing] == ["Stopping container main"]


async def test_a_pre_stop_hook_runs_before_sigterm_and_uses_the_grace_period(node: NodeHarness) -> None:
    seen: list[list[str]] = []

    def handler(rid: str, name: str, argv: object) -> tuple[int, bytes]:
        seen.append(list(argv))  # type: ignore[call-overload]
        return 0, b""

    node.runtime.exec_handler = handler
    node.create(pod("hook", terminationGracePeriodSeconds=20, containers=[
        _c("main", lifecycle={"preStop": {"exec": {"command": ["sh", "-c", "flush"]}}})]))
    await node.wait_ready("hook")
    rid = _rid(node, "hook")
    node.delete("hook")
    await node.wait_gone("hook")
    assert seen == [["sh", "-c", "flush"]]
    execs = [i for i, c in enumerate(node.runtime.calls) if c[0] == "exec"]
    stop = node.runtime.calls.index(("stop_container", rid, "main", "20"))
    assert execs and execs[0] < stop


async def test_the_final_delete_waits_for_the_last_status(node: NodeHarness) -> None:
    node.create(pod("last"))
    await node.wait_ready("last")
    uid = (node.pod("last") or {})["metadata"]["uid"]
    statuses: list[dict[str, object]] = []
    node.registry.hub.listeners.append(
        lambda e: statuses.append(e.object().get("status", {})) if e.name == "last" and e.type == "MODIFIED"
        else None)
    node.delete("last")
    await node.wait_gone("last")
    final = statuses[-1]
    assert final["phase"] == "Failed"  # killed by SIGTERM: exit 143
    main = [c for c in final["containerStatuses"] if c["name"] == "main"][0]  # type: ignore[attr-defined]
    assert main["state"]["terminated"]["exitCode"] == 143
    assert uid


async def test_deleting_a_finished_pod_removes_its_runtime_state(node: NodeHarness) -> None:
    node.create(pod("done", restartPolicy="Never"))
    await node.wait_ready("done")
    rid = _rid(node, "done")
    await _end(node, "done", 0)
    await node.wait_phase("done", "Succeeded")
    assert rid in node.runtime.sandboxes  # stopped, logs kept for kubectl logs
    node.delete("done")  # a finished Pod goes at once (no grace): the node only sees it gone
    await node.wait(lambda: rid not in node.runtime.sandboxes, what="runtime state removed")
    assert node.pod("done") is None


async def test_deleting_a_pod_whose_sandbox_never_started_removes_what_it_left(node: NodeHarness) -> None:
    node.runtime.boot_errors = [RuntimeError_("runsc: boom")] * 3
    node.create(pod("broken"))
    await node.wait(lambda: node.events("broken", "FailedCreatePodSandBox"), what="a failed boot")
    rid = _rid(node, "broken")
    node.runtime.sandboxes[rid] = FakeSandbox(config=PodSandboxConfig(id=rid, name="x", namespace="default",
                                                                      uid="u", hostname="x"),
                                              state=PodSandboxState.NOT_READY)  # a half-made one
    node.delete("broken")
    await node.wait_gone("broken")
    await node.reaped()
    assert rid not in node.runtime.sandboxes
    assert ("remove_pod_sandbox", rid) in node.runtime.calls


async def test_a_boot_in_flight_when_the_pod_is_deleted_never_leaves_a_sandbox_running(node: NodeHarness) -> None:
    node.runtime.hold_boots = asyncio.Event()
    node.create(pod("racing"))
    await node.wait(lambda: node.runtime.booting == 1, what="a boot in flight")
    rid = _rid(node, "racing")
    node.delete("racing")
    await node.settle()
    node.runtime.hold_boots.set()  # the boot finishes after the Pod was deleted
    await node.wait_gone("racing")
    await node.reaped()
    assert rid not in node.runtime.sandboxes
    assert node.runtime.started(rid) == []  # no container was started in it


async def test_a_boot_waiting_for_a_slot_is_abandoned_when_its_pod_is_deleted(harness: NodeHarness) -> None:
    await harness.start(settings=NodeSettings(start_slots=1))
    harness.runtime.hold_boots = asyncio.Event()
    harness.create(pod("first"))
    await harness.wait(lambda: harness.runtime.booting == 1)
    harness.create(pod("second"))
    waiting = await harness.wait_pod("second", lambda p: container_status(p, "main")["state"]["waiting"][
        "reason"] == "ContainerCreating", what="second waits for a boot slot")
    assert waiting["status"]["phase"] == "Pending"
    rid = _rid(harness, "second")
    harness.delete("second")
    await harness.wait_gone("second")
    harness.runtime.hold_boots.set()
    await harness.wait_ready("first")
    assert ("run_pod_sandbox", rid) not in harness.runtime.calls


async def test_a_missing_image_is_err_image_never_pull_and_retried(node: NodeHarness) -> None:
    node.runtime.missing_images.add("nope:latest")
    node.create(pod("img", containers=[_c("main", image="nope:latest")]))
    got = await node.wait_pod("img", lambda p: "waiting" in container_status(p, "main")["state"])
    waiting = container_status(got, "main")["state"]["waiting"]
    assert waiting["reason"] == "ErrImageNeverPull" and "nope:latest" in waiting["message"]
    assert got["status"]["phase"] == "Pending"
    await node.settle()
    [event] = node.events("img", "ErrImageNeverPull")
    assert event["type"] == "Warning" and 'Container image "nope:latest" is not present' in event["message"]
    node.runtime.missing_images.clear()  # the image table changed
    await node.clock.advance(11.0)
    await node.wait_ready("img")


async def test_a_pod_past_its_active_deadline_fails(node: NodeHarness) -> None:
    node.create(pod("late", activeDeadlineSeconds=30))
    await node.wait_ready("late")
    await node.clock.advance(31.0)
    got = await node.wait_phase("late", "Failed")
    assert got["status"]["reason"] == "DeadlineExceeded"
    assert got["status"]["message"] == "Pod was active on the node longer than the specified deadline"
    assert node.runtime.running(_rid(node, "late")) == []


async def test_a_pod_asking_for_host_namespaces_is_refused(node: NodeHarness) -> None:
    node.create(pod("host", hostNetwork=True))
    got = await node.wait_phase("host", "Failed")
    assert got["status"]["reason"] == "UnexpectedAdmissionError"
    assert "hostNetwork" in got["status"]["message"]
    assert not any(c[0] == "run_pod_sandbox" for c in node.runtime.calls)


async def test_what_the_node_cannot_honour_is_an_event(node: NodeHarness) -> None:
    node.create(pod("hp", containers=[_c("main", ports=[{"containerPort": 80, "hostPort": 8080}])]))
    await node.wait_ready("hp")
    await node.settle()
    [event] = node.events("hp", "HostPortIgnored")
    assert event["type"] == "Warning" and "8080" in event["message"]


async def test_a_container_failing_its_liveness_probe_is_killed_and_restarted(node: NodeHarness) -> None:
    healthy = {"yes": True}
    node.runtime.exec_handler = lambda rid, name, argv: (0 if healthy["yes"] else 1, b"unhealthy")
    probe = {"exec": {"command": ["check"]}, "periodSeconds": 5, "failureThreshold": 2}
    node.create(pod("live", containers=[_c("main", livenessProbe=probe)], terminationGracePeriodSeconds=3))
    await node.wait_ready("live")
    rid = _rid(node, "live")
    healthy["yes"] = False
    for _ in range(2):  # two failures in a row: the threshold
        await node.clock.advance(5.0)
        await node.settle()
    await node.wait(lambda: node.runtime.started(rid) == ["main", "main"], what="a restart")
    healthy["yes"] = True
    got = await node.wait_pod("live", lambda p: container_status(p, "main")["restartCount"] == 1)
    assert node.runtime.started(rid) == ["main", "main"]
    assert ("stop_container", rid, "main", "3") in node.runtime.calls
    await node.settle()
    assert [e["message"] for e in node.events("live", "Killing")] == [
        "Container main failed liveness probe, will be restarted"]
    unhealthy = node.events("live", "Unhealthy")
    assert unhealthy and unhealthy[0]["message"].startswith("Liveness probe failed: ")
    assert "running" in container_status(got, "main")["state"]


async def test_readiness_gates_ready_until_the_probe_passes(node: NodeHarness) -> None:
    ready = {"yes": False}
    node.runtime.exec_handler = lambda rid, name, argv: (0 if ready["yes"] else 1, b"")
    probe = {"exec": {"command": ["ready"]}, "periodSeconds": 2}
    node.create(pod("rdy", containers=[_c("main", readinessProbe=probe)]))
    got = await node.wait_phase("rdy", "Running")
    assert condition(got, "Ready") == "False" and container_status(got, "main")["started"]
    ready["yes"] = True
    await node.clock.advance(2.0)
    got = await node.wait_ready("rdy")
    assert container_status(got, "main")["ready"]


async def test_a_new_image_in_the_spec_restarts_the_container(node: NodeHarness) -> None:
    node.create(pod("upd"))
    await node.wait_ready("upd")
    rid = _rid(node, "upd")
    node.registry.patch(node.pod_kind, "default", "upd", "application/strategic-merge-patch+json",
                        {"spec": {"containers": [{"name": "main", "image": "python:3.11", "imagePullPolicy": "Always"}]}})
    await node.wait(lambda: node.runtime.started(rid) == ["main", "main"], what="a restart")
    got = await node.wait_pod("upd", lambda p: container_status(p, "main")["image"] == "python:3.11")
    assert container_status(got, "main")["restartCount"] == 1
    await node.settle()
    assert [e["message"] for e in node.events("upd", "Killing")] == [
        "Container main definition changed, will be restarted"]


async def test_readiness_gates_hold_ready_until_their_condition_is_true(node: NodeHarness) -> None:
    node.create(pod("gated", readinessGates=[{"conditionType": "example.com/LoadBalanced"}]))
    got = await node.wait_pod("gated", lambda p: condition(p, "ContainersReady") == "True")
    ready = [c for c in got["status"]["conditions"] if c["type"] == "Ready"][0]
    assert ready["status"] == "False" and ready["reason"] == "ReadinessGatesNotReady"
    assert 'readiness gate "example.com/LoadBalanced" does not exist' in ready["message"]
    got["status"]["conditions"].append({"type": "example.com/LoadBalanced", "status": "True"})
    node.registry.update(node.pod_kind, got, namespace="default", subresource="status")
    await node.wait_ready("gated")



async def test_a_sandboxs_pod_gets_its_agent_on_demand_unless_eager(node: NodeHarness) -> None:
    node.create(pod("lazy", annotations={"turbok.dev/sandbox-identity": "uid-1"}))
    await node.wait_ready("lazy")
    config = node.runtime.sandboxes[_rid(node, "lazy")].config
    assert config.agent_container == "main" and config.agent_on_demand, "Ready does not wait for an agent"
    node.create(pod("eager", annotations={"turbok.dev/sandbox-identity": "uid-2", "turbok.dev/sandboxd": "eager"}))
    await node.wait_ready("eager")
    assert not node.runtime.sandboxes[_rid(node, "eager")].config.agent_on_demand
    node.create(pod("plain"))  # not a Sandbox's: no agent at all
    await node.wait_ready("plain")
    assert node.runtime.sandboxes[_rid(node, "plain")].config.agent_container == ""


async def test_a_bug_on_the_way_out_of_a_boot_does_not_hold_up_the_nodes_stop(harness: NodeHarness) -> None:
    # A boot that fails with another exception as it is cancelled (the start queue did, with ValueError): the
    # worker logs it and still ends, so the node stops; before, it swallowed the cancellation and retried.
    await harness.start()
    booting = asyncio.Event()

    async def broken(config: PodSandboxConfig) -> PodSandboxStatus:
        booting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ValueError("a bug on the way out") from None

    harness.runtime.run_pod_sandbox = broken  # type: ignore[method-assign]
    harness.create(pod("stuck"))
    await asyncio.wait_for(booting.wait(), 5)
    await asyncio.wait_for(harness.stop(), 5)


async def test_only_a_warm_pools_pod_boots_in_the_background(node: NodeHarness) -> None:
    """A warm pool's refill yields the CPU (``background``); a Pod somebody waits for, or one a claim has taken
    (the pool's label gone), boots at full priority."""
    refill = pod("refill", restartPolicy="Always")
    refill["metadata"]["labels"] = {podspec.WARM_POOL_LABEL: "pool-hash"}
    node.create(refill)
    node.create(pod("cold"))
    await node.wait_ready("refill")
    await node.wait_ready("cold")
    first = node.runtime.sandboxes[_rid(node, "refill")]
    assert first.config.background and first.configs["main"].background
    cold = node.runtime.sandboxes[_rid(node, "cold")]
    assert not cold.config.background and not cold.configs["main"].background
    # Claimed: the label goes; its next start is somebody's request.
    taken = node.pod("refill")
    assert taken is not None
    taken["metadata"]["labels"] = {}
    node.registry.update(node.pod_kind, taken, namespace="default")
    await node.wait(lambda: not (node.pod("refill") or {})["metadata"].get("labels"))
    await _end(node, "refill", 1)
    await node.wait(lambda: len(node.runtime.started(_rid(node, "refill"))) == 2, what="a restart")
    assert not node.runtime.sandboxes[_rid(node, "refill")].configs["main"].background
