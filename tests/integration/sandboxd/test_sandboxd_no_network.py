"""A real gVisor sandbox without an address on a pod network (a control plane started without root or nft):
the router reaches it through ``runsc exec`` and serves its files from the host (``ExecBackend``), confined
against the symlinks sandboxed code plants; ports other than the runtime API's cannot be reached.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.sandboxd.boxes import Boxes
from turbok.sandboxd import StaticResolver, create_router_app
from turbok.sandboxd.testing import serve_in_thread
from turbok.sdk import SandboxConnection
from turbok.sdk.errors import AccessDenied
from turbok.sdk.wire import auth_headers

pytestmark = pytest.mark.integration

TOKEN = "no-network-token"


@pytest.fixture(scope="module")
def offline() -> Iterator[tuple[str, Path]]:
    root = Path(tempfile.mkdtemp(prefix="turbok-sandboxd-it-"))
    boxes = Boxes(root, network=False)
    try:
        sid = boxes.start("offline")
        workdir = boxes.runtime.workdir(sid, "main")
        assert workdir is not None
        resolver = StaticResolver({("default", "offline"): sid})
        with serve_in_thread(lambda: create_router_app(runtime=boxes.runtime, resolver=resolver, token=TOKEN)) as url:
            yield url, workdir
        asyncio.run(boxes.runtime.remove_pod_sandbox(sid))
    finally:
        boxes.close()
        shutil.rmtree(root, ignore_errors=True)


def test_commands_and_files_without_a_pod_network(offline: tuple[str, Path]) -> None:
    url, workdir = offline
    with SandboxConnection(url, TOKEN, "default", "offline", timeout=60) as conn:
        r = conn.commands.run("pwd; echo $SANDBOX_BASE_DIR; echo err >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code) == ("/app\n/app\n", "err\n", 3)
        conn.files.write("notes/a.txt", b"from the host")
        assert (workdir / "notes/a.txt").read_bytes() == b"from the host"
        assert conn.commands.run("cat /app/notes/a.txt").stdout == "from the host"
        # A symlink planted inside that points at the sandbox's /etc is, on the host, a way out: refused.
        conn.commands.run("ln -s /etc /app/etc-link")
        with pytest.raises(AccessDenied):
            conn.files.read("etc-link/passwd")
    headers = {**auth_headers(TOKEN), "X-Sandbox-ID": "offline", "X-Sandbox-Port": "8000"}
    r = httpx.get(f"{url}/", headers=headers, timeout=30)
    assert r.status_code == 502 and r.json()["reason"] == "BadGateway"
