"""The runtime contract: what controllers and sandboxd may ask of a runtime.

Call order, for one sandbox id:

1. ``start(spec)``: create the sandbox's disk (writable layer, work directory,
   volumes) if missing and start its main process. Idempotent: starting a
   running sandbox returns its state. Returns once the sandbox accepts
   ``spawn``.
2. ``spawn(id, argv, ...)`` any number of times while it runs; ``exec`` is the
   buffered form. The default cwd is ``WORKDIR_MOUNT`` (``/app``); ``env`` adds
   to the main process' environment. ``Process.kill`` ends the command and
   everything it started inside the sandbox; a signal N reads as exit 128+N.
3. ``stop(id)``: end every process, keep the disk (Suspended). ``start`` again
   resumes on the same disk. May take seconds (gVisor: ~1.5 s): callers run it
   off their hot path. Or ``hibernate(id)`` where ``supports_hibernation``:
   stop, keeping the memory too; the next ``start`` of the same spec restores
   the processes where they were.
4. ``remove(id)``: end every process and delete the disk. Idempotent.

``state(id)`` and ``list()`` may be called at any time, also by a control plane
that restarted and is re-adopting what still runs.

Implementations must: never run sandboxed code unisolated; keep ids
prefix-free (see ``sandbox_id``, checked by ``validate_id``); confine
``workdir`` to the sandbox's own directory; cap captured output
(``ExecResult.truncated``); keep ``state`` and ``list`` cheap (no subprocess
per call: a control plane asks about thousands of sandboxes).

Implementations: ``turbok.runtime.gvisor.RunscRuntime`` (the default) and
``turbok.runtime.bubblewrap.BubblewrapRuntime`` (only where runsc is missing);
``turbok.runtime.factory.make_runtime`` picks. See docs/runtime.md.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from turbok.runtime.errors import InvalidSandboxSpec, RuntimeError_, SandboxNotRunning

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "ID_LENGTH",
    "WORKDIR_MOUNT",
    "ExecResult",
    "Isolation",
    "Phase",
    "Process",
    "Runtime",
    "RuntimeError_",
    "RuntimeState",
    "SandboxSpec",
    "SandboxNotRunning",
    "VolumeMount",
    "sandbox_id",
    "validate_id",
]

#: Default cap on captured stdout and stderr, each (documented in docs/runtime.md).
DEFAULT_OUTPUT_LIMIT = 4 * 1024 * 1024

#: Every runtime id has exactly this many characters (runsc matches ids by prefix).
ID_LENGTH = 24
_ID_RE = re.compile(rf"[a-z0-9]{{{ID_LENGTH}}}")

#: Where the sandbox's work directory (``Runtime.workdir``) appears inside it; the
#: default cwd of ``spawn``/``exec`` and ``$SANDBOX_BASE_DIR``.
WORKDIR_MOUNT = "/app"


class Isolation(enum.StrEnum):
    GVISOR = "gvisor"
    BUBBLEWRAP = "bubblewrap"


class Phase(enum.StrEnum):
    RUNNING = "Running"
    STOPPED = "Stopped"  # disk kept, no processes (Suspended or exited)
    ABSENT = "Absent"  # nothing on disk


def sandbox_id(uid: str) -> str:
    """A fixed-width, prefix-free runtime id derived from an object's uid.

    runsc matches container ids by prefix, so ids must never be prefixes of
    each other: all ids have the same length.
    """
    return "tk" + hashlib.sha256(uid.encode()).hexdigest()[: ID_LENGTH - 2]


def validate_id(id: str) -> str:
    """Return ``id`` if it is a runtime id (24 characters of ``[a-z0-9]``), else raise.

    Fixed width keeps ids prefix-free; the alphabet keeps them safe as file
    names, cgroup names and runsc arguments.
    """
    if not _ID_RE.fullmatch(id):
        raise InvalidSandboxSpec(
            f"invalid sandbox id {id!r}: want {ID_LENGTH} characters of [a-z0-9] (see sandbox_id)"
        )
    return id


@dataclass(frozen=True)
class VolumeMount:
    """A directory kept on the host under the sandbox, mounted at ``mount_path``."""

    name: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a runtime needs to run one sandbox; built from a pod template."""

    id: str
    hostname: str
    image: str
    command: Sequence[str] = ()
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    #: CPU limit in millicores, memory limit in bytes; None means unlimited.
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    #: Host tasks the sandbox may use (``turbok.dev/pids-limit``); None: the runtime's default.
    pids_limit: int | None = None
    #: "none" (default, no network at all) or "loopback" (a private lo only).
    #: Under gVisor both are ``--network=none``: a private loopback and nothing else.
    network: str = "none"
    volumes: Sequence[VolumeMount] = ()
    #: Bytes the sandbox may write (writable layer, /app, volumes, logs: its own disk), from
    #: ``resources.limits.ephemeral-storage``; None means the runtime's default (docs/runtime.md).
    ephemeral_storage_bytes: int | None = None


@dataclass(frozen=True)
class RuntimeState:
    id: str
    phase: Phase
    isolation: Isolation
    #: Host pid of the sandbox (runsc's sandbox process, bwrap's init) while running.
    pid: int | None = None
    #: Exit code of the main process once it has exited on its own.
    exit_code: int | None = None
    message: str = ""
    #: Why a sandbox is not running, CamelCase for a condition's reason: ``Exited``
    #: (main process ended), ``OOMKilled`` (memory limit), ``PidsLimit`` (task limit),
    #: ``Stopped`` (``stop`` or never started), ``Hibernated`` (stopped with its memory saved),
    #: ``Crashed`` (ended, cause unknown).
    #: Empty while running, unless it runs degraded: ``DiskFailed`` (its disk turned read-only
    #: after a write error; ``start`` restarts it on a checked disk).
    reason: str = ""

    @property
    def degraded(self) -> bool:
        """Running but unhealthy (``reason`` says why): ``start`` it again to recover."""
        return self.phase is Phase.RUNNING and bool(self.reason)


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool = False
    #: True when stdout or stderr was cut at the output limit.
    truncated: bool = False
    #: True when the command was killed because its output passed the limit
    #: (``turbok.runtime.process.collect`` with ``flood_grace``).
    stopped: bool = False


class Process(abc.ABC):
    """A process started by ``Runtime.spawn``, with its output as streams."""

    @property
    @abc.abstractmethod
    def stdout(self) -> asyncio.StreamReader: ...

    @property
    @abc.abstractmethod
    def stderr(self) -> asyncio.StreamReader: ...

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the process and return its exit code."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Kill the process and everything it started inside the sandbox."""


class Runtime(abc.ABC):
    """One machine's way of running sandboxes. See the module docstring."""

    isolation: Isolation
    #: Whether ``hibernate`` keeps a sandbox's memory for the next ``start``.
    supports_hibernation: bool = False

    @abc.abstractmethod
    async def start(self, spec: SandboxSpec) -> RuntimeState: ...

    async def hibernate(self, id: str) -> None:
        """Stop a running sandbox, saving its memory: the next ``start`` of the same spec resumes it
        (processes, open files, tmpfs) instead of booting. Runtimes that cannot raise."""
        raise RuntimeError_(f"sandbox {id}: this runtime ({self.isolation.value}) cannot hibernate")

    @abc.abstractmethod
    async def stop(self, id: str) -> None: ...

    @abc.abstractmethod
    async def remove(self, id: str) -> None: ...

    @abc.abstractmethod
    async def state(self, id: str) -> RuntimeState: ...

    async def states(self, ids: Sequence[str]) -> dict[str, RuntimeState]:
        """States of many sandboxes at once (a periodic check of all of them); ids that fail are left out."""
        found: dict[str, RuntimeState] = {}
        for id in ids:
            with contextlib.suppress(RuntimeError_):
                found[id] = await self.state(id)
        return found

    @abc.abstractmethod
    async def list(self) -> list[str]:
        """Ids of every sandbox with something on disk."""

    @abc.abstractmethod
    async def spawn(
        self,
        id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Process: ...

    async def exec(
        self,
        id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> ExecResult:
        """Run ``argv`` to completion; on timeout kill it: exit code 124, ``timed_out``."""
        from turbok.runtime.process import collect

        proc = await self.spawn(id, argv, env=env, cwd=cwd, stdin=stdin)
        return await collect(proc, timeout=timeout, output_limit=output_limit)

    @abc.abstractmethod
    def workdir(self, id: str) -> Path:
        """Host path of the sandbox's work directory (``/app`` inside)."""

