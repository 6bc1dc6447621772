"""The pod runtime contract: what a node asks of a runtime, shaped like the Kubernetes CRI.

A kubelet talks to containerd or CRI-O through the Container Runtime Interface
(``RunPodSandbox``, ``CreateContainer``, ``StartContainer``, ``StopContainer``,
``ContainerStatus``, ``ExecSync``/``Exec``, ``Attach``, ``PortForward``,
``StopPodSandbox``, ``RemovePodSandbox``). turbok's node (``turbok.node``) talks
to ``PodRuntime`` the same way, so what a node does stays what a kubelet does,
and what a runtime does stays what a CRI runtime does:

- one **pod sandbox** per Pod: one gVisor sandbox (``runsc``) holding every
  container of the Pod, with the Pod's network namespace, its bounded disk
  (``turbok.runtime.disk``: every container's writable layer, emptyDirs and
  logs) and its hostname;
- **containers** inside it, each with its own root filesystem (the image under
  a writable layer), command, env, working directory, mounts, security context
  and limits; started, stopped, restarted and inspected one by one. The node
  decides when (init containers in order, restart policy, back-off, probes);
  the runtime only does what it is told and reports what happened.

Call order, for one pod sandbox id (``sandbox_id``, fixed width, prefix-free):

1. ``run_pod_sandbox(config)``: make the disk, the network namespace (through
   ``PodSandboxConfig.network``) and the sandbox itself. Idempotent.
2. ``start_container(id, container)`` for each container the node wants
   running, any number of times (a restart is a new ``attempt``: its logs go to
   a new file, the previous attempt's stay readable for ``--previous``).
3. ``container_status`` / ``pod_sandbox_status`` at any time (cheap: no
   subprocess; a node asks about every container every few seconds);
   ``exec`` / ``attach`` into a running container; ``log_path`` for its logs.
4. ``stop_container(id, name, grace)``: SIGTERM (or the image's stop signal),
   then SIGKILL after ``grace`` seconds.
5. ``stop_pod_sandbox(id)``: every container stopped, the sandbox ended, the
   disk and network kept (a Pod being deleted may still be restarted on
   them: hibernation, suspend). ``hibernate_pod_sandbox(id)`` where
   ``supports_hibernation``: the same, keeping memory and processes too; the
   next ``run_pod_sandbox`` of the same config restores them.
6. ``remove_pod_sandbox(id)``: everything gone (disk, network, logs). Idempotent.

Implementations must never run a container's code outside the sandbox, keep
``*_status`` free of subprocesses, and report a container's end precisely
(exit code, ``OOMKilled``, ``Error``, ``Completed``; ``ContainerStatus``).

Additions since the first version (all additive, with defaults; helper C, issue 10):
``PodSandboxConfig.single_container`` (the node says at most one container runs at a
time: the runtime may run each as its sandbox's root, today's fast path, and the only
shape runsc 20221219 can hibernate), ``ContainerStatus.notes`` and
``PodSandboxStatus.notes`` (what the runtime could not honour, for the node's events),
``Stream.close`` (end a stream: detach from ``attach``, kill an ``exec``),
``PodRuntime.workdir`` (the host-served work directory of a container, for the
router's files API), ``PodSandboxConfig.agent_container``/``agent_ports`` and
``PodRuntime.before_hibernate`` (issue 11: where the runtime's ``Injection``, the sandboxd
agent, runs, ``turbok.runtime.injection``; hooks run before hibernating, so the router
drops its connections into the pod) and ``HibernationUnsupported`` (``turbok.runtime.errors``; also a
``NotImplementedError``). Implementations: ``turbok.runtime.pods_gvisor.GvisorPodRuntime``
and ``turbok.runtime.pods_bubblewrap.BubblewrapPodRuntime``; ``make_pod_runtime``
(``turbok.runtime.factory``) picks one. See docs/runtime.md, "Pods".

Snapshots (issue 11, helper F; where ``supports_snapshots``): ``snapshot_pod_sandbox(id,
snapshot_id)`` saves a running pod's memory and disk under ``snapshot_id`` and leaves it
running (it pauses for the time of a checkpoint and a restore); ``restore_pod_sandbox(config,
snapshot_id)`` makes the pod ``config.id`` (new: a fork; existing: a restore, its own state
dropped) run from that snapshot, its containers running as they were (as after a resume from
hibernation: the next ``start_container`` of the same name returns the restored one);
``list_snapshots``, ``snapshot_info``, ``remove_snapshot``. Layout: ``turbok.runtime.snapshotstore``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from turbok.runtime.exits import ExitWatch
from turbok.runtime.images import ImageStore
from turbok.runtime.process import Process
from turbok.runtime.snapshotstore import SnapshotInfo

__all__ = [
    "WORKDIR_MOUNT",
    "Capabilities",
    "ContainerConfig",
    "ContainerState",
    "ContainerStatus",
    "DeviceNode",
    "DNSConfig",
    "Isolation",
    "Mount",
    "PodRuntime",
    "PodSandboxConfig",
    "PodSandboxState",
    "PodSandboxStatus",
    "SecurityContext",
    "SnapshotInfo",
    "Stream",
    "VolumeConfig",
]


#: Where a container's host-served work directory (``PodRuntime.workdir``) appears inside it:
#: ``SANDBOX_BASE_DIR`` of the images that have one (the router's files API serves it).
WORKDIR_MOUNT = "/app"


class Isolation(enum.StrEnum):
    """What keeps a pod from the host: gVisor (the default), or bubblewrap (the fallback, host kernel)."""

    GVISOR = "gvisor"
    BUBBLEWRAP = "bubblewrap"


@dataclass(frozen=True)
class Capabilities:
    add: Sequence[str] = ()
    drop: Sequence[str] = ()


@dataclass(frozen=True)
class SecurityContext:
    """A container's effective security context (pod-level values already merged in by the node)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: Sequence[int] = ()
    read_only_root_filesystem: bool = False
    allow_privilege_escalation: bool = True
    capabilities: Capabilities = field(default_factory=Capabilities)


@dataclass(frozen=True)
class VolumeConfig:
    """A pod volume as the runtime sees it.

    ``kind``: ``emptyDir`` (a directory on the pod's disk; ``medium: Memory`` is
    ``memory``, a tmpfs inside the sandbox bounded by ``size_bytes``), ``files``
    (configMap, secret, downwardAPI, projected: the node gives the contents in
    ``files``, path -> (bytes, mode); the runtime writes them and mounts them
    read-only, updating them on ``update_volume``), or ``host`` (a directory the
    node prepared, e.g. a local PersistentVolume: ``host_path``).
    """

    name: str
    kind: str
    size_bytes: int | None = None
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)
    host_path: Path | None = None


@dataclass(frozen=True)
class DeviceNode:
    """A host device node given to a container (a CDI ``deviceNodes`` entry, its numbers read from the host)."""

    path: str
    host_path: str
    type: str = "c"
    major: int = 0
    minor: int = 0
    permissions: str = "rwm"
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class Mount:
    volume: str
    container_path: str
    read_only: bool = False
    sub_path: str = ""


@dataclass(frozen=True)
class DNSConfig:
    """A pod's resolver settings (CRI's DNSConfig): ``nameserver``, ``search`` and ``options`` lines."""

    servers: Sequence[str] = ()
    searches: Sequence[str] = ()
    options: Sequence[str] = ()

    def resolv_conf(self) -> str:
        lines = [f"nameserver {s}" for s in self.servers]
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "".join(f"{line}\n" for line in lines)


#: ``field`` metadata of a setting that says how the runtime goes about a pod or a container (how urgently
#: it boots), not what it is: configs that differ only there ask for the same thing (``essence``).
MANNER = "manner"

_Config = TypeVar("_Config", "PodSandboxConfig", "ContainerConfig")


def essence(config: _Config) -> _Config:
    """``config`` with every ``MANNER`` setting at its default: what to compare to tell whether a running,
    hibernated or snapshotted pod or container is the one asked for."""
    defaults: dict[str, Any] = {f.name: f.default for f in fields(config) if f.metadata.get(MANNER)}
    return replace(config, **defaults)


@dataclass(frozen=True)
class PodSandboxConfig:
    """Everything shared by the containers of one Pod."""

    id: str
    name: str
    namespace: str
    uid: str
    hostname: str
    volumes: Sequence[VolumeConfig] = ()
    #: The pod's limits, summed over its containers (None: the runtime's defaults).
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    pids_limit: int | None = None
    ephemeral_storage_bytes: int | None = None
    #: True: the pod gets its own network namespace with an address on the node's pod network
    #: (``turbok.runtime.network``); False: only a private loopback (no address outside).
    network: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: True when at most one container of the Pod runs at any time (one regular container;
    #: init containers, which run one by one before it, without ``restartPolicy: Always``).
    #: The runtime may then run each container as the root of its own sandbox on the pod's
    #: disk and network: no pause process (a faster boot) and, under runsc 20221219, the only
    #: shape ``hibernate_pod_sandbox`` supports. Starting a second container while one runs
    #: is then refused (``InvalidSandboxSpec``).
    single_container: bool = False
    #: The pod's /etc/resolv.conf (CRI's DNSConfig), written into every container as a kubelet's is
    #: bind-mounted; None: the image's own.
    dns: DNSConfig | None = None
    #: The container the runtime's ``Injection`` (the sandboxd agent) goes into ("" for none), and the
    #: ports it serves the public sandboxd API on besides its private one (``turbok.runtime.injection``).
    agent_container: str = ""
    agent_ports: Sequence[int] = ()
    #: True: the agent starts on the first call that needs it (``PodRuntime.ensure_agent``), not with its
    #: container: a sandbox nobody reaches through sandboxd costs neither the agent's start (a Python
    #: interpreter's, 0.3-0.5 s of a core under runsc's ptrace platform) nor its memory (about 15 MiB).
    agent_on_demand: bool = True
    #: The pod was given NVIDIA GPUs (dynamic resource allocation): its sandbox proxies the NVIDIA driver's
    #: ioctls (runsc ``--nvproxy``); the device nodes themselves are each container's ``devices``.
    nvproxy: bool = False
    #: True: nobody waits for this pod (a warm pool's refill): its boots yield the CPU to everything else.
    background: bool = field(default=False, metadata={MANNER: True})


@dataclass(frozen=True)
class ContainerConfig:
    name: str
    image: str
    command: Sequence[str] = ()
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    mounts: Sequence[Mount] = ()
    security: SecurityContext = field(default_factory=SecurityContext)
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    #: Keep stdin open for ``attach`` (``stdin: true``); ``tty``: give it a terminal.
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    #: Which run of this container this is (0 first, +1 per restart): names its log file.
    attempt: int = 0
    #: Host device nodes the container gets (a DRA driver's CDI ``deviceNodes``).
    devices: Sequence[DeviceNode] = ()
    #: True: nobody waits for this start (a warm pool's refill): a boot it makes yields the CPU to everything
    #: else. False: someone does (a claim's cold start), so the boot runs at the control plane's own priority.
    background: bool = field(default=False, metadata={MANNER: True})


class Stream(abc.ABC):
    """A process started by ``exec`` or reached by ``attach``, for streaming (kubectl exec/attach).

    ``stdout`` carries the terminal's output when ``tty`` (``stderr`` is then empty); ``write`` feeds
    stdin (when opened with it), ``close_stdin`` sends EOF; ``resize`` sets the terminal size.
    """

    @property
    @abc.abstractmethod
    def process(self) -> Process: ...

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close_stdin(self) -> None: ...

    @abc.abstractmethod
    async def resize(self, columns: int, rows: int) -> None:
        """Set the terminal size (a no-op without a tty)."""

    async def close(self) -> None:  # noqa: B027 (optional: streams without anything to release)
        """Stop streaming: ``attach`` detaches (the container goes on), ``exec`` kills its command if it
        still runs. Idempotent."""


class ContainerState(enum.StrEnum):
    CREATED = "Created"
    RUNNING = "Running"
    EXITED = "Exited"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    state: ContainerState
    attempt: int = 0
    #: ``<runtime>://<id>`` as a kubelet reports ``containerID``.
    container_id: str = ""
    image: str = ""
    image_id: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    #: Why it ended, as a kubelet's ``terminated.reason``: ``Completed``, ``Error``, ``OOMKilled``,
    #: ``ContainerCannotRun`` (it never started: ``message`` says why).
    reason: str = ""
    message: str = ""
    #: What the runtime could not honour of the container's config, one sentence each (the node
    #: turns them into Events): e.g. a per-container memory limit in a shared gVisor sandbox.
    notes: Sequence[str] = ()


class PodSandboxState(enum.StrEnum):
    READY = "Ready"
    NOT_READY = "NotReady"  # stopped, failed, or hibernated (``reason``)
    ABSENT = "Absent"


@dataclass(frozen=True)
class PodSandboxStatus:
    id: str
    state: PodSandboxState
    isolation: Isolation
    #: The pod's address on the node's pod network ("" without one).
    ip: str = ""
    reason: str = ""
    message: str = ""
    containers: Sequence[ContainerStatus] = ()
    #: What the runtime could not honour of the pod's config (e.g. an unbounded disk).
    notes: Sequence[str] = ()


class PodRuntime(abc.ABC):
    """A CRI-shaped runtime for Pods. See the module docstring for the call order."""

    isolation: Isolation
    supports_hibernation: bool = False
    supports_snapshots: bool = False
    #: Where the runtime tells which pod sandboxes' processes ended (``turbok.runtime.exits``); None: it
    #: cannot, and the node polls every sandbox (``NodeSettings.relist_seconds``).
    exits: ExitWatch | None = None

    def before_hibernate(self, hook: Callable[[str], Awaitable[None]]) -> None:
        """Run ``hook(id)`` before hibernating pod sandbox ``id`` (runsc cannot save a TCP connection into it,
        nor one closed in the last 60 s: whoever holds connections to pods closes them here, with a reset)."""
        hooks: list[Callable[[str], Awaitable[None]]] = self.__dict__.setdefault("_hibernate_hooks", [])
        hooks.append(hook)

    async def ensure_agent(self, id: str) -> bool:
        """Start the ``Injection`` (the sandboxd agent) in pod ``id``'s ``agent_container`` unless it already
        serves; whether it serves now. Concurrent calls share one start; False where the pod has no agent,
        does not run, or the agent failed to start (a note on the container's status says why)."""
        return False

    async def run_hibernate_hooks(self, id: str) -> None:
        """Run the ``before_hibernate`` hooks (implementations call this first in ``hibernate_pod_sandbox``)."""
        for hook in self.__dict__.get("_hibernate_hooks", []):
            await hook(id)
    #: The image service (CRI's ImageService): the node pulls through it before ``start_container``
    #: (``ImageStore.pull``, off the event loop); None: the runtime resolves images itself.
    images: ImageStore | None = None

    @abc.abstractmethod
    async def run_pod_sandbox(self, config: PodSandboxConfig) -> PodSandboxStatus: ...

    @abc.abstractmethod
    async def stop_pod_sandbox(self, id: str) -> None: ...

    async def hibernate_pod_sandbox(self, id: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot hibernate")

    @abc.abstractmethod
    async def remove_pod_sandbox(self, id: str) -> None: ...

    @abc.abstractmethod
    async def pod_sandbox_status(self, id: str) -> PodSandboxStatus: ...

    @abc.abstractmethod
    async def list_pod_sandboxes(self) -> list[str]: ...

    @abc.abstractmethod
    async def start_container(self, id: str, container: ContainerConfig) -> ContainerStatus:
        """Create and start ``container`` in the pod sandbox ``id`` (replacing an exited one of that name)."""

    @abc.abstractmethod
    async def stop_container(self, id: str, name: str, grace: float) -> ContainerStatus: ...

    @abc.abstractmethod
    async def container_status(self, id: str, name: str) -> ContainerStatus: ...

    @abc.abstractmethod
    async def exec(self, id: str, name: str, argv: Sequence[str], *, tty: bool = False,
                   stdin: bool = False, env: Mapping[str, str] | None = None,
                   cwd: str | None = None) -> Stream:
        """Run ``argv`` in container ``name`` (its root filesystem, env, user and cwd unless given)."""

    @abc.abstractmethod
    async def attach(self, id: str, name: str) -> Stream:
        """The container's main process' stdin/stdout/stderr (stdin only where ``ContainerConfig.stdin``)."""

    @abc.abstractmethod
    def log_path(self, id: str, name: str, attempt: int) -> Path:
        """The host file holding that attempt's output (CRI log format: ``<time> <stream> <F|P> <text>``)."""

    def workdir(self, id: str, name: str) -> Path | None:
        """Host path of container ``name``'s work directory, when its image has one served from the host
        (``SANDBOX_BASE_DIR`` in the image table: ``/app`` of the runtime API image), else None."""
        return None

    async def snapshot_pod_sandbox(self, id: str, snapshot_id: str) -> SnapshotInfo:
        """Save the running pod ``id`` (memory and disk) as ``snapshot_id``; the pod goes on running."""
        from turbok.runtime.errors import SnapshotUnsupported

        raise SnapshotUnsupported(f"{type(self).__name__} cannot take snapshots")

    async def restore_pod_sandbox(self, config: PodSandboxConfig, snapshot_id: str) -> PodSandboxStatus:
        """Run the pod ``config.id`` from ``snapshot_id`` (a fork when it is new; else its state is replaced)."""
        from turbok.runtime.errors import SnapshotUnsupported

        raise SnapshotUnsupported(f"{type(self).__name__} cannot restore snapshots")

    async def list_snapshots(self) -> list[str]:
        return []

    def snapshot_info(self, snapshot_id: str) -> SnapshotInfo | None:
        return None

    async def remove_snapshot(self, snapshot_id: str) -> None:  # noqa: B027 (optional: no snapshots)
        """Delete a snapshot (idempotent)."""

    async def update_volume(self, id: str, volume: VolumeConfig) -> None:
        """Replace the files of a ``files`` volume (configMap/secret changed), atomically as a kubelet does."""
        raise NotImplementedError(f"{type(self).__name__} cannot update volumes")
