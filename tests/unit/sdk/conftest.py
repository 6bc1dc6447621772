"""Fixtures: a router with one fake sandbox served from a thread, and an SDK connection to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from turbok.sandboxd.testing import FakeRouter, fake_router
from turbok.sdk import SandboxConnection


@pytest.fixture
def router(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FakeRouter]:
    with fake_router(tmp_path / "sandboxes", token="sdk-token", **getattr(request, "param", {})) as r:
        yield r


@pytest.fixture
def conn(router: FakeRouter) -> Iterator[SandboxConnection]:
    with SandboxConnection(router.url, router.token, router.namespace, router.name, timeout=10) as c:
        yield c
