"""The pod runtime under real runsc: multi-container pods, init containers, exec/attach, exits, logs, limits,
security contexts, hibernation, a restarted control plane, and nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from turbok.runtime.cri import (
    Capabilities,
    ContainerConfig,
    ContainerState,
    Mount,
    PodSandboxState,
    SecurityContext,
    VolumeConfig,
)
from turbok.runtime.crilog import PUMP, read_lines
from turbok.runtime.errors import HibernationUnsupported, InvalidSandboxSpec, SandboxNotRunning
from turbok.runtime.images import ImageStore
from turbok.runtime.legacy import LegacySandboxes
from turbok.runtime.podlayout import PodDir
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import BOOT_NICENESS, GvisorPodRuntime

from .podcheck import BUSYBOX, IMAGE, leftovers, log_text, old_sandbox, pod_config, wait_exited, wait_log

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rt(tmp_path_factory: pytest.TempPathFactory, images: ImageStore) -> AsyncIterator[GvisorPodRuntime]:
    root = tmp_path_factory.mktemp("pods")
    runtime = GvisorPodRuntime(root, images)
    yield runtime
    await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                         return_exceptions=True)
    release_root(root)


async def test_two_containers_share_an_empty_dir_a_memory_volume_and_files(rt: GvisorPodRuntime) -> None:
    cfg = pod_config("share", memory_bytes=512 << 20, volumes=[
        VolumeConfig("scratch", "emptyDir"), VolumeConfig("mem", "memory", size_bytes=4 << 20),
        VolumeConfig("cfg", "files", files={"greeting": (b"hello\n", 0o644), "sub/secret": (b"s3\n", 0o600)})])
    mounts = [Mount("scratch", "/scratch"), Mount("mem", "/mem"), Mount("cfg", "/etc/cfg")]
    st = await rt.run_pod_sandbox(cfg)
    assert st.state is PodSandboxState.READY and st.isolation.value == "gvisor"
    writer = await rt.start_container(cfg.id, ContainerConfig(
        "writer", BUSYBOX, command=["sh", "-c", "echo from-writer > /scratch/a; echo m > /mem/b; sleep 1000"],
        mounts=mounts, memory_bytes=64 << 20))
    reader = await rt.start_container(cfg.id, ContainerConfig(
        "reader", BUSYBOX, command=["sh", "-c", "while [ ! -e /mem/b ]; do sleep 0.05; done; cat /scratch/a /mem/b "
                                   "/etc/cfg/greeting; sleep 1000"], mounts=mounts))
    assert writer.state is reader.state is ContainerState.RUNNING
    assert writer.container_id.startswith("gvisor://") and writer.container_id != reader.container_id
    # Per-container limits cannot be enforced alone in one gVisor sandbox: said, not dropped.
    assert any("not enforced on its own" in n for n in writer.notes)
    text = await wait_log(rt, cfg.id, "reader", "hello")
    assert text.splitlines() == ["from-writer", "m", "hello"]
    # Each container has its own root filesystem and pid namespace, the pod's hostname.
    s = await rt.exec(cfg.id, "reader", ["sh", "-c", "touch /only-reader; hostname; ps -o pid,args | wc -l"])
    out = (await s.process.stdout.read()).decode().split()
    assert await s.process.wait() == 0 and out[0] == "share"
    s = await rt.exec(cfg.id, "writer", ["sh", "-c", "test -e /only-reader || echo separate"])
    assert await s.process.stdout.read() == b"separate\n"
    # A files volume is read-only inside and follows update_volume at once.
    s = await rt.exec(cfg.id, "writer", ["sh", "-c", "echo x > /etc/cfg/greeting"])
    assert await s.process.wait() != 0
    await rt.update_volume(cfg.id, VolumeConfig("cfg", "files", files={"greeting": (b"bonjour\n", 0o644)}))
    s = await rt.exec(cfg.id, "reader", ["cat", "/etc/cfg/greeting"])
    assert await s.process.stdout.read() == b"bonjour\n"
    await rt.remove_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}


@pytest.mark.parametrize("single", [True, False], ids=["single-container", "pause"])
async def test_init_containers_run_in_order_before_the_main_one(rt: GvisorPodRuntime, single: bool) -> None:
    cfg = pod_config(f"init-{int(single)}", single_container=single, volumes=[VolumeConfig("work", "emptyDir")])
    await rt.run_pod_sandbox(cfg)
    mounts = [Mount("work", "/work")]
    for i, step in enumerate(("first", "second")):
        await rt.start_container(cfg.id, ContainerConfig(
            f"init-{i}", BUSYBOX, command=["sh", "-c", f"echo {step} >> /work/order; exit {i}"], mounts=mounts))
        done = await wait_exited(rt, cfg.id, f"init-{i}")
        assert (done.exit_code, done.reason) == (i, "Completed" if i == 0 else "Error")
        assert done.finished_at is not None and done.started_at is not None
        assert done.started_at <= done.finished_at <= time.time()
    await rt.start_container(cfg.id, ContainerConfig("main", BUSYBOX, command=["sh", "-c", "cat /work/order"],
                                                     mounts=mounts))
    assert (await wait_exited(rt, cfg.id, "main")).exit_code == 0
    assert (await wait_log(rt, cfg.id, "main", "second")).splitlines() == ["first", "second"]
    st = await rt.pod_sandbox_status(cfg.id)
    assert [c.name for c in st.containers] == ["init-0", "init-1", "main"]
    assert all(c.state is ContainerState.EXITED for c in st.containers)
    await rt.remove_pod_sandbox(cfg.id)


def _sandbox_niceness(pod_id: str) -> set[int]:
    """The niceness of the runsc sandbox and gofer processes of a pod."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if cmdline[0] in (b"runsc-sandbox", b"runsc-gofer") and any(pod_id.encode() in a for a in cmdline):
                found.add(os.getpriority(os.PRIO_PROCESS, int(proc.name)))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.parametrize("single", [True, False], ids=["single-container", "pause"])
async def test_only_a_background_boot_yields_the_cpu(rt: GvisorPodRuntime, single: bool) -> None:
    """A warm pool's refill boots niced; a boot somebody waits for (a cold claim's) at the caller's priority."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    for background in (True, False):
        cfg = pod_config(f"nice-{int(single)}-{int(background)}", single_container=single, background=background)
        await rt.run_pod_sandbox(cfg)
        started = await rt.start_container(cfg.id, ContainerConfig("main", BUSYBOX, command=["sleep", "100"],
                                                                   background=background))
        assert _sandbox_niceness(cfg.id) == ({min(own + BOOT_NICENESS, 19)} if background else {own})
        if background:  # claimed: asked again as urgent, it is the same container, not a restart
            again = await rt.start_container(cfg.id, ContainerConfig("main", BUSYBOX, command=["sleep", "100"]))
            assert (again.container_id, again.started_at) == (started.container_id, started.started_at)
        await rt.remove_pod_sandbox(cfg.id)


async def test_single_container_pods_refuse_a_second_running_container(rt: GvisorPodRuntime) -> None:
    cfg = pod_config("solo", single_container=True)
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig("a", BUSYBOX, command=["sleep", "100"]))
    with pytest.raises(InvalidSandboxSpec, match="one container at a time"):
        await rt.start_container(cfg.id, ContainerConfig("b", BUSYBOX, command=["sleep", "100"]))
    await rt.remove_pod_sandbox(cfg.id)


async def test_exec_with_a_tty_and_with_stdin(rt: GvisorPodRuntime) -> None:
    cfg = pod_config("exec", single_container=True)
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig("main", IMAGE, env={"FROM_POD": "yes"}))
    s = await rt.exec(cfg.id, "main", ["sh", "-c", "stty size; echo $FROM_POD $TERM; read x; echo got:$x; exit 3"],
                      tty=True, stdin=True, env={"TERM": "xterm-256color"})
    await s.resize(101, 33)
    await asyncio.sleep(0.3)
    await s.write(b"abc\r")
    out = await asyncio.wait_for(s.process.stdout.read(), 20)
    assert await s.process.wait() == 3
    lines = out.decode().replace("\r", "").splitlines()
    assert "yes xterm-256color" in lines and "got:abc" in lines
    assert any(line in ("33 101", "24 80") for line in lines)  # the size before or after the resize
    assert await s.process.stderr.read() == b""  # a terminal has one stream
    # Without a tty: separate streams, stdin to EOF.
    s = await rt.exec(cfg.id, "main", ["sh", "-c", "cat; echo oops >&2"], stdin=True)
    await s.write(b"piped\n")
    await s.close_stdin()
    assert await s.process.stdout.read() == b"piped\n" and await s.process.stderr.read() == b"oops\n"
    assert await s.process.wait() == 0
    # close() of a command still running kills it inside.
    s = await rt.exec(cfg.id, "main", ["sh", "-c", "sleep 1000"])
    await s.close()
    s = await rt.exec(cfg.id, "main", ["sh", "-c", "ps -eo args | grep -c '[s]leep 1000'"])
    assert (await s.process.stdout.read()).strip() == b"0"
    with pytest.raises(SandboxNotRunning):
        await rt.exec(cfg.id, "nope", ["true"])
    await rt.remove_pod_sandbox(cfg.id)


async def test_attach_to_a_terminal_and_to_stdin_once(rt: GvisorPodRuntime) -> None:
    cfg = pod_config("attach")
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig(
        "tty", BUSYBOX, command=["sh", "-c", "while read l; do echo echo:$l; done"], tty=True, stdin=True))
    await rt.start_container(cfg.id, ContainerConfig(
        "once", BUSYBOX, command=["sh", "-c", "cat; echo stdin-closed; sleep 1000"], stdin=True, stdin_once=True))
    a = await rt.attach(cfg.id, "tty")
    await a.write(b"hi\r")
    got = b""
    while b"echo:hi" not in got:
        got += await asyncio.wait_for(a.process.stdout.read(100), 10)
    await a.close()
    assert "echo:hi" in await wait_log(rt, cfg.id, "tty", "echo:hi")  # the terminal's output is logged too
    b = await rt.attach(cfg.id, "once")
    await b.write(b"line one\n")
    await b.close_stdin()  # stdin_once: the container reads EOF when the first attach is done
    text = await wait_log(rt, cfg.id, "once", "stdin-closed")
    assert text.splitlines() == ["line one", "stdin-closed"]
    assert (await rt.container_status(cfg.id, "once")).state is ContainerState.RUNNING
    await b.close()
    await rt.remove_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}  # the holders of stdin and the terminal went too


@pytest.mark.parametrize("single", [True, False], ids=["single-container", "pause"])
async def test_a_container_past_the_pods_memory_is_oom_killed(rt: GvisorPodRuntime, single: bool) -> None:
    cfg = pod_config(f"oom-{int(single)}", single_container=single, memory_bytes=128 << 20)
    await rt.run_pod_sandbox(cfg)
    hog = "b = bytearray(); exec('while True: b.extend(bytes(16 << 20))')"
    await rt.start_container(cfg.id, ContainerConfig("hog", IMAGE, command=["python3", "-c", hog]))
    done = await wait_exited(rt, cfg.id, "hog", timeout=60)
    assert (done.reason, done.exit_code) == ("OOMKilled", 137)
    if not single:  # gVisor kills the whole sandbox: the pod is not ready and says why
        st = await rt.pod_sandbox_status(cfg.id)
        assert (st.state, st.reason) == (PodSandboxState.NOT_READY, "OOMKilled")
        assert (await rt.run_pod_sandbox(cfg)).state is PodSandboxState.READY  # the node starts it again
    await rt.remove_pod_sandbox(cfg.id)


@pytest.mark.parametrize("single", [True, False], ids=["single-container", "pause"])
async def test_restarts_are_new_attempts_with_their_own_logs(rt: GvisorPodRuntime, single: bool) -> None:
    cfg = pod_config(f"restart-{int(single)}", single_container=single)
    await rt.run_pod_sandbox(cfg)
    ids = []
    for attempt in range(3):
        st = await rt.start_container(cfg.id, ContainerConfig(
            "c", BUSYBOX, command=["sh", "-c", f"echo attempt-{attempt}; echo err-{attempt} >&2; exit 1"],
            attempt=attempt))
        ids.append(st.container_id)
        done = await wait_exited(rt, cfg.id, "c")
        assert (done.attempt, done.exit_code) == (attempt, 1)
    assert len(set(ids)) == 3
    assert (await log_text(rt, cfg.id, "c", 2)).splitlines() == ["attempt-2", "err-2"]
    streams = {r.stream: r.text for r in read_lines(rt.log_path(cfg.id, "c", 1))}
    assert streams == {"stdout": b"attempt-1", "stderr": b"err-1"}  # --previous
    assert not rt.log_path(cfg.id, "c", 0).exists()  # two attempts are kept
    await rt.remove_pod_sandbox(cfg.id)


async def test_stop_honours_the_grace_period(rt: GvisorPodRuntime) -> None:
    cfg = pod_config("grace")
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig(
        "polite", BUSYBOX, command=["sh", "-c", "trap 'sleep 1; echo bye; exit 0' TERM; while :; do sleep 0.1; done"]))
    await rt.start_container(cfg.id, ContainerConfig(
        "stubborn", BUSYBOX, command=["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]))
    await asyncio.sleep(0.3)
    t = time.monotonic()
    polite = await rt.stop_container(cfg.id, "polite", 10)
    assert 0.9 < time.monotonic() - t < 5 and (polite.exit_code, polite.reason) == (0, "Completed")
    assert "bye" in await log_text(rt, cfg.id, "polite")
    t = time.monotonic()
    stubborn = await rt.stop_container(cfg.id, "stubborn", 1.5)
    assert 1.5 <= time.monotonic() - t < 8 and stubborn.exit_code == 137
    assert (await rt.stop_container(cfg.id, "stubborn", 1)).exit_code == 137  # idempotent
    await rt.remove_pod_sandbox(cfg.id)


async def test_read_only_root_run_as_user_and_capabilities(rt: GvisorPodRuntime) -> None:
    cfg = pod_config("secure", volumes=[VolumeConfig("tmp", "emptyDir")])
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig(
        "c", BUSYBOX, command=["sleep", "1000"], mounts=[Mount("tmp", "/tmp")],
        security=SecurityContext(run_as_user=1000, run_as_group=3000, supplemental_groups=[4000],
                                 read_only_root_filesystem=True, allow_privilege_escalation=False,
                                 capabilities=Capabilities(drop=["ALL"]))))
    script = ("id -u; id -g; id -G; touch /x 2>/dev/null && echo root-writable || echo root-read-only; "
              "touch /tmp/ok && echo volume-writable; grep CapEff /proc/self/status")
    s = await rt.exec(cfg.id, "c", ["sh", "-c", script])
    out = (await s.process.stdout.read()).decode().splitlines()
    assert out[:3] == ["1000", "3000", "3000 4000"]
    assert out[3:5] == ["root-read-only", "volume-writable"]
    assert out[5].split()[1] == "0000000000000000"
    await rt.remove_pod_sandbox(cfg.id)


async def test_hibernate_and_restore_a_single_container_pod(rt: GvisorPodRuntime) -> None:
    cfg = pod_config("hib", single_container=True, volumes=[VolumeConfig("mem", "memory", size_bytes=1 << 20)],
                     background=True)  # a warm pool's
    await rt.run_pod_sandbox(cfg)
    counter = "import time\ni = 0\nwhile True:\n    i += 1; print(i, flush=True); time.sleep(0.1)"
    first = await rt.start_container(cfg.id, ContainerConfig("main", IMAGE, command=["python3", "-c", counter],
                                                             mounts=[Mount("mem", "/mem")], background=True))
    s = await rt.exec(cfg.id, "main", ["sh", "-c", "echo kept > /mem/note"])
    assert await s.process.wait() == 0
    await wait_log(rt, cfg.id, "main", "\n5\n")
    await rt.hibernate_pod_sandbox(cfg.id)
    st = await rt.pod_sandbox_status(cfg.id)
    assert (st.state, st.reason) == (PodSandboxState.NOT_READY, "Hibernated")
    assert leftovers(rt, [cfg.id]).keys() <= {"dirs"}  # memory on disk; no process, mount or loop device
    before = int((await log_text(rt, cfg.id, "main")).split()[-1])
    # The same config from a new Pod object (another uid), claimed meanwhile (no longer background), resumes
    # it: the count goes on.
    resumed = await rt.run_pod_sandbox(dataclass_replace(cfg, uid="uid-hib-2", background=False))
    assert resumed.state is PodSandboxState.READY
    again = await rt.start_container(cfg.id, ContainerConfig("main", IMAGE, command=["python3", "-c", counter],
                                                             mounts=[Mount("mem", "/mem")]))
    assert again.container_id == first.container_id and again.state is ContainerState.RUNNING
    await wait_log(rt, cfg.id, "main", f"\n{before + 3}\n")
    numbers = [int(x) for x in (await log_text(rt, cfg.id, "main")).split()]
    assert numbers == list(range(1, len(numbers) + 1))  # no restart from 1
    s = await rt.exec(cfg.id, "main", ["cat", "/mem/note"])
    assert await s.process.stdout.read() == b"kept\n"
    await rt.remove_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}


async def test_a_two_container_pod_cannot_hibernate_under_this_runsc_and_keeps_running(rt: GvisorPodRuntime) -> None:
    cfg = pod_config("hib-two")
    await rt.run_pod_sandbox(cfg)
    for name in ("a", "b"):
        await rt.start_container(cfg.id, ContainerConfig(name, BUSYBOX, command=["sleep", "1000"]))
    with pytest.raises(HibernationUnsupported, match="one container per sandbox"):
        await rt.hibernate_pod_sandbox(cfg.id)
    st = await rt.pod_sandbox_status(cfg.id)
    assert st.state is PodSandboxState.READY and all(c.state is ContainerState.RUNNING for c in st.containers)
    await rt.remove_pod_sandbox(cfg.id)


def dataclass_replace(cfg: object, **kw: object) -> object:
    import dataclasses

    return dataclasses.replace(cfg, **kw)  # type: ignore[type-var]


async def test_a_restarted_control_plane_finds_its_pods_and_their_output(rt: GvisorPodRuntime,
                                                                         images: ImageStore) -> None:
    cfg = pod_config("adopt", volumes=[VolumeConfig("v", "emptyDir")])
    # The first control plane is another process that starts the pod and exits.
    script = f"""
import asyncio, sys
from pathlib import Path
from turbok.runtime.cri import ContainerConfig, PodSandboxConfig, VolumeConfig
from turbok.runtime.images import ImageStore
from turbok.runtime.pods_gvisor import GvisorPodRuntime
async def main():
    rt = GvisorPodRuntime(Path({str(rt.root)!r}), ImageStore(Path({str(images.root)!r})))
    await rt.run_pod_sandbox(PodSandboxConfig(id={cfg.id!r}, name="adopt", namespace="test", uid="u",
                                              hostname="adopt", network=False, volumes=[VolumeConfig("v", "emptyDir")]))
    await rt.start_container({cfg.id!r}, ContainerConfig("ticker", "busybox", command=["sh", "-c",
        "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.1; done"]))
    await rt.start_container({cfg.id!r}, ContainerConfig("sh", "busybox", command=["sh"], stdin=True, tty=True))
    await asyncio.sleep(0.5)
asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    await asyncio.sleep(0.5)  # output written while no control plane ran
    assert cfg.id in await rt.list_pod_sandboxes()
    st = await rt.pod_sandbox_status(cfg.id)
    assert st.state is PodSandboxState.READY
    assert {c.name: c.state for c in st.containers} == {"sh": ContainerState.RUNNING,
                                                       "ticker": ContainerState.RUNNING}
    text = await log_text(rt, cfg.id, "ticker")
    seen = int(text.split()[-1].split("-")[1])
    later = await wait_log(rt, cfg.id, "ticker", f"tick-{seen + 5}\n")
    ticks = [int(line.split("-")[1]) for line in later.split()]
    assert ticks == list(range(1, len(ticks) + 1))  # nothing lost or doubled across the restart
    a = await rt.attach(cfg.id, "sh")  # its terminal, kept by the holder, is ours again
    await a.write(b"echo readopted-$((6*7))\r")
    got = b""
    while b"readopted-42" not in got:
        got += await asyncio.wait_for(a.process.stdout.read(200), 10)
    await a.close()
    s = await rt.exec(cfg.id, "ticker", ["true"])
    assert await s.process.wait() == 0
    done = await rt.stop_container(cfg.id, "ticker", 5)
    assert done.exit_code == 143
    await rt.remove_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}


async def test_a_sub_path_symlink_planted_in_a_volume_is_not_followed(rt: GvisorPodRuntime, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.mkdir()
    (secret / "data").write_text("host only\n")
    cfg = pod_config("subpath", volumes=[VolumeConfig("v", "emptyDir")])
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig(
        "planter", BUSYBOX, command=["sh", "-c", f"mkdir -p /v/real; echo inside > /v/real/f; "
                                     f"ln -s {secret} /v/escape"], mounts=[Mount("v", "/v")]))
    await wait_exited(rt, cfg.id, "planter")
    with pytest.raises(InvalidSandboxSpec, match="not a directory"):
        await rt.start_container(cfg.id, ContainerConfig("reader", BUSYBOX, command=["ls", "/x"],
                                                         mounts=[Mount("v", "/x", sub_path="escape")]))
    await rt.start_container(cfg.id, ContainerConfig("reader", BUSYBOX, command=["cat", "/x/f"],
                                                     mounts=[Mount("v", "/x", sub_path="real")]))
    assert (await wait_exited(rt, cfg.id, "reader")).exit_code == 0
    assert await log_text(rt, cfg.id, "reader") == "inside\n"
    await rt.remove_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}


async def test_status_costs_no_subprocess(rt: GvisorPodRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = pod_config("cheap")
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig("c", BUSYBOX, command=["sleep", "1000"]))

    async def no_subprocess(*a: object, **k: object) -> None:
        raise AssertionError("a subprocess for a status")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    t = time.perf_counter()
    for _ in range(100):
        st = await rt.pod_sandbox_status(cfg.id)
    assert st.containers[0].state is ContainerState.RUNNING
    assert (time.perf_counter() - t) / 100 < 0.005
    monkeypatch.undo()
    await rt.remove_pod_sandbox(cfg.id)


async def test_remove_is_idempotent_and_leaves_nothing(rt: GvisorPodRuntime) -> None:
    cfg = pod_config("leak", memory_bytes=256 << 20, volumes=[VolumeConfig("m", "memory"), VolumeConfig("e", "emptyDir")])
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig("a", BUSYBOX, command=["sleep", "1000"], tty=True, stdin=True,
                                                     mounts=[Mount("m", "/m"), Mount("e", "/e", sub_path="s")]))
    await rt.start_container(cfg.id, ContainerConfig("b", BUSYBOX, command=["sleep", "1000"], stdin=True,
                                                     stdin_once=True))
    assert leftovers(rt, [cfg.id])  # the check sees what a running pod has
    await rt.stop_pod_sandbox(cfg.id)
    st = await rt.pod_sandbox_status(cfg.id)
    assert (st.state, st.reason) == (PodSandboxState.NOT_READY, "Stopped")
    assert {c.exit_code for c in st.containers} == {137}
    assert leftovers(rt, [cfg.id]).keys() == {"dirs"}  # stopped: the disk file stays, nothing mounted or running
    assert json.loads((rt.root / cfg.id / "pod.json").read_text())["state"] == "stopped"
    await rt.remove_pod_sandbox(cfg.id)
    await rt.remove_pod_sandbox(cfg.id)
    await rt.stop_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}
    assert (await rt.pod_sandbox_status(cfg.id)).state is PodSandboxState.ABSENT
    assert set(os.listdir(rt.root)) <= {".runsc", ".removing"} | set(await rt.list_pod_sandboxes())
    assert not os.listdir(rt.root / ".removing"), "the trash (kept once made) is empty"


def _open_below(path: Path) -> list[str]:
    """Files of this process (the control plane) open below ``path``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{path}/"):
            found.append(target)
    return found


@pytest.mark.parametrize("single", [True, False])
async def test_a_start_cancelled_during_its_boot_leaves_no_file_of_the_pod_open(
        rt: GvisorPodRuntime, single: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A control plane that holds a container's output file open keeps the pod's disk alive after its unmount:
    the next boot of the pod would find its disk still held, and a removed pod would leave its loop device."""
    cfg = pod_config(f"cut-{int(single)}", single_container=single)
    await rt.run_pod_sandbox(cfg)
    launching = asyncio.Event()

    async def hangs(*args: object) -> None:
        launching.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(rt, "_launch", hangs)
    start = asyncio.ensure_future(rt.start_container(cfg.id, ContainerConfig("main", IMAGE, command=["sleep", "9"])))
    await asyncio.wait_for(launching.wait(), 30)
    disk = rt.root / cfg.id / "disk"
    assert _open_below(disk)  # the check sees the output files the start opened
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert _open_below(disk) == []
    await rt.remove_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}


async def test_a_pod_takes_over_the_disk_of_a_sandbox_of_the_old_runtime(rt: GvisorPodRuntime, images: ImageStore,
                                                                        tmp_path: Path) -> None:
    legacy = tmp_path / "sandboxes"
    cfg = pod_config("legacy", single_container=True)
    # Suspended with its disk kept, before pods existed.
    old_sandbox(legacy, cfg.id, app={"kept": "app-file\n"}, layer={"/root/kept": "layer-file\n"})
    prt = GvisorPodRuntime(tmp_path / "pods", images, legacy_root=legacy)
    try:
        await prt.run_pod_sandbox(cfg)
        await prt.start_container(cfg.id, ContainerConfig("main", IMAGE))
        s = await prt.exec(cfg.id, "main", ["sh", "-c", "cat /app/kept /root/kept"])
        assert await s.process.stdout.read() == b"app-file\nlayer-file\n"  # nothing stored is lost
        assert prt.workdir(cfg.id, "main") == tmp_path / "pods" / cfg.id / "disk" / "containers" / "main" / "app"
        assert not (legacy / cfg.id).exists()
    finally:
        await prt.remove_pod_sandbox(cfg.id)
        await LegacySandboxes(legacy).remove(cfg.id)
    assert leftovers(prt, [cfg.id]) == {}
    release_root(tmp_path / "pods")
    release_root(legacy)


@pytest.mark.parametrize("written_down", [True, False], ids=["launch-written-down", "older-pod"])
async def test_a_container_runsc_runs_without_a_record_is_found_and_removed(rt: GvisorPodRuntime,
                                                                          written_down: bool) -> None:
    # A start whose record was never written after `runsc run` (a full disk): the pod's list of launches names
    # it (a pod made before that list existed: its runsc state file, found by reading them all).
    cfg = pod_config(f"stray-{str(written_down).lower()}", single_container=True)
    await rt.run_pod_sandbox(cfg)
    await rt.start_container(cfg.id, ContainerConfig("main", BUSYBOX, command=["sleep", "1000"]))
    pdir = PodDir(rt.root, cfg.id)
    cid = json.loads(pdir.container("main").record.read_text())["cid"]
    assert pdir.launched.read_text().split() == [cid]
    # As a start that failed after `runsc run`: no record, and so no pump reading its output either.
    await asyncio.to_thread(PUMP.finish, rt.feed_key(pdir, "main", 0))
    pdir.container("main").record.unlink()
    if not written_down:
        pdir.launched.unlink()
    assert rt._strays(pdir) == [cid]
    await rt.remove_pod_sandbox(cfg.id)
    assert list(rt.state_dir.glob(f"{cid}_sandbox:*")) == []
    for _ in range(100):  # its sandbox and gofer end (PID 1 reaps them: this process is no subreaper)
        running = subprocess.run(["pgrep", "-f", f"runsc-(sandbox|gofer).*{pdir.path}/"], capture_output=True,
                                 text=True).stdout
        if not running:
            break
        await asyncio.sleep(0.1)
    assert running == ""
    for _ in range(100):  # the disk's loop device goes with the last mount namespace that held it
        if not (left := leftovers(rt, [cfg.id, cid])):
            break
        await asyncio.sleep(0.1)
    assert left == {}
