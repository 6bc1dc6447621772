"""Reading why a sandbox died from its cgroup, v1 and v2, on a fake cgroup root."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.runtime.cgroups import Cgroup, cgroup_version


def v1_root(tmp_path: Path, oom: int, pids_max: int) -> Path:
    for c in ("memory", "pids", "cpu"):
        (tmp_path / c / "turbok" / "box").mkdir(parents=True)
    (tmp_path / "memory/turbok/box/memory.oom_control").write_text(
        f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom}\n"
    )
    (tmp_path / "pids/turbok/box/pids.events").write_text(f"max {pids_max}\n")
    return tmp_path


def test_version_detection(tmp_path: Path) -> None:
    assert cgroup_version(tmp_path) is None
    v1_root(tmp_path, 0, 0)
    assert cgroup_version(tmp_path) == 1
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroup_version(tmp_path) == 2


def test_v1_counters(tmp_path: Path) -> None:
    c = Cgroup("/turbok/box", v1_root(tmp_path, 2, 0)).counters()
    assert (c.oom_kills, c.pids_limit_hits) == (2, 0)


def test_v2_counters(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    d = tmp_path / "turbok" / "box"
    d.mkdir(parents=True)
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    (d / "pids.events").write_text("max 7\n")
    c = Cgroup("turbok/box", tmp_path).counters()
    assert (c.oom_kills, c.pids_limit_hits) == (1, 7)


def test_missing_cgroup_reads_zero(tmp_path: Path) -> None:
    v1_root(tmp_path, 0, 0)
    c = Cgroup("/turbok/gone", tmp_path)
    assert not c.exists()
    assert c.counters().oom_kills == 0


def test_v1_create_writes_limits(tmp_path: Path) -> None:
    v1_root(tmp_path, 0, 0)
    cg = Cgroup("/turbok/new", tmp_path)
    cg.create(cpu_quota_us=50_000, cpu_period_us=100_000, memory_bytes=2**28, pids=99)
    assert (tmp_path / "cpu/turbok/new/cpu.cfs_quota_us").read_text() == "50000"
    assert (tmp_path / "memory/turbok/new/memory.limit_in_bytes").read_text() == str(2**28)
    assert (tmp_path / "pids/turbok/new/pids.max").read_text() == "99"
    assert cg.procs_files()[0] == tmp_path / "memory/turbok/new/cgroup.procs"


def test_the_sandboxes_parent_gets_a_memory_bound_that_leaves_a_reserve(tmp_path: Path) -> None:
    from turbok.runtime.cgroups import RESERVED_MEMORY_BYTES, bound_parent_memory, sandboxes_memory_bytes

    assert sandboxes_memory_bytes(24 << 30) == (24 << 30) - int((24 << 30) * 0.10)  # 10 % of a large machine
    assert sandboxes_memory_bytes(4 << 30) == (4 << 30) - RESERVED_MEMORY_BYTES  # at least 1 GiB kept
    v1 = v1_root(tmp_path / "v1", 0, 0)
    assert bound_parent_memory("/turbok", 5 << 30, root=v1)
    assert (v1 / "memory/turbok/memory.limit_in_bytes").read_text() == str(5 << 30)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    assert bound_parent_memory("/turbok", 5 << 30, root=v2)
    assert (v2 / "turbok/memory.max").read_text() == str(5 << 30)
    assert not bound_parent_memory("/turbok", 5 << 30, root=tmp_path / "none")


def test_the_sandboxes_memory_comes_from_the_environment_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from turbok.runtime.cgroups import SANDBOXES_MEMORY_ENV, sandboxes_memory_bytes, sandboxes_memory_limit

    monkeypatch.setenv(SANDBOXES_MEMORY_ENV, "16Gi")
    assert sandboxes_memory_limit() == 16 << 30
    monkeypatch.setenv(SANDBOXES_MEMORY_ENV, "lots")  # not a quantity: ignored, with a warning
    assert sandboxes_memory_limit() == sandboxes_memory_bytes()
    monkeypatch.delenv(SANDBOXES_MEMORY_ENV)
    assert sandboxes_memory_limit() == sandboxes_memory_bytes()
