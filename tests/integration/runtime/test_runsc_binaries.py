"""Both runsc binaries for real: Debian's package (the default) and ../shared/gvisor's current one.

What each says it supports, which platform ``auto`` picks, a pod booted with each (the sandbox's boot
log names the platform it runs on), and the kvm probe that never hangs a start. The rest of the runtime
tests run with either binary through ``pytest --runsc=shared`` (tests/gvisor_binaries.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from turbok.runtime.cri import ContainerConfig
from turbok.runtime.images import ImageStore
from turbok.runtime.podlayout import PodDir
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.runtime.runsc import NULL_NETNS, RunscSettings, choose
from turbok.settings import SettingError

from ...gvisor_binaries import SHARED_MISSING, debian_runsc, shared_runsc
from .podcheck import BUSYBOX, leftovers, log_text, pod_config, wait_exited

pytestmark = pytest.mark.integration  # asyncio_mode = "auto"


def binary(which: str) -> str:
    if which == "debian":
        found = debian_runsc()
        if found is None:
            pytest.skip("Debian's runsc is not installed (apt-get install -y runsc)")
        return found
    shared = shared_runsc()
    if shared is None:
        pytest.skip(SHARED_MISSING)
    return str(shared)


@pytest.mark.parametrize(("which", "platform", "version"), [
    ("debian", "ptrace", "0.0~20221219"), ("shared", "systrap", "0.0.0-20260905")])
def test_auto_picks_what_each_binary_has(which: str, platform: str, version: str) -> None:
    chosen = choose(RunscSettings(binary=binary(which)))
    assert chosen.platform == platform and chosen.version.startswith(version)
    assert "ptrace" in chosen.platforms and "kvm" in chosen.platforms
    assert ("systrap" in chosen.platforms) is (which == "shared")


@pytest.mark.parametrize(("which", "platform"), [("debian", "auto"), ("shared", "auto"), ("shared", "ptrace")])
async def test_a_pod_boots_and_runs_with_each_binary(which: str, platform: str, tmp_path: Path,
                                                     images: ImageStore) -> None:
    rt = GvisorPodRuntime(tmp_path / "pods", images, runsc=binary(which), platform=platform)
    cfg = pod_config(f"runsc-{which}-{platform}", single_container=True)
    try:
        await rt.run_pod_sandbox(cfg)
        await rt.start_container(cfg.id, ContainerConfig("main", BUSYBOX, command=[
            "sh", "-c", "echo up; echo kept > /written; exit 7"]))
        done = await wait_exited(rt, cfg.id, "main")
        assert done.exit_code == 7 and (await log_text(rt, cfg.id, "main")) == "up\n"
        # What it wrote to / is in its layer on the pod's disk with either binary (not in runsc's own overlay).
        assert (PodDir(rt.root, cfg.id).container("main").upper / "written").read_text() == "kept\n"
        # The sandbox's own word for the platform it booted on.
        boot = PodDir(rt.root, cfg.id).boot_log_of("main", 0).read_text(errors="replace")
        assert f"Platform: {rt.runsc_choice.platform}" in boot
        assert rt.runsc_choice.platform == ("ptrace" if which == "debian" or platform == "ptrace" else "systrap")
    finally:
        await rt.remove_pod_sandbox(cfg.id)
    assert leftovers(rt, [cfg.id]) == {}
    release_root(rt.root)  # runsc's null-netns pin (current binary) goes with it
    assert not any(line.split()[4].startswith(str(rt.root)) for line in
                   Path("/proc/self/mountinfo").read_text().splitlines())
    assert not (rt.state_dir / NULL_NETNS).is_mount()


@pytest.mark.parametrize("which", ["debian", "shared"])
def test_kvm_is_used_only_when_a_probe_sandbox_ends_in_time(which: str) -> None:
    """Here /dev/kvm is a VM's and runsc hangs on it: the probe is killed and the start refused, cleanly."""
    path = binary(which)
    before = set(os.listdir(tempfile.gettempdir()))
    mounted = _mount_points()
    try:
        chosen = choose(RunscSettings(binary=path, platform="kvm"), kvm_probe_seconds=3)
    except SettingError as e:
        assert str(e).startswith("TURBOK_RUNSC_PLATFORM=kvm: ") and str(e).endswith("; use systrap or ptrace")
    else:
        assert chosen.platform == "kvm" and "probe" in chosen.reason
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith(("turbok-kvm-probe-",
                                                                                             "runsc-do"))]
    # runsc do (2024 on) pins a network namespace in a directory of its own: not left mounted
    assert {p for p in _mount_points() - mounted if "/runsc-do" in p} == set()
    # Killed before choose() returned; a loaded machine may take a moment to finish their exit.
    deadline = time.monotonic() + 10
    while (probes := _processes_with(b"--platform=kvm")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert probes == []
    assert choose(RunscSettings(binary=path)).platform != "kvm"  # auto never picks it


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def _processes_with(marker: bytes) -> list[str]:
    """Pids of the live processes whose command line holds ``marker`` (zombies have none)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except OSError:
            continue
    return found
