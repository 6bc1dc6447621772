"""The bubblewrap fallback, for real: namespaces, disk kept, limits, timeouts, and how it is chosen."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from turbok.runtime.base import Isolation, Phase, VolumeMount
from turbok.runtime.bubblewrap import BubblewrapRuntime
from turbok.runtime.errors import SandboxNotRunning
from turbok.runtime.factory import make_runtime
from turbok.runtime.images import ImageStore
from turbok.runtime.layout import SandboxDir

if TYPE_CHECKING:
    from .conftest import SpecFactory

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def bw_root(root: Path) -> Path:
    (root / ".bubblewrap").touch()  # tells the root fixture's cleanup which runtime owns these
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bw(bw_root: Path, images: ImageStore) -> AsyncIterator[BubblewrapRuntime]:
    rt = make_runtime(bw_root, images, runsc=str(bw_root / "no-runsc-here"))
    assert isinstance(rt, BubblewrapRuntime)
    yield rt


@pytest.fixture
def host_listener() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


async def test_fallback_status_says_bubblewrap_and_isolates(
    bw: BubblewrapRuntime, make_spec: SpecFactory, host_listener: int, tmp_path: Path
) -> None:
    spec = make_spec("bw-box", volumes=[VolumeMount("data", "/data")])
    state = await bw.start(spec)
    assert (state.phase, state.isolation) == (Phase.RUNNING, Isolation.BUBBLEWRAP)
    try:
        marker = tmp_path / f"marker-{uuid.uuid4().hex}"
        marker.write_text("host only")
        script = f"""
hostname; pwd; echo $SANDBOX_BASE_DIR; uname -r
ls /proc | grep -cE '^[0-9]+$'
grep CapEff /proc/self/status
cat {marker} 2>&1 || true
python3 -c '
import socket
try:
    socket.create_connection(("127.0.0.1", {host_listener}), timeout=2); print("CONNECTED")
except OSError as e:
    print("refused")
print(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]))
'
"""
        r = await bw.exec(spec.id, ["sh", "-c", script], timeout=30)
        lines = r.stdout.decode().splitlines()
        assert lines[:3] == ["bw-box", "/app", "/app"]
        assert lines[3] == platform.release()  # shared kernel: why this is only a fallback
        assert int(lines[4]) < 10  # its own pid namespace
        assert lines[5].split()[1] == "0000000000000000"  # no capabilities
        assert "No such file" in lines[6]
        assert lines[7] == "refused" and lines[8] == "['lo']"
    finally:
        await bw.stop(spec.id)

    # Disk kept across stop/start, work directory shared with the host.
    assert (await bw.state(spec.id)).reason == "Stopped"
    with pytest.raises(SandboxNotRunning):
        await bw.exec(spec.id, ["true"])
    await bw.start(spec)
    try:
        r = await bw.exec(spec.id, ["sh", "-c", "echo kept > /root/f; echo app > /app/f; echo v > /data/f"])
        assert r.exit_code == 0
        await bw.stop(spec.id)
        await bw.start(spec)
        r = await bw.exec(spec.id, ["cat", "/root/f", "/app/f", "/data/f"])
        assert r.stdout == b"kept\napp\nv\n"
        assert (bw.workdir(spec.id) / "f").read_text() == "app\n"
    finally:
        await bw.remove(spec.id)
    assert (await bw.state(spec.id)).phase is Phase.ABSENT


async def test_timeout_and_memory_limit(bw: BubblewrapRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("bw-limits", memory_bytes=128 * 2**20, cpu_millis=500)
    await bw.start(spec)
    try:
        t = time.monotonic()
        r = await bw.exec(spec.id, ["sh", "-c", "sleep 30 & echo up; wait"], timeout=1)
        assert r.timed_out and r.exit_code == 124 and r.stdout == b"up\n"
        assert time.monotonic() - t < 3
        ps = await bw.exec(spec.id, ["ps", "-eo", "args="])
        assert b"sleep 30" not in ps.stdout
        # Unlike gVisor, the kernel kills the one process past the limit; the sandbox lives on.
        r = await bw.exec(spec.id, ["python3", "-c", "b = bytearray(300 * 2**20); print('survived')"])
        assert r.exit_code != 0 and b"survived" not in r.stdout
        assert (await bw.state(spec.id)).phase is Phase.RUNNING
        assert (await bw.exec(spec.id, ["true"])).exit_code == 0
    finally:
        await bw.remove(spec.id)


async def test_restarted_control_plane_adopts(bw: BubblewrapRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("bw-adopt")
    first = await bw.start(spec)
    try:
        fresh = BubblewrapRuntime(bw.root, bw.images)
        state = await fresh.state(spec.id)
        assert (state.phase, state.pid) == (Phase.RUNNING, first.pid)
        assert (await fresh.exec(spec.id, ["hostname"])).stdout == b"bw-adopt\n"
    finally:
        await bw.remove(spec.id)
    await asyncio.sleep(0)


async def test_the_fallback_gets_the_same_bounded_nosuid_disk(bw: BubblewrapRuntime, make_spec: SpecFactory) -> None:
    if bw.disks.unbounded_reason is not None:
        pytest.skip(f"loop devices unavailable: {bw.disks.unbounded_reason}")
    spec = make_spec("bw-disk", volumes=[VolumeMount("v", "/v")], ephemeral_storage_bytes=32 * 2**20)
    await bw.start(spec)
    try:
        sdir = SandboxDir(bw.root, spec.id)
        assert sdir.disk_image.exists() and os.stat(sdir.path).st_mode & 0o777 == 0o700
        for path in (sdir.app, sdir.volume("v"), sdir.upper, sdir.rootfs):
            flags = os.statvfs(path).f_flag
            assert flags & os.ST_NOSUID and flags & os.ST_NODEV, path
        r = await bw.exec(spec.id, ["sh", "-c", "head -c 64000000 /dev/zero > /v/big; echo $?; wc -c < /v/big"])
        code, size = r.stdout.split()
        assert code != b"0" and b"No space left" in r.stderr and int(size) < 36 * 2**20, r
    finally:
        await bw.remove(spec.id)
    assert not sdir.path.exists()
