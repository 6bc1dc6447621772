"""Disk bounds, the unbounded fallback and its reason (no services, no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.runtime.disk import (
    BYTES_PER_INODE,
    DEFAULT_EPHEMERAL_STORAGE,
    MIN_INODES,
    Disks,
    bounds,
)
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.podlayout import SandboxDir


def test_bounds_follow_the_limit_with_a_default_and_a_floor() -> None:
    assert bounds(None).bytes == DEFAULT_EPHEMERAL_STORAGE
    b = bounds(2 * 2**30)
    assert (b.bytes, b.inodes) == (2 * 2**30, 2 * 2**30 // BYTES_PER_INODE)
    assert bounds(32 * 2**20).inodes == MIN_INODES  # a small disk still holds a usable number of files
    # The file holds the limit plus ext4's own tables: about the limit is usable, a few percent more at most.
    for limit in (16 * 2**20, 2**30, 10 * 2**30):
        size = bounds(limit).image_size
        assert limit < size < limit * 1.05 + 4 * 2**20 and size % 4096 == 0
    assert bounds(5 * 2**30, default=1).bytes == 5 * 2**30
    with pytest.raises(InvalidSandboxSpec, match="below the minimum"):
        bounds(2**20)


def test_without_loop_devices_disks_are_plain_and_the_reason_is_told(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    disks = Disks(loop_control=tmp_path / "no-loop-control")
    assert disks.unbounded_reason is not None and "no-loop-control" in disks.unbounded_reason
    assert "NOT bounded" in caplog.text
    sdir = SandboxDir(tmp_path, "tk" + "0" * 22)
    assert "disk not bounded" in disks.note(sdir) and "no-loop-control" in disks.note(sdir)
    assert Disks(bounded=False).unbounded_reason == "bounded disks turned off"
