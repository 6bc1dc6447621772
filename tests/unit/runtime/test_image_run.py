"""A pulled image's config in the container's process (podbundle.container_process): Kubernetes' overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.runtime.cri import ContainerConfig, PodSandboxConfig, SecurityContext
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.imageconfig import ImageConfig
from turbok.runtime.images import ResolvedImage
from turbok.runtime.podbundle import container_process

POD = PodSandboxConfig(id="p" * 12, name="p", namespace="ns", uid="u", hostname="p")


def pulled(tmp_path: Path, *, user: str = "", uid: int | None = None, gid: int | None = None,
           error: str = "") -> ResolvedImage:
    return ResolvedImage(reference="r.test/x:1", name="r.test/x", rootfs=tmp_path, command=("/ep", "--flag", "cmd1"),
                         env={"PATH": "/img/bin", "A": "image"}, working_dir="/work", entrypoint=("/ep", "--flag"),
                         user=user, uid=uid, gid=gid, user_error=error, digest="r.test/x@sha256:" + "a" * 64,
                         config=ImageConfig(user=user))


def test_entrypoint_cmd_args_command(tmp_path: Path) -> None:
    img = pulled(tmp_path)
    assert container_process(POD, ContainerConfig("c", "x"), img).argv == ["/ep", "--flag", "cmd1"]
    assert container_process(POD, ContainerConfig("c", "x", args=["a"]), img).argv == ["/ep", "--flag", "a"]
    assert container_process(POD, ContainerConfig("c", "x", command=["/other"]), img).argv == ["/other"]
    assert container_process(POD, ContainerConfig("c", "x", command=["/o"], args=["b"]), img).argv == ["/o", "b"]


def test_image_env_workdir_and_user_are_defaults_the_container_overrides(tmp_path: Path) -> None:
    img = pulled(tmp_path, user="app", uid=1234, gid=2345)
    proc = container_process(POD, ContainerConfig("c", "x", env={"A": "pod"}), img)
    assert (proc.env["PATH"], proc.env["A"], proc.cwd, proc.uid, proc.gid) == ("/img/bin", "pod", "/work", 1234, 2345)
    proc = container_process(POD, ContainerConfig("c", "x", working_dir="/else",
                                                  security=SecurityContext(run_as_user=7)), img)
    assert (proc.cwd, proc.uid, proc.gid) == ("/else", 7, 0)


def test_an_unknown_image_user_cannot_run(tmp_path: Path) -> None:
    img = pulled(tmp_path, user="ghost", error="unable to find user ghost: no matching entries in passwd file")
    with pytest.raises(InvalidSandboxSpec, match="unable to find user ghost"):
        container_process(POD, ContainerConfig("c", "x"), img)
    assert container_process(POD, ContainerConfig("c", "x", security=SecurityContext(run_as_user=5)), img).uid == 5


def test_home_is_read_inside_the_image_never_through_a_host_symlink(tmp_path: Path) -> None:
    host = tmp_path / "host-passwd"
    host.write_text("u:x:4242:4242::/host-secret-home:/bin/sh\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").symlink_to(host)  # absolute: inside the sandbox it names <root>/<host path>
    proc = container_process(POD, ContainerConfig("c", "x", security=SecurityContext(run_as_user=4242)),
                             pulled(root))
    assert proc.env["HOME"] == "/"
