"""Fixtures: a fake runtime with one Ready sandbox, and the router in front of it on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from turbok.sandboxd import StaticResolver, create_router_app, serve_router
from turbok.sandboxd.testing import FakeRuntime

TOKEN = "s3cret-token-for-tests"
SANDBOX = "box"
SANDBOX_ID = "tk0000000000000000000001"


@dataclass
class Env:
    runtime: FakeRuntime
    resolver: StaticResolver
    workdir: Path
    outside: Path  # a directory beside the work directory, that no request may touch
    url: str
    http: httpx.AsyncClient  # authenticated, with the sandbox headers
    token: str = TOKEN
    name: str = SANDBOX
    sandbox_id: str = SANDBOX_ID


@pytest.fixture
def fake_runtime(tmp_path: Path) -> FakeRuntime:
    return FakeRuntime(tmp_path / "sandboxes")


@pytest.fixture
async def env(
    tmp_path: Path, fake_runtime: FakeRuntime, request: pytest.FixtureRequest
) -> AsyncIterator[Env]:
    limits = getattr(request, "param", {})
    workdir = fake_runtime.add(SANDBOX_ID)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret\n")
    resolver = StaticResolver({("default", SANDBOX): SANDBOX_ID})
    app = create_router_app(runtime=fake_runtime, resolver=resolver, token=TOKEN, **limits)
    running = await serve_router(app)
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": SANDBOX}
    async with httpx.AsyncClient(base_url=running.url, headers=headers, timeout=30) as http:
        yield Env(fake_runtime, resolver, workdir, outside, running.url, http)
    await running.close()


Tree = Callable[[Path], dict[str, bytes | None]]


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


@pytest.fixture
def tree() -> Tree:
    """Everything under a root (paths -> contents, None for directories and links), to prove nothing changed."""
    return _tree


RawGet = Callable[[str], Awaitable[tuple[int, bytes]]]


@pytest.fixture
def raw_get(env: Env) -> RawGet:
    """GET a path exactly as written (no client-side dot-segment normalisation); (status, body)."""
    host, port = env.url.removeprefix("http://").split(":")

    async def get(path: str) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nX-Sandbox-ID: {SANDBOX}\r\n"
        )
        writer.write(head.encode() + b"Connection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        status_line, _, rest = data.partition(b"\r\n")
        return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]

    return get
