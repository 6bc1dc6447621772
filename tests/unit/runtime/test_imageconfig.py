"""An image config's run settings and its user, resolved in the image's own passwd/group."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.runtime.imageconfig import ImageConfig


def cfg(**config: object) -> ImageConfig:
    return ImageConfig.parse({"os": "linux", "architecture": "amd64", "config": config})


def test_parse() -> None:
    c = cfg(Entrypoint=["/e"], Cmd=["a", "b"], Env=["A=1", "B=x=y", "bad"], WorkingDir="/w", User="1:2",
            StopSignal="SIGINT", ExposedPorts={"80/tcp": {}}, Labels={"k": "v"})
    assert (c.entrypoint, c.cmd, dict(c.env), c.working_dir, c.user) == (("/e",), ("a", "b"), {"A": "1", "B": "x=y"},
                                                                        "/w", "1:2")
    assert c.stop_signal == "SIGINT" and c.exposed_ports == ("80/tcp",) and c.labels == {"k": "v"}
    assert cfg().entrypoint == () and cfg(Cmd=None).cmd == ()


@pytest.mark.parametrize(("user", "uid"), [("", 0), ("0", 0), ("1000", 1000), ("1000:100", 1000), ("app", None),
                                           ("app:staff", None)])
def test_policy_uid(user: str, uid: int | None) -> None:
    assert cfg(User=user).policy_uid == uid


def test_resolve_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n")
    (tmp_path / "etc/group").write_text("staff:x:50:\n")
    assert cfg(User="app").resolve_user(tmp_path) == (1234, 2345, "")
    assert cfg(User="app:staff").resolve_user(tmp_path) == (1234, 50, "")
    assert cfg(User="1234").resolve_user(tmp_path) == (1234, 2345, "")
    assert cfg(User="77:88").resolve_user(tmp_path) == (77, 88, "")
    assert cfg(User="").resolve_user(tmp_path) == (None, None, "")
    assert cfg(User="ghost").resolve_user(tmp_path)[2] == "unable to find user ghost: no matching entries in passwd file"
    assert "unable to find group nog" in cfg(User="app:nog").resolve_user(tmp_path)[2]
