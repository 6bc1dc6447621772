"""make_pod_runtime: gVisor when runsc works, bubblewrap otherwise, never nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from turbok.runtime.cri import Isolation
from turbok.runtime.errors import NoIsolationAvailable
from turbok.runtime.factory import make_pod_runtime, tool_works


def fake_tool(tmp_path: Path, name: str, code: int) -> str:
    p = tmp_path / name
    p.write_text(f"#!/bin/sh\nexit {code}\n")
    p.chmod(0o755)
    return str(p)


def test_runsc_that_answers_is_chosen(tmp_path: Path) -> None:
    rt = make_pod_runtime(tmp_path, runsc=fake_tool(tmp_path, "runsc", 0), bwrap=fake_tool(tmp_path, "bwrap", 0))
    assert rt.isolation is Isolation.GVISOR


def test_missing_runsc_falls_back_to_bubblewrap(tmp_path: Path) -> None:
    if shutil.which("nsenter") is None:
        pytest.fail("nsenter (util-linux) is required")
    rt = make_pod_runtime(tmp_path, runsc=str(tmp_path / "missing"), bwrap=fake_tool(tmp_path, "bwrap", 0))
    assert rt.isolation is Isolation.BUBBLEWRAP


def test_broken_runsc_falls_back_too(tmp_path: Path) -> None:
    rt = make_pod_runtime(tmp_path, runsc=fake_tool(tmp_path, "runsc", 1), bwrap=fake_tool(tmp_path, "bwrap", 0))
    assert rt.isolation is Isolation.BUBBLEWRAP


def test_nothing_works_means_nothing_runs(tmp_path: Path) -> None:
    with pytest.raises(NoIsolationAvailable, match="never runs sandboxed code unisolated"):
        make_pod_runtime(tmp_path, runsc=str(tmp_path / "no-runsc"), bwrap=str(tmp_path / "no-bwrap"))


def test_tool_works(tmp_path: Path) -> None:
    assert tool_works(fake_tool(tmp_path, "ok", 0)) is not None
    assert tool_works(fake_tool(tmp_path, "bad", 2)) is None
    assert tool_works(str(tmp_path / "absent")) is None
