"""Pieces of the gVisor pod runtime that need no runsc: ps parsing, process trees, construction."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.runtime.cri import PodSandboxState
from turbok.runtime.errors import SandboxStartFailed
from turbok.runtime.pods_gvisor import GvisorPodRuntime, _descendants, _parse_ps

PS = b"""UID       PID       PPID      C         TTY       STIME     TIME      CMD
0         1         0         0         ?         15:26     10ms      sh
0         2         1         0         ?         15:26     0s        sleep
0         7         0         0         ?         15:26     0s        sh
0         8         7         0         ?         15:26     0s        python3
0         9         8         0         ?         15:26     0s        sleep
0         12        1         0         ?         15:26     0s        orphan
"""


def test_parse_ps() -> None:
    assert _parse_ps(PS) == {1: 0, 2: 1, 7: 0, 8: 7, 9: 8, 12: 1}
    assert _parse_ps(b"") == {}


def test_descendants_follow_the_tree_only() -> None:
    procs = _parse_ps(PS)
    assert _descendants(procs, 7) == {7, 8, 9}
    assert _descendants(procs, 9) == {9}
    assert _descendants(procs, 99) == {99}


def test_missing_runsc_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxStartFailed, match="runsc not found"):
        GvisorPodRuntime(tmp_path, runsc=str(tmp_path / "no-runsc"))


async def test_status_and_list_without_any_pod(tmp_path: Path) -> None:
    rt = GvisorPodRuntime(tmp_path / "root", runsc="/bin/true")
    assert await rt.list_pod_sandboxes() == []
    st = await rt.pod_sandbox_status("tk" + "0" * 22)
    assert st.state is PodSandboxState.ABSENT
