"""Start, exec, suspend/resume with disk kept, remove, and re-adoption after a restart."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from turbok.runtime import overlay
from turbok.runtime.base import Phase, VolumeMount
from turbok.runtime.errors import ImageNotFound, SandboxNotRunning
from turbok.runtime.gvisor import RunscRuntime
from turbok.runtime.layout import SandboxDir

if TYPE_CHECKING:
    from .conftest import SpecFactory

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def test_start_exec_suspend_resume_remove(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("lifecycle", env={"GREETING": "hi"},
                     volumes=[VolumeMount("data", "/data"), VolumeMount("ref", "/ref", read_only=True)])
    first = await runtime.start(spec)
    assert (first.phase, first.isolation.value) == (Phase.RUNNING, "gvisor") and first.pid
    again = await runtime.start(spec)  # idempotent: same sandbox, not a second one
    assert again.pid == first.pid
    assert spec.id in await runtime.list()

    r = await runtime.exec(spec.id, ["sh", "-c", "pwd; echo $SANDBOX_BASE_DIR $GREETING $EXTRA; hostname"],
                           env={"EXTRA": "x"})
    assert r.stdout.decode().split() == ["/app", "/app", "hi", "x", "lifecycle"]
    r = await runtime.exec(spec.id, ["cat"], stdin=b"piped in")
    assert r.stdout == b"piped in"
    r = await runtime.exec(spec.id, ["sh", "-c", "echo out; echo err >&2; exit 7"], cwd="/tmp")
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 7)
    r = await runtime.exec(spec.id, ["no-such-binary"])
    assert r.exit_code != 0

    # The work directory is shared both ways with the host.
    workdir = runtime.workdir(spec.id)
    (workdir / "from-host.txt").write_text("host wrote this")
    r = await runtime.exec(spec.id, ["sh", "-c", "cat /app/from-host.txt; echo inside > /app/from-sandbox.txt"])
    assert r.stdout == b"host wrote this"
    assert (workdir / "from-sandbox.txt").read_text() == "inside\n"
    (workdir / "from-host.txt").write_text("changed on the host")
    r = await runtime.exec(spec.id, ["cat", "/app/from-host.txt"])
    assert r.stdout == b"changed on the host"  # no stale cache of /app inside

    # Volumes: read-write and read-only.
    r = await runtime.exec(spec.id, ["sh", "-c", "echo v > /data/v; echo no > /ref/x"])
    assert r.exit_code != 0 and b"Read-only" in r.stderr
    assert (SandboxDir(runtime.root, spec.id).volume("data") / "v").read_text() == "v\n"

    # The root filesystem is writable for the sandbox, and the image stays untouched.
    r = await runtime.exec(spec.id, ["sh", "-c", "echo kept > /root/state; pip_dir=/usr/lib/x; mkdir -p $pip_dir"])
    assert r.exit_code == 0
    assert not (runtime.images.resolve(spec.image).rootfs / "root" / "state").exists()

    # Suspend: nothing runs, the disk stays.
    await runtime.stop(spec.id)
    stopped = await runtime.state(spec.id)
    assert (stopped.phase, stopped.reason) == (Phase.STOPPED, "Stopped")
    assert not overlay.is_mounted(runtime.root / spec.id / "rootfs")
    with pytest.raises(SandboxNotRunning):
        await runtime.exec(spec.id, ["true"])

    # Resume on the same disk.
    resumed = await runtime.start(spec)
    assert resumed.phase is Phase.RUNNING and resumed.pid != first.pid
    r = await runtime.exec(spec.id, ["sh", "-c", "cat /root/state /app/from-sandbox.txt /data/v; ls -d /usr/lib/x"])
    assert r.stdout == b"kept\ninside\nv\n/usr/lib/x\n"

    await runtime.remove(spec.id)
    assert (await runtime.state(spec.id)).phase is Phase.ABSENT
    assert not (runtime.root / spec.id).exists()
    assert spec.id not in await runtime.list()
    await runtime.remove(spec.id)  # idempotent


async def test_main_process_exit_is_reported(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("exits", command=["sh", "-c", "echo bye; echo oops >&2; exit 3"])
    await runtime.start(spec)
    for _ in range(100):
        state = await runtime.state(spec.id)
        if state.phase is not Phase.RUNNING:
            break
        await asyncio.sleep(0.05)
    assert (state.phase, state.reason, state.exit_code) == (Phase.STOPPED, "Exited", 3)
    sdir = SandboxDir(runtime.root, spec.id)
    assert sdir.stdout_log.read_text() == "bye\n"
    assert "oops" in sdir.stderr_log.read_text()
    # A sandbox that ended on its own starts again.
    assert (await runtime.start(spec)).phase in (Phase.RUNNING, Phase.STOPPED)
    await runtime.remove(spec.id)


async def test_unknown_image_is_refused_before_anything_runs(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("unknown-image", image="ghcr.io/acme/agent:1")
    with pytest.raises(ImageNotFound) as info:
        await runtime.start(spec)
    assert info.value.reference == "ghcr.io/acme/agent:1"
    assert (await runtime.state(spec.id)).phase is Phase.ABSENT


_STARTER = """
import asyncio, sys
from pathlib import Path
from turbok.runtime import ImageStore, RunscRuntime, SandboxSpec
spec = SandboxSpec(id=sys.argv[2], hostname="adopted", image="python-runtime-sandbox")
rt = RunscRuntime(Path(sys.argv[1]), ImageStore(Path(sys.argv[3])))
print(asyncio.run(rt.start(spec)).pid)
"""


async def test_restarted_control_plane_adopts_running_sandboxes(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("adopted")
    # Another process (a control plane that then exits) starts the sandbox.
    done = subprocess.run(
        [sys.executable, "-c", _STARTER, str(runtime.root), spec.id, str(runtime.images.root)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.strip())
    fresh = RunscRuntime(runtime.root, runtime.images)  # the restarted control plane
    state = await fresh.state(spec.id)
    assert (state.phase, state.pid) == (Phase.RUNNING, pid)
    assert spec.id in await fresh.list()
    r = await fresh.exec(spec.id, ["hostname"])
    assert r.stdout == b"adopted\n"
    t = time.monotonic()
    await fresh.remove(spec.id)
    assert time.monotonic() - t < 10
    assert spec.id not in await fresh.list()


async def test_state_is_cheap_for_many(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    # state() reads files only: many calls, no subprocess, well under a millisecond each.
    spec = make_spec("cheap")
    await runtime.start(spec)
    try:
        t = time.perf_counter()
        for _ in range(500):
            assert (await runtime.state(spec.id)).phase is Phase.RUNNING
        assert (time.perf_counter() - t) / 500 < 0.002
    finally:
        await runtime.remove(spec.id)


async def test_stale_container_after_crash_is_replaced(runtime: RunscRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("crashed")
    first = await runtime.start(spec)
    assert first.pid
    subprocess.run(["kill", "-9", str(first.pid)], check=True)  # the sandbox process dies under us
    for _ in range(100):
        if (await runtime.state(spec.id)).phase is Phase.STOPPED:
            break
        await asyncio.sleep(0.05)
    state = await runtime.state(spec.id)
    assert state.phase is Phase.STOPPED and state.reason == "Crashed"
    again = await runtime.start(spec)
    assert again.phase is Phase.RUNNING
    assert (await runtime.exec(spec.id, ["true"])).exit_code == 0
    await runtime.remove(spec.id)
    assert not Path(runtime.root / spec.id).exists()
