"""How the router reaches one sandbox: its container through the pod runtime, or its in-sandbox agent.

The router resolves a request to a pod sandbox id (``SandboxResolver``), then
``Targets.find`` picks the container it talks to (the first running one of the
pod sandbox; the Sandbox's own, as upstream's router reaches the Pod) and the
Pod's address, from ``PodRuntime.pod_sandbox_status`` (no subprocess), cached
for a second. A ``Backend`` is what the handlers use for that container:

- ``AgentBackend`` (``turbok.sandboxd.agentclient``): commands and files go to
  the sandboxd agent inside the sandbox (``turbok.sandboxd.agent``) over the pod
  network: a command costs no ``runsc exec``.
- ``ExecBackend``: commands through ``PodRuntime.exec`` (a ``runsc exec`` each),
  files in the container's host-served work directory (``PodRuntime.workdir``);
  where a pod has no address on the pod network, or its agent does not answer.

Both give the handlers the same ``Process`` (stdout/stderr readers, ``wait``,
``kill``), so the router's bounds (command slots, output pacing and caps,
timeouts) apply the same way to both.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from turbok.runtime.cri import ContainerState, PodRuntime, PodSandboxState, Stream
from turbok.runtime.errors import RuntimeError_, SandboxNotRunning
from turbok.runtime.process import Process
from turbok.sandboxd.confine import SANDBOX_WORKDIR

__all__ = ["Backend", "ExecBackend", "Target", "Targets"]

#: How long a looked-up target is reused (requests in a burst pay one status read).
TARGET_TTL = 1.0


@dataclass(frozen=True)
class Target:
    """The container a request for a sandbox reaches."""

    sandbox_id: str
    container: str
    #: The Pod's address on the pod network ("" without one).
    ip: str = ""


class Backend(abc.ABC):
    """One sandbox's container, as the handlers see it (see the module docstring)."""

    #: Whether commands need the container's generation before they run (to tell a restart under a command
    #: from the runtime's own failure: ``runsc exec`` reports both as exit code 128).
    needs_generation: bool = False
    #: Where ``/execute`` and an exec stream without ``cwd`` run (None: the agent's root, the container's work
    #: directory, which is ``/app`` for turbok's images and the image's own working directory for others).
    home: str | None = SANDBOX_WORKDIR

    def __init__(self, runtime: PodRuntime, target: Target) -> None:
        self.runtime = runtime
        self.target = target

    @abc.abstractmethod
    async def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                    stdin: bytes | None = None) -> Process:
        """Start ``argv`` in the container; its output as readers. ``RuntimeError_`` if it cannot start."""

    async def generation(self) -> object | None:
        """What identifies the running container (it changes when it restarts); None when it does not run."""
        try:
            st = await self.runtime.container_status(self.target.sandbox_id, self.target.container)
        except RuntimeError_:
            return None
        if st.state is not ContainerState.RUNNING:
            return None
        return (st.container_id, st.attempt, st.started_at)

    def runtime_line(self, stderr: bytes) -> bytes | None:
        """The last line of a command's stderr if the runtime wrote it (not the command); else None."""
        return None

    def workdir(self) -> Path | None:
        """The container's work directory on the host, where the router serves files itself (None: it has none)."""
        return self.runtime.workdir(self.target.sandbox_id, self.target.container)


#: Exit code of runsc when it fails itself (its ``Fatalf``), rather than the command.
RUNTIME_FAILED = 128
#: How runsc's own failure messages start (runsc/cmd/exec.go).
_RUNTIME_PREFIXES = (b"executing processes for container", b"waiting on pid", b"loading container")


class _ExecProcess(Process):
    """A ``PodRuntime.exec`` stream as a ``Process``: killing it ends the command inside."""

    def __init__(self, stream: Stream, feeder: asyncio.Future[None] | None) -> None:
        self._stream = stream
        self._feeder = feeder

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._stream.process.stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._stream.process.stderr

    async def wait(self) -> int:
        return await self._stream.process.wait()

    async def kill(self) -> None:
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()
        await self._stream.process.kill()
        with contextlib.suppress(Exception):
            await self._stream.close()


class ExecBackend(Backend):
    """Commands through ``PodRuntime.exec`` (a ``runsc exec`` each), files in the host work directory."""

    needs_generation = True

    @property
    def home(self) -> str | None:  # type: ignore[override]
        # /app where the container has the host-served work directory; else the image's own working directory.
        return SANDBOX_WORKDIR if self.workdir() is not None else None

    async def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                    stdin: bytes | None = None) -> Process:
        stream = await self.runtime.exec(self.target.sandbox_id, self.target.container, argv,
                                         stdin=stdin is not None, env=env, cwd=cwd)
        feeder = None
        if stdin is not None:
            async def feed() -> None:
                with contextlib.suppress(OSError, RuntimeError_, ConnectionError):
                    if stdin:
                        await stream.write(stdin)
                    await stream.close_stdin()

            feeder = asyncio.ensure_future(feed())
        return _ExecProcess(stream, feeder)

    def runtime_line(self, stderr: bytes) -> bytes | None:
        line = stderr.rstrip(b"\n").rpartition(b"\n")[2]
        if (self.target.sandbox_id.encode() in line or b"urpc method" in line
                or line.startswith(_RUNTIME_PREFIXES)):
            return line
        return None


class Targets:
    """Which container and address a sandbox's requests reach; see the module docstring."""

    def __init__(self, runtime: PodRuntime, *, ttl: float = TARGET_TTL) -> None:
        self.runtime = runtime
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Target]] = {}

    async def find(self, sandbox_id: str) -> Target:
        """The target of a Ready sandbox; ``SandboxNotRunning`` (runtime's) when nothing runs in it."""
        now = time.monotonic()
        hit = self._cache.get(sandbox_id)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        st = await self.runtime.pod_sandbox_status(sandbox_id)
        running = [c.name for c in st.containers if c.state is ContainerState.RUNNING]
        if st.state is not PodSandboxState.READY or not running:
            self._cache.pop(sandbox_id, None)
            raise SandboxNotRunning(f"pod sandbox {sandbox_id} has no running container")
        target = Target(sandbox_id=sandbox_id, container=running[0], ip=st.ip)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[sandbox_id] = (now, target)
        return target

    def cached(self, sandbox_id: str) -> Target | None:
        hit = self._cache.get(sandbox_id)
        return hit[1] if hit is not None else None

    def forget(self, sandbox_id: str) -> None:
        """Look the sandbox up afresh next time (it stopped, restarted, or its address failed)."""
        self._cache.pop(sandbox_id, None)
