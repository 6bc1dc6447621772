"""Files volumes as the kubelet's atomic writer lays them out; path checks; pod records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turbok.runtime.cri import Mount, PodSandboxConfig, SecurityContext, VolumeConfig
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.pods import _config_from, _restore_key, canonical
from turbok.runtime.podvolumes import DATA_LINK, check_relative, write_files


def test_files_are_links_into_a_data_directory_switched_by_one_rename(tmp_path: Path) -> None:
    target = tmp_path / "cfg"
    write_files(target, {"a.txt": (b"A", 0o644), "dir/b.txt": (b"B", 0o600)})
    assert os.readlink(target / "a.txt") == f"{DATA_LINK}/a.txt"
    assert (target / "a.txt").read_bytes() == b"A" and (target / "dir" / "b.txt").read_bytes() == b"B"
    assert (target / "dir" / "b.txt").stat().st_mode & 0o777 == 0o600
    first = os.readlink(target / DATA_LINK)
    write_files(target, {"a.txt": (b"A2", 0o644), "c.txt": (b"C", 0o644)})
    assert (target / "a.txt").read_bytes() == b"A2" and (target / "c.txt").read_bytes() == b"C"
    assert not os.path.lexists(target / "dir")  # gone from the set: its link goes too
    assert os.readlink(target / DATA_LINK) != first and not (target / first).exists()
    data_dirs = [e for e in os.listdir(target) if e.startswith("..") and e != DATA_LINK]
    assert len(data_dirs) == 1


def test_bad_file_paths_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    for bad in ("../x", "/etc/passwd", "a/../../b", "..data", "a//b", ""):
        with pytest.raises(InvalidSandboxSpec):
            write_files(tmp_path / "v", {bad: (b"x", 0o644)})
    assert not (tmp_path / "v").exists()
    with pytest.raises(InvalidSandboxSpec, match="mode"):
        write_files(tmp_path / "v", {"a": (b"x", 0o4755)})
    assert check_relative("subPath", "a/b") == ["a", "b"]


def test_records_keep_configs_without_secret_contents_and_compare_without_identity() -> None:
    cfg = PodSandboxConfig(id="tk" + "1" * 22, name="p", namespace="n", uid="u1", hostname="h",
                           volumes=[VolumeConfig("s", "files", files={"k": (b"secret", 0o600)}),
                                    VolumeConfig("h", "host", host_path=Path("/srv"))],
                           labels={"a": "b"})
    data = canonical(cfg)
    assert "secret" not in str(data) and data["volumes"][0]["files"]["k"][0]["size"] == 6
    back = _config_from(data)
    assert back.volumes[1].host_path == Path("/srv") and back.uid == "u1" and back.hostname == "h"
    moved = PodSandboxConfig(**{**cfg.__dict__, "uid": "u2", "labels": {}, "annotations": {"x": "y"}})
    assert _restore_key(moved) == _restore_key(cfg)
    assert _restore_key(PodSandboxConfig(**{**cfg.__dict__, "memory_bytes": 1 << 30})) != _restore_key(cfg)
    assert canonical(Mount("v", "/x")) == {"volume": "v", "container_path": "/x", "read_only": False,
                                           "sub_path": ""}
    assert canonical(SecurityContext(supplemental_groups=(1, 2)))["supplemental_groups"] == [1, 2]
