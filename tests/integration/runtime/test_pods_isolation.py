"""Code in a pod under gVisor sees gVisor's kernel, no network, no host processes or files.

One pod serves every test of this module (they only read, and clean up what they make in /app).
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from turbok.runtime.cri import ContainerConfig, ContainerState
from turbok.runtime.images import ImageStore
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import GvisorPodRuntime

from .podcheck import IMAGE, pod_config, settled_leftovers

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory, images: ImageStore
              ) -> AsyncIterator[tuple[GvisorPodRuntime, str]]:
    root = tmp_path_factory.mktemp("pods")
    rt = GvisorPodRuntime(root, images)
    cfg = pod_config("isolated", single_container=True)
    await rt.run_pod_sandbox(cfg)
    status = await rt.start_container(cfg.id, ContainerConfig("main", IMAGE))
    assert status.state is ContainerState.RUNNING
    try:
        yield rt, cfg.id
    finally:
        await rt.remove_pod_sandbox(cfg.id)
        found = await settled_leftovers(rt, [cfg.id])
        release_root(root)
    assert found == {}


async def sh(box: tuple[GvisorPodRuntime, str], script: str) -> str:
    rt, id = box
    s = await rt.exec(id, "main", ["/bin/sh", "-c", script])
    out, err = await asyncio.wait_for(asyncio.gather(s.process.stdout.read(), s.process.stderr.read()), 30)
    assert await s.process.wait() == 0, (script, out, err)
    return out.decode()


async def test_kernel_is_gvisor(box: tuple[GvisorPodRuntime, str]) -> None:
    assert (await sh(box, "uname -r")).strip() != platform.release()
    dmesg = await sh(box, "dmesg")
    assert "Starting gVisor" in dmesg
    host_version = Path("/proc/version").read_text()
    assert host_version.split()[2] not in dmesg  # the host kernel's version appears nowhere


@pytest.fixture
def host_listener() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


async def test_no_network_without_a_pod_network(box: tuple[GvisorPodRuntime, str], host_listener: int) -> None:
    # The host listens on loopback: inside, 127.0.0.1 is the sandbox's own loopback.
    out = await sh(box, f"""python3 - <<'PY'
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


async def test_sees_only_its_own_processes(box: tuple[GvisorPodRuntime, str]) -> None:
    pids = (await sh(box, "ls /proc | grep -E '^[0-9]+$'")).split()
    assert 2 <= len(pids) < 10  # the container's process, the ls and its shell
    assert max(int(p) for p in pids) < 1000  # the sandbox's own pid space, not the host's
    cmdlines = await sh(box, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "pytest" not in cmdlines and "runsc" not in cmdlines


async def test_host_files_outside_the_view_are_invisible(box: tuple[GvisorPodRuntime, str], tmp_path: Path) -> None:
    marker = f"turbok-marker-{uuid.uuid4().hex}"
    (tmp_path / marker).write_text("secret")
    root_marker = Path("/root") / marker
    root_marker.write_text("secret")
    try:
        out = await sh(box, f"ls -a /root /tmp; find / -xdev -name '{marker}' 2>/dev/null; echo done")
        assert marker not in out and out.strip().endswith("done")
        # /root inside is the image's, not the host's.
        host_root = {p.name for p in Path("/root").iterdir()}
        inside_root = set((await sh(box, "ls -A /root")).split())
        assert inside_root <= {".bashrc", ".profile"} and inside_root != host_root
    finally:
        root_marker.unlink()


async def test_no_host_secrets_or_identity(box: tuple[GvisorPodRuntime, str]) -> None:
    assert (await sh(box, "hostname")).strip() == "isolated"
    env = await sh(box, "env")
    for key in os.environ:
        if key.startswith(("TURBOK", "AWS", "SSH", "GITHUB")):
            assert f"{key}=" not in env


async def test_root_filesystem_is_the_image_not_the_host(box: tuple[GvisorPodRuntime, str]) -> None:
    out = await sh(box, "cat /etc/os-release; ls /home | wc -l; python3 --version")
    assert "bookworm" in out and "Python 3.11" in out
    assert out.split("\n")[-3].strip() == "0"  # no host home directories


async def test_workdir_gets_no_special_files_on_the_host(box: tuple[GvisorPodRuntime, str]) -> None:
    rt, id = box
    inside = set((await sh(box, (
        "cd /app && mkfifo fifo; mknod dev c 1 3 2>/dev/null; ln /etc/passwd hard 2>/dev/null; "
        "ln -s /etc/shadow link; python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"/app/sock\")'; "
        "ls /app"))).split())
    assert {"fifo", "sock", "link"} <= inside and not {"dev", "hard"} & inside
    workdir = rt.workdir(id, "main")
    assert workdir is not None
    host = {p.name: p for p in workdir.iterdir()}
    # FIFOs and sockets live in gVisor's kernel only; the host sees a plain symlink it must not follow.
    assert set(host) == {"link"}
    assert host["link"].is_symlink()
    await sh(box, "rm -f /app/fifo /app/sock /app/link")
