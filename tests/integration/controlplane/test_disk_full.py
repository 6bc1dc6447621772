"""A full home: sandboxes say why they cannot start, and all come back by themselves once space is freed.

The home is a small tmpfs (the store, the logs and every sandbox's sparse disk on it). Before the
fix, a start that failed with the host's ENOSPC killed the boot for good: the sandbox stayed
not-Ready until the control plane restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ControlPlaneProcess
from turbok.runtime import loopdev
from turbok.runtime.ids import sandbox_id
from turbok.runtime.pods import HOME_RESERVE_BYTES
from turbok.runtime.pods_gvisor import GvisorPodRuntime

from .conftest import Kube, sandbox

pytestmark = pytest.mark.integration

MiB = 1 << 20
_NO_LOOP = loopdev.unavailable()


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192m,mode=0700", "tmpfs", str(home)], check=True)
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def fill(path: Path, leave: int) -> None:
    """Write ``path`` until the filesystem has about ``leave`` bytes free (0: until ENOSPC)."""
    with open(path, "ab") as f, contextlib.suppress(OSError):
        while (free := os.statvfs(path).f_bavail * os.statvfs(path).f_frsize) > leave:
            f.write(b"\0" * min(MiB, max(free - leave, 4096)))
            f.flush()


def with_disk(name: str, size: str) -> dict[str, Any]:
    obj = copy.deepcopy(sandbox(name))
    obj["spec"]["podTemplate"]["spec"]["containers"][0]["resources"] = {"limits": {"ephemeral-storage": size}}
    return obj


def ready_message(kube: Kube, name: str) -> str:
    cond = kube.condition(kube.sandbox, name) or {}
    return f"{cond.get('status')}/{cond.get('reason')}: {cond.get('message')}"


@pytest.mark.skipif(_NO_LOOP is not None, reason=f"loop devices unavailable: {_NO_LOOP}")
def test_a_full_home_degrades_clearly_and_every_sandbox_recovers_without_a_restart(
    small_home: Path, make_control_plane: Callable[..., ControlPlaneProcess]
) -> None:
    cp = make_control_plane(small_home)
    kube = Kube(cp, "default")
    runtime = GvisorPodRuntime(small_home / "pods")  # the test's own view of the same pods
    rid = {}
    for name in ("a", "b"):
        obj = kube.create(with_disk(name, "32Mi"))
        rid[name] = sandbox_id(obj["metadata"]["uid"])
    for name in ("a", "b"):
        kube.wait_condition(kube.sandbox, name, timeout=60)

    # 1. Nearly full (less than the reserve kept for the store): a new sandbox is not even scheduled
    #    (the scheduler's disk reserve, docs/node.md "Back-pressure"), and says why; one that must start
    #    again (its sandbox stopped under it) is bound already, and its start says why it fails.
    fill(small_home / "filler-1", leave=HOME_RESERVE_BYTES // 4)
    kube.create(with_disk("c", "32Mi"))
    asyncio.run(runtime.stop_pod_sandbox(rid["a"]))
    try:
        kube.wait(lambda: "no space left for pods" in ready_message(kube, "a"), timeout=60,
                  what="sandbox a saying the home is full")
    except AssertionError as e:
        raise AssertionError(f"{ready_message(kube, 'a')}\n{e}") from None
    assert ready_message(kube, "a").startswith("False/")
    scheduled = kube.wait_condition(kube.sandbox, "c", "PodScheduled", "False", reason="Unschedulable", timeout=60)
    assert any(c.get("message") == "0/1 nodes are available: 1 Insufficient ephemeral-storage."
               for c in scheduled["status"]["conditions"]), scheduled["status"]

    # 2. Completely full (the store cannot write either), and a sandbox must start meanwhile.
    asyncio.run(runtime.stop_pod_sandbox(rid["b"]))
    fill(small_home / "filler-2", leave=0)
    # Writes inside a running sandbox fail now rather than reach the host (its disk is sparse).
    asyncio.run(asyncio.sleep(8))  # the controllers meet the full disk: failed starts, failed writes

    # 3. Space is back: every sandbox comes back by itself (c is bound at the next look at the host), no
    #    restart of the control plane.
    (small_home / "filler-1").unlink()
    (small_home / "filler-2").unlink()
    for name in ("a", "b", "c"):
        kube.wait(lambda n=name: ready_message(kube, n).startswith("True/"), timeout=120,
                  what=f"sandbox {name} Ready again: {ready_message(kube, name)}")
    assert cp.proc is not None and cp.proc.poll() is None  # the same control plane, never restarted
    for name in ("a", "b"):
        with kube.connect(name) as conn:
            r = conn.commands.run("head -c 1000000 /dev/zero > /app/f && wc -c < /app/f")
            assert r.stdout.strip() == "1000000", r
    kube.close()
