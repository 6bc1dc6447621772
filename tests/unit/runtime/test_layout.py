"""Ids, the sandbox directory and its validation (no services)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from turbok.runtime.base import ID_LENGTH, SandboxSpec, VolumeMount, sandbox_id, validate_id
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.layout import SandboxDir, hostname_of, list_ids, validate_volumes


def spec(**kw: object) -> SandboxSpec:
    base: dict[str, object] = {"id": sandbox_id("u1"), "hostname": "box", "image": "python-runtime-sandbox"}
    base.update(kw)
    return SandboxSpec(**base)  # type: ignore[arg-type]


def test_ids_are_fixed_width_and_prefix_free() -> None:
    ids = {sandbox_id(f"uid-{i}") for i in range(2000)}
    assert len(ids) == 2000
    assert {len(i) for i in ids} == {ID_LENGTH}
    assert all(validate_id(i) == i for i in ids)
    # Fixed width makes prefix collisions impossible; check the property itself.
    ordered = sorted(ids)
    assert not any(b.startswith(a) for a, b in zip(ordered, ordered[1:], strict=False))


@pytest.mark.parametrize("bad", ["", "short", "x" * 25, "tk" + "A" * 22, "../" + "a" * 21, "tk" + "a" * 21 + "/"])
def test_validate_id_refuses_what_could_escape_or_prefix(bad: str) -> None:
    with pytest.raises(InvalidSandboxSpec, match="invalid sandbox id"):
        validate_id(bad)


def test_create_makes_layout_and_names_the_host(tmp_path: Path) -> None:
    s = spec(hostname="my-box", volumes=[VolumeMount("data", "/data")])
    d = SandboxDir(tmp_path, s.id)
    assert d.create(s) is True
    assert stat.S_IMODE(d.path.stat().st_mode) == 0o700  # no other user may traverse it
    for p in (d.rootfs, d.run, d.disk):
        assert p.is_dir()
    d.populate(s)  # on the mounted disk, in a runtime
    for p in (d.upper, d.ovwork, d.app, d.logs, d.volume("data")):
        assert p.is_dir() and p.is_relative_to(d.disk)
    assert (d.upper / "etc" / "hostname").read_text() == "my-box\n"
    assert "127.0.1.1\tmy-box" in (d.upper / "etc" / "hosts").read_text()
    (d.app / "kept").write_text("x")
    (d.upper / "etc" / "hostname").write_text("changed inside\n")
    os.chmod(d.path, 0o755)
    assert d.create(s) is False  # second start: nothing rewritten, modes tightened again
    d.populate(s)
    assert (d.app / "kept").read_text() == "x"
    assert (d.upper / "etc" / "hostname").read_text() == "changed inside\n"
    assert stat.S_IMODE(d.path.stat().st_mode) == 0o700


def test_hostname_cut_like_kubernetes_and_checked() -> None:
    assert hostname_of(spec(hostname="a" * 70)) == "a" * 63
    assert hostname_of(spec(hostname="abc-" + "b" * 58 + "-x")) == "abc-" + "b" * 58 + ""
    with pytest.raises(InvalidSandboxSpec, match="hostname"):
        hostname_of(spec(hostname="Bad_Name"))


@pytest.mark.parametrize(
    ("volumes", "match"),
    [
        ([VolumeMount("Bad/Name", "/x")], "invalid volume name"),
        ([VolumeMount("a", "/x"), VolumeMount("a", "/y")], "named twice"),
        ([VolumeMount("a", "relative")], "must be absolute"),
        ([VolumeMount("a", "/x/../etc")], "must be absolute"),
        ([VolumeMount("a", "/proc")], "must be absolute"),
        ([VolumeMount("a", "/")], "must be absolute"),
    ],
)
def test_bad_volumes_refused(volumes: list[VolumeMount], match: str) -> None:
    with pytest.raises(InvalidSandboxSpec, match=match):
        validate_volumes(volumes)


def test_list_ids_ignores_everything_but_sandbox_dirs(tmp_path: Path) -> None:
    a, b = sandbox_id("a"), sandbox_id("b")
    (tmp_path / a).mkdir()
    (tmp_path / b).mkdir()
    (tmp_path / ".runsc").mkdir()
    (tmp_path / ("z" * ID_LENGTH)).write_text("a file, not a sandbox")
    (tmp_path / "notes").mkdir()
    assert list_ids(tmp_path) == sorted([a, b])
    assert list_ids(tmp_path / "missing") == []


def test_write_json_is_atomic_replace(tmp_path: Path) -> None:
    d = SandboxDir(tmp_path, sandbox_id("x"))
    d.path.mkdir()
    d.write_json(d.config, {"a": 1})
    d.write_json(d.config, {"a": 2})
    assert d.config.read_text().replace(" ", "").replace("\n", "") == '{"a":2}'
    assert not list(d.path.glob("*.tmp"))
