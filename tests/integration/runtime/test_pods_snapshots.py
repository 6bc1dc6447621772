"""Snapshots of pod sandboxes under real runsc: the source runs on, forks are independent copies that diverge,
a pod is put back to a snapshot, what runsc 20221219 cannot save is refused before anything is touched."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.runtime.podnet import Networks, require_root_network, wait_clean
from turbok.runtime.cri import (
    ContainerConfig,
    ContainerState,
    Mount,
    PodSandboxConfig,
    PodSandboxState,
    VolumeConfig,
)
from turbok.runtime.errors import SnapshotIncompatible, SnapshotNotFound, SnapshotUnsupported
from turbok.runtime.images import ImageStore
from turbok.runtime.network import PodNetwork
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.runtime.snapshotstore import SNAPSHOTS_DIR

from .podcheck import BUSYBOX, IMAGE, leftovers, log_text, pod_config, wait_log

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="function")]

# A server whose state lives only in its memory: a counter, bumped by each request. Every request is answered
# with HTTP/1.1 keep-alive and the client closes first (with a reset), as turbok's own clients do: nothing is
# left in TIME_WAIT inside the sandbox, which runsc 20221219 could not save.
COUNTER = ("import http.server as h, itertools\n"
           "n = itertools.count(1)\n"
           "class H(h.BaseHTTPRequestHandler):\n"
           "    protocol_version = 'HTTP/1.1'\n"
           "    def do_GET(self):\n"
           "        body = str(next(n)).encode()\n"
           "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
           "        self.wfile.write(body)\n"
           "    def log_message(self, *a): pass\n"
           "server = h.HTTPServer(('0.0.0.0', 8080), H)\n"  # listening before it says so
           "print('serving', flush=True)\n"
           "server.serve_forever()\n")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[PodNetwork]:
    require_root_network()
    networks = Networks(tmp_path / "net")
    n = networks.make()
    n.ensure_host()
    yield n
    networks.cleanup()


@pytest.fixture
def rt(tmp_path: Path, images: ImageStore, net: PodNetwork) -> Iterator[GvisorPodRuntime]:
    runtime = GvisorPodRuntime(tmp_path / "pods", images, network=net)
    yield runtime

    async def clean() -> None:
        await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                             return_exceptions=True)

    asyncio.run(clean())
    release_root(tmp_path / "pods")


async def count(net: PodNetwork, ip: str, timeout: float = 20.0) -> int:
    """One request to the counter: the number it answered."""
    import socket
    import struct

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            reader, writer = await net.connect(ip, 8080, timeout=2)
            break
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length")))
        return int(await asyncio.wait_for(reader.readexactly(length), 5))
    finally:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


async def sh(rt: GvisorPodRuntime, id: str, script: str) -> str:
    s = await rt.exec(id, "main", ["sh", "-c", script])
    out = (await s.process.stdout.read()).decode()
    assert await s.process.wait() == 0, out
    return out


VOLUMES = [VolumeConfig("mem", "memory", size_bytes=1 << 20), VolumeConfig("scratch", "emptyDir")]
MAIN = ContainerConfig("main", IMAGE, command=["python3", "-c", COUNTER],
                       mounts=[Mount("mem", "/mem"), Mount("scratch", "/scratch")])


async def start(rt: GvisorPodRuntime, name: str) -> tuple[PodSandboxConfig, str]:
    cfg = pod_config(name, single_container=True, network=True, volumes=VOLUMES)
    st = await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, MAIN)
    await wait_log(rt, cfg.id, "main", "serving")
    return cfg, st.ip


async def test_a_snapshot_leaves_its_source_running_and_forks_of_it_diverge(rt: GvisorPodRuntime,
                                                                             net: PodNetwork) -> None:
    src, src_ip = await start(rt, "src")
    assert [await count(net, src_ip) for _ in range(3)] == [1, 2, 3]
    await sh(rt, src.id, "echo tmpfs > /mem/a; echo disk > /scratch/b; echo layer > /c")
    before = (await rt.container_status(src.id, "main")).container_id

    info = await rt.snapshot_pod_sandbox(src.id, "tksnapshotsnapshot000001")
    assert info.container == "main" and info.memory_bytes > 0 and info.disk_bytes > 0
    # The source goes on where it was: same container, its memory (the counter) intact, never restarted.
    st = await rt.container_status(src.id, "main")
    assert st.state is ContainerState.RUNNING and st.container_id == before
    assert await count(net, src_ip) == 4
    assert (await log_text(rt, src.id, "main")).count("serving") == 1

    # Two forks: each its own pod, address and container id, starting from the snapshot's state.
    forks = [pod_config(n, single_container=True, network=True, volumes=VOLUMES) for n in ("fork-a", "fork-b")]
    ips = []
    for cfg in forks:
        fst = await rt.restore_pod_sandbox(cfg, info.id)
        assert fst.state is PodSandboxState.READY and fst.ip not in ("", src_ip)
        assert [c.state for c in fst.containers] == [ContainerState.RUNNING]
        ips.append(fst.ip)
        # The node's start of the same container takes the restored one over (no restart).
        again = await rt.start_container(cfg.id, MAIN)
        assert again.state is ContainerState.RUNNING and again.container_id == fst.containers[0].container_id
    assert len(set(ips)) == 2
    # Memory, tmpfs, emptyDir and writable layer as at the snapshot, then each diverges on its own.
    assert [await count(net, ips[0]) for _ in range(2)] == [4, 5]
    assert await count(net, ips[1]) == 4
    assert await count(net, src_ip) == 5
    for cfg in forks:
        assert await sh(rt, cfg.id, "cat /mem/a /scratch/b /c") == "tmpfs\ndisk\nlayer\n"
    await sh(rt, forks[0].id, "echo a-only > /scratch/b; echo a-only > /mem/a")
    assert await sh(rt, forks[1].id, "cat /mem/a /scratch/b") == "tmpfs\ndisk\n"
    assert await sh(rt, src.id, "cat /mem/a /scratch/b") == "tmpfs\ndisk\n"
    # A fork's logs are its own: what it prints from now on, not its source's past.
    assert "serving" not in await log_text(rt, forks[0].id, "main")

    # The snapshot can go: forks hold copies, not references.
    assert await rt.list_snapshots() == [info.id]
    await rt.remove_snapshot(info.id)
    assert await rt.list_snapshots() == [] and rt.snapshot_info(info.id) is None
    assert await count(net, ips[0]) == 6
    with pytest.raises(SnapshotNotFound):
        await rt.restore_pod_sandbox(pod_config("late", single_container=True, network=True, volumes=VOLUMES),
                                     info.id)
    ids = [src.id, *(c.id for c in forks)]
    for id in ids:
        await rt.remove_pod_sandbox(id)
    assert leftovers(rt, ids) == {}
    assert not any((rt.root / SNAPSHOTS_DIR).iterdir())
    assert wait_clean(net) == {}


async def test_a_pod_is_put_back_to_its_snapshot(rt: GvisorPodRuntime, net: PodNetwork) -> None:
    cfg, ip = await start(rt, "back")
    await count(net, ip)
    await sh(rt, cfg.id, "echo v1 > /scratch/v")
    info = await rt.snapshot_pod_sandbox(cfg.id, "tksnapshotsnapshot000002")
    for _ in range(3):
        await count(net, ip)
    await sh(rt, cfg.id, "echo v2 > /scratch/v; touch /scratch/later")
    # A new Pod object of the same sandbox (same id, another uid) restores it: the later changes are gone.
    again = dataclasses.replace(cfg, uid="uid-back-2")
    st = await rt.restore_pod_sandbox(again, info.id)
    assert st.state is PodSandboxState.READY and st.ip == ip
    assert await count(net, ip) == 2
    assert await sh(rt, cfg.id, "cat /scratch/v; ls /scratch") == "v1\nv\n"
    # A pod of other limits cannot start from it.
    other = pod_config("other", single_container=True, network=True, volumes=VOLUMES, memory_bytes=256 << 20)
    with pytest.raises(SnapshotIncompatible, match="limits, volumes or shape"):
        await rt.restore_pod_sandbox(other, info.id)
    await rt.remove_pod_sandbox(cfg.id)
    await rt.remove_snapshot(info.id)


async def test_what_runsc_cannot_save_is_refused_and_the_pod_runs_on(rt: GvisorPodRuntime, net: PodNetwork) -> None:
    cfg, ip = await start(rt, "busy")
    reader, writer = await net.connect(ip, 8080)  # an open connection into the sandbox
    with pytest.raises(SnapshotUnsupported, match="TCP connections open"):
        await rt.snapshot_pod_sandbox(cfg.id, "tksnapshotsnapshot000003")
    writer.close()
    assert (await rt.container_status(cfg.id, "main")).state is ContainerState.RUNNING
    assert not (rt.root / SNAPSHOTS_DIR / "tksnapshotsnapshot000003").exists()
    await rt.remove_pod_sandbox(cfg.id)
    # Two containers sharing one sandbox: runsc 20221219 restores one container per sandbox.
    duo = pod_config("duo", network=False)
    await rt.run_pod_sandbox(duo)
    for name in ("main", "side"):
        await rt.start_container(duo.id, ContainerConfig(name, BUSYBOX, command=["sleep", "1000"]))
    with pytest.raises(SnapshotUnsupported, match="one container per sandbox"):
        await rt.snapshot_pod_sandbox(duo.id, "tksnapshotsnapshot000004")
    st = await rt.pod_sandbox_status(duo.id)
    assert st.state is PodSandboxState.READY and all(c.state is ContainerState.RUNNING for c in st.containers)
    await rt.remove_pod_sandbox(duo.id)



async def test_what_the_host_wrote_on_the_disk_is_in_the_snapshot(rt: GvisorPodRuntime, net: PodNetwork) -> None:
    cfg, _ = await start(rt, "hostw")
    workdir = rt.workdir(cfg.id, "main")
    assert workdir is not None
    for value in ("one", "two"):
        tmp = workdir / ".v.tmp"
        tmp.write_bytes(value.encode())
        os.rename(tmp, workdir / "v")
        await sh(rt, cfg.id, f"echo {value} > /dev/shm/v")
    info = await rt.snapshot_pod_sandbox(cfg.id, "tksnapshotsnapshot000005")
    assert (workdir / "v").read_bytes() == b"two"
    fork = pod_config("hostw-fork", single_container=True, network=True, volumes=VOLUMES)
    await rt.restore_pod_sandbox(fork, info.id)
    assert await sh(rt, fork.id, "cat /app/v /dev/shm/v") == "twotwo\n"
    fw = rt.workdir(fork.id, "main")
    assert fw is not None and (fw / "v").read_bytes() == b"two"
    for id in (cfg.id, fork.id):
        await rt.remove_pod_sandbox(id)
    await rt.remove_snapshot(info.id)


async def test_what_the_host_wrote_is_in_the_snapshot_while_another_namespace_holds_the_disk(
        rt: GvisorPodRuntime, net: PodNetwork) -> None:
    # The router writes /app from the host (files API) into the page cache of the pod's mounted disk. When the pod
    # stops, a mount namespace still going away (runsc's gofer) may hold the disk: our unmount then returns at once
    # while the filesystem lives on unflushed. The snapshot must flush it itself, or its copy of the image holds
    # stale blocks (seen: the file's new size, zeros for its data).
    cfg, _ = await start(rt, "held")
    workdir = rt.workdir(cfg.id, "main")
    assert workdir is not None
    (workdir / "v").write_bytes(b"from the host\n")  # dirty in the page cache, as the files API leaves it
    holder = await asyncio.create_subprocess_exec("unshare", "--mount", "--propagation", "private", "sleep", "4")
    ours = os.readlink("/proc/self/ns/mnt")
    while os.readlink(f"/proc/{holder.pid}/ns/mnt") == ours or "sleep" not in Path(
            f"/proc/{holder.pid}/comm").read_text():  # it holds its copy of the mounts (made private) from now on
        await asyncio.sleep(0.01)
    try:
        info = await rt.snapshot_pod_sandbox(cfg.id, "tksnapshotsnapshot000006")
    finally:
        await holder.wait()
    fork = pod_config("held-fork", single_container=True, network=True, volumes=VOLUMES)
    await rt.restore_pod_sandbox(fork, info.id)
    assert await sh(rt, fork.id, "cat /app/v") == "from the host\n"
    for id in (cfg.id, fork.id):
        await rt.remove_pod_sandbox(id)
    await rt.remove_snapshot(info.id)
