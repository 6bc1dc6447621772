"""Code in a gVisor sandbox sees gVisor's kernel, no network, no host processes or files.

One sandbox serves every test of this module (they only read).
"""

from __future__ import annotations

import os
import platform
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from turbok.runtime.base import Phase
from turbok.runtime.gvisor import RunscRuntime

if TYPE_CHECKING:
    from .conftest import SpecFactory

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(runtime: RunscRuntime, make_spec: SpecFactory) -> AsyncIterator[str]:
    spec = make_spec("isolated")
    state = await runtime.start(spec)
    assert state.phase is Phase.RUNNING
    yield spec.id
    await runtime.remove(spec.id)


async def sh(runtime: RunscRuntime, id: str, script: str) -> str:
    r = await runtime.exec(id, ["/bin/sh", "-c", script], timeout=30)
    assert r.exit_code == 0, (script, r)
    return r.stdout.decode()


async def test_kernel_is_gvisor(runtime: RunscRuntime, box: str) -> None:
    assert (await sh(runtime, box, "uname -r")).strip() != platform.release()
    dmesg = await sh(runtime, box, "dmesg")
    assert "Starting gVisor" in dmesg
    host_dmesg = Path("/proc/version").read_text()
    assert host_dmesg.split()[2] not in dmesg  # the host kernel's version appears nowhere


@pytest.fixture
def host_listener() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


async def test_no_network(runtime: RunscRuntime, box: str, host_listener: int) -> None:
    # The host listens on loopback: inside, 127.0.0.1 is the sandbox's own loopback.
    out = await sh(runtime, box, f"""python3 - <<'PY'
import socket
for host in ("127.0.0.1", "10.0.2.2", "8.8.8.8", "1.1.1.1"):
    try:
        socket.create_connection((host, {host_listener}), timeout=2).close()
        print(host, "CONNECTED")
    except OSError as e:
        print(host, "refused", e.errno)
print(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]))
PY""")
    assert "CONNECTED" not in out
    assert "['lo']" in out  # no interface but the private loopback


async def test_sees_only_its_own_processes(runtime: RunscRuntime, box: str) -> None:
    pids = (await sh(runtime, box, "ls /proc | grep -E '^[0-9]+$'")).split()
    assert 2 <= len(pids) < 10  # init, its sleep, the ls and its shell
    assert max(int(p) for p in pids) < 1000  # the sandbox's own pid space, not the host's
    cmdlines = await sh(runtime, box, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "pytest" not in cmdlines and "runsc" not in cmdlines


async def test_host_files_outside_the_view_are_invisible(runtime: RunscRuntime, box: str, tmp_path: Path) -> None:
    marker = f"turbok-marker-{uuid.uuid4().hex}"
    (tmp_path / marker).write_text("secret")
    root_marker = Path("/root") / marker
    root_marker.write_text("secret")
    try:
        out = await sh(runtime, box, f"ls -a /root /tmp; find / -xdev -name '{marker}' 2>/dev/null; echo done")
        assert marker not in out and out.strip().endswith("done")
        # /root inside is the image's, not the host's.
        host_root = {p.name for p in Path("/root").iterdir()}
        inside_root = set((await sh(runtime, box, "ls -A /root")).split())
        assert inside_root <= {".bashrc", ".profile"} and inside_root != host_root
    finally:
        root_marker.unlink()


async def test_no_host_secrets_or_identity(runtime: RunscRuntime, box: str) -> None:
    assert (await sh(runtime, box, "hostname")).strip() == "isolated"
    assert (await sh(runtime, box, "cat /etc/hostname")).strip() == "isolated"
    resolv = await sh(runtime, box, "cat /etc/resolv.conf")
    assert "nameserver" not in resolv
    env = await sh(runtime, box, "env")
    for key in os.environ:
        if key.startswith(("TURBOK", "AWS", "SSH", "GITHUB")):
            assert f"{key}=" not in env


async def test_root_filesystem_is_the_image_not_the_host(runtime: RunscRuntime, box: str) -> None:
    out = await sh(runtime, box, "cat /etc/os-release; ls /home | wc -l; python3 --version")
    assert "bookworm" in out and "Python 3.11" in out
    assert out.split("\n")[-3].strip() == "0"  # no host home directories


async def test_workdir_gets_no_special_files_on_the_host(runtime: RunscRuntime, box: str) -> None:
    script = (
        "cd /app && mkfifo fifo; mknod dev c 1 3 2>/dev/null; ln /etc/passwd hard 2>/dev/null; "
        "ln -s /etc/shadow link; python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"/app/sock\")'; "
        "ls /app"
    )
    r = await runtime.exec(box, ["sh", "-c", script])
    inside = set(r.stdout.decode().split())
    assert {"fifo", "sock", "link"} <= inside and not {"dev", "hard"} & inside
    host = {p.name: p for p in runtime.workdir(box).iterdir()}
    # FIFOs and sockets live in gVisor's kernel only; the host sees a plain symlink it must not follow.
    assert set(host) == {"link"}
    assert host["link"].is_symlink()
    await runtime.exec(box, ["rm", "-f", "/app/fifo", "/app/sock", "/app/link"])
