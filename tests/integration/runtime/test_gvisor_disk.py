"""Each sandbox's own disk: nothing it writes gives root on the host; bytes, inodes and logs are bounded.

Item 1 of issue 9: a sandbox planted a setuid-root program in /app that another
host user ran as root. Now the sandbox tree is 0700 and everything a sandbox
writes is on a nosuid,nodev mount; both are proven separately below. The
other tests push past the disk's bounds and count what a removed sandbox
leaves behind (nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from turbok.runtime import loopdev, mounts
from turbok.runtime.base import Phase, VolumeMount
from turbok.runtime.disk import MIN_INODES
from turbok.runtime.errors import SandboxStartFailed
from turbok.runtime.gvisor import RunscRuntime
from turbok.runtime.images import ImageStore
from turbok.runtime.layout import SandboxDir
from turbok.runtime.local import DISK_FAILED, release_root
from turbok.runtime.logs import LOG_MAX_BYTES, LOG_MAX_FILES

if TYPE_CHECKING:
    from .conftest import SpecFactory

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

MiB = 1 << 20
_NO_LOOP = loopdev.unavailable()
needs_loop = pytest.mark.skipif(_NO_LOOP is not None, reason=f"loop devices unavailable: {_NO_LOOP}")


def loops_under(root: Path) -> list[str]:
    """Loop devices bound to a file below ``root``."""
    found = []
    for dev in Path("/sys/block").glob("loop*"):
        backing = loopdev.backing_file(dev.name)
        if backing and backing.startswith(str(root) + "/"):
            found.append(dev.name)
    return found


@pytest.fixture(scope="module")
def open_root() -> Iterator[Path]:
    """A sandbox root whose parents every user may traverse (as ``/root/.turbok`` was, 0755)."""
    base = Path(tempfile.mkdtemp(prefix="turbok-disk-it-"))
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir(mode=0o755)
    yield home / "sandboxes"
    release_root(home / "sandboxes")
    shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rt(open_root: Path, images: ImageStore) -> AsyncIterator[RunscRuntime]:
    runtime = RunscRuntime(open_root, images)
    yield runtime
    await asyncio.gather(*(runtime.remove(i) for i in await runtime.list()), return_exceptions=True)


@pytest.fixture(scope="module")
def stranger() -> Iterator[pwd.struct_passwd]:
    """An unprivileged host user, made for this test and removed after it."""
    if shutil.which("useradd") is None or shutil.which("su") is None:
        pytest.skip("useradd and su are needed to act as another host user")
    name = f"tkh1{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def run_as(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run by a shell of ``user``, as in the issue (``su -s /bin/sh nobody -c ...``)."""
    return subprocess.run(["su", "-s", "/bin/sh", user.pw_name, "-c", shlex.join(argv)],
                          capture_output=True, text=True, timeout=30, check=False)


# The attack: a setuid-root shell in /app (and in the layer, and a volume). The hard-link dance
# leaves a name no gVisor gofer holds open for writing, so the host can execute it (no ETXTBSY).
PLANT = ("mkdir -p /data/x && for f in /app/t /usr/local/bin/t /data/x/t; do "
         "cp /bin/dash $f.w && chmod 4755 $f.w && ln $f.w $f && rm $f.w || exit 1; done")


async def test_a_planted_setuid_program_never_runs_as_root_on_the_host(
    rt: RunscRuntime, make_spec: SpecFactory, stranger: pwd.struct_passwd
) -> None:
    spec = make_spec("setuid", volumes=[VolumeMount("data", "/data")])
    await rt.start(spec)
    sdir = SandboxDir(rt.root, spec.id)
    r = await rt.exec(spec.id, ["sh", "-c", PLANT])
    assert r.exit_code == 0, r.stderr
    planted = [sdir.app / "t", sdir.upper / "usr/local/bin/t", sdir.rootfs / "usr/local/bin/t",
               sdir.volume("data") / "x" / "t"]
    for path in planted:  # the sandbox really made setuid-root files on the host
        st = path.stat()
        assert st.st_mode & stat.S_ISUID and st.st_uid == 0, path

    # 1. The tree is private: another user cannot even reach the files.
    for d in (rt.root, sdir.path):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for path in planted:
        done = run_as(stranger, str(path), "-p", "-c", "id")
        assert done.returncode != 0 and "euid=0" not in done.stdout, (path, done.stdout, done.stderr)
        assert "Permission denied" in done.stderr, done.stderr

    # 2. Even with the modes opened, every mount holding them is nosuid (and nodev).
    try:
        for d in (rt.root, sdir.path):
            os.chmod(d, 0o755)
        for path in planted:
            flags = os.statvfs(path).f_flag
            assert flags & os.ST_NOSUID and flags & os.ST_NODEV, path
            done = run_as(stranger, str(path), "-p", "-c", "id")
            assert done.returncode == 0, (path, done.stderr)
            assert f"uid={stranger.pw_uid}" in done.stdout and "euid=0" not in done.stdout, (path, done.stdout)
    finally:
        for d in (rt.root, sdir.path):
            os.chmod(d, 0o700)

    # A start tightens modes that someone opened again.
    os.chmod(sdir.path, 0o755)
    await rt.stop(spec.id)
    await rt.start(spec)
    assert stat.S_IMODE(sdir.path.stat().st_mode) == 0o700
    await rt.remove(spec.id)


def _legacy_tree(sdir: SandboxDir, big: int = 0) -> None:
    """A sandbox directory as versions before the disks left it: plain 0755 directories."""
    for d in ("upper/root", "upper/etc", "ovwork", "app/sub", "volumes/data", "rootfs", "run"):
        (sdir.path / d).mkdir(mode=0o755, parents=True, exist_ok=True)
    (sdir.path / "upper/etc/hostname").write_text("legacy\n")
    (sdir.path / "upper/root/state").write_text("kept from the old layout\n")
    os.mknod(sdir.path / "upper/etc/motd", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # overlay whiteout
    (sdir.path / "app/sub/file").write_text("app data\n")
    os.link(sdir.path / "app/sub/file", sdir.path / "app/hardlink")
    (sdir.path / "volumes/data/v").write_text("volume data\n")
    (sdir.path / "stdout.log").write_text("old output\n")
    if big:
        with open(sdir.path / "app/big", "wb") as f:
            f.write(os.urandom(big))
    for p in [sdir.path, *sdir.path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)


@needs_loop
async def test_an_old_tree_is_tightened_and_moved_onto_a_bounded_disk(rt: RunscRuntime,
                                                                      make_spec: SpecFactory) -> None:
    spec = make_spec("legacy", volumes=[VolumeMount("data", "/data")], ephemeral_storage_bytes=64 * MiB)
    sdir = SandboxDir(rt.root, spec.id)
    rt.root.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(rt.root, 0o755)
    rt._root_secured = False  # as a control plane that starts on a home an older version made
    _legacy_tree(sdir)

    await rt.start(spec)
    assert stat.S_IMODE(rt.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(sdir.path.stat().st_mode) == 0o700
    r = await rt.exec(spec.id, ["sh", "-c", "cat /root/state /app/sub/file /app/hardlink /data/v; hostname; "
                                            "ls /etc/motd 2>&1; stat -c %h /app/sub/file"])
    assert r.stdout.decode().splitlines() == [
        "kept from the old layout", "app data", "app data", "volume data", "legacy",
        "ls: /etc/motd: No such file or directory", "2"]
    assert sdir.disk_image.exists() and mounts.is_mount_root(sdir.disk)
    assert sdir.stdout_log.read_text().startswith("old output\n")
    left = sorted(p.name for p in sdir.path.iterdir())
    assert not {"upper", "ovwork", "app", "volumes", "stdout.log", "disk.plain", "disk.migrated"} & set(left), left
    await rt.remove(spec.id)


@needs_loop
async def test_an_old_tree_too_big_for_its_limit_keeps_working_unbounded(rt: RunscRuntime,
                                                                        make_spec: SpecFactory) -> None:
    spec = make_spec("legacy-big", ephemeral_storage_bytes=16 * MiB)
    sdir = SandboxDir(rt.root, spec.id)
    _legacy_tree(sdir, big=24 * MiB)
    state = await rt.start(spec)
    assert state.phase is Phase.RUNNING and "not bounded" in state.message
    assert not sdir.disk_image.exists()
    assert os.statvfs(sdir.app).f_flag & os.ST_NOSUID  # still a nosuid mount: bound onto itself
    r = await rt.exec(spec.id, ["sh", "-c", "cat /root/state; wc -c < /app/big"])
    assert r.stdout.decode().split("\n")[:2] == ["kept from the old layout", str(24 * MiB)]
    await rt.remove(spec.id)


@needs_loop
async def test_bytes_and_inodes_are_bounded_for_app_volumes_and_the_layer(rt: RunscRuntime,
                                                                         make_spec: SpecFactory) -> None:
    limit = 32 * MiB
    spec = make_spec("bounded", volumes=[VolumeMount("cache", "/cache")], ephemeral_storage_bytes=limit)
    await rt.start(spec)
    sdir = SandboxDir(rt.root, spec.id)
    host_free = shutil.disk_usage(rt.root).free
    fill = """
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
    for target in ("/app/big", "/cache/big", "/root/big"):
        r = await rt.exec(spec.id, ["python3", "-c", fill, target], timeout=60)
        code, written = r.stdout.decode().split()
        assert code in ("ENOSPC", "EDQUOT"), (target, r.stdout, r.stderr)
        assert 0.8 * limit < int(written) <= 1.1 * limit, (target, written)
        assert (await rt.exec(spec.id, ["rm", target])).exit_code == 0
    # The host gave no more than the limit, and got it back when the files went (discard).
    assert sdir.disk_image.stat().st_blocks * 512 < 1.2 * limit
    assert shutil.disk_usage(rt.root).free > host_free - 2 * limit

    many = """
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
    r = await rt.exec(spec.id, ["python3", "-c", many], timeout=60)
    code, made = r.stdout.decode().split()
    assert code == "ENOSPC" and int(made) <= MIN_INODES, r.stdout
    await rt.remove(spec.id)


async def test_a_log_flood_stays_near_the_cap_and_rotates(rt: RunscRuntime, make_spec: SpecFactory) -> None:
    spec = make_spec("flood")
    await rt.start(spec)
    sdir = SandboxDir(rt.root, spec.id)
    flood = 300 * MiB
    proc = await rt.spawn(spec.id, ["sh", "-c", f"head -c {flood} /dev/zero > /proc/1/fd/1; echo done"])
    biggest = 0
    t = time.monotonic()
    while proc.returncode is None and time.monotonic() - t < 120:
        with contextlib.suppress(FileNotFoundError):
            biggest = max(biggest, sdir.stdout_log.stat().st_size)
        await asyncio.sleep(0.01)
    assert await proc.wait() == 0
    await asyncio.sleep(0.2)  # the last rotation
    # Before: a 300 MB file on the host. Now each file stays near the cap (the live one passes it only
    # for as long as the rotation takes to notice), and only LOG_MAX_FILES of them are kept.
    assert biggest < 2 * LOG_MAX_BYTES, biggest
    sizes = {p.name: p.stat().st_size for p in sdir.logs.glob("stdout.log*")}
    assert set(sizes) == {"stdout.log", *(f"stdout.log.{i}" for i in range(1, LOG_MAX_FILES))}, sizes
    assert all(size <= LOG_MAX_BYTES for size in sizes.values()), sizes
    # Rotation moves bytes, it does not pile them up on the host: the disk holds about what is kept.
    assert sdir.disk_image.stat().st_blocks * 512 < (LOG_MAX_FILES + 2) * LOG_MAX_BYTES
    # The main process' descriptor still works after every rotation.
    r = await rt.exec(spec.id, ["sh", "-c", "echo still-logging > /proc/1/fd/1"])
    assert r.exit_code == 0
    await asyncio.sleep(0.05)
    assert sdir.stdout_log.read_bytes().endswith(b"still-logging\n")
    await rt.remove(spec.id)


@needs_loop
async def test_a_disk_that_failed_is_checked_and_the_sandbox_restarted(rt: RunscRuntime,
                                                                       make_spec: SpecFactory) -> None:
    spec = make_spec("diskerror", ephemeral_storage_bytes=64 * MiB)
    await rt.start(spec)
    sdir = SandboxDir(rt.root, spec.id)
    assert (await rt.exec(spec.id, ["sh", "-c", "echo before > /app/kept && sync"])).exit_code == 0
    os.sync()  # on its disk (what was not written back when the error comes is lost, as on any disk)
    # What ext4 does on a write error (the home's filesystem full under a sparse disk): an error,
    # after which the filesystem refuses every write.
    name = os.path.basename(os.readlink(f"/sys/dev/block/{os.major(sdir.disk.stat().st_dev)}:"
                                        f"{os.minor(sdir.disk.stat().st_dev)}"))
    Path(f"/sys/fs/ext4/{name}/trigger_fs_error").write_text("1")
    r = await rt.exec(spec.id, ["sh", "-c", "echo after > /app/new"])
    assert r.exit_code != 0 and b"Read-only" in r.stderr
    state = await rt.state(spec.id)
    assert (state.phase, state.reason, state.degraded) == (Phase.RUNNING, DISK_FAILED, True)

    state = await rt.start(spec)  # what the Sandbox controller does with a degraded sandbox
    assert state.phase is Phase.RUNNING and not state.degraded
    r = await rt.exec(spec.id, ["sh", "-c", "cat /app/kept && echo after > /app/new && cat /app/new"])
    assert r.stdout == b"before\nafter\n", r.stderr
    await rt.remove(spec.id)


@needs_loop
async def test_stop_hibernate_and_remove_keep_or_free_everything(rt: RunscRuntime, make_spec: SpecFactory) -> None:
    for id in await rt.list():  # what an earlier test left
        await rt.remove(id)
    specs = [make_spec(f"count-{i}", volumes=[VolumeMount("v", "/v")]) for i in range(3)]
    for s in specs:
        await rt.start(s)
        await rt.exec(s.id, ["sh", "-c", "echo app > /app/a; echo vol > /v/b; echo layer > /root/c"])
    assert len(loops_under(rt.root)) == 3
    await rt.stop(specs[0].id)
    await rt.hibernate(specs[1].id)
    # Stopped and hibernated sandboxes hold no mount and no loop device; their disk stays.
    assert len(loops_under(rt.root)) == 1
    for s in specs[:2]:
        assert not mounts.is_mount_root(SandboxDir(rt.root, s.id).disk)
        assert SandboxDir(rt.root, s.id).disk_image.exists()
        await rt.start(s)
        r = await rt.exec(s.id, ["cat", "/app/a", "/v/b", "/root/c"])
        assert r.stdout == b"app\nvol\nlayer\n"
    for s in specs:
        await rt.remove(s.id)
    assert loops_under(rt.root) == []
    assert mounts.mounts_below(rt.root) == []
    assert [p.name for p in rt.root.iterdir() if not p.name.startswith(".")] == []
    assert not mounts.is_mount_root(rt.root)  # the root's nosuid bind goes with the last sandbox


async def test_without_loop_devices_the_disk_is_unbounded_says_so_and_stays_nosuid(
    tmp_path: Path, images: ImageStore, make_spec: SpecFactory
) -> None:
    root = tmp_path / "sandboxes"
    plain = RunscRuntime(root, images, bounded_disks=False)
    spec = make_spec("unbounded", ephemeral_storage_bytes=16 * MiB)
    try:
        state = await plain.start(spec)
        assert state.phase is Phase.RUNNING and "disk not bounded" in state.message
        sdir = SandboxDir(root, spec.id)
        assert not sdir.disk_image.exists()
        flags = os.statvfs(sdir.app).f_flag
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV
        r = await plain.exec(spec.id, ["sh", "-c", "head -c 20000000 /dev/zero > /app/f && wc -c < /app/f"])
        assert r.stdout.strip() == b"20000000"  # past the limit: nothing enforces it here
    finally:
        await plain.remove(spec.id)
        release_root(root)
    assert mounts.mounts_below(root) == []


@needs_loop
async def test_a_start_on_a_full_home_fails_clearly_leaves_nothing_mounted_and_works_once_freed(
    tmp_path: Path, images: ImageStore, make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(home)], check=True)
    monkeypatch.setattr("turbok.runtime.local.HOME_RESERVE_BYTES", 0)  # reach the real ENOSPC
    runtime = RunscRuntime(home / "sandboxes", images)
    spec = make_spec("full-home", ephemeral_storage_bytes=32 * MiB)
    try:
        with open(home / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * MiB)
                f.flush()
        with pytest.raises(SandboxStartFailed, match="no space left for sandboxes") as info:
            await runtime.start(spec)
        assert "starts once space is freed" in str(info.value)
        assert mounts.mounts_below(runtime.root) == [] and loops_under(runtime.root) == []
        (home / "filler").unlink()
        assert (await runtime.start(spec)).phase is Phase.RUNNING
        assert (await runtime.exec(spec.id, ["sh", "-c", "echo ok > /app/ok && cat /app/ok"])).stdout == b"ok\n"
    finally:
        await runtime.remove(spec.id)
        subprocess.run(["umount", "-l", str(home)], check=False)
