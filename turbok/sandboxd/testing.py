"""Fakes for testing code that talks to the router, without running anything on the host.

``FakeRuntime`` is a ``Runtime`` whose processes play ``Script``s: canned
output, a lazily generated flood of any size (memory stays flat), a delay or a
hang until killed. It records every spawn. Its work directories are real
directories under a root you give, so the files API runs for real.

``serve_in_thread`` serves an app on loopback from a background thread, for
synchronous clients (the official client, ``turbok.sdk``) in tests;
``fake_router`` puts the two together: one Ready sandbox behind a real router.

Used by tests/unit/sandboxd, tests/unit/sdk and the control plane's tests.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from turbok.runtime.base import (
    Isolation,
    Phase,
    Process,
    Runtime,
    RuntimeState,
    SandboxNotRunning,
    SandboxSpec,
)
from turbok.sandboxd.resolver import StaticResolver
from turbok.sandboxd.router import create_router_app, serve_router
from turbok.sdk.wire import auth_headers

__all__ = ["FakeProcess", "FakeRouter", "FakeRuntime", "Script", "Spawn", "fake_router", "serve_in_thread"]

_FLOOD_CHUNK = 64 * 1024
KILLED_EXIT_CODE = 137


@dataclass(frozen=True)
class Script:
    """What a fake process does: write ``stdout``/``stderr``, then ``flood`` more bytes of
    stdout (-1: forever), then exit with ``exit_code`` after ``duration`` seconds (None: hang
    until killed). ``echo_stdin`` writes its stdin to stdout first."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    duration: float | None = 0.0
    flood: int = 0
    echo_stdin: bool = False


@dataclass(frozen=True)
class Spawn:
    """One recorded ``spawn`` call."""

    id: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None
    cwd: str | None
    stdin: bytes | None


class _ScriptedReader(asyncio.StreamReader):
    """Serves its bytes on demand, so a flood costs one chunk of memory at a time."""

    def __init__(self, data: bytes, flood: int, done: asyncio.Event, counter: list[int]) -> None:
        super().__init__()
        self._data = data
        self._flood = flood
        self._done = done
        self._counter = counter

    async def read(self, n: int = -1) -> bytes:
        size = n if n > 0 else _FLOOD_CHUNK
        if self._data:
            chunk, self._data = self._data[:size], self._data[size:]
        elif self._flood != 0 and not self._done.is_set():
            await asyncio.sleep(0)  # a real pipe yields too; keeps the loop responsive
            size = size if self._flood < 0 else min(size, self._flood)
            if self._flood > 0:
                self._flood -= size
            chunk = b"y" * size
        else:
            await self._done.wait()
            return b""
        self._counter[0] += len(chunk)
        return chunk


class FakeProcess(Process):
    def __init__(self, script: Script, stdin: bytes | None) -> None:
        self.script = script
        self.killed = False
        self._done = asyncio.Event()
        self._code: int | None = None
        #: Bytes handed out on stdout so far (to check backpressure).
        self.produced = [0]
        out = (stdin or b"") + script.stdout if script.echo_stdin else script.stdout
        self._stdout = _ScriptedReader(out, script.flood, self._done, self.produced)
        self._stderr = _ScriptedReader(script.stderr, 0, self._done, [0])
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        if self.script.duration is None:
            return  # hangs until killed
        await asyncio.sleep(self.script.duration)
        while self.script.flood < 0 or self._stdout._data or self._stdout._flood:
            # A flooding process exits only once its output is read (a pipe would block it).
            if self._done.is_set():
                return
            await asyncio.sleep(0.001)
        self._finish(self.script.exit_code)

    def _finish(self, code: int) -> None:
        if self._code is None:
            self._code = code
            self._done.set()

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._stderr

    async def wait(self) -> int:
        await self._done.wait()
        assert self._code is not None
        return self._code

    async def kill(self) -> None:
        self.killed = True
        self._task.cancel()
        self._finish(KILLED_EXIT_CODE)


class FakeRuntime(Runtime):
    """Sandboxes are directories under ``root``; processes play ``Script``s chosen by command.

    ``script(command, Script(...))``: for ``/bin/sh -c command`` (what ``/execute`` runs) the key
    is the command string; for any other argv it is the argv joined by spaces. Unknown commands
    exit 127 with a message on stderr.
    """

    isolation = Isolation.GVISOR

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scripts: dict[str, Script] = {}
        self.fallback: Callable[[Sequence[str]], Script] = lambda argv: Script(
            stderr=f"fake runtime: no script for {list(argv)}\n".encode(), exit_code=127
        )
        self.spawns: list[Spawn] = []
        self.processes: list[FakeProcess] = []
        self._running: set[str] = set()

    def script(self, command: str, script: Script) -> None:
        self.scripts[command] = script

    def add(self, id: str) -> Path:
        """Make sandbox ``id`` exist and run; its work directory."""
        self.workdir(id).mkdir(parents=True, exist_ok=True)
        self._running.add(id)
        return self.workdir(id)

    async def start(self, spec: SandboxSpec) -> RuntimeState:
        self.add(spec.id)
        return await self.state(spec.id)

    async def stop(self, id: str) -> None:
        self._running.discard(id)

    async def remove(self, id: str) -> None:
        self._running.discard(id)
        shutil.rmtree(self.root / id, ignore_errors=True)

    async def state(self, id: str) -> RuntimeState:
        if id in self._running:
            phase = Phase.RUNNING
        else:
            phase = Phase.STOPPED if (self.root / id).exists() else Phase.ABSENT
        return RuntimeState(id=id, phase=phase, isolation=self.isolation)

    async def list(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()) if self.root.exists() else []

    async def spawn(
        self,
        id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Process:
        if id not in self._running:
            raise SandboxNotRunning(f"sandbox {id} is not running")
        self.spawns.append(Spawn(id=id, argv=tuple(argv), env=env, cwd=cwd, stdin=stdin))
        key = argv[2] if len(argv) == 3 and list(argv[:2]) == ["/bin/sh", "-c"] else " ".join(argv)
        script = self.scripts.get(key) or self.fallback(argv)
        proc = FakeProcess(script, stdin)
        self.processes.append(proc)
        return proc

    def workdir(self, id: str) -> Path:
        return self.root / id / "work"


@dataclass
class _Served:
    url: str = ""
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)


@contextmanager
def serve_in_thread(make_app: Callable[[], web.Application]) -> Iterator[str]:
    """Serve the app built by ``make_app`` (called in the server's own loop) on loopback; yields its URL."""
    loop = asyncio.new_event_loop()
    served = _Served()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            running = await serve_router(make_app())
        except BaseException as e:
            served.error = e
            served.ready.set()
            return
        served.url = running.url
        served.ready.set()
        await stop.wait()
        await running.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    served.ready.wait()
    if served.error is not None:
        thread.join()
        loop.close()
        raise served.error
    try:
        yield served.url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


@dataclass
class FakeRouter:
    """A router on loopback with one Ready sandbox ``namespace/name`` on a ``FakeRuntime``."""

    url: str
    token: str
    runtime: FakeRuntime
    resolver: StaticResolver
    namespace: str
    name: str
    sandbox_id: str

    @property
    def workdir(self) -> Path:
        return self.runtime.workdir(self.sandbox_id)

    @property
    def auth_headers(self) -> dict[str, str]:
        """The header with this router's token (the official client's ``extra_headers``)."""
        return auth_headers(self.token)


@contextmanager
def fake_router(
    root: Path,
    *,
    token: str = "test-token",
    namespace: str = "default",
    name: str = "box",
    sandbox_id: str = "tk0000000000000000000001",
    **limits: Any,
) -> Iterator[FakeRouter]:
    """Serve ``create_router_app(**limits)`` from a thread over a ``FakeRuntime`` rooted at ``root``."""
    runtime = FakeRuntime(root)
    runtime.add(sandbox_id)
    resolver = StaticResolver({(namespace, name): sandbox_id})

    def make() -> web.Application:
        return create_router_app(runtime=runtime, resolver=resolver, token=token, **limits)

    with serve_in_thread(make) as url:
        yield FakeRouter(url, token, runtime, resolver, namespace, name, sandbox_id)
