"""Sandboxes of the old, per-Sandbox runtime that no pod took over: `turbok down --stop-sandboxes` still
stops them (a running one's runsc sandbox, mounts and cgroup go; its disk stays), leaves a hibernated one
hibernated, and with ``remove`` deletes them all. Real runsc."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from turbok.embedded.daemon import stop_sandboxes
from turbok.home import Home
from turbok.runtime.cri import PodSandboxConfig
from turbok.runtime.images import ImageStore
from turbok.runtime.legacy import LegacySandboxes
from turbok.runtime.podbundle import pause_bundle
from turbok.runtime.podlayout import SandboxDir

from .podcheck import IMAGE, old_sandbox, pod_config, settled_leftovers

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def run_old(images: ImageStore, sdir: SandboxDir, cfg: PodSandboxConfig) -> None:
    """Start ``sdir`` as the old runtime did: one runsc container registered in ``<root>/.runsc``, its
    cgroup ``/turbok/<id>``, on its mounted disk (here an idle process on the read-only image)."""
    runsc = shutil.which("runsc")
    if runsc is None:
        pytest.skip("runsc (gVisor) is not installed")
    config = pause_bundle(cfg, rootfs=images.resolve(IMAGE).rootfs, cgroups_path=f"/turbok/{sdir.id}",
                          pids_limit=None, netns=None)
    (sdir.path / "config.json").write_text(json.dumps(config))
    state_dir = sdir.path.parent / ".runsc"
    state_dir.mkdir(mode=0o700, exist_ok=True)
    with open(sdir.path / "boot.out", "wb") as out:  # a file: the detached sandbox holds what it is given
        subprocess.run([runsc, f"--root={state_dir}", "--network=none", "run", "--detach", f"--bundle={sdir.path}",
                        sdir.id], check=True, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60)


def runsc_sandboxes(id: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"runsc-sandbox") and id.encode() in cmdline:
            found.append(proc.name)
    return found


async def test_stopping_every_sandbox_of_a_home_stops_old_ones_and_leaves_hibernated_ones(
        tmp_path: Path, images: ImageStore) -> None:
    home = Home(tmp_path / "home").ensure()
    running, stopped, sleeping = (pod_config(f"old-{n}") for n in ("running", "stopped", "sleeping"))
    ids = [running.id, stopped.id, sleeping.id]
    legacy = LegacySandboxes(home.sandboxes)
    try:
        run_old(images, old_sandbox(home.sandboxes, running.id, app={"a": "1"}, layer={}, mounted=True), running)
        old_sandbox(home.sandboxes, stopped.id, app={}, layer={})
        hibernated = old_sandbox(home.sandboxes, sleeping.id, app={}, layer={})
        hibernated.memory_image.mkdir()
        (hibernated.memory_image / "checkpoint.img").write_bytes(b"saved memory")
        (hibernated.memory_marker).write_text(json.dumps({"spec": {}, "bytes": 12}))
        assert runsc_sandboxes(running.id) and legacy.list() == sorted(ids)

        assert await asyncio.to_thread(stop_sandboxes, home) == 2  # `turbok down --stop-sandboxes`
        assert runsc_sandboxes(running.id) == []
        # Nothing runs, nothing is mounted, no cgroup: only the directories are left.
        assert await settled_leftovers(legacy, ids, kept=frozenset({"dirs"})) == {"dirs": ids}
        assert (home.sandboxes / running.id / "disk.img").exists()  # its disk is kept
        assert legacy.hibernated(sleeping.id) and (hibernated.memory_image / "checkpoint.img").exists()

        assert await asyncio.to_thread(stop_sandboxes, home, remove=True) == 3
        assert await settled_leftovers(legacy, ids) == {} and legacy.list() == []
    finally:
        for id in ids:
            if (home.sandboxes / id).exists():
                await legacy.remove(id)
    assert not (home.sandboxes / ".runsc").exists() or not os.listdir(home.sandboxes / ".runsc")
