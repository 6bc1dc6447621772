"""Path confinement against hostile symlinks, on a real directory (no HTTP)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from turbok.sandboxd.confine import WorkDir, split_path
from turbok.sandboxd.errors import AccessDenied, BadRequest, Conflict, NotFound


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    (work / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"host secret, 30 bytes long...\n")
    (work / "sub" / "f.txt").write_bytes(b"inside\n")
    os.symlink(outside, work / "abs_dir")  # absolute, to a directory outside
    os.symlink(outside / "secret.txt", work / "abs_file")  # absolute, to a file outside
    os.symlink("../outside", work / "rel_dir")  # relative, climbing out
    os.symlink("../../outside/secret.txt", work / "sub" / "rel_file")
    os.symlink("sub/f.txt", work / "ok_link")  # stays inside: fine
    os.symlink("loop_b", work / "loop_a")
    os.symlink("loop_a", work / "loop_b")
    os.symlink("/proc/self/root/etc/passwd", work / "magic")
    os.mkfifo(work / "fifo")
    return work, outside


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("", ()),
        (".", ()),
        ("/app", ()),
        ("/app/", ()),
        ("a/b.txt", ("a", "b.txt")),
        ("./a//b/./c", ("a", "b", "c")),
        ("/app/a/b", ("a", "b")),
        ("//app//a", ("a",)),
        ("...", ("...",)),
        ("a..b", ("a..b",)),
    ],
)
def test_split_path_accepts(raw: str, parts: tuple[str, ...]) -> None:
    assert split_path(raw) == parts


@pytest.mark.parametrize(
    "raw", ["..", "../x", "a/../../x", "a/..", "/app/../etc", "/etc/passwd", "/", "/application/x"]
)
def test_split_path_refuses_escapes(raw: str) -> None:
    with pytest.raises(AccessDenied, match="^Access denied"):
        split_path(raw)


def test_split_path_refuses_nul_and_endless_paths() -> None:
    with pytest.raises(BadRequest, match="NUL"):
        split_path("a\0/../../etc/passwd")
    with pytest.raises(BadRequest, match="longer than"):
        split_path("a/" * 3000)


@pytest.mark.parametrize(
    "name", ["abs_dir/secret.txt", "abs_file", "rel_dir/secret.txt", "sub/rel_file", "magic"]
)
def test_reads_through_escaping_links_are_denied(layout: tuple[Path, Path], name: str) -> None:
    work, _ = layout
    with WorkDir(work) as wd:
        with pytest.raises(AccessDenied):
            wd.open_file(split_path(name))
        with pytest.raises(AccessDenied):
            wd.exists(split_path(name))


def test_listing_through_a_link_to_outside_is_denied(layout: tuple[Path, Path]) -> None:
    work, _ = layout
    with WorkDir(work) as wd, pytest.raises(AccessDenied):
        wd.list(split_path("abs_dir"))


def test_inside_link_works_and_loops_are_missing(layout: tuple[Path, Path]) -> None:
    work, _ = layout
    with WorkDir(work) as wd:
        fd, size = wd.open_file(split_path("ok_link"))
        assert os.read(fd, 100) == b"inside\n" and size == 7
        os.close(fd)
        with pytest.raises(NotFound, match="symbolic links"):
            wd.open_file(split_path("loop_a"))
        assert wd.exists(split_path("loop_a")) is False
        assert wd.exists(split_path("nope")) is False
        assert wd.exists(()) is True


def test_fifo_is_refused_without_blocking(layout: tuple[Path, Path]) -> None:
    work, _ = layout
    result: list[BaseException] = []

    def attempt() -> None:
        with WorkDir(work) as wd:
            try:
                wd.open_file(split_path("fifo"))
            except NotFound as e:
                result.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "opening a FIFO planted in the work directory blocked"
    assert result and "not a regular file" in str(result[0])


def test_directories_are_not_files(layout: tuple[Path, Path]) -> None:
    work, _ = layout
    with WorkDir(work) as wd, pytest.raises(NotFound, match="is a directory"):
        wd.open_file(split_path("sub"))


def test_list_never_describes_targets_outside(layout: tuple[Path, Path]) -> None:
    work, _ = layout
    with WorkDir(work) as wd:
        entries = {e.name: e for e in wd.list(())}
    assert set(entries) == {
        "sub",
        "abs_dir",
        "abs_file",
        "rel_dir",
        "ok_link",
        "loop_a",
        "loop_b",
        "magic",
        "fifo",
    }
    assert entries["sub"].type == "directory"
    assert (entries["ok_link"].type, entries["ok_link"].size) == ("file", 7)  # an inside target is described
    for name in ("abs_dir", "abs_file", "rel_dir", "loop_a", "magic"):
        # the secret is 30 bytes and outside is a directory: neither may show through
        assert (entries[name].type, entries[name].size) == ("file", 0), name


def _write(wd: WorkDir, path: str, data: bytes) -> None:
    parts = split_path(path)
    parent = wd.ensure_parent(parts)
    try:
        fd, temp = wd.create_temp(parent)
        os.write(fd, data)
        os.close(fd)
        wd.commit(parent, temp, parts)
    finally:
        os.close(parent)


def test_writes_through_escaping_links_change_nothing(layout: tuple[Path, Path], tree: Any) -> None:
    work, outside = layout
    before = tree(outside)
    with WorkDir(work) as wd:
        for path in ("abs_dir/new.txt", "rel_dir/deep/new.txt", "abs_dir/secret.txt"):
            with pytest.raises(AccessDenied):
                _write(wd, path, b"pwned")
    assert tree(outside) == before


def test_writing_over_a_link_replaces_the_link_not_its_target(layout: tuple[Path, Path]) -> None:
    work, outside = layout
    with WorkDir(work) as wd:
        _write(wd, "abs_file", b"mine")
    assert (outside / "secret.txt").read_bytes() == b"host secret, 30 bytes long...\n"
    assert not (work / "abs_file").is_symlink() and (work / "abs_file").read_bytes() == b"mine"


def test_write_creates_directories_and_leaves_no_temp(layout: tuple[Path, Path]) -> None:
    work, _ = layout
    with WorkDir(work) as wd:
        _write(wd, "a/b/c.txt", b"1")
        _write(wd, "a/b/c.txt", b"2")
    assert (work / "a" / "b" / "c.txt").read_bytes() == b"2"
    assert [p.name for p in (work / "a" / "b").iterdir()] == ["c.txt"]


def test_write_over_a_directory_or_under_a_file_conflicts(layout: tuple[Path, Path]) -> None:
    work, _ = layout
    with WorkDir(work) as wd:
        with pytest.raises(Conflict):
            _write(wd, "sub", b"x")
        with pytest.raises(Conflict):
            _write(wd, "sub/f.txt/g", b"x")
    assert (work / "sub" / "f.txt").read_bytes() == b"inside\n"
    assert sorted(p.name for p in (work / "sub").iterdir()) == ["f.txt", "rel_file"]


def test_missing_workdir_is_not_ready(tmp_path: Path) -> None:
    from turbok.sandboxd.errors import SandboxNotReady

    with pytest.raises(SandboxNotReady), WorkDir(tmp_path / "gone"):
        pass
