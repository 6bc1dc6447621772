"""A pod's OCI bundles: Kubernetes' command rules, users, capabilities, limits, the three shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.runtime.cri import Capabilities, ContainerConfig, PodSandboxConfig, SecurityContext
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.images import ResolvedImage
from turbok.runtime.podbundle import (
    ANNOTATION_SANDBOX_ID,
    ANNOTATION_TYPE,
    DEFAULT_CAPABILITIES,
    MountSpec,
    capabilities,
    container_bundle,
    container_process,
    cpu_quota_us,
    pause_bundle,
    user_home,
)

POD = PodSandboxConfig(id="tk" + "0" * 22, name="p", namespace="ns", uid="u", hostname="my-pod",
                       cpu_millis=500, memory_bytes=256 << 20)


def image(tmp_path: Path, command: tuple[str, ...] = ("python3",)) -> ResolvedImage:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    return ResolvedImage(reference="python:3", name="python", rootfs=tmp_path, command=command,
                         env={"SANDBOX_BASE_DIR": "/app", "LANG": "C"}, working_dir="/app")


def test_command_and_args_follow_kubernetes(tmp_path: Path) -> None:
    img = image(tmp_path)
    assert container_process(POD, ContainerConfig("c", "i"), img).argv == ["python3"]
    assert container_process(POD, ContainerConfig("c", "i", args=["-V"]), img).argv == ["-V"]
    assert container_process(POD, ContainerConfig("c", "i", command=["sh", "-c"], args=["x"]), img).argv == [
        "sh", "-c", "x"]
    with pytest.raises(InvalidSandboxSpec, match="no command"):
        container_process(POD, ContainerConfig("c", "i"), image(tmp_path, ()))


def test_environment_user_and_home(tmp_path: Path) -> None:
    img = image(tmp_path)
    root = container_process(POD, ContainerConfig("c", "i", env={"LANG": "C.UTF-8", "A": "1"}), img)
    assert root.env["HOME"] == "/root" and root.env["HOSTNAME"] == "my-pod"
    assert root.env["LANG"] == "C.UTF-8" and root.env["SANDBOX_BASE_DIR"] == "/app" and root.env["A"] == "1"
    assert (root.uid, root.gid, root.cwd) == (0, 0, "/app")
    app = container_process(POD, ContainerConfig("c", "i", security=SecurityContext(
        run_as_user=1000, supplemental_groups=[5, 5, 7])), img)
    assert (app.uid, app.gid, app.env["HOME"], app.groups) == (1000, 1001, "/home/app", [5, 7])
    other = container_process(POD, ContainerConfig("c", "i", security=SecurityContext(run_as_user=4242,
                                                                                       run_as_group=9)), img)
    assert (other.gid, other.env["HOME"]) == (9, "/")
    assert user_home(tmp_path / "missing", 3) == ("/", None)
    assert "TERM" in container_process(POD, ContainerConfig("c", "i", tty=True), img).env
    with pytest.raises(InvalidSandboxSpec, match="environment"):
        container_process(POD, ContainerConfig("c", "i", env={"A=B": "x"}), img)
    with pytest.raises(InvalidSandboxSpec, match="environment"):
        container_process(POD, ContainerConfig("c", "i", env={"A": "nul\0"}), img)
    with pytest.raises(InvalidSandboxSpec, match="workingDir"):
        container_process(POD, ContainerConfig("c", "i", working_dir="rel"), img)


def test_capabilities_add_drop_all_and_what_gvisor_withholds() -> None:
    caps, notes = capabilities(SecurityContext())
    assert caps == sorted(DEFAULT_CAPABILITIES) and notes == []
    caps, notes = capabilities(SecurityContext(capabilities=Capabilities(add=["NET_ADMIN", "cap_net_raw"],
                                                                         drop=["CHOWN"])))
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps and "CAP_NET_RAW" not in caps
    assert notes == ["capability NET_RAW is not available in this sandbox"]
    caps, _ = capabilities(SecurityContext(capabilities=Capabilities(drop=["ALL"], add=["NET_BIND_SERVICE"])))
    assert caps == ["CAP_NET_BIND_SERVICE"]
    with pytest.raises(InvalidSandboxSpec, match="unknown capability"):
        capabilities(SecurityContext(capabilities=Capabilities(add=["FLY"])))


def test_solo_bundle_carries_the_pods_limits_network_and_read_only_root(tmp_path: Path) -> None:
    img = image(tmp_path)
    c = ContainerConfig("c", "i", memory_bytes=64 << 20, security=SecurityContext(
        read_only_root_filesystem=True, run_as_user=1000, allow_privilege_escalation=False))
    proc = container_process(POD, c, img)
    spec = container_bundle(POD, c, proc, rootfs=tmp_path / "rootfs",
                            mounts=[MountSpec("/data", tmp_path / "v"), MountSpec("/cfg", tmp_path / "f", True)],
                            shape="solo", cgroups_path="/turbok/x", pids_limit=1000, netns=Path("/run/netns/n"))
    assert spec["root"] == {"path": str(tmp_path / "rootfs"), "readonly": True}
    assert spec["linux"]["resources"] == {"cpu": {"quota": 50000, "period": 100000},
                                          "memory": {"limit": 256 << 20}, "pids": {"limit": 1000}}
    assert {"type": "network", "path": "/run/netns/n"} in spec["linux"]["namespaces"]
    binds = {m["destination"]: m["options"] for m in spec["mounts"] if m["type"] == "bind"}
    assert binds == {"/data": ["rbind", "rw"], "/cfg": ["rbind", "ro"]}
    p = spec["process"]
    assert p["user"] == {"uid": 1000, "gid": 1001} and p["noNewPrivileges"] is True
    assert p["capabilities"]["effective"] == [] and p["capabilities"]["bounding"]  # non-root holds none
    assert spec["hostname"] == "my-pod" and not spec["annotations"]


def test_sub_bundle_joins_the_pod_and_sets_no_limits_of_its_own(tmp_path: Path) -> None:
    img = image(tmp_path)
    c = ContainerConfig("c", "i", memory_bytes=64 << 20, cpu_millis=100)
    spec = container_bundle(POD, c, container_process(POD, c, img), rootfs=tmp_path, mounts=[], shape="sub",
                            cgroups_path="/turbok/x/y", pids_limit=None, netns=None)
    assert spec["annotations"] == {ANNOTATION_TYPE: "container", ANNOTATION_SANDBOX_ID: POD.id}
    assert "resources" not in spec["linux"]
    assert {"type": "network"} in spec["linux"]["namespaces"]


def test_pause_bundle_is_idle_unprivileged_and_read_only(tmp_path: Path) -> None:
    spec = pause_bundle(POD, rootfs=tmp_path, cgroups_path="/turbok/x", pids_limit=512, netns=None)
    assert spec["annotations"][ANNOTATION_TYPE] == "sandbox"
    assert spec["root"]["readonly"] is True
    assert spec["process"]["user"]["uid"] != 0 and spec["process"]["capabilities"]["bounding"] == []
    assert spec["linux"]["resources"]["pids"] == {"limit": 512}
    with pytest.raises(InvalidSandboxSpec, match="32Mi"):
        pause_bundle(PodSandboxConfig(**{**POD.__dict__, "memory_bytes": 1 << 20}), rootfs=tmp_path,
                     cgroups_path="/x", pids_limit=None, netns=None)
    with pytest.raises(InvalidSandboxSpec, match="hostname"):
        pause_bundle(PodSandboxConfig(**{**POD.__dict__, "hostname": "Bad_Name"}), rootfs=tmp_path,
                     cgroups_path="/x", pids_limit=None, netns=None)


def test_tiny_cpu_quota_is_raised_to_the_kernel_minimum() -> None:
    assert cpu_quota_us(1) == 1000
    assert cpu_quota_us(1500) == 150_000
