"""The main process and the OCI bundle built from a spec (no services)."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.runtime.base import SandboxSpec, VolumeMount, sandbox_id
from turbok.runtime.bundle import CFS_PERIOD_US, cpu_quota_us, main_process, network_mode, oci_config
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.images import ResolvedImage
from turbok.runtime.layout import SandboxDir

IMAGE = ResolvedImage(
    reference="python-runtime-sandbox",
    name="python-runtime-sandbox",
    rootfs=Path("/images/base/rootfs"),
    command=("/bin/sh", "-c", "idle"),
    env={"SANDBOX_BASE_DIR": "/app", "LANG": "C.UTF-8"},
    working_dir="/app",
)


def spec(**kw: object) -> SandboxSpec:
    base: dict[str, object] = {"id": sandbox_id("u1"), "hostname": "box", "image": "python-runtime-sandbox"}
    base.update(kw)
    return SandboxSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        ((), (), ["/bin/sh", "-c", "idle"]),
        (("python3", "-c"), ("print(1)",), ["python3", "-c", "print(1)"]),
        ((), ("sleep", "5"), ["sleep", "5"]),
    ],
)
def test_kubernetes_command_rules(command: tuple[str, ...], args: tuple[str, ...], argv: list[str]) -> None:
    assert main_process(spec(command=command, args=args), IMAGE).argv == argv


def test_env_precedence_and_cwd() -> None:
    p = main_process(spec(env={"LANG": "en", "X": "1"}, working_dir="/work"), IMAGE)
    assert p.env["LANG"] == "en" and p.env["X"] == "1"
    assert p.env["SANDBOX_BASE_DIR"] == "/app" and p.env["HOSTNAME"] == "box"
    assert p.env["PATH"].startswith("/usr/local/sbin:/usr/local/bin")
    assert p.cwd == "/work"
    assert main_process(spec(), IMAGE).cwd == "/app"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"env": {"A=B": "x"}}, "environment"),
        ({"env": {"A": "nul\0"}}, "environment"),
        ({"working_dir": "relative"}, "absolute"),
        ({"network": "host"}, "not supported"),
        ({"cpu_millis": 0}, "cpu limit"),
        ({"memory_bytes": 1024}, "memory limit"),
    ],
)
def test_bad_specs_refused(tmp_path: Path, kw: dict[str, object], match: str) -> None:
    s = spec(**kw)
    with pytest.raises(InvalidSandboxSpec, match=match):
        network_mode(s)
        oci_config(s, IMAGE, SandboxDir(tmp_path, s.id), pids_limit=100, cgroup_parent="/turbok")


def test_image_without_command_and_spec_without_one_is_refused() -> None:
    bare = ResolvedImage("x", "x", Path("/r"), (), {}, "/")
    with pytest.raises(InvalidSandboxSpec, match="no command"):
        main_process(spec(), bare)


def test_network_none_and_loopback_are_runsc_none() -> None:
    assert network_mode(spec()) == "none"
    assert network_mode(spec(network="loopback")) == "none"


def test_oci_config_limits_mounts_and_identity(tmp_path: Path) -> None:
    s = spec(
        hostname="claim-7",
        cpu_millis=250,
        memory_bytes=512 * 2**20,
        volumes=[VolumeMount("data", "/data"), VolumeMount("ref", "/ref", read_only=True)],
    )
    d = SandboxDir(tmp_path, s.id)
    c = oci_config(s, IMAGE, d, pids_limit=321, cgroup_parent="/turbok/")
    res = c["linux"]["resources"]
    assert res["cpu"] == {"quota": 25_000, "period": CFS_PERIOD_US}
    assert res["memory"] == {"limit": 512 * 2**20}
    assert res["pids"] == {"limit": 321}
    assert c["linux"]["cgroupsPath"] == f"/turbok/{s.id}"
    assert c["hostname"] == "claim-7"
    assert c["root"] == {"path": str(d.rootfs), "readonly": False}
    mounts = {m["destination"]: m for m in c["mounts"]}
    assert mounts["/app"]["source"] == str(d.app) and "rw" in mounts["/app"]["options"]
    assert mounts["/data"]["source"] == str(d.volume("data")) and "rw" in mounts["/data"]["options"]
    assert "ro" in mounts["/ref"]["options"]
    assert {"pid", "network", "ipc", "uts", "mount"} == {n["type"] for n in c["linux"]["namespaces"]}
    assert "CAP_SYS_ADMIN" not in c["process"]["capabilities"]["bounding"]


def test_unlimited_spec_has_only_pids_limit(tmp_path: Path) -> None:
    s = spec()
    c = oci_config(s, IMAGE, SandboxDir(tmp_path, s.id), pids_limit=64, cgroup_parent="/turbok")
    assert c["linux"]["resources"] == {"pids": {"limit": 64}}


def test_tiny_cpu_quota_is_raised_to_the_kernel_minimum() -> None:
    assert cpu_quota_us(1) == 1000
    assert cpu_quota_us(1500) == 150_000


def test_the_specs_pids_limit_wins_over_the_runtimes(tmp_path: Path) -> None:
    s = spec(pids_limit=300)
    c = oci_config(s, IMAGE, SandboxDir(tmp_path, s.id), pids_limit=2048, cgroup_parent="/turbok")
    assert c["linux"]["resources"]["pids"] == {"limit": 300}
