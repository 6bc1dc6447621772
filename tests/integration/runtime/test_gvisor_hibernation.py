"""Hibernation: ``runsc checkpoint`` keeps a sandbox's memory, the next start restores it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from turbok.embedded.daemon import stop_sandboxes
from turbok.home import Home
from turbok.runtime import overlay
from turbok.runtime.base import Phase
from turbok.runtime.errors import SandboxNotRunning
from turbok.runtime.gvisor import RunscRuntime
from turbok.runtime.images import ImageStore
from turbok.runtime.layout import SandboxDir

if TYPE_CHECKING:
    from .conftest import SpecFactory

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# State that lives only in the sandbox's memory: a file on its tmpfs and a running process.
REMEMBER = ("echo only-in-memory > /dev/shm/note; echo on-disk > /root/note; "
            "(python3 -c 'import time; time.sleep(100000)' >/dev/null 2>&1 &); sleep 0.3")
RECALL = "cat /dev/shm/note; cat /root/note; ps -eo args | grep -q '[t]ime.sleep(100000)' && echo process-alive"


async def test_hibernate_then_start_resumes_memory_processes_and_disk(runtime: RunscRuntime,
                                                                      make_spec: SpecFactory) -> None:
    spec = make_spec("hibernate")
    await runtime.start(spec)
    assert (await runtime.exec(spec.id, ["sh", "-c", REMEMBER])).exit_code == 0
    await runtime.hibernate(spec.id)

    sdir = SandboxDir(runtime.root, spec.id)
    state = await runtime.state(spec.id)
    assert (state.phase, state.reason) == (Phase.STOPPED, "Hibernated")
    assert json.loads(sdir.memory_marker.read_text())["bytes"] > 0
    assert not overlay.is_mounted(sdir.rootfs)
    with pytest.raises(SandboxNotRunning):
        await runtime.exec(spec.id, ["true"])
    with pytest.raises(SandboxNotRunning):
        await runtime.hibernate(spec.id)

    resumed = await runtime.start(spec)
    assert resumed.phase is Phase.RUNNING
    r = await runtime.exec(spec.id, ["sh", "-c", RECALL])
    assert r.stdout.decode().split() == ["only-in-memory", "on-disk", "process-alive"]
    # The image is used once: a resumed sandbox moves on and never goes back to it.
    assert not sdir.memory_marker.exists() and not sdir.memory_image.exists()

    # Stop (not hibernate): memory is gone, the disk stays.
    await runtime.stop(spec.id)
    await runtime.start(spec)
    r = await runtime.exec(spec.id, ["sh", "-c", RECALL])
    assert r.stdout.decode().split() == ["on-disk"]
    await runtime.remove(spec.id)


async def test_a_spec_changed_during_hibernation_boots_afresh_on_the_kept_disk(runtime: RunscRuntime,
                                                                              make_spec: SpecFactory) -> None:
    spec = make_spec("hibernate-changed")
    await runtime.start(spec)
    await runtime.exec(spec.id, ["sh", "-c", REMEMBER])
    await runtime.hibernate(spec.id)
    changed = dataclasses.replace(spec, env={"NEW": "1"})
    state = await runtime.start(changed)
    assert state.phase is Phase.RUNNING
    r = await runtime.exec(spec.id, ["sh", "-c", RECALL + "; echo $NEW"])
    assert r.stdout.decode().split() == ["on-disk", "1"]
    assert not SandboxDir(runtime.root, spec.id).memory_image.exists()
    await runtime.remove(spec.id)


async def test_a_broken_memory_image_falls_back_to_a_fresh_boot(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("hibernate-broken")
    await runtime.start(spec)
    await runtime.exec(spec.id, ["sh", "-c", REMEMBER])
    await runtime.hibernate(spec.id)
    sdir = SandboxDir(runtime.root, spec.id)
    for f in sdir.memory_image.iterdir():
        f.write_bytes(b"not a checkpoint")
    state = await runtime.start(spec)
    assert state.phase is Phase.RUNNING
    r = await runtime.exec(spec.id, ["sh", "-c", RECALL])
    assert r.stdout.decode().split() == ["on-disk"]
    assert not sdir.memory_image.exists()
    await runtime.remove(spec.id)


async def test_stopping_every_sandbox_of_a_home_leaves_hibernated_ones_hibernated(tmp_path: Path,
                                                                                   images: ImageStore,
                                                                                   make_spec: SpecFactory) -> None:
    home = Home(tmp_path / "home").ensure()
    rt = RunscRuntime(home.sandboxes, images)
    sleeping, running = make_spec("home-hibernated"), make_spec("home-running")
    for spec in (sleeping, running):
        await rt.start(spec)
    await rt.exec(sleeping.id, ["sh", "-c", REMEMBER])
    await rt.hibernate(sleeping.id)
    assert await asyncio.to_thread(stop_sandboxes, home) == 1  # `turbok down --stop-sandboxes`
    assert (await rt.state(running.id)).reason == "Stopped"
    assert (await rt.state(sleeping.id)).reason == "Hibernated"
    await rt.start(sleeping)
    r = await rt.exec(sleeping.id, ["sh", "-c", RECALL])
    assert r.stdout.decode().split() == ["only-in-memory", "on-disk", "process-alive"]
    assert await asyncio.to_thread(stop_sandboxes, home, remove=True) == 2
