"""POST /turbok/v1/exec: frames, timeouts, backpressure, and a client that goes away."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from turbok.runtime.errors import RuntimeError_
from turbok.runtime.process import Process
from turbok.sandboxd.testing import FakeProcess, Script
from turbok.sdk.wire import ErrorFrame, ExitFrame, Frame, FrameDecoder, OutputFrame

if TYPE_CHECKING:
    from conftest import Env


async def stream(env: Env, body: dict[str, Any]) -> list[Frame]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    async with env.http.stream("POST", "/turbok/v1/exec", json=body) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["Content-Type"] == "application/x-ndjson"
        async for chunk in r.aiter_raw():
            frames += decoder.feed(chunk)
    decoder.close()
    return frames


def output(frames: list[Frame], name: str) -> bytes:
    return b"".join(f.data for f in frames if isinstance(f, OutputFrame) and f.stream == name)


async def test_frames_carry_output_then_the_exit_code(env: Env) -> None:
    env.runtime.script("python -c x", Script(stdout=b"out\n" * 50_000, stderr=b"err\n", exit_code=7))
    frames = await stream(env, {"argv": ["python", "-c", "x"]})
    assert output(frames, "stdout") == b"out\n" * 50_000
    assert output(frames, "stderr") == b"err\n"
    assert frames[-1] == ExitFrame(exit_code=7, timed_out=False)
    assert all(len(f.data) <= 64 * 1024 for f in frames if isinstance(f, OutputFrame))
    [spawn] = env.runtime.spawns
    assert spawn.argv == ("python", "-c", "x") and spawn.cwd == "/app" and spawn.env is None


async def test_env_cwd_and_stdin_reach_the_runtime(env: Env) -> None:
    env.runtime.script("cat", Script(echo_stdin=True))
    body = {
        "argv": ["cat"],
        "env": {"A": "1"},
        "cwd": "/tmp",
        "stdin": base64.b64encode(b"\x00\xffdata").decode(),
    }
    frames = await stream(env, body)
    assert output(frames, "stdout") == b"\x00\xffdata"
    [spawn] = env.runtime.spawns
    assert (spawn.env, spawn.cwd, spawn.stdin) == ({"A": "1"}, "/tmp", b"\x00\xffdata")


async def test_timeout_ends_with_124_and_kills(env: Env) -> None:
    env.runtime.script("sleep", Script(stdout=b"started\n", duration=None))
    frames = await stream(env, {"argv": ["sleep"], "timeout_seconds": 0.3})
    assert output(frames, "stdout") == b"started\n"
    assert frames[-1] == ExitFrame(exit_code=124, timed_out=True)
    assert env.runtime.processes[0].killed


@pytest.mark.parametrize(
    "body",
    [{}, {"argv": []}, {"argv": "ls"}, {"argv": ["ls"], "env": {"A=B": "1"}}, {"argv": ["ls"], "cwd": "rel"}],
)
async def test_bad_requests_are_400_before_anything_runs(env: Env, body: dict[str, Any]) -> None:
    r = await env.http.post("/turbok/v1/exec", json=body)
    assert r.status_code == 400 and r.json()["reason"] == "BadRequest"
    assert env.runtime.spawns == []


async def test_stopped_sandbox_is_503_before_the_stream(env: Env) -> None:
    await env.runtime.stop(env.sandbox_id)
    r = await env.http.post("/turbok/v1/exec", json={"argv": ["true"]})
    assert r.status_code == 503 and r.json()["reason"] == "SandboxNotRunning"


async def _open_raw(env: Env, body: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = env.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=2**16)
    payload = json.dumps(body).encode()
    head = (
        f"POST /turbok/v1/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {env.token}\r\n"
        f"X-Sandbox-ID: {env.name}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    return reader, writer


async def _until(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def test_a_slow_reader_slows_the_command_instead_of_filling_memory(env: Env) -> None:
    env.runtime.script("yes", Script(flood=-1))
    reader, writer = await _open_raw(env, {"argv": ["yes"]})
    await _until(lambda: env.runtime.processes, 5)
    proc: FakeProcess = env.runtime.processes[0]
    await asyncio.sleep(1.0)  # the client reads nothing
    stalled = proc.produced[0]
    await asyncio.sleep(0.5)
    assert proc.produced[0] == stalled, "the router kept reading output nobody takes"
    assert stalled < 16 * 1024 * 1024, f"{stalled / 2**20:.0f} MiB buffered for a client that reads nothing"
    got = 0
    while got < 4 * stalled + 1024 * 1024:  # reading lets the command go on
        got += len(await reader.read(2**16))
    assert proc.produced[0] > stalled
    writer.close()
    assert await _until(lambda: proc.killed, 5), "the command outlived its client"


async def test_a_silent_command_is_killed_when_its_client_goes(env: Env) -> None:
    env.runtime.script("sleep", Script(duration=None))
    reader, writer = await _open_raw(env, {"argv": ["sleep"], "timeout_seconds": 60})
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    proc = env.runtime.processes[0]
    writer.close()
    assert await _until(lambda: proc.killed, 5), "the command outlived its client"


class _BrokenProcess(FakeProcess):
    async def wait(self) -> int:
        raise RuntimeError_("runsc exec lost the container")


async def test_a_runtime_failure_mid_stream_is_an_error_frame(env: Env) -> None:
    async def spawn(
        id: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **_: Any
    ) -> Process:
        return _BrokenProcess(Script(stdout=b"partial"), None)

    env.runtime.spawn = spawn  # type: ignore[method-assign]
    frames = await stream(env, {"argv": ["x"]})
    assert output(frames, "stdout") == b"partial"
    assert isinstance(frames[-1], ErrorFrame) and "runtime failed" in frames[-1].message
    assert "lost the container" not in frames[-1].message  # the runtime's own text is logged, not sent
