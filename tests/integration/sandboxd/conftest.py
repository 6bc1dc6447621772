"""A real gVisor sandbox (RunscRuntime) behind a real router on loopback, shared by the module."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from turbok.runtime.base import SandboxSpec, sandbox_id
from turbok.runtime.base_image import base_image_info, build_base_image
from turbok.runtime.gvisor import RunscRuntime
from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.sandboxd import StaticResolver, create_router_app
from turbok.sandboxd.testing import serve_in_thread
from turbok.sdk import SandboxConnection

TOKEN = "integration-token"
OUTPUT_LIMIT = 1024 * 1024


@dataclass
class Live:
    url: str
    token: str
    runtime: RunscRuntime
    sandbox_id: str
    name: str = "live"
    namespace: str = "default"

    @property
    def workdir(self) -> Path:
        return self.runtime.workdir(self.sandbox_id)

    def connect(self) -> SandboxConnection:
        return SandboxConnection(self.url, self.token, self.namespace, self.name, timeout=30)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    store = ImageStore()
    if base_image_info(store) is None:
        build_base_image(store)  # once per machine; about 30 s (mmdebstrap from a Debian mirror)
    root = Path(tempfile.mkdtemp(prefix="turbok-sandboxd-it-"))
    runtime = RunscRuntime(root, store)
    sid = sandbox_id(f"sandboxd-integration-{root.name}")
    asyncio.run(runtime.start(SandboxSpec(id=sid, hostname="live", image=BASE_IMAGE)))
    try:
        resolver = StaticResolver({("default", "live"): sid})

        def make():  # type: ignore[no-untyped-def]
            return create_router_app(
                runtime=runtime, resolver=resolver, token=TOKEN, output_limit=OUTPUT_LIMIT
            )

        with serve_in_thread(make) as url:
            yield Live(url=url, token=TOKEN, runtime=runtime, sandbox_id=sid)
    finally:
        asyncio.run(runtime.remove(sid))
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def conn(live: Live) -> Iterator[SandboxConnection]:
    with live.connect() as c:
        yield c
