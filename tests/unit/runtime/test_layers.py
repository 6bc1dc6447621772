"""Unpacking hostile and ordinary layer tarballs (turbok.runtime.layers): nothing escapes the layer."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from tests import oci_registry as R
from turbok.runtime.errors import UnsafeLayer
from turbok.runtime.layers import OPAQUE_XATTR, read_in_root, unpack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers needs root (owners, whiteout devices)")


def run(tmp_path: Path, entries: list[R.Entry]) -> Path:
    dest = tmp_path / "layer"
    dest.mkdir()
    unpack(io.BytesIO(R.layer_tar(entries)), dest)
    return dest


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the layer that no entry may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_text("untouched")
    return path


def assert_untouched(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "untouched"


@pytest.mark.parametrize("name", ["../outside/victim", "a/../../outside/victim", "./../x"])
def test_dotdot_refuses_the_layer(tmp_path: Path, outside: Path, name: str) -> None:
    with pytest.raises(UnsafeLayer, match=r"climbs out of the layer"):
        run(tmp_path, [R.f(name, "evil")])
    assert_untouched(outside)


def test_absolute_names_stay_inside(tmp_path: Path, outside: Path) -> None:
    dest = run(tmp_path, [R.f(f"{outside}/victim", "evil")])
    assert (dest / str(outside).lstrip("/") / "victim").read_text() == "evil"
    assert_untouched(outside)


@pytest.mark.parametrize("target", ["/", "../outside", "/tmp"])
def test_writing_through_a_symlink_is_refused(tmp_path: Path, outside: Path, target: str) -> None:
    t = str(outside) if target == "/" else target
    with pytest.raises(UnsafeLayer, match="goes through a symlink"):
        run(tmp_path, [R.sym("esc", t), R.f("esc/victim", "evil")])
    assert_untouched(outside)


def test_a_symlink_replacing_a_directory_is_never_followed(tmp_path: Path, outside: Path) -> None:
    with pytest.raises(UnsafeLayer):
        run(tmp_path, [R.d("etc"), R.sym("etc", str(outside)), R.f("etc/victim", "evil")])
    assert_untouched(outside)


def test_hard_links_must_stay_in_the_layer(tmp_path: Path, outside: Path) -> None:
    with pytest.raises(UnsafeLayer, match="not in this layer"):
        run(tmp_path, [R.Entry("x", "link", target=f"{outside}/victim".lstrip("/"))])
    with pytest.raises(UnsafeLayer, match="climbs out"):
        (tmp_path / "layer").rmdir()
        run(tmp_path, [R.Entry("x", "link", target="../outside/victim")])
    (tmp_path / "layer").rmdir()
    with pytest.raises(UnsafeLayer):
        run(tmp_path, [R.sym("s", str(outside)), R.Entry("x", "link", target="s/victim")])
    assert_untouched(outside)


def test_devices_are_skipped_fifos_kept_suid_and_owner_kept(tmp_path: Path) -> None:
    dest = tmp_path / "layer"
    dest.mkdir()
    stats = unpack(io.BytesIO(R.layer_tar([
        R.Entry("dev/sda", raw=b"4"), R.Entry("dev/null", raw=b"3"), R.Entry("pipe", raw=b"6", mode=0o600),
        R.f("bin/su", "x", mode=0o4755, uid=0, gid=0), R.f("home/u/f", "y", mode=0o640, uid=1000, gid=1000),
    ])), dest)
    assert not (dest / "dev/sda").exists() and not (dest / "dev/null").exists()
    assert len(stats.skipped) == 2 and "block device" in " ".join(stats.skipped)
    assert stat.S_ISFIFO(os.lstat(dest / "pipe").st_mode)
    assert stat.S_IMODE(os.stat(dest / "bin/su").st_mode) == 0o4755
    st = os.stat(dest / "home/u/f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o640)
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o755  # the image's "/" is not the store's 0700


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    dest = run(tmp_path, [R.whiteout("etc/gone"), R.opaque("var/lib"), R.f("var/lib/new", "n"),
                          R.whiteout("dir"), R.d("dir"), R.f(".wh..wh.plnk/1", "aufs")])
    st = os.lstat(dest / "etc/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(dest / "var/lib", OPAQUE_XATTR) == b"y"
    assert os.getxattr(dest / "dir", OPAQUE_XATTR) == b"y"  # a directory replacing a whiteout hides what was below
    assert not (dest / ".wh..wh.plnk").exists() or not os.listdir(dest / ".wh..wh.plnk")


def test_trusted_xattrs_in_a_layer_are_dropped(tmp_path: Path) -> None:
    raw = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.note": "kept"}
        tar.addfile(info)
    dest = tmp_path / "layer"
    dest.mkdir()
    unpack(io.BytesIO(raw.getvalue()), dest)
    assert OPAQUE_XATTR not in os.listxattr(dest / "d")
    assert os.getxattr(dest / "d", "user.note") == b"kept"


def test_read_in_root_resolves_symlinks_inside_the_root(tmp_path: Path, outside: Path) -> None:
    root = run(tmp_path, [R.d("etc"), R.sym("etc/passwd", f"{outside}/victim"), R.f(f"{outside}/victim".lstrip("/"),
                                                                                    "inside")])
    assert read_in_root(root, "/etc/passwd") == b"inside"
    assert read_in_root(root, "/../../../etc/hostname") is None or b"untouched" not in (
        read_in_root(root, "/../../../etc/hostname") or b"")
