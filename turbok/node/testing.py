"""Fakes for testing the node and what uses it: a ``PodRuntime`` in memory and a clock tests advance.

``FakePodRuntime`` keeps pod sandboxes and containers as data and records
every call (``calls``), so tests assert what a node asked and in which order.
Tests make containers end (``exit``), make boots wait (``hold_boots``), make
images missing (``missing_images``), and script ``exec`` (``exec_handler``).
It honours the contract of ``turbok.runtime.cri``: ``stop_pod_sandbox`` keeps
state, ``hibernate_pod_sandbox`` keeps memory (containers come back running on
the next ``run_pod_sandbox`` with the same config), ``remove_pod_sandbox``
forgets everything; ``*_status`` never block.

``FakeClock`` is a ``turbok.node.clock.Clock`` whose time moves only when a
test calls ``advance``: minutes of back-off in milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

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
    essence,
)
from turbok.runtime.errors import ImageNotFound, RuntimeError_, SandboxNotRunning
from turbok.runtime.process import Process

__all__ = ["FakeClock", "FakePodRuntime", "FakeSandbox"]


class FakeClock:
    """Monotonic time that only ``advance`` moves."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.time + seconds, next(self._seq), future))
        await future

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper due on the way, in order, letting each run."""
        target = self.time + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self.time = max(self.time, when)
            if not future.done():
                future.set_result(None)
            for _ in range(20):
                await asyncio.sleep(0)
        self.time = target
        for _ in range(20):
            await asyncio.sleep(0)


class _FakeProcess(Process):
    def __init__(self, code: int, stdout: bytes, stderr: bytes) -> None:
        self._out = asyncio.StreamReader()
        self._err = asyncio.StreamReader()
        self._out.feed_data(stdout)
        self._out.feed_eof()
        self._err.feed_data(stderr)
        self._err.feed_eof()
        self._code = code

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._out

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._err

    async def wait(self) -> int:
        return self._code

    async def kill(self) -> None:
        return None


class _FakeStream(Stream):
    def __init__(self, process: _FakeProcess) -> None:
        self._process = process
        self.written = b""

    @property
    def process(self) -> Process:
        return self._process

    async def write(self, data: bytes) -> None:
        self.written += data

    async def close_stdin(self) -> None:
        return None

    async def resize(self, columns: int, rows: int) -> None:
        return None


@dataclass
class FakeSandbox:
    config: PodSandboxConfig
    state: PodSandboxState = PodSandboxState.READY
    reason: str = ""
    ip: str = ""
    containers: dict[str, ContainerStatus] = field(default_factory=dict)
    configs: dict[str, ContainerConfig] = field(default_factory=dict)
    #: the containers as they were when hibernated (memory kept)
    memory: dict[str, ContainerStatus] | None = None


def _restore_key(config: PodSandboxConfig) -> PodSandboxConfig:
    """What must be equal for kept memory to be used (as the real runtimes: not the Pod object's identity)."""
    return replace(essence(config), uid="", labels={}, annotations={})


class FakePodRuntime(PodRuntime):
    isolation = Isolation.GVISOR
    supports_hibernation = True

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path("/nonexistent/fake-pod-runtime")
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.calls: list[tuple[str, ...]] = []
        self.missing_images: set[str] = set()
        #: run_pod_sandbox raises this (once per entry) when set
        self.boot_errors: list[Exception] = []
        #: while set and not done, run_pod_sandbox waits for it (a boot in flight)
        self.hold_boots: asyncio.Event | None = None
        #: exit code a container ends with when stopped (143: it died of SIGTERM)
        self.stop_exit_code = 143
        #: ``exec_handler(id, name, argv) -> (exit code, stdout)``
        self.exec_handler: Callable[[str, str, Sequence[str]], tuple[int, bytes]] = lambda *_: (0, b"")
        self._ips = itertools.count(2)
        self.booting = 0

    # ------------------------------------------------------------ test controls

    def exit(self, id: str, name: str, code: int, reason: str = "", message: str = "") -> None:
        """Container ``name`` of ``id`` ends on its own."""
        sb = self.sandboxes[id]
        old = sb.containers[name]
        sb.containers[name] = replace(old, state=ContainerState.EXITED, exit_code=code, finished_at=time.time(),
                                      reason=reason or ("Completed" if code == 0 else "Error"), message=message)

    def crash_sandbox(self, id: str) -> None:
        """The whole sandbox dies (gVisor's sentry crashed, say)."""
        sb = self.sandboxes[id]
        sb.state = PodSandboxState.NOT_READY
        for name, c in list(sb.containers.items()):
            if c.state == ContainerState.RUNNING:
                sb.containers[name] = replace(c, state=ContainerState.EXITED, exit_code=137, reason="Error",
                                              finished_at=time.time())

    def running(self, id: str) -> list[str]:
        sb = self.sandboxes.get(id)
        if sb is None or sb.state != PodSandboxState.READY:
            return []
        return [n for n, c in sb.containers.items() if c.state == ContainerState.RUNNING]

    def started(self, id: str | None = None) -> list[str]:
        """Names of containers started, in order (of ``id``, or of every sandbox)."""
        return [c[2] for c in self.calls if c[0] == "start_container" and (id is None or c[1] == id)]

    # ------------------------------------------------------------ PodRuntime

    async def run_pod_sandbox(self, config: PodSandboxConfig) -> PodSandboxStatus:
        self.calls.append(("run_pod_sandbox", config.id))
        self.booting += 1
        try:
            if self.hold_boots is not None:
                await self.hold_boots.wait()
            if self.boot_errors:
                raise self.boot_errors.pop(0)
            sb = self.sandboxes.get(config.id)
            if sb is not None and sb.state == PodSandboxState.READY:
                return await self.pod_sandbox_status(config.id)
            if sb is None:
                sb = self.sandboxes[config.id] = FakeSandbox(config, ip=f"10.213.0.{next(self._ips)}")
            if sb.memory is not None and _restore_key(sb.config) == _restore_key(config):
                sb.containers = dict(sb.memory)
            else:
                sb.containers = {n: c for n, c in sb.containers.items() if c.state != ContainerState.RUNNING}
            sb.memory = None
            sb.config = config
            sb.state, sb.reason = PodSandboxState.READY, ""
            return await self.pod_sandbox_status(config.id)
        finally:
            self.booting -= 1

    async def stop_pod_sandbox(self, id: str) -> None:
        self.calls.append(("stop_pod_sandbox", id))
        sb = self.sandboxes.get(id)
        if sb is None:
            return
        for name, c in list(sb.containers.items()):
            if c.state == ContainerState.RUNNING:
                sb.containers[name] = replace(c, state=ContainerState.EXITED, exit_code=137, reason="Error",
                                              finished_at=time.time())
        sb.state, sb.reason, sb.memory = PodSandboxState.NOT_READY, "Stopped", None

    async def hibernate_pod_sandbox(self, id: str) -> None:
        self.calls.append(("hibernate_pod_sandbox", id))
        sb = self.sandboxes.get(id)
        if sb is None or sb.state != PodSandboxState.READY:
            raise SandboxNotRunning(f"sandbox {id} is not running")
        sb.memory = dict(sb.containers)
        sb.containers = {n: replace(c, state=ContainerState.EXITED, exit_code=0, reason="Hibernated")
                         for n, c in sb.containers.items()}
        sb.state, sb.reason = PodSandboxState.NOT_READY, "Hibernated"

    async def remove_pod_sandbox(self, id: str) -> None:
        self.calls.append(("remove_pod_sandbox", id))
        self.sandboxes.pop(id, None)

    async def pod_sandbox_status(self, id: str) -> PodSandboxStatus:
        sb = self.sandboxes.get(id)
        if sb is None:
            return PodSandboxStatus(id=id, state=PodSandboxState.ABSENT, isolation=self.isolation)
        return PodSandboxStatus(id=id, state=sb.state, isolation=self.isolation, ip=sb.ip, reason=sb.reason,
                                containers=tuple(sb.containers.values()))

    async def list_pod_sandboxes(self) -> list[str]:
        return list(self.sandboxes)

    async def start_container(self, id: str, container: ContainerConfig) -> ContainerStatus:
        self.calls.append(("start_container", id, container.name))
        sb = self.sandboxes.get(id)
        if sb is None or sb.state != PodSandboxState.READY:
            raise SandboxNotRunning(f"sandbox {id} is not running")
        if container.image in self.missing_images:
            raise ImageNotFound(f"image {container.image!r} not found", reference=container.image)
        status = ContainerStatus(name=container.name, state=ContainerState.RUNNING, attempt=container.attempt,
                                 container_id=f"gvisor://{id}-{container.name}-{container.attempt}",
                                 image=container.image, image_id=f"sha256:{abs(hash(container.image)):064x}"[:71],
                                 started_at=time.time())
        sb.containers[container.name] = status
        sb.configs[container.name] = container
        return status

    async def stop_container(self, id: str, name: str, grace: float) -> ContainerStatus:
        self.calls.append(("stop_container", id, name, f"{grace:g}"))
        sb = self.sandboxes.get(id)
        if sb is None or name not in sb.containers:
            raise RuntimeError_(f"sandbox {id}: no container {name}")
        c = sb.containers[name]
        if c.state == ContainerState.RUNNING:
            code = self.stop_exit_code
            c = sb.containers[name] = replace(c, state=ContainerState.EXITED, exit_code=code,
                                              reason="Completed" if code == 0 else "Error",
                                              finished_at=time.time())
        return c

    async def container_status(self, id: str, name: str) -> ContainerStatus:
        sb = self.sandboxes.get(id)
        if sb is None or name not in sb.containers:
            return ContainerStatus(name=name, state=ContainerState.UNKNOWN)
        return sb.containers[name]

    async def exec(self, id: str, name: str, argv: Sequence[str], *, tty: bool = False, stdin: bool = False,
                   env: Mapping[str, str] | None = None, cwd: str | None = None) -> Stream:
        self.calls.append(("exec", id, name, *argv))
        if name not in self.running(id):
            raise SandboxNotRunning(f"sandbox {id}: container {name} is not running")
        code, out = self.exec_handler(id, name, argv)
        return _FakeStream(_FakeProcess(code, out, b""))

    async def attach(self, id: str, name: str) -> Stream:
        raise SandboxNotRunning(f"sandbox {id}: the fake runtime cannot attach")

    def log_path(self, id: str, name: str, attempt: int) -> Path:
        return self.root / id / name / f"{attempt}.log"
