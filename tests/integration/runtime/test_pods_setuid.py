"""A setuid-root program planted by a pod never runs as root on the host: the pod tree is private (0700), and
every mount holding what a pod wrote (its disk, the container's root filesystem) is nosuid and nodev. Real runsc;
acts as a host user made for the test."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from turbok.runtime import loopdev
from turbok.runtime.cri import ContainerConfig, Mount, VolumeConfig
from turbok.runtime.images import ImageStore
from turbok.runtime.podlayout import PodDir
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import GvisorPodRuntime

from .podcheck import IMAGE, pod_config, settled_leftovers

_NO_LOOP = loopdev.unavailable()
pytestmark = [pytest.mark.integration, pytest.mark.asyncio,
              pytest.mark.skipif(_NO_LOOP is not None, reason=f"loop devices unavailable: {_NO_LOOP}")]

# A setuid-root shell in /app, in the layer and in a volume. The hard-link dance leaves a name Debian's runsc's
# gofer holds open for writing no more, so the host can execute it (no ETXTBSY).
PLANT = ("mkdir -p /data/x && for f in /app/t /usr/local/bin/t /data/x/t; do "
         "cp /bin/dash $f.w && chmod 4755 $f.w && ln $f.w $f && rm $f.w || exit 1; done")


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A pod root whose parents every user may traverse (as ``/root/.turbok`` was, 0755)."""
    base = Path(tempfile.mkdtemp(prefix="turbok-setuid-it-"))
    os.chmod(base, 0o755)
    (base / "home").mkdir(mode=0o755)
    yield base / "home" / "pods"
    release_root(base / "home" / "pods")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
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
    return subprocess.run(["su", "-s", "/bin/sh", user.pw_name, "-c", shlex.join(argv)],
                          capture_output=True, text=True, timeout=30, check=False)


async def test_a_planted_setuid_program_never_runs_as_root_on_the_host(
        open_root: Path, images: ImageStore, stranger: pwd.struct_passwd) -> None:
    rt = GvisorPodRuntime(open_root, images)
    cfg = pod_config("setuid", single_container=True, volumes=[VolumeConfig("data", "emptyDir")])
    try:
        await rt.run_pod_sandbox(cfg)
        await rt.start_container(cfg.id, ContainerConfig("main", IMAGE, mounts=[Mount("data", "/data")]))
        s = await rt.exec(cfg.id, "main", ["sh", "-c", PLANT])
        err = await s.process.stderr.read()
        assert await s.process.wait() == 0, err
        # Stopped, so that no process of the sandbox holds a planted file open for writing (the current runsc
        # keeps a file it wrote open: the host's exec would fail with ETXTBSY, hiding what is tested); the
        # disk and the container's overlay stay mounted as they were.
        await rt.stop_container(cfg.id, "main", 0)
        pdir = PodDir(rt.root, cfg.id)
        cdir = pdir.container("main")
        workdir = rt.workdir(cfg.id, "main")
        assert workdir is not None
        planted = [workdir / "t", cdir.upper / "usr/local/bin/t", cdir.rootfs / "usr/local/bin/t",
                   pdir.volume("data") / "x" / "t"]
        for path in planted:  # the pod really made setuid-root files on the host
            st = path.stat()
            assert st.st_mode & stat.S_ISUID and st.st_uid == 0, path

        # 1. The tree is private: another user cannot even reach the files.
        for d in (rt.root, pdir.path):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        for path in planted:
            done = run_as(stranger, str(path), "-p", "-c", "id")
            assert done.returncode != 0 and "euid=0" not in done.stdout, (path, done.stdout, done.stderr)
            assert "Permission denied" in done.stderr, done.stderr

        # 2. Even with the modes opened, every mount holding them is nosuid (and nodev).
        opened = (rt.root, pdir.path, pdir.containers, cdir.path)
        modes = {d: stat.S_IMODE(d.stat().st_mode) for d in opened}
        try:
            for d in opened:
                os.chmod(d, 0o755)
            for path in planted:
                flags = os.statvfs(path).f_flag
                assert flags & os.ST_NOSUID and flags & os.ST_NODEV, path
                done = run_as(stranger, str(path), "-p", "-c", "id")
                assert done.returncode == 0, (path, done.stderr)
                assert f"uid={stranger.pw_uid}" in done.stdout and "euid=0" not in done.stdout, (path, done.stdout)
        finally:
            for d, mode in modes.items():
                os.chmod(d, mode)

        # A start tightens modes that someone opened again.
        os.chmod(pdir.path, 0o755)
        await rt.stop_pod_sandbox(cfg.id)
        await rt.run_pod_sandbox(cfg)
        assert stat.S_IMODE(pdir.path.stat().st_mode) == 0o700
    finally:
        await rt.remove_pod_sandbox(cfg.id)
    assert await settled_leftovers(rt, [cfg.id]) == {}
