"""AsyncSandboxConnection: the async twin behaves as the sync client (router in the same loop)."""

from __future__ import annotations

import io
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from turbok.sandboxd import StaticResolver, create_router_app, serve_router
from turbok.sandboxd.testing import FakeRuntime, Script
from turbok.sdk import (
    AccessDenied,
    AsyncSandboxConnection,
    CommandFailed,
    NotFound,
    SandboxNotFound,
    SdkError,
    TransportError,
)

SID = "tk0000000000000000000001"


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[FakeRuntime, AsyncSandboxConnection]]:
    runtime = FakeRuntime(tmp_path / "sandboxes")
    runtime.add(SID)
    app = create_router_app(runtime=runtime, resolver=StaticResolver({("default", "box"): SID}), token="tok")
    running = await serve_router(app)
    async with AsyncSandboxConnection(running.url, "tok", "default", "box", timeout=10) as conn:
        yield runtime, conn
    await running.close()


async def test_commands(setup: tuple[FakeRuntime, AsyncSandboxConnection]) -> None:
    runtime, conn = setup
    runtime.script("echo hi", Script(stdout=b"hi\n"))
    runtime.script("false", Script(exit_code=1))
    runtime.script("hang", Script(duration=None))
    assert (await conn.commands.run("echo hi")).stdout == "hi\n"
    with pytest.raises(CommandFailed):
        await conn.commands.run("false", check=True)
    assert (await conn.commands.run("hang", timeout=0.1)).exit_code == 124
    assert (await conn.health())["status"] == "ok"


async def test_stream(setup: tuple[FakeRuntime, AsyncSandboxConnection]) -> None:
    runtime, conn = setup
    runtime.script("build", Script(stdout=b"o" * 100_000, stderr=b"e", exit_code=4))
    out = b""
    async with await conn.commands.stream(["build"], env={"A": "1"}) as run:
        async for frame in run:
            out += frame.data if frame.stream == "stdout" else b""
    assert out == b"o" * 100_000 and run.exit_code == 4 and not run.timed_out
    runtime.script("sleep", Script(duration=None))
    assert await (await conn.commands.stream(["sleep"], timeout=0.1)).wait() == 124


async def test_files_and_errors(setup: tuple[FakeRuntime, AsyncSandboxConnection]) -> None:
    runtime, conn = setup
    await conn.files.write("d/a.txt", "text")
    await conn.files.write("d/b.bin", io.BytesIO(b"\x00" * 300_000))
    assert await conn.files.read("d/a.txt") == b"text"
    sink = io.BytesIO()
    assert await conn.files.read_to("d/b.bin", sink) == 300_000
    assert sorted(e.name for e in await conn.files.list("d")) == ["a.txt", "b.bin"]
    assert await conn.files.exists("d/a.txt") and not await conn.files.exists("nope")
    with pytest.raises(AccessDenied):
        await conn.files.read("../x")
    with pytest.raises(NotFound):
        await conn.files.read("nope")


async def test_unknown_sandbox_and_no_router(setup: tuple[FakeRuntime, AsyncSandboxConnection]) -> None:
    _, conn = setup
    url = conn.url  # no token in this URL: it is the plain router URL
    async with AsyncSandboxConnection(url, "tok", "default", "ghost") as ghost:
        with pytest.raises(SandboxNotFound):
            await ghost.commands.run("true")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with AsyncSandboxConnection(f"http://127.0.0.1:{port}", "t", "default", "x", timeout=2) as dead:
        with pytest.raises(TransportError) as e:
            await dead.files.list()
        assert isinstance(e.value, SdkError)
