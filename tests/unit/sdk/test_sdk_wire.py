"""The wire format shared by router and SDK: frames, bodies, error mapping (no I/O)."""

from __future__ import annotations

import json

import pytest

from turbok.sdk import errors
from turbok.sdk.wire import (
    CommandResult,
    ErrorFrame,
    ExecRequest,
    ExitFrame,
    FileInfo,
    Frame,
    FrameDecoder,
    OutputFrame,
    auth_headers,
    decode_frame,
    encode_frame,
    parse_timeout,
    quote_path,
    redact_url,
)

FRAMES: list[Frame] = [
    OutputFrame("stdout", b"hello\n"),
    OutputFrame("stderr", bytes(range(256))),
    OutputFrame("stdout", b""),
    ExitFrame(3, False),
    ExitFrame(124, True),
    ErrorFrame("runtime failed: gone"),
]


@pytest.mark.parametrize("frame", FRAMES)
def test_frames_round_trip_as_single_lines(frame: Frame) -> None:
    line = encode_frame(frame)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_frame(line) == frame


def test_decoder_handles_any_split() -> None:
    data = b"".join(encode_frame(f) for f in FRAMES)
    for step in (1, 2, 3, 7, 64, len(data)):
        decoder = FrameDecoder()
        got: list[Frame] = []
        for i in range(0, len(data), step):
            got += decoder.feed(data[i : i + step])
        decoder.close()
        assert got == FRAMES, step


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1]",
        b'{"stream": "stdout"}',
        b'{"stream": "stdout", "data": "@@@"}',
        b'{"exit_code": "1"}',
        b'{"exit_code": true}',
        b'{"exit_code": 1, "timed_out": "no"}',
        b'{"what": 1}',
    ],
)
def test_malformed_frames_are_protocol_errors(line: bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        decode_frame(line)


def test_decoder_refuses_endless_lines_and_cut_streams() -> None:
    with pytest.raises(errors.ProtocolError, match="longer than"):
        FrameDecoder(max_frame=100).feed(b"x" * 101)
    decoder = FrameDecoder()
    decoder.feed(encode_frame(ExitFrame(0))[:-3])
    with pytest.raises(errors.ProtocolError, match="middle of a frame"):
        decoder.close()


def test_exec_request_round_trip_and_validation() -> None:
    req = ExecRequest(argv=["a", "b c"], env={"K": "v"}, cwd="/app/x", timeout_seconds=2.5, stdin=b"\0in")
    assert ExecRequest.from_json(json.loads(json.dumps(req.to_json()))) == ExecRequest(
        argv=("a", "b c"), env={"K": "v"}, cwd="/app/x", timeout_seconds=2.5, stdin=b"\0in"
    )
    bad: object
    for bad in (
        None,
        {"argv": []},
        {"argv": [1]},
        {"argv": ["a\0b"]},
        {"argv": ["a"], "env": {"": "x"}},
        {"argv": ["a"], "env": {"A": 1}},
        {"argv": ["a"], "cwd": "relative"},
        {"argv": ["a"], "stdin": "***"},
        {"argv": ["a"], "timeout_seconds": 0},
        {"argv": ["a"], "timeout_seconds": float("inf")},
    ):
        with pytest.raises(ValueError):
            ExecRequest.from_json(bad)


def test_parse_timeout() -> None:
    assert parse_timeout(None) is None and parse_timeout(3) == 3.0
    for bad in (0, -1, "1", True, float("nan")):
        with pytest.raises(ValueError):
            parse_timeout(bad)


def test_bodies_parse_and_refuse_garbage() -> None:
    r = CommandResult.from_json({"stdout": "o", "stderr": "e", "exit_code": 1, "extra": 1})
    assert r == CommandResult("o", "e", 1, False, False)
    assert CommandResult.from_json(r.to_json()) == r
    with pytest.raises(errors.ProtocolError):
        CommandResult.from_json({"stdout": "o"})
    info = FileInfo("a", 1, "file", 2.5)
    assert FileInfo.from_json(info.to_json()) == info
    with pytest.raises(errors.ProtocolError):
        FileInfo.from_json({"name": "a", "size": 1, "type": "symlink", "mod_time": 0})


def test_paths_and_urls() -> None:
    assert quote_path("a/b c/%.txt") == "a%2Fb%20c%2F%25.txt"
    assert auth_headers("tok") == {"Authorization": "Bearer tok"}
    assert redact_url("http://127.0.0.1:5/t/tok") == "http://127.0.0.1:5/t/***"
    assert redact_url("http://127.0.0.1:5/t/tok/execute") == "http://127.0.0.1:5/t/***/execute"
    assert redact_url("http://h/mounted/t/tok") == "http://h/mounted/t/***"
    assert redact_url("http://127.0.0.1:5") == "http://127.0.0.1:5"


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (
            404,
            b'{"message": "sandbox default/x not found", "reason": "SandboxNotFound"}',
            errors.SandboxNotFound,
        ),
        (404, b'{"message": "/app/f: no such file", "reason": "NotFound"}', errors.NotFound),
        (403, b'{"message": "Access denied"}', errors.AccessDenied),
        (503, b'{"message": "m", "reason": "SandboxNotRunning"}', errors.SandboxNotReady),
        (401, b"<html>nope</html>", errors.Unauthorized),
        (418, b"{}", errors.RouterError),
    ],
)
def test_error_mapping(status: int, body: bytes, cls: type[errors.RouterError]) -> None:
    err = errors.error_from_response(status, body)
    assert type(err) is cls and err.status == status
    assert str(err)  # always a message, even from an HTML body


def test_command_failed_carries_the_result() -> None:
    result = CommandResult("", "line1\nfatal: no such thing\n", 2)
    err = errors.CommandFailed(result)
    assert err.result is result and str(err) == "command exited with code 2: fatal: no such thing"
