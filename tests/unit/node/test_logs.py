"""CRI log files read as the kubelet reads them: prefixes, partial lines, timestamps, since, tail, limits, follow."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from turbok.node import logs
from turbok.node.logs import LogConverter, format_timestamp, parse_timestamp, read_log, tail_offset

T0 = 1_714_564_800_000_000_000  # 2024-05-01T12:00:00Z in nanoseconds


def cri(ns: int, stream: str, tag: str, text: bytes) -> bytes:
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = format_timestamp(seconds * 1_000_000_000)[:-1] + f".{fraction:09d}Z".encode()
    return stamp + f" {stream} {tag} ".encode() + text + b"\n"


async def read_all(path: Path, **kw: object) -> bytes:
    return b"".join([chunk async for chunk in read_log(path, **kw)])  # type: ignore[arg-type]


def test_timestamps_parse_and_format_as_rfc3339nano() -> None:
    assert parse_timestamp(b"2024-05-01T12:00:00Z") == T0
    assert parse_timestamp(b"2024-05-01T12:00:00.5Z") == T0 + 500_000_000
    assert parse_timestamp(b"2024-05-01T14:00:00.000000001+02:00") == T0 + 1
    assert format_timestamp(T0 + 120_000_000) == b"2024-05-01T12:00:00.12Z"  # Go trims trailing zeros
    assert format_timestamp(T0) == b"2024-05-01T12:00:00Z"
    with pytest.raises(ValueError):
        parse_timestamp(b"yesterday")


async def test_prefixes_go_and_partial_lines_join(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(cri(T0, "stdout", "F", b"whole line") + cri(T0 + 1, "stderr", "P", b"a long ")
                     + cri(T0 + 2, "stderr", "P", b"line in ") + cri(T0 + 3, "stderr", "F", b"three parts")
                     + cri(T0 + 4, "stdout", "F", b"") + cri(T0 + 5, "stdout", "F", b"  spaces  kept\r"))
    assert await read_all(path) == b"whole line\na long line in three parts\n\n  spaces  kept\r\n"
    # With timestamps: one per line as the container wrote it, not one per partial record.
    assert (await read_all(path, timestamps=True)).split(b"\n") == [
        b"2024-05-01T12:00:00Z whole line",
        b"2024-05-01T12:00:00.000000001Z a long line in three parts",
        b"2024-05-01T12:00:00.000000004Z ",
        b"2024-05-01T12:00:00.000000005Z   spaces  kept\r", b""]


async def test_malformed_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(cri(T0, "stdout", "F", b"good") + b"garbage without a prefix\n"
                     + b"2024-05-01T12:00:00Z stdnope F bad stream\n" + b"not-a-time stdout F bad time\n"
                     + cri(T0 + 1, "stdout", "F", b"also good"))
    assert await read_all(path) == b"good\nalso good\n"
    assert await read_all(path, timestamps=True) == (b"2024-05-01T12:00:00Z good\n"
                                                     b"2024-05-01T12:00:00.000000001Z also good\n")


def test_the_fast_path_and_the_careful_path_agree() -> None:
    rng = random.Random(10)
    for _ in range(200):
        lines, ns = [], T0
        for _ in range(rng.randint(1, 30)):
            ns += rng.randint(0, 3 * 10**9)
            tag = rng.choice(["F", "F", "F", "P", "F:x"])
            lines.append(cri(ns, rng.choice(["stdout", "stderr"]), tag, bytes(rng.choices(b"ab c\t", k=rng.randint(0, 9)))))
        text = b"".join(lines)
        for timestamps in (False, True):
            fast, slow = LogConverter(timestamps=timestamps), LogConverter(timestamps=timestamps)
            assert fast.convert(text) == slow._slow(text)


async def test_since_and_limit_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(b"".join(cri(T0 + i * 10**9, "stdout", "F", f"line {i}".encode()) for i in range(10)))
    assert await read_all(path, since=(T0 + 7 * 10**9) / 1e9) == b"line 7\nline 8\nline 9\n"
    assert await read_all(path, limit_bytes=9) == b"line 0\nli"
    assert await read_all(path, tail_lines=2) == b"line 8\nline 9\n"
    assert await read_all(path, tail_lines=0) == b""
    assert await read_all(path, tail_lines=100) == (await read_all(path))
    assert await read_all(path, tail_lines=3, since=(T0 + 8 * 10**9) / 1e9) == b"line 8\nline 9\n"


def test_tail_counts_lines_of_the_file_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    lines = [f"{i:07d}".encode() * 2000 + b"\n" for i in range(40)]  # 14 KB each: many 64 KiB blocks
    path.write_bytes(b"".join(lines))
    fd = os.open(path, os.O_RDONLY)
    try:
        for n in (0, 1, 5, 39, 40, 41):
            assert tail_offset(fd, n) == sum(len(x) for x in lines[:max(0, 40 - n)])
    finally:
        os.close(fd)


async def test_follow_sees_new_lines_and_ends_when_the_container_stops(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "RUNNING_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(logs, "ENDING_GRACE_SECONDS", 0.05)
    path = tmp_path / "0.log"
    path.write_bytes(cri(T0, "stdout", "F", b"before"))
    running = True

    async def is_running() -> bool:
        return running

    got: list[bytes] = []

    async def follow() -> None:
        async for chunk in read_log(path, follow=True, running=is_running):
            got.append(chunk)

    task = asyncio.ensure_future(follow())
    await asyncio.sleep(0.1)
    with open(path, "ab") as f:
        f.write(cri(T0 + 1, "stdout", "P", b"half "))
        f.flush()
        await asyncio.sleep(0.1)
        f.write(cri(T0 + 2, "stdout", "F", b"done"))
        f.write(cri(T0 + 3, "stderr", "F", b"una")[:-5])  # a line still being written
    await asyncio.sleep(0.2)
    assert not task.done()
    with open(path, "ab") as f:
        f.write(cri(T0 + 3, "stderr", "F", b"una")[-5:])
    running = False
    await asyncio.wait_for(task, 3)
    assert b"".join(got) == b"before\nhalf done\nuna\n"


async def test_follow_survives_both_kinds_of_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "RUNNING_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(logs, "ENDING_GRACE_SECONDS", 0.1)
    path = tmp_path / "0.log"
    path.write_bytes(cri(T0, "stdout", "F", b"one"))
    running = True

    async def is_running() -> bool:
        return running

    chunks: list[bytes] = []

    async def follow() -> None:
        async for chunk in read_log(path, follow=True, running=is_running):
            chunks.append(chunk)

    task = asyncio.ensure_future(follow())
    await asyncio.sleep(0.15)
    # Renamed away and replaced (the runtime's CRI writer): the rest of the old file, then the new one.
    with open(path, "ab") as f:
        f.write(cri(T0 + 1, "stdout", "F", b"two"))
    os.replace(path, path.with_name("0.log.1"))
    path.write_bytes(cri(T0 + 2, "stdout", "F", b"three"))
    await asyncio.sleep(0.3)
    # Copied and truncated in place (copytruncate): what came after our last read is found in the copy.
    with open(path, "ab") as f:
        f.write(cri(T0 + 3, "stdout", "F", b"four"))
    copy = path.read_bytes()
    path.with_name("0.log.1").write_bytes(copy)
    with open(path, "r+b") as g:
        g.truncate(0)
    with open(path, "ab") as f:
        f.write(cri(T0 + 4, "stdout", "F", b"five"))
    await asyncio.sleep(0.3)
    running = False
    await asyncio.wait_for(task, 3)
    assert b"".join(chunks) == b"one\ntwo\nthree\nfour\nfive\n"


async def test_a_quiet_follow_says_so_now_and_then(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "HEARTBEAT_SECONDS", 0.05)
    path = tmp_path / "0.log"
    path.write_bytes(b"")

    async def is_running() -> bool:
        return True

    iterator = read_log(path, follow=True, running=is_running)
    assert await asyncio.wait_for(iterator.__anext__(), 2) == b""  # the server uses it to check its client
    await iterator.aclose()
