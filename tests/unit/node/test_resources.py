"""Requests and limits as the node hands them to the runtime (per container, the pod's cgroup), and QoS."""

from __future__ import annotations

from typing import Any

from turbok.api.pod import qos_class
from turbok.node import podspec
from turbok.runtime.cri import SecurityContext

Obj = dict[str, Any]


def c(name: str, limits: Obj | None = None, requests: Obj | None = None, **extra: Any) -> Obj:
    res: Obj = {}
    if limits is not None:
        res["limits"] = limits
    if requests is not None:
        res["requests"] = requests
    return {"name": name, "image": "i", "resources": res, **extra}


def pod(*containers: Obj, inits: tuple[Obj, ...] = ()) -> Obj:
    spec: Obj = {"containers": list(containers)}
    if inits:
        spec["initContainers"] = list(inits)
    return {"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": spec}


def test_container_limits() -> None:
    config = podspec.container_config(c("a", {"cpu": "1500m", "memory": "256Mi"}), env={}, mounts=(),
                                      security=SecurityContext(), attempt=0)
    assert (config.cpu_millis, config.memory_bytes) == (1500, 256 << 20)
    bare = podspec.container_config(c("b"), env={}, mounts=(), security=SecurityContext(), attempt=0)
    assert (bare.cpu_millis, bare.memory_bytes) == (None, None)


def test_pod_cgroup_sums_limits_when_every_container_has_one() -> None:
    both = podspec.sandbox_config(pod(c("a", {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"}),
                                      c("b", {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "2Gi"})),
                                  "tk" + "3" * 22, [])
    assert (both.cpu_millis, both.memory_bytes, both.ephemeral_storage_bytes) == (1500, (1 << 30) + (512 << 20),
                                                                                  3 << 30)
    # One container without a memory limit: the pod cgroup has none (as kubelet's ResourceConfigForPod).
    partial = podspec.sandbox_config(pod(c("a", {"cpu": "1", "memory": "1Gi"}), c("b", {"cpu": "1"})),
                                     "tk" + "3" * 22, [])
    assert (partial.cpu_millis, partial.memory_bytes) == (2000, None)
    # An init container larger than the app containers' sum raises the pod's limit to it.
    init = podspec.sandbox_config(pod(c("a", {"cpu": "1", "memory": "128Mi"}),
                                      inits=(c("i", {"cpu": "2", "memory": "64Mi"}),)), "tk" + "3" * 22, [])
    assert (init.cpu_millis, init.memory_bytes) == (2000, 128 << 20)


def test_qos_classes() -> None:
    assert qos_class(pod(c("a"))) == "BestEffort"
    assert qos_class(pod(c("a", {"cpu": "1", "memory": "1Gi"}))) == "Guaranteed"  # requests default to limits
    assert qos_class(pod(c("a", {"cpu": "1", "memory": "1Gi"}, {"cpu": "500m"}))) == "Burstable"
    assert qos_class(pod(c("a", {"cpu": "1", "memory": "1Gi"}), c("b"))) == "Burstable"
    assert qos_class(pod(c("a", None, {"memory": "1Gi"}))) == "Burstable"
    assert qos_class(pod(c("a", {"cpu": "1", "memory": "1Gi"}),
                         inits=(c("i", {"cpu": "1", "memory": "1Gi"}),))) == "Guaranteed"
    assert qos_class(pod(c("a", {"ephemeral-storage": "1Gi"}))) == "BestEffort"  # only cpu and memory count
