"""A pod's own disk under real runsc: bytes and inodes bounded for /app, an emptyDir and the layer, given back
to the host when freed; a full home refuses a pod clearly, leaves nothing mounted, and the pod starts once
space is freed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from turbok.runtime import loopdev, mounts
from turbok.runtime.cri import ContainerConfig, Mount, VolumeConfig
from turbok.runtime.disk import MIN_INODES
from turbok.runtime.errors import SandboxStartFailed
from turbok.runtime.images import ImageStore
from turbok.runtime.podlayout import PodDir
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import GvisorPodRuntime

from .podcheck import IMAGE, leftovers, pod_config, settled_leftovers

_NO_LOOP = loopdev.unavailable()
pytestmark = [pytest.mark.integration, pytest.mark.asyncio,
              pytest.mark.skipif(_NO_LOOP is not None, reason=f"loop devices unavailable: {_NO_LOOP}")]

MiB = 1 << 20

FILL = """
import errno, os, sys
path, = sys.argv[1:]
written = 0
try:
    with open(path, "wb") as f:
        while written < 256 * 2**20:
            written += f.write(b"x" * 2**20)
            f.flush()
        os.fsync(f.fileno())
except OSError as e:
    print(errno.errorcode[e.errno], written)
else:
    print("OK", written)
"""

MANY = """
import errno, os
n = 0
try:
    os.makedirs("/app/many")
    while n < 100000:
        open(f"/app/many/{n}", "w").close()
        n += 1
except OSError as e:
    print(errno.errorcode[e.errno], n)
"""


async def run(rt: GvisorPodRuntime, id: str, argv: list[str]) -> tuple[int, str, str]:
    s = await rt.exec(id, "main", argv)
    out, err = await asyncio.wait_for(asyncio.gather(s.process.stdout.read(), s.process.stderr.read()), 120)
    return await s.process.wait(), out.decode(), err.decode()


async def test_bytes_and_inodes_are_bounded_for_app_an_empty_dir_and_the_layer(tmp_path: Path,
                                                                              images: ImageStore) -> None:
    limit = 32 * MiB
    rt = GvisorPodRuntime(tmp_path / "pods", images)
    cfg = pod_config("bounded", single_container=True, ephemeral_storage_bytes=limit,
                     volumes=[VolumeConfig("cache", "emptyDir")])
    try:
        await rt.run_pod_sandbox(cfg)
        await rt.start_container(cfg.id, ContainerConfig("main", IMAGE, mounts=[Mount("cache", "/cache")]))
        pdir = PodDir(rt.root, cfg.id)
        for target in ("/app/big", "/cache/big", "/root/big"):
            _, out, err = await run(rt, cfg.id, ["python3", "-c", FILL, target])
            code, written = out.split()
            assert code in ("ENOSPC", "EDQUOT"), (target, out, err)
            assert 0.8 * limit < int(written) <= 1.1 * limit, (target, written)
            assert (await run(rt, cfg.id, ["rm", target]))[0] == 0
        # The host gave no more than the limit, and got it back when the files went (discard): the sparse
        # image holds less than the limit (the filesystem's free space is shared with other work here).
        assert pdir.disk_image.stat().st_blocks * 512 < 1.2 * limit

        _, out, _ = await run(rt, cfg.id, ["python3", "-c", MANY])
        code, made = out.split()
        assert code == "ENOSPC" and int(made) <= MIN_INODES, out
    finally:
        await rt.remove_pod_sandbox(cfg.id)
        found = await settled_leftovers(rt, [cfg.id])
        release_root(rt.root)
    assert found == {}


async def test_a_pod_on_a_full_home_fails_clearly_leaves_nothing_mounted_and_starts_once_freed(
        tmp_path: Path, images: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(home)], check=True)
    monkeypatch.setattr("turbok.runtime.pods.HOME_RESERVE_BYTES", 0)  # reach the real ENOSPC
    rt = GvisorPodRuntime(home / "pods", images)
    cfg = pod_config("full-home", single_container=True, ephemeral_storage_bytes=32 * MiB)
    try:
        with open(home / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * MiB)
                f.flush()
        with pytest.raises(SandboxStartFailed, match="no space left for pods") as info:
            await rt.run_pod_sandbox(cfg)
        assert "starts once space is freed" in str(info.value)
        assert mounts.mounts_below(rt.root) == [] and leftovers(rt, [cfg.id]).keys() <= {"dirs"}
        (home / "filler").unlink()
        await rt.run_pod_sandbox(cfg)
        await rt.start_container(cfg.id, ContainerConfig("main", IMAGE))
        assert await run(rt, cfg.id, ["sh", "-c", "echo ok > /app/ok && cat /app/ok"]) == (0, "ok\n", "")
    finally:
        await rt.remove_pod_sandbox(cfg.id)
        release_root(rt.root)
        subprocess.run(["umount", "-l", str(home)], check=False)


def pre_disk_tree(path: Path) -> None:
    """A sandbox directory of the old runtime as versions before the disks left it: plain 0755 directories."""
    for d in ("upper/root", "upper/etc", "ovwork", "app/sub", "volumes/data", "rootfs", "run"):
        (path / d).mkdir(mode=0o755, parents=True, exist_ok=True)
    (path / "spec.json").write_text(json.dumps({"id": path.name, "hostname": "legacy"}))
    (path / "upper/root/state").write_text("kept from the old layout\n")
    os.mknod(path / "upper/etc/motd", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # an overlay whiteout
    (path / "app/sub/file").write_text("app data\n")
    os.link(path / "app/sub/file", path / "app/hardlink")
    (path / "volumes/data/v").write_text("volume data\n")
    (path / "stdout.log").write_text("old output\n")
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)


async def test_a_pod_takes_over_a_tree_from_before_the_disks_and_loses_nothing(tmp_path: Path,
                                                                              images: ImageStore) -> None:
    legacy = tmp_path / "sandboxes"
    cfg = pod_config("pre-disk", single_container=True, ephemeral_storage_bytes=64 * MiB,
                     volumes=[VolumeConfig("data", "emptyDir")])
    pre_disk_tree(legacy / cfg.id)
    rt = GvisorPodRuntime(tmp_path / "pods", images, legacy_root=legacy)
    try:
        await rt.run_pod_sandbox(cfg)
        await rt.start_container(cfg.id, ContainerConfig("main", IMAGE, mounts=[Mount("data", "/data")]))
        pdir = PodDir(rt.root, cfg.id)
        assert stat.S_IMODE(pdir.path.stat().st_mode) == 0o700
        code, out, err = await run(rt, cfg.id, ["sh", "-c", "cat /root/state /app/sub/file /app/hardlink /data/v; "
                                                            "ls /etc/motd 2>&1; stat -c %h /app/sub/file"])
        assert out.splitlines() == ["kept from the old layout", "app data", "app data", "volume data",
                                    "ls: /etc/motd: No such file or directory", "2"], (out, err)
        assert pdir.disk_image.exists() and mounts.is_mount_root(pdir.disk)  # now on a bounded disk of its own
        assert (pdir.logs / "stdout.log").read_text() == "old output\n"
        left = {p.name for p in pdir.path.iterdir()}
        assert not {"upper", "ovwork", "app", "volumes", "stdout.log", "disk.plain", "disk.migrated"} & left, left
        assert not (legacy / cfg.id).exists()
    finally:
        await rt.remove_pod_sandbox(cfg.id)
        found = await settled_leftovers(rt, [cfg.id])
        release_root(rt.root)
    assert found == {}


async def test_without_loop_devices_the_disk_is_unbounded_says_so_and_stays_nosuid(tmp_path: Path,
                                                                                  images: ImageStore) -> None:
    rt = GvisorPodRuntime(tmp_path / "pods", images, bounded_disks=False)
    cfg = pod_config("unbounded", single_container=True, ephemeral_storage_bytes=16 * MiB)
    try:
        await rt.run_pod_sandbox(cfg)
        await rt.start_container(cfg.id, ContainerConfig("main", IMAGE))
        status = await rt.pod_sandbox_status(cfg.id)
        assert any("disk not bounded" in n for n in status.notes), status.notes
        assert not PodDir(rt.root, cfg.id).disk_image.exists()
        workdir = rt.workdir(cfg.id, "main")
        assert workdir is not None
        flags = os.statvfs(workdir).f_flag
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV
        # Past the limit: nothing enforces it here.
        assert await run(rt, cfg.id, ["sh", "-c", "head -c 20000000 /dev/zero > /app/f && wc -c < /app/f"]) == (
            0, "20000000\n", "")
    finally:
        await rt.remove_pod_sandbox(cfg.id)
        found = await settled_leftovers(rt, [cfg.id])
        release_root(rt.root)
    assert found == {}


async def test_a_disk_still_held_from_its_last_run_says_who_holds_it(tmp_path: Path, images: ImageStore) -> None:
    rt = GvisorPodRuntime(tmp_path / "pods", images)
    cfg = pod_config("held", single_container=True)
    await rt.run_pod_sandbox(cfg)
    pdir = PodDir(rt.root, cfg.id)
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "60"])
    inside = subprocess.Popen(["sleep", "60"], cwd=pdir.disk / "containers")  # a process working on the disk
    ours = os.readlink("/proc/self/ns/mnt")
    opened = os.open(pdir.disk / "containers", os.O_RDONLY | os.O_DIRECTORY)
    try:
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == ours or \
                Path(f"/proc/{holder.pid}/comm").read_text().strip() != "sleep":
            await asyncio.sleep(0.01)  # its private copy of the mount table, the pod's disk in it, from now on
        await rt.stop_pod_sandbox(cfg.id)
        assert not mounts.is_mount_root(pdir.disk)
        with pytest.raises(SandboxStartFailed, match="still held") as info:
            await rt.run_pod_sandbox(cfg)
        assert f"{holder.pid} (sleep: a mount)" in str(info.value)
        assert f"{inside.pid} (sleep: its directory)" in str(info.value)  # in the detached filesystem
        assert "this process' file /containers" in str(info.value)  # its path in the detached filesystem
    finally:
        os.close(opened)
        for p in (holder, inside):
            p.kill()
            p.wait()
    try:
        await rt.run_pod_sandbox(cfg)  # both gone: the disk is free and mounts again
        assert mounts.is_mount_root(pdir.disk)
    finally:
        await rt.remove_pod_sandbox(cfg.id)
        found = await settled_leftovers(rt, [cfg.id])
        release_root(rt.root)
    assert found == {}


def binds_of(root: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(line.split()[4] == str(root) for line in f)


async def test_pods_preparing_at_once_below_an_unbound_root_bind_it_once(tmp_path: Path, images: ImageStore,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pods after the last one went each find the root unbound: it is bound once, not once per pod (a
    second bind over the first hid a pod's disk below it, which then could never be unmounted by its path)."""
    rt = GvisorPodRuntime(tmp_path / "pods", images)
    looked = mounts.mounts_below

    def slowly(path: Path) -> list[str]:  # widens the moment between looking at the root and binding it
        found = looked(path)
        if Path(path) == rt.root:
            time.sleep(0.3)
        return found

    monkeypatch.setattr(mounts, "mounts_below", slowly)
    cfgs = [pod_config(f"first-{i}", single_container=True) for i in range(3)]
    try:
        for _ in range(2):  # the second time after the last pod went and the bind was undone
            await asyncio.gather(*(rt.run_pod_sandbox(cfg) for cfg in cfgs))
            assert binds_of(rt.root) == 1
            assert all(mounts.is_mount_root(PodDir(rt.root, cfg.id).disk) for cfg in cfgs)
            await asyncio.gather(*(rt.remove_pod_sandbox(cfg.id) for cfg in cfgs))
            assert binds_of(rt.root) == 0
    finally:
        for cfg in cfgs:
            await rt.remove_pod_sandbox(cfg.id)
        found = await settled_leftovers(rt, [cfg.id for cfg in cfgs])
        release_root(rt.root)
    assert found == {}


async def test_a_disk_hidden_under_a_later_mount_of_this_process_is_named_as_its_holder(tmp_path: Path) -> None:
    image, outer = tmp_path / "disk.img", tmp_path / "outer"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-b", "4096", str(image)], check=True)  # the loop device's block size
    (outer / "inner").mkdir(parents=True)
    with loopdev.attached(image) as device:
        mounts.mount(device, outer / "inner", "ext4", mounts.SAFE)
    try:
        mounts.bind_onto_itself(outer)  # the disk is still mounted, but no path reaches it any more
        try:
            assert not mounts.is_mount_root(outer / "inner")
            assert f"this process' mount on {outer}/inner" in loopdev.holders(device)
        finally:
            mounts.unmount(outer)
    finally:
        mounts.unmount(outer / "inner")
