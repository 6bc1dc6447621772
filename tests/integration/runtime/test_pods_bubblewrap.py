"""The bubblewrap fallback of the pod runtime: same contract, the host's kernel, per-container cgroups."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from turbok.runtime.cri import (
    ContainerConfig,
    ContainerState,
    Mount,
    PodSandboxState,
    SecurityContext,
    VolumeConfig,
)
from turbok.runtime.errors import HibernationUnsupported
from turbok.runtime.images import ImageStore
from turbok.runtime.pods import release_root
from turbok.runtime.pods_bubblewrap import BubblewrapPodRuntime

from .podcheck import BUSYBOX, IMAGE, leftovers, log_text, pod_config, wait_exited, wait_log

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rt(tmp_path_factory: pytest.TempPathFactory, images: ImageStore) -> AsyncIterator[BubblewrapPodRuntime]:
    if shutil.which("bwrap") is None or shutil.which("nsenter") is None:
        pytest.skip("bubblewrap (bwrap) and nsenter are not installed")
    root = tmp_path_factory.mktemp("bwpods")
    runtime = BubblewrapPodRuntime(root, images)
    yield runtime
    await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                         return_exceptions=True)
    release_root(root)


async def test_containers_share_volumes_and_report_their_ends(rt: BubblewrapPodRuntime) -> None:
    cfg = pod_config("bw-share", volumes=[VolumeConfig("v", "emptyDir"),
                                          VolumeConfig("cfg", "files", files={"k": (b"value\n", 0o644)})])
    st = await rt.run_pod_sandbox(cfg)
    assert st.state is PodSandboxState.READY and st.isolation.value == "bubblewrap"
    assert any("host's kernel" in n for n in st.notes)
    mounts = [Mount("v", "/v"), Mount("cfg", "/cfg")]
    await rt.start_container(cfg.id, ContainerConfig("init", BUSYBOX, command=["sh", "-c", "echo one > /v/x"],
                                                     mounts=mounts))
    assert (await wait_exited(rt, cfg.id, "init")).reason == "Completed"
    await rt.start_container(cfg.id, ContainerConfig(
        "main", BUSYBOX, command=["sh", "-c", "trap 'exit 143' TERM; cat /v/x /cfg/k; echo err >&2; "
                                  "while :; do sleep 0.1; done"], mounts=mounts,
        security=SecurityContext(run_as_user=1000)))
    text = await wait_log(rt, cfg.id, "main", "err")
    assert text.splitlines() == ["one", "value", "err"]
    s = await rt.exec(cfg.id, "main", ["sh", "-c", "id -u; cat /v/x; exit 5"])
    assert await s.process.stdout.read() == b"1000\none\n" and await s.process.wait() == 5
    s = await rt.exec(cfg.id, "main", ["sh", "-c", "stty size"], tty=True)
    await s.resize(90, 20)
    assert await s.process.wait() == 0
    t = time.monotonic()
    done = await rt.stop_container(cfg.id, "main", 5)
    assert done.state is ContainerState.EXITED and done.exit_code == 143 and time.monotonic() - t < 4
    with pytest.raises(HibernationUnsupported):
        await rt.hibernate_pod_sandbox(cfg.id)
    await rt.start_container(cfg.id, ContainerConfig("main", BUSYBOX, command=["sh", "-c", "exit 3"], attempt=1))
    assert (await wait_exited(rt, cfg.id, "main")).exit_code == 3
    assert "one" in await log_text(rt, cfg.id, "main", 0)  # the previous attempt's log stays
    await rt.remove_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}


async def test_a_containers_own_memory_limit_kills_it(rt: BubblewrapPodRuntime) -> None:
    cfg = pod_config("bw-oom")
    await rt.run_pod_sandbox(cfg)
    hog = "b = bytearray(); exec('while True: b.extend(bytes(16 << 20))')"
    await rt.start_container(cfg.id, ContainerConfig("hog", IMAGE, command=["python3", "-c", hog],
                                                     memory_bytes=64 << 20))
    done = await wait_exited(rt, cfg.id, "hog", timeout=60)
    assert (done.reason, done.exit_code) == ("OOMKilled", 137)
    await rt.remove_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}
