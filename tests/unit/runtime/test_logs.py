"""Log rotation: capped files, a bounded number of them, and a writer that carries on (no services)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from turbok.runtime.logs import LogRotator, rotate


def test_rotate_keeps_the_newest_bytes_and_a_bounded_number_of_files(tmp_path: Path) -> None:
    log = tmp_path / "stdout.log"
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # as the detached sandbox holds it
    try:
        for round_ in range(6):
            os.write(writer, bytes([65 + round_]) * 3000)
            assert rotate(log, max_bytes=1000, max_files=3)
        os.write(writer, b"after")
    finally:
        os.close(writer)
    assert log.read_bytes() == b"after"  # the writer's descriptor appends at the new end
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["stdout.log", "stdout.log.1", "stdout.log.2"]
    assert (tmp_path / "stdout.log.1").read_bytes() == b"F" * 1000  # the newest 1000 bytes of the last round
    assert (tmp_path / "stdout.log.2").read_bytes() == b"E" * 1000
    assert not rotate(log, max_bytes=1000, max_files=3)  # under the cap: left alone
    assert not rotate(tmp_path / "gone.log")


def test_the_rotator_rotates_a_file_as_it_grows(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.touch()
    rotator = LogRotator(max_bytes=64 * 1024, max_files=2)
    rotator.watch(log)
    biggest = 0
    with open(log, "ab", buffering=0) as f:
        for _ in range(200):
            f.write(b"x" * 8192)
            biggest = max(biggest, log.stat().st_size)
            time.sleep(0.001)
    deadline = time.monotonic() + 5
    while log.stat().st_size > 64 * 1024 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rotator.rotations > 0
    assert log.stat().st_size <= 64 * 1024 and (tmp_path / "stderr.log.1").stat().st_size <= 64 * 1024
    assert biggest < 1_600_000  # 1.6 MB written: rotated along the way, not only at the end
