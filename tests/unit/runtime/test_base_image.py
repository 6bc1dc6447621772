"""Building the base image: what it refuses, and what it makes of a root filesystem (no mirror)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from turbok.runtime import base_image
from turbok.runtime.base_image import _neutralize, base_image_info, build_base_image
from turbok.runtime.errors import ImageBuildFailed
from turbok.runtime.images import ImageStore


def test_missing_mmdebstrap_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_image.shutil, "which", lambda name: None)
    with pytest.raises(ImageBuildFailed, match="apt-get install -y mmdebstrap"):
        build_base_image(ImageStore(tmp_path))


def test_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "mmdebstrap"
    tool.write_text("#!/bin/sh\necho 'E: cannot reach the mirror'\nexit 3\n")
    tool.chmod(0o755)
    monkeypatch.setattr(base_image.shutil, "which", lambda name: str(tool))
    store = ImageStore(tmp_path / "images")
    lines: list[str] = []
    with pytest.raises(ImageBuildFailed, match="exit code 3.*cannot reach the mirror"):
        build_base_image(store, on_line=lines.append)
    assert lines == ["E: cannot reach the mirror"]
    assert list((tmp_path / "images").iterdir()) == []
    assert base_image_info(store) is None


def test_fake_build_is_neutralized_and_installed_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for mmdebstrap that lays out a tiny root filesystem with the host's leftovers.
    tool = tmp_path / "mmdebstrap"
    tool.write_text(
        "#!/bin/sh\nfor a; do t=$a; done\n"
        "mkdir -p $t/usr/bin $t/etc && ln -s usr/bin $t/bin && touch $t/usr/bin/python3 $t/usr/bin/busybox\n"
        "echo myhost > $t/etc/hostname; echo 'nameserver 10.1.1.1' > $t/etc/resolv.conf\n"
        "echo 'I: success'\n"
    )
    tool.chmod(0o755)
    monkeypatch.setattr(base_image.shutil, "which", lambda name: str(tool))
    store = ImageStore(tmp_path / "images")
    rootfs = build_base_image(store)
    assert rootfs == tmp_path / "images" / "python-runtime-sandbox" / "rootfs"
    assert (rootfs / "etc" / "hostname").read_text() == "sandbox\n"
    assert "nameserver" not in (rootfs / "etc" / "resolv.conf").read_text()
    assert (rootfs / "app").is_dir()
    assert (rootfs / "usr" / "local" / "bin" / "ls").readlink() == Path("/bin/busybox")
    info = base_image_info(store)
    assert info is not None and info["packages"] == ["python3", "procps", "busybox"]
    assert json.loads((rootfs.parent / "image.json").read_text())["name"] == "python-runtime-sandbox"
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["python-runtime-sandbox"]
    # Built: a second call does nothing, --force rebuilds in place.
    (rootfs / "marker").touch()
    build_base_image(store)
    assert (rootfs / "marker").exists()
    build_base_image(store, force=True)
    assert not (rootfs / "marker").exists()


def test_neutralize_replaces_symlinked_host_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").symlink_to("/etc/resolv.conf")  # would follow to the host's
    _neutralize(tmp_path)
    assert not (tmp_path / "etc" / "resolv.conf").is_symlink()
    assert Path("/etc/resolv.conf").exists()  # the host's file untouched
