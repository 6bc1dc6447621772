"""The directories of a runtime root: ids checked, listed, records written atomically (no services)."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.ids import ID_LENGTH, sandbox_id
from turbok.runtime.podlayout import PodDir, SandboxDir, list_ids


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
    d = PodDir(tmp_path, sandbox_id("x"))
    d.path.mkdir()
    d.write_json(d.pod_file, {"a": 1})
    d.write_json(d.pod_file, {"a": 2, "t": (1, 2)})
    assert d.pod_file.read_text().replace(" ", "").replace("\n", "") == '{"a":2,"t":[1,2]}'
    assert not list(d.path.glob("*.tmp"))


@pytest.mark.parametrize("bad", ["..", "../" + "a" * 21, "x" * 25])
def test_no_path_is_built_from_a_bad_id(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidSandboxSpec, match="invalid sandbox id"):
        SandboxDir(tmp_path, bad)
    with pytest.raises(InvalidSandboxSpec, match="invalid sandbox id"):
        PodDir(tmp_path, bad)


def test_everything_a_sandbox_writes_is_on_its_disk(tmp_path: Path) -> None:
    d = SandboxDir(tmp_path, sandbox_id("y"))
    for p in (d.logs, d.volume("data")):
        assert p.is_relative_to(d.disk)
    assert d.disk_image.parent == d.path and not d.disk_image.is_relative_to(d.disk)
