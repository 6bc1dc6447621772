"""The home is private to its owner: 0700, its known files 0600, also for homes made by older versions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from turbok.home import PRIVATE_FILES, Home


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_home_is_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        home = Home(tmp_path / "a" / "home").ensure()
    finally:
        os.umask(old)
    assert _mode(home.root) == 0o700


def test_an_old_world_readable_home_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "home"
    (root / "pki").mkdir(parents=True)
    root.chmod(0o755)
    (root / "pki").chmod(0o755)
    for name in PRIVATE_FILES:
        (root / name).write_text("x")
        (root / name).chmod(0o644)
    (root / "unrelated.txt").write_text("mine")
    (root / "unrelated.txt").chmod(0o644)
    Home(root).ensure()
    assert _mode(root) == 0o700 and _mode(root / "pki") == 0o700
    assert {name: _mode(root / name) for name in PRIVATE_FILES} == dict.fromkeys(PRIVATE_FILES, 0o600)
    assert _mode(root / "unrelated.txt") == 0o644, "only files turbok knows are touched"


def test_create_private_makes_an_empty_0600_file_once(tmp_path: Path) -> None:
    home = Home(tmp_path).ensure()
    home.create_private(home.store)
    assert _mode(home.store) == 0o600 and home.store.read_bytes() == b""
    home.store.write_bytes(b"kept")
    home.create_private(home.store)
    assert home.store.read_bytes() == b"kept"
