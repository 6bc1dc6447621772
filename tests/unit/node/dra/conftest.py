"""DRA on a node with a fake pod runtime: short socket directories (a Unix socket path has 108 bytes)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from turbok.node.dra.setup import DraSettings


@pytest.fixture
def sockets() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dra", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def dra_settings(sockets: Path, *, gpus: int = 2) -> DraSettings:
    return DraSettings(registry_dir=sockets / "reg", plugin_dir=sockets / "plugins", cdi_dir=sockets / "cdi",
                       cdi_dirs=(), simulated_gpus=gpus, nvidia=False, poll_seconds=0.05)
