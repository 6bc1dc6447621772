"""Fakes for testing code that talks to the router, without running anything on the host.

``FakeRuntime`` is a ``PodRuntime`` whose pods have one running container
(``main``) and whose ``exec`` processes play ``Script``s: canned output, a
lazily generated flood of any size (memory stays flat), a delay or a hang until
killed. It records every command (``spawns``). Its work directories are real
directories under a root you give, so the files API runs for real. Its pods
have no address on a pod network, so the router reaches them through ``exec``
and the host work directory (``turbok.sandboxd.backend.ExecBackend``), unless a
test gives one (``ips``): then the router looks for a sandboxd agent and the
Pod's servers there.

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

from turbok.runtime.cri import (
    ContainerConfig,
    ContainerState,
    ContainerStatus,
    Isolation,
    PodRuntime,
    PodSandboxConfig,
    PodSandboxState,
    PodSandboxStatus,
    Stream,
)
from turbok.runtime.errors import SandboxNotRunning
from turbok.runtime.process import Process
from turbok.sandboxd.resolver import StaticResolver
from turbok.sandboxd.router import create_router_app, serve_router
from turbok.sdk.wire import auth_headers

__all__ = ["FakeProcess", "FakeRouter", "FakeRuntime", "Script", "Spawn", "fake_router", "loop_of", "serve_in_thread"]

_FLOOD_CHUNK = 64 * 1024
KILLED_EXIT_CODE = 137
#: The one container of every fake pod.
CONTAINER = "main"


@dataclass(frozen=True)
class Script:
    """What a fake process does: write ``stdout``/``stderr``, then ``flood`` more bytes of
    stdout (-1: forever), then exit with ``exit_code`` after ``duration`` seconds (None: hang
    until killed). ``echo_stdin`` writes its stdin to stdout first (once stdin is closed)."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    duration: float | None = 0.0
    flood: int = 0
    echo_stdin: bool = False


@dataclass
class Spawn:
    """One recorded command (``exec``); ``stdin`` is what it was given, once its stdin closed."""

    id: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None
    cwd: str | None
    stdin: bytes | None


class _ScriptedReader(asyncio.StreamReader):
    """Serves its bytes on demand, so a flood costs one chunk of memory at a time."""

    def __init__(self, data: bytes, flood: int, done: asyncio.Event, counter: list[int],
                 prefix: asyncio.Future[bytes] | None = None) -> None:
        super().__init__()
        self._data = data
        self._flood = flood
        self._done = done
        self._counter = counter
        self._prefix = prefix

    async def read(self, n: int = -1) -> bytes:
        if self._prefix is not None:
            self._data = await self._prefix + self._data
            self._prefix = None
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
    """``stdin``: its input when known at once; ``stdin_later``: a future of it (an echo waits for it)."""

    def __init__(self, script: Script, stdin: bytes | None,
                 stdin_later: asyncio.Future[bytes] | None = None) -> None:
        self.script = script
        self.killed = False
        self._done = asyncio.Event()
        self._code: int | None = None
        #: Bytes handed out on stdout so far (to check backpressure).
        self.produced = [0]
        prefix = stdin_later if script.echo_stdin else None
        out = (stdin or b"") + script.stdout if script.echo_stdin else script.stdout
        self._stdout = _ScriptedReader(out, script.flood, self._done, self.produced, prefix)
        self._stderr = _ScriptedReader(script.stderr, 0, self._done, [0])
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        if self.script.duration is None:
            return  # hangs until killed
        await asyncio.sleep(self.script.duration)
        while (self.script.flood < 0 or self._stdout._data or self._stdout._flood
               or self._stdout._prefix is not None):
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


class _FakeStream(Stream):
    def __init__(self, process: Process, record: Spawn | None, stdin: asyncio.Future[bytes] | None) -> None:
        self._process = process
        self._record = record
        self._stdin = stdin
        self._buffer = bytearray()

    @property
    def process(self) -> Process:
        return self._process

    async def write(self, data: bytes) -> None:
        self._buffer += data

    async def close_stdin(self) -> None:
        if self._record is not None:
            self._record.stdin = bytes(self._buffer)
        if self._stdin is not None and not self._stdin.done():
            self._stdin.set_result(bytes(self._buffer))

    async def resize(self, columns: int, rows: int) -> None:
        return None

    async def close(self) -> None:
        await self._process.kill()


class FakeRuntime(PodRuntime):
    """Pods are directories under ``root``, each with one running container ``main``; commands play
    ``Script``s chosen by command.

    ``script(command, Script(...))``: for ``/bin/sh -c command`` (what ``/execute`` runs) the key
    is the command string; for any other argv it is the argv joined by spaces. Unknown commands
    exit 127 with a message on stderr. ``spawn`` (what ``exec`` calls) may be replaced by a test.
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
        self._running: dict[str, int] = {}  # id -> how many times it started (a restart changes it)
        #: Pods' addresses on the pod network (none by default: the router uses ``exec`` and the work directory).
        self.ips: dict[str, str] = {}

    def script(self, command: str, script: Script) -> None:
        self.scripts[command] = script

    def add(self, id: str) -> Path:
        """Make pod sandbox ``id`` exist and run; its work directory."""
        self.workdir(id).mkdir(parents=True, exist_ok=True)
        self._running[id] = self._running.get(id, 0) + 1
        return self.workdir(id)

    async def run_pod_sandbox(self, config: PodSandboxConfig) -> PodSandboxStatus:
        self.add(config.id)
        return await self.pod_sandbox_status(config.id)

    async def stop(self, id: str) -> None:
        """Stop the pod (its container no longer runs); ``add`` starts it again."""
        await self.stop_pod_sandbox(id)

    async def stop_pod_sandbox(self, id: str) -> None:
        self._running.pop(id, None)

    async def remove_pod_sandbox(self, id: str) -> None:
        self._running.pop(id, None)
        shutil.rmtree(self.root / id, ignore_errors=True)

    async def pod_sandbox_status(self, id: str) -> PodSandboxStatus:
        if id in self._running:
            return PodSandboxStatus(id=id, state=PodSandboxState.READY, isolation=self.isolation,
                                    ip=self.ips.get(id, ""), containers=[await self.container_status(id, CONTAINER)])
        state = PodSandboxState.NOT_READY if (self.root / id).exists() else PodSandboxState.ABSENT
        return PodSandboxStatus(id=id, state=state, isolation=self.isolation)

    async def list_pod_sandboxes(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()) if self.root.exists() else []

    async def start_container(self, id: str, container: ContainerConfig) -> ContainerStatus:
        self.add(id)
        return await self.container_status(id, container.name)

    async def stop_container(self, id: str, name: str, grace: float) -> ContainerStatus:
        await self.stop_pod_sandbox(id)
        return await self.container_status(id, name)

    async def container_status(self, id: str, name: str) -> ContainerStatus:
        if id in self._running and name == CONTAINER:
            return ContainerStatus(name=name, state=ContainerState.RUNNING, attempt=self._running[id],
                                   container_id=f"fake://{id}-{self._running[id]}")
        return ContainerStatus(name=name, state=ContainerState.EXITED, exit_code=0)

    async def spawn(self, id: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                    cwd: str | None = None, stdin: bytes | None = None,
                    stdin_later: asyncio.Future[bytes] | None = None) -> Process:
        """Start a scripted process (``exec`` calls this)."""
        self.spawns.append(Spawn(id=id, argv=tuple(argv), env=env, cwd=cwd, stdin=stdin))
        key = argv[2] if len(argv) == 3 and list(argv[:2]) == ["/bin/sh", "-c"] else " ".join(argv)
        script = self.scripts.get(key) or self.fallback(argv)
        proc = FakeProcess(script, stdin, stdin_later)
        self.processes.append(proc)
        return proc

    async def exec(self, id: str, name: str, argv: Sequence[str], *, tty: bool = False, stdin: bool = False,
                   env: Mapping[str, str] | None = None, cwd: str | None = None) -> Stream:
        if id not in self._running or name != CONTAINER:
            raise SandboxNotRunning(f"container {name} of pod {id} is not running")
        later: asyncio.Future[bytes] | None = asyncio.get_running_loop().create_future() if stdin else None
        proc = await self.spawn(id, argv, env=env, cwd=cwd, stdin_later=later)
        record = self.spawns[-1] if self.spawns and self.spawns[-1].argv == tuple(argv) else None
        return _FakeStream(proc, record, later)

    async def attach(self, id: str, name: str) -> Stream:
        raise SandboxNotRunning(f"container {name} of pod {id} has no output to attach to")

    def log_path(self, id: str, name: str, attempt: int) -> Path:
        return self.root / id / "logs" / name / f"{attempt}.log"

    def workdir(self, id: str, name: str = CONTAINER) -> Path:
        return self.root / id / "work"


@dataclass
class _Served:
    url: str = ""
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)


_LOOPS: dict[str, asyncio.AbstractEventLoop] = {}


def loop_of(url: str) -> asyncio.AbstractEventLoop:
    """The event loop serving ``url`` (from ``serve_in_thread``), to run coroutines next to the router."""
    return _LOOPS[url]


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
    _LOOPS[served.url] = loop
    try:
        yield served.url
    finally:
        _LOOPS.pop(served.url, None)
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
