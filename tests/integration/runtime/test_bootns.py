"""The mount namespace boots start from (``turbok.runtime.bootns``): none of the pods' mounts but the booting
pod's own tree, the host's other mounts as they are, nothing of a pod's kept alive by it, and a clear fallback
where a tree cannot be moved in."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from turbok.runtime import bootns, mounts, netns, spawn
from turbok.runtime.network import NETNS_DIR

pytestmark = [pytest.mark.integration, pytest.mark.asyncio,
              pytest.mark.skipif(os.geteuid() != 0, reason="not root: making mount namespaces needs root")]


def tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    mounts.mount("tmpfs", path, "tmpfs", mounts.SAFE, "size=1m")


async def run_in(ns: bootns.BootNamespace, script: str, trees: list[Path], netns_path: Path | None = None,
                 ) -> str:
    out = os.memfd_create("out")
    try:
        proc = await ns.start(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=out, stderr=out, trees=trees,
                              netns=netns_path)
        assert await spawn.wait(proc) == 0, os.pread(out, 65536, 0).decode()
        return os.pread(out, 65536, 0).decode()
    finally:
        os.close(out)


def points(mountinfo: str) -> list[str]:
    return [mounts.unescape(line.split()[4]) for line in mountinfo.splitlines() if len(line.split()) > 5]


async def test_a_boot_sees_its_own_pods_tree_and_none_of_the_others(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "pods", tmp_path / "elsewhere"
    early, late, other = root / "early" / "disk", root / "late" / "disk", elsewhere / "mine"
    tmpfs(early)  # a pod mounted before the namespace is made: left out of it
    tmpfs(other)  # not a pod's: kept
    ns = bootns.BootNamespace(root)
    try:
        (early / "file").write_text("early\n")
        seen = await run_in(ns, "cat /proc/self/mountinfo", [root / "early"])
        assert str(early) in points(seen) and str(other) in points(seen) and "/proc" in points(seen)
        tmpfs(late)  # a pod mounted since: only its own boot sees it
        (late / "file").write_text("late\n")
        seen = await run_in(ns, f"cat {late}/file; cat /proc/self/mountinfo", [root / "late"])
        assert seen.startswith("late\n")
        assert str(late) in points(seen) and str(early) not in points(seen)
        with open("/proc/self/mountinfo") as f:
            assert len(points(seen)) <= len(points(f.read())) + 1
        assert await run_in(ns, f"cat {late}/file 2>&1 || true", [root / "early"]) == \
            f"cat: {late}/file: No such file or directory\n"
    finally:
        for path in (early, late, other):
            mounts.unmount(path)


async def test_a_pods_disk_unmounted_on_the_host_is_gone_though_the_namespace_lives(tmp_path: Path) -> None:
    root = tmp_path / "pods"
    image, disk = tmp_path / "disk.img", root / "pod" / "disk"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-b", "4096", str(image)], check=True)
    disk.mkdir(parents=True)
    from turbok.runtime import loopdev

    with loopdev.attached(image) as device:
        mounts.mount(device, disk, "ext4", mounts.SAFE)
    ns = bootns.BootNamespace(root)
    assert "lost+found" in await run_in(ns, f"ls {disk}", [root / "pod"])  # made while the disk was mounted
    mounts.unmount(disk, lazy=False)
    for _ in range(100):  # the loop device lets go once nothing holds the filesystem (autoclear)
        if loopdev.backing_file(device) is None:
            break
        await asyncio.sleep(0.05)
    assert loopdev.backing_file(device) is None, loopdev.holders(device)


async def test_the_pods_network_namespace_hides_what_old_runsc_misreads_and_runsc_stays_on_the_host(
        tmp_path: Path) -> None:
    if not netns.shows_rmem_default():
        pytest.skip("this kernel is older than 6.10: no rmem_default in a pod's network namespace to hide")
    netns.prepare_dir(NETNS_DIR)
    path = NETNS_DIR / f"tbootns-{os.getpid()}"
    netns.create(path).close()
    ns = bootns.BootNamespace(tmp_path / "pods")
    try:
        seen = await run_in(ns, f"readlink /proc/self/ns/net; nsenter --net={path} ls /proc/sys/net/core | wc -l; "
                                "ls /proc/sys/net/core | wc -l", [], path)
        net, inside, outside = seen.split()
        assert net == os.readlink("/proc/self/ns/net")  # runsc's control socket stays reachable from here
        assert int(inside) == 0 and int(outside) > 0
        assert os.path.exists("/proc/sys/net/core/rmem_default")  # the host's own view untouched
    finally:
        netns.remove(path)


async def test_a_tree_the_namespace_cannot_hold_is_refused_and_nothing_starts(tmp_path: Path) -> None:
    root, later = tmp_path / "pods", tmp_path / "later"
    later.mkdir()
    ns = bootns.BootNamespace(root)
    await run_in(ns, "true", [])  # the pristine namespace is made now
    tmpfs(later)
    try:
        (later / "volume").mkdir()  # on a filesystem mounted since: no such directory in the namespace
        marker = tmp_path / "started"
        with pytest.raises(bootns.Unavailable, match="volume"):
            await run_in(ns, f"touch {marker}", [later / "volume"])
        assert not marker.exists()
        assert os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getpid()}/ns/mnt")
    finally:
        mounts.unmount(later)


async def test_a_command_that_cannot_start_fails_as_it_would_on_the_host_and_the_next_boot_is_unaffected(
        tmp_path: Path) -> None:
    root = tmp_path / "pods"
    (root / "pod").mkdir(parents=True)
    ns = bootns.BootNamespace(root)
    for _ in range(3):  # more times than there are boot threads: none is left in a boot's namespace
        with pytest.raises(FileNotFoundError):
            await ns.start([str(tmp_path / "no-such-runsc")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, trees=[root / "pod"], netns=None)
    marker = tmp_path / "seen"
    assert await run_in(ns, f"test -d {root}/pod && touch {marker} && echo ok", [root / "pod"]) == "ok\n"
    assert marker.exists()
    assert ns.unavailable is None
