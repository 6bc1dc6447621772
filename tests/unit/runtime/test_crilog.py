"""CRI logs: the line format kubelet readers parse, partial lines, rotation, and the raw-file feed."""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from turbok.runtime import crilog
from turbok.runtime.crilog import MAX_LINE, CriLogWriter, Feed, OutputPump, log_files, parse_line, read_lines


def records(path: Path) -> list[tuple[str, bool, bytes]]:
    return [(r.stream, r.partial, r.text) for r in read_lines(path)]


def test_timestamp_is_rfc3339_with_nanoseconds_in_utc() -> None:
    ts = crilog.timestamp(1714564800.123456789)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", ts)
    parsed = datetime.strptime(ts[:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - 1714564800.123456) < 1e-5


def test_lines_are_written_whole_and_an_unterminated_one_waits_for_the_end(tmp_path: Path) -> None:
    w = CriLogWriter(tmp_path / "0.log")
    w.write("stdout", b"one\ntw", 1.0)
    w.write("stderr", b"oops\n", 1.5)
    assert records(tmp_path / "0.log") == [("stdout", False, b"one"), ("stderr", False, b"oops")]
    w.write("stdout", b"o\nthree", 2.0)
    w.flush(3.0)
    w.close()
    assert records(tmp_path / "0.log") == [("stdout", False, b"one"), ("stderr", False, b"oops"),
                                           ("stdout", False, b"two"), ("stdout", False, b"three")]
    first = (tmp_path / "0.log").read_bytes().splitlines()[0]
    assert first.split(b" ", 1)[1] == b"stdout F one"


def test_a_long_line_becomes_partial_records_then_a_final_one(tmp_path: Path) -> None:
    w = CriLogWriter(tmp_path / "0.log")
    line = b"x" * (MAX_LINE * 2 + 10)
    w.write("stdout", line[:MAX_LINE + 5], 1.0)
    w.write("stdout", line[MAX_LINE + 5:] + b"\n", 1.0)
    w.close()
    got = records(tmp_path / "0.log")
    assert [p for _, p, _ in got] == [True, True, False]
    assert b"".join(t for _, _, t in got) == line


def test_text_keeps_spaces_and_carriage_returns(tmp_path: Path) -> None:
    w = CriLogWriter(tmp_path / "0.log")
    w.write("stdout", b"a  b\r\n", 1.0)
    w.close()
    assert records(tmp_path / "0.log") == [("stdout", False, b"a  b\r")]
    assert parse_line(b"garbage") is None
    assert parse_line(b"2024-01-01T00:00:00.000000000Z stdout F ") == crilog.CriLine(
        "2024-01-01T00:00:00.000000000Z", "stdout", False, b"")


def test_the_log_rotates_by_renaming_and_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    w = CriLogWriter(path, max_bytes=200, max_files=3)
    for i in range(40):
        w.write("stdout", b"line %03d ---------------------------------\n" % i, float(i))
    w.close()
    files = log_files(path, max_files=3)
    assert [p.name for p in files] == ["0.log.2", "0.log.1", "0.log"]
    assert all(p.stat().st_size <= 200 + 100 for p in files)
    texts = [t for _, _, t in records(path)]
    assert texts[-1] == b"line 039 ---------------------------------"
    numbers = [int(t.split()[1]) for t in texts]
    assert numbers == sorted(numbers) and numbers[0] > 0  # oldest gone, order kept


def test_feed_moves_raw_files_to_the_log_punches_them_out_and_resumes_after_a_restart(tmp_path: Path) -> None:
    out, err = tmp_path / "0.out", tmp_path / "0.err"
    big = b"y" * 1500 + b"\n"
    with open(out, "ab") as f:
        f.write(b"hello\n" + big * 1000)
    err.write_bytes(b"")
    pos = tmp_path / "0.pos"
    feed = Feed("k", CriLogWriter(tmp_path / "0.log"), raw={"stdout": out, "stderr": err}, pos_file=pos)
    seen: list[tuple[str, bytes | None]] = []
    feed.subscribe(lambda s, d: seen.append((s, d)))
    assert feed.pull() is False
    assert records(tmp_path / "0.log")[0] == ("stdout", False, b"hello")
    assert sum(len(d or b"") for _, d in seen) == out.stat().st_size
    # Read parts go back to the disk as a hole; offsets stay valid for the writer.
    assert out.stat().st_blocks * 512 < out.stat().st_size
    # A new control plane: a new Feed over the same files goes on from the saved position.
    with open(out, "ab") as f:
        f.write(b"after restart\n")
    with open(err, "ab") as f:
        f.write(b"an error, unterminated")
    again = Feed("k", CriLogWriter(tmp_path / "0.log"), raw={"stdout": out, "stderr": err}, pos_file=pos)
    again.finish()
    got = records(tmp_path / "0.log")
    assert got.count(("stdout", False, b"hello")) == 1
    assert got[-2:] == [("stdout", False, b"after restart"), ("stderr", False, b"an error, unterminated")]
    assert again.done


def test_the_pump_follows_a_growing_file_within_milliseconds(tmp_path: Path) -> None:
    out, err = tmp_path / "0.out", tmp_path / "0.err"
    out.write_bytes(b"")
    err.write_bytes(b"")
    pump = OutputPump()
    got = threading.Event()
    feed = pump.add(Feed("k2", CriLogWriter(tmp_path / "0.log"), raw={"stdout": out, "stderr": err}))
    feed.subscribe(lambda s, d: got.set() if d and b"ping" in d else None)
    fd = os.open(out, os.O_WRONLY | os.O_APPEND)
    t0 = time.monotonic()
    os.write(fd, b"ping\n")
    assert got.wait(2.0)
    assert time.monotonic() - t0 < 1.0
    os.close(fd)
    pump.finish("k2")
    assert records(tmp_path / "0.log") == [("stdout", False, b"ping")]
    assert pump.feed("k2") is None


def test_a_subscriber_that_fails_does_not_stop_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "0.out"
    out.write_bytes(b"a\nb\n")
    feed = Feed("k3", CriLogWriter(tmp_path / "0.log"), raw={"stdout": out})

    def broken(stream: str, data: bytes | None) -> None:
        raise ValueError("reader gone")

    feed.subscribe(broken)
    feed.finish()
    assert [t for _, _, t in records(tmp_path / "0.log")] == [b"a", b"b"]
