"""A container's effective security context: pod/container merge, runAsNonRoot, what gVisor cannot give."""

from __future__ import annotations

from typing import Any

import pytest

from turbok.node.env import ContainerConfigError
from turbok.node.security import SecurityError, security_context
from turbok.runtime.cri import Capabilities, SecurityContext

Obj = dict[str, Any]


def pod(psc: Obj | None = None, csc: Obj | None = None, annotations: Obj | None = None) -> tuple[Obj, Obj]:
    container: Obj = {"name": "c", "image": "i"}
    if csc is not None:
        container["securityContext"] = csc
    spec: Obj = {"containers": [container]}
    if psc is not None:
        spec["securityContext"] = psc
    md: Obj = {"name": "p", "namespace": "ns", "uid": "u-1"}
    if annotations:
        md["annotations"] = annotations
    return {"metadata": md, "spec": spec}, container


def test_defaults() -> None:
    p, c = pod()
    plan = security_context(p, c)
    assert plan.context == SecurityContext() and plan.notes == []


def test_container_wins_field_by_field() -> None:
    p, c = pod({"runAsUser": 1000, "runAsGroup": 2000, "supplementalGroups": [5, 6], "fsGroup": 7},
               {"runAsUser": 1001, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                "capabilities": {"add": ["NET_ADMIN", "CAP_SYS_PTRACE"], "drop": ["ALL"]}})
    plan = security_context(p, c)
    assert plan.context == SecurityContext(
        run_as_user=1001, run_as_group=2000, supplemental_groups=(5, 6, 7), read_only_root_filesystem=True,
        allow_privilege_escalation=False, capabilities=Capabilities(add=("NET_ADMIN", "SYS_PTRACE"), drop=("ALL",)))
    assert [r for r, _ in plan.notes] == ["FSGroupPartial"]


def test_run_as_non_root() -> None:
    # The images here run as root: runAsNonRoot without a runAsUser is refused with kubelet's message.
    p, c = pod({"runAsNonRoot": True})
    with pytest.raises(SecurityError) as err:
        security_context(p, c)
    assert str(err.value) == 'container has runAsNonRoot and image will run as root (pod: "p_ns(u-1)", container: c)'
    assert isinstance(err.value, ContainerConfigError)
    p, c = pod({"runAsNonRoot": True}, {"runAsUser": 0})
    with pytest.raises(SecurityError, match="container's runAsUser breaks non-root policy"):
        security_context(p, c)
    p, c = pod({"runAsNonRoot": True, "runAsUser": 1000})
    assert security_context(p, c).context.run_as_user == 1000
    p, c = pod(None, {"runAsNonRoot": True})
    assert security_context(p, c, image_uid=1000).context.run_as_user is None  # an image with a non-root USER
    with pytest.raises(SecurityError, match="non-numeric user"):
        security_context(p, c, image_uid=None)
    p, c = pod({"runAsNonRoot": True}, {"runAsNonRoot": False})
    security_context(p, c)  # the container's false wins


@pytest.mark.parametrize(("csc", "match"), [
    ({"privileged": True}, "is privileged"),
    ({"capabilities": {"add": ["SYS_TIME"]}}, "capabilities SYS_TIME cannot be given"),
    ({"capabilities": {"add": ["CAP_SYS_MODULE", "SYS_BOOT"]}}, "SYS_BOOT, SYS_MODULE"),
    ({"capabilities": {"add": ["MADE_UP"]}}, "unknown capabilities MADE_UP"),
    ({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}, "seccomp profile 'p.json'"),
    ({"appArmorProfile": {"type": "Localhost", "localhostProfile": "x"}}, "AppArmor profile 'x'"),
])
def test_refused(csc: Obj, match: str) -> None:
    p, c = pod(None, csc)
    with pytest.raises(SecurityError, match=match):
        security_context(p, c)


def test_legacy_apparmor_annotation_refused() -> None:
    p, c = pod(annotations={"container.apparmor.security.beta.kubernetes.io/c": "localhost/k8s-deny"})
    with pytest.raises(SecurityError, match="AppArmor profile 'k8s-deny'"):
        security_context(p, c)
    p, c = pod(annotations={"container.apparmor.security.beta.kubernetes.io/c": "runtime/default"})
    security_context(p, c)


def test_add_all_is_what_gvisor_gives() -> None:
    p, c = pod(None, {"capabilities": {"add": ["ALL"]}})
    add = security_context(p, c).context.capabilities.add
    assert "SYS_ADMIN" in add and "NET_ADMIN" in add and "SYS_TIME" not in add and "SYS_MODULE" not in add


def test_partly_honoured_fields_are_notes() -> None:
    p, c = pod({"seLinuxOptions": {"level": "s0:c1"}, "sysctls": [{"name": "net.core.somaxconn", "value": "1"}],
                "seccompProfile": {"type": "RuntimeDefault"}}, {"procMount": "Unmasked"})
    reasons = [r for r, _ in security_context(p, c).notes]
    assert reasons == ["SELinuxNotApplied", "ProcMountNotApplied", "SysctlsNotApplied"]
