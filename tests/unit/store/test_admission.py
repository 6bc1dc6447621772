"""Admission on the registry's write path: defaults, pod template validation, LimitRanges, ResourceQuotas.

Every refusal is checked to have written nothing (the store's revision and rows unchanged).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from turbok.api.kinds import LIMIT_RANGE, POD, RESOURCE_QUOTA
from turbok.api.limitrange import BUILTIN_DEFAULT_LIMITS, BUILTIN_DEFAULT_REQUESTS
from turbok.api.status import Forbidden, Invalid
from turbok.store.registry import ObjectRegistry, WriteOptions

from .conftest import CLAIM, SANDBOX, TEMPLATE, sandbox, snapshot

Obj = dict[str, Any]


def container(obj: Obj) -> Obj:
    result: Obj = obj["spec"]["podTemplate"]["spec"]["containers"][0]
    return result


def with_limits(name: str, **limits: str) -> Obj:
    obj = sandbox(name)
    container(obj)["resources"] = {"limits": dict(limits)}
    return obj


def template(name: str, pod_spec: Obj) -> Obj:
    return {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"podTemplate": {"spec": pod_spec}}}


def claim(name: str) -> Obj:
    return {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"warmPoolRef": {"name": "pool"}}}


def quota(hard: dict[str, str], name: str = "q") -> Obj:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name, "namespace": "default"},
            "spec": {"hard": hard}}


def refused(registry: ObjectRegistry, error: type[Exception], write: Any) -> Any:
    before = snapshot(registry)
    with pytest.raises(error) as caught:
        write()
    assert snapshot(registry) == before, "a refused write changed the store"
    return caught.value


BAD_POD_SPECS = [
    ({"volumes": [{"name": "Bad_Name", "emptyDir": {}}],
      "containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "Bad_Name", "mountPath": "/d"}]}]},
     "spec.podTemplate.spec.volumes[0].name"),
    ({"containers": [{"name": "c", "image": "x", "resources": {"limits": {"cpu": -1}}}]},
     "spec.podTemplate.spec.containers[0].resources.limits[cpu]"),
    ({"containers": [{"name": "c", "image": "x", "resources": {"limits": {"memory": "1Gi"},
                                                              "requests": {"memory": "2Gi"}}}]},
     "spec.podTemplate.spec.containers[0].resources.requests"),
    ({"containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]},
     "spec.podTemplate.spec.containers[0].volumeMounts[0].name"),
    ({"containers": [{"name": "Not_A_Label", "image": "x"}]}, "spec.podTemplate.spec.containers[0].name"),
    ({"containers": [{"name": "c", "image": "x", "workingDir": "relative"}]},
     "spec.podTemplate.spec.containers[0].workingDir"),
]


@pytest.mark.parametrize(("pod_spec", "field"), BAD_POD_SPECS)
def test_invalid_pod_templates_are_refused_with_422_and_field_causes(
        registry: ObjectRegistry, pod_spec: Obj, field: str) -> None:
    obj = sandbox("bad")
    obj["spec"]["podTemplate"]["spec"] = pod_spec
    error = refused(registry, Invalid, lambda: registry.create(SANDBOX, obj))
    assert error.code == 422 and field in [c.field for c in error.causes]
    assert error.message.startswith('Sandbox.agents.x-k8s.io "bad" is invalid: ')
    error = refused(registry, Invalid, lambda: registry.create(TEMPLATE, template("bad", pod_spec)))
    assert field in [c.field for c in error.causes]
    # An update that makes a good template bad is refused too, and the stored one stays.
    good = registry.create(TEMPLATE, template("good", {"containers": [{"name": "c", "image": "x"}]}))
    changed = copy.deepcopy(good)
    changed["spec"]["podTemplate"]["spec"] = pod_spec
    refused(registry, Invalid, lambda: registry.update(TEMPLATE, changed))
    # A dry run is refused the same way.
    refused(registry, Invalid, lambda: registry.create(SANDBOX, obj, opts=WriteOptions(dry_run=True)))


def test_a_sandbox_without_limits_gets_the_builtin_defaults_and_explicit_ones_stay(registry: ObjectRegistry) -> None:
    created = registry.create(SANDBOX, sandbox("plain"))
    # Requests of an idle sandbox go with the built-in limits: a request would default to its limit otherwise.
    assert container(created)["resources"] == {"limits": BUILTIN_DEFAULT_LIMITS, "requests": BUILTIN_DEFAULT_REQUESTS}
    assert container(registry.get(SANDBOX, "default", "plain")) == container(created)
    mine = registry.create(SANDBOX, with_limits("mine", cpu="250m", memory="128Mi"))
    assert container(mine)["resources"] == {"limits": {"cpu": "250m", "memory": "128Mi"}}
    # Sending the object back without the defaults is no change: same generation, nothing written.
    rv = created["metadata"]["resourceVersion"]
    again = registry.update(SANDBOX, {**sandbox("plain"), "metadata": {**sandbox("plain")["metadata"],
                                                                       "resourceVersion": rv}})
    assert again["metadata"]["resourceVersion"] == rv and again["metadata"]["generation"] == 1


def test_a_limit_range_changes_the_defaults_and_bounds_what_a_sandbox_may_ask(registry: ObjectRegistry) -> None:
    lr = registry.create(LIMIT_RANGE, {"metadata": {"name": "lr"}, "spec": {"limits": [
        {"type": "Container", "default": {"memory": "512Mi"}, "max": {"memory": "1Gi"}}]}})
    assert lr["spec"]["limits"][0]["defaultRequest"] == {"memory": "512Mi"}  # kube's LimitRange defaulting
    created = registry.create(SANDBOX, sandbox("defaulted"))
    assert container(created)["resources"] == {"limits": {"memory": "512Mi", "cpu": BUILTIN_DEFAULT_LIMITS["cpu"]},
                                               "requests": {"memory": "512Mi", "cpu": BUILTIN_DEFAULT_REQUESTS["cpu"]}}
    error = refused(registry, Forbidden, lambda: registry.create(SANDBOX, with_limits("big", memory="2Gi")))
    assert error.code == 403
    assert error.message == ('sandboxes.agents.x-k8s.io "big" is forbidden: maximum memory usage per Container is '
                             "1Gi, but limit is 2Gi")
    bad = {"metadata": {"name": "bad"}, "spec": {"limits": [{"type": "Container", "default": {"memory": "2Gi"},
                                                             "max": {"memory": "1Gi"}}]}}
    error = refused(registry, Invalid, lambda: registry.create(LIMIT_RANGE, bad))
    assert [c.field for c in error.causes] == ["spec.limits[0].defaultRequest[memory]", "spec.limits[0].default[memory]"]


def test_a_quota_refuses_the_next_sandbox_and_claim_with_403_and_writes_nothing(registry: ObjectRegistry) -> None:
    registry.create(RESOURCE_QUOTA, quota({"count/sandboxes.agents.x-k8s.io": "2",
                                           "count/sandboxclaims.extensions.agents.x-k8s.io": "1"}))
    registry.create(SANDBOX, sandbox("a"))
    registry.create(SANDBOX, sandbox("b"))
    error = refused(registry, Forbidden, lambda: registry.create(SANDBOX, sandbox("c")))
    assert error.message == (
        'sandboxes.agents.x-k8s.io "c" is forbidden: exceeded quota: q, requested: '
        "count/sandboxes.agents.x-k8s.io=1, used: count/sandboxes.agents.x-k8s.io=2, limited: "
        "count/sandboxes.agents.x-k8s.io=2")
    assert error.to_status()["details"] == {"name": "c", "group": "agents.x-k8s.io", "kind": "sandboxes"}
    registry.create(CLAIM, claim("c1"))
    error = refused(registry, Forbidden, lambda: registry.create(CLAIM, claim("c2")))
    assert "exceeded quota: q, requested: count/sandboxclaims.extensions.agents.x-k8s.io=1" in error.message
    # Updates of counted objects are not new objects; a deletion makes room.
    b = registry.get(SANDBOX, "default", "b")
    b["metadata"]["labels"] = {"x": "y"}
    registry.update(SANDBOX, b)
    registry.delete(SANDBOX, "default", "b")
    registry.create(SANDBOX, sandbox("c"))
    # Other namespaces are not this quota's business.
    registry.ensure_namespace("other")
    registry.create(SANDBOX, sandbox("a", namespace="other"))


def pod(name: str, **limits: str) -> Obj:
    container: Obj = {"name": "c", "image": "x"}
    if limits:
        container["resources"] = {"limits": dict(limits)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [container]}}


def test_a_compute_quota_counts_pods_and_not_their_sandboxes(registry: ObjectRegistry) -> None:
    registry.create(RESOURCE_QUOTA, quota({"requests.cpu": "1", "limits.memory": "1Gi", "pods": "2"}))
    # A Sandbox is counted as an object only: its compute is its Pod's (as a Deployment's on a cluster).
    registry.create(SANDBOX, with_limits("a", cpu="800m", memory="512Mi"))
    registry.create(SANDBOX, with_limits("b", cpu="800m", memory="512Mi"))
    registry.create(POD, pod("a", cpu="800m", memory="512Mi"))
    error = refused(registry, Forbidden, lambda: registry.create(POD, pod("b", cpu="800m", memory="512Mi")))
    assert error.message == ('pods "b" is forbidden: exceeded quota: q, requested: requests.cpu=800m, used: '
                             "requests.cpu=800m, limited: requests.cpu=1")
    # A finished Pod uses nothing.
    done = registry.get(POD, "default", "a")
    done["status"] = {"phase": "Succeeded"}
    registry.update(POD, done, namespace="default", subresource="status")
    registry.create(POD, pod("b", cpu="800m", memory="512Mi"))
    registry.create(POD, pod("c", cpu="100m", memory="100Mi"))
    error = refused(registry, Forbidden, lambda: registry.create(POD, pod("d", cpu="100m", memory="100Mi")))
    assert error.message == 'pods "d" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2'


def test_a_quota_on_a_resource_no_container_sets_asks_a_pod_for_it(registry: ObjectRegistry) -> None:
    registry.create(RESOURCE_QUOTA, quota({"limits.ephemeral-storage": "10Gi"}))
    registry.create(SANDBOX, sandbox("x"))  # no Pod yet: nothing to specify
    error = refused(registry, Forbidden, lambda: registry.create(POD, pod("x", cpu="1")))
    assert error.message == 'pods "x" is forbidden: failed quota: q: must specify limits.ephemeral-storage for: c'
    registry.create(POD, pod("x", **{"ephemeral-storage": "1Gi"}))


def test_legacy_quota_names_count_the_core_objects_turbok_now_serves(registry: ObjectRegistry) -> None:
    registry.create(RESOURCE_QUOTA, quota({"secrets": "1", "requests.storage": "1Gi",
                                           "fast.storageclass.storage.k8s.io/persistentvolumeclaims": "1"}))
    secret = registry.kinds.by_kind("v1", "Secret")
    claim_kind = registry.kinds.by_kind("v1", "PersistentVolumeClaim")

    def pvc(name: str, size: str, storage_class: str | None = None) -> Obj:
        spec: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
        if storage_class:
            spec["storageClassName"] = storage_class
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default"},
                "spec": spec}

    registry.create(secret, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1", "namespace": "default"}})
    error = refused(registry, Forbidden, lambda: registry.create(secret, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s2", "namespace": "default"}}))
    assert error.message.endswith("exceeded quota: q, requested: secrets=1, used: secrets=1, limited: secrets=1")
    registry.create(claim_kind, pvc("small", "512Mi", "fast"))
    error = refused(registry, Forbidden, lambda: registry.create(claim_kind, pvc("big", "1Gi")))
    assert error.message.endswith("exceeded quota: q, requested: requests.storage=1Gi, used: "
                                  "requests.storage=512Mi, limited: requests.storage=1Gi")
    error = refused(registry, Forbidden, lambda: registry.create(claim_kind, pvc("fast2", "1Mi", "fast")))
    assert "requested: fast.storageclass.storage.k8s.io/persistentvolumeclaims=1" in error.message


def test_quota_objects_are_validated(registry: ObjectRegistry) -> None:
    error = refused(registry, Invalid, lambda: registry.create(RESOURCE_QUOTA, quota({"cpu": "-1"})))
    assert [(c.field, c.message) for c in error.causes] == [
        ("spec.hard[cpu]", 'Invalid value: "-1": must be greater than or equal to 0')]
    scoped = quota({"cpu": "1"})
    scoped["spec"]["scopes"] = ["BestEffort"]
    error = refused(registry, Invalid, lambda: registry.create(RESOURCE_QUOTA, scoped))
    assert error.causes[0].field == "spec.scopes"
    created = registry.create(RESOURCE_QUOTA, {**quota({"cpu": "1"}), "status": {"used": {"cpu": "9"}}})
    assert "status" not in created  # the status subresource is the quota controller's


def test_an_old_invalid_object_can_still_lose_its_finalizers(registry: ObjectRegistry) -> None:
    registry.admission.admit = lambda *args: None  # type: ignore[method-assign]  # stored by an older version
    bad = sandbox("old", finalizers=["x/y"])
    container(bad)["resources"] = {"limits": {"cpu": "-1"}}
    registry.create(SANDBOX, bad)
    del registry.admission.admit
    registry.delete(SANDBOX, "default", "old")
    current = registry.get(SANDBOX, "default", "old")
    current["metadata"]["finalizers"] = []
    registry.update(SANDBOX, current)
    assert registry.try_get(SANDBOX, "default", "old") is None


def test_mounts_may_name_volume_claim_templates(registry: ObjectRegistry) -> None:
    pod_spec = {"containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "ws", "mountPath": "/ws"}]}]}
    vct = [{"metadata": {"name": "ws"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                 "resources": {"requests": {"storage": "1Gi"}}}}]
    obj = sandbox("with-claim")
    obj["spec"]["podTemplate"]["spec"] = copy.deepcopy(pod_spec)
    obj["spec"]["volumeClaimTemplates"] = vct
    registry.create(SANDBOX, obj)
    registry.create(TEMPLATE, {**template("t1", pod_spec), "spec": {"podTemplate": {"spec": pod_spec},
                                                                    "volumeClaimTemplates": vct}})
    # Claims of this template may bring the volume: a mount of it is not refused here...
    open_to_claims = template("t2", pod_spec)
    open_to_claims["spec"]["volumeClaimTemplatesPolicy"] = "Allowed"
    registry.create(TEMPLATE, open_to_claims)
    # ...but where they may not, it is.
    error = refused(registry, Invalid, lambda: registry.create(TEMPLATE, template("t3", pod_spec)))
    assert [c.field for c in error.causes] == ["spec.podTemplate.spec.containers[0].volumeMounts[0].name"]


async def test_a_write_admitted_on_a_worker_is_checked_again_before_its_commit(registry: ObjectRegistry) -> None:
    import asyncio

    registry.create(RESOURCE_QUOTA, quota({"count/sandboxes.agents.x-k8s.io": "1"}))
    loop = asyncio.get_running_loop()
    real = registry.admission.admit

    def admit(kind: Any, obj: Obj, old: Obj | None) -> None:
        real(kind, obj, old)
        if obj["metadata"]["name"] == "slow":  # another write takes the last place meanwhile, on the loop
            asyncio.run_coroutine_threadsafe(asyncio.to_thread(lambda: None), loop).result()
            loop.call_soon_threadsafe(registry.create, SANDBOX, sandbox("fast"))
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result()

    registry.admission.admit = admit  # type: ignore[method-assign]
    with pytest.raises(Forbidden, match="exceeded quota"):
        await registry.offload(registry.create, SANDBOX, sandbox("slow"))
    assert [s["metadata"]["name"] for s in registry.list(SANDBOX, "default").items] == ["fast"]
