"""Real gVisor pod sandboxes (``GvisorPodRuntime``, on a pod network of the test's own) behind a real router
on loopback, shared by the module.

``live`` is one Ready sandbox (``default/live``: one container ``main`` of the built-in runtime image, with
its sandboxd agent) behind a router with a 1 MiB output cap. ``boxes`` starts and removes more.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.sandboxd.boxes import Boxes
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.sandboxd import StaticResolver, create_router_app
from turbok.sandboxd.testing import serve_in_thread
from turbok.sdk import SandboxConnection

TOKEN = "integration-token"
OUTPUT_LIMIT = 1024 * 1024


@dataclass
class Live:
    url: str
    token: str
    runtime: GvisorPodRuntime
    boxes: Boxes
    sandbox_id: str
    name: str = "live"
    namespace: str = "default"

    @property
    def workdir(self) -> Path:
        found = self.runtime.workdir(self.sandbox_id, "main")
        assert found is not None
        return found

    @property
    def ip(self) -> str:
        return self.boxes.ip(self.sandbox_id)

    def connect(self) -> SandboxConnection:
        return SandboxConnection(self.url, self.token, self.namespace, self.name, timeout=30)


@pytest.fixture(scope="module")
def boxes() -> Iterator[Boxes]:
    root = Path(tempfile.mkdtemp(prefix="turbok-sandboxd-it-"))
    made = Boxes(root)
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def live(boxes: Boxes) -> Iterator[Live]:
    sid = boxes.start("live")
    resolver = StaticResolver({("default", "live"): sid})

    def make():  # type: ignore[no-untyped-def]
        return create_router_app(runtime=boxes.runtime, resolver=resolver, token=TOKEN, output_limit=OUTPUT_LIMIT)

    with serve_in_thread(make) as url:
        yield Live(url=url, token=TOKEN, runtime=boxes.runtime, boxes=boxes, sandbox_id=sid)
    asyncio.run(boxes.runtime.remove_pod_sandbox(sid))


@pytest.fixture
def conn(live: Live) -> Iterator[SandboxConnection]:
    with live.connect() as c:
        yield c
