"""The node's side of the Pod streams: a kubelet's ``/containerLogs``, ``/exec``, ``/attach`` and ``/portForward``.

``NodeStreams`` is the ``PodStreams`` the API server's stream handlers call
(``turbok.apiserver.streaming``; the protocol is met structurally: this
package never imports the API server). The composition root
(``turbok.embedded.controlplane``) builds it over the node's ``PodRuntime``,
the pod network and the router's mirror Pod.

- **Logs** are the CRI files the runtime writes per container attempt
  (``PodRuntime.log_path``), read by ``turbok.node.logs``. Which attempt is
  the kubelet's choice (``validateContainerLogStatus``) made from the Pod's
  ``containerStatuses``: running or terminated, the current one
  (``restartCount``); waiting after a restart (CrashLoopBackOff), or
  ``previous``, the last that ended (``lastState.terminated``). Files live on
  the pod sandbox's disk, so logs outlive a control plane's restart and a
  container's, and go with the Pod. Messages are the kubelet's (400):
  ``container "c" in pod "p" is waiting to start: ContainerCreating``,
  ``previous terminated container "c" in pod "p" not found``.
- **Exec/attach** go to ``PodRuntime.exec``/``attach`` of a running
  container; otherwise ``container not found ("c")``, the kubelet's words,
  which the API server reports as ``unable to upgrade connection: ...``.
  Closing an exec session kills the command; closing an attach detaches.
- **Port-forward** opens a TCP connection from the host to the Pod's address
  (``turbok.runtime.network.PodNetwork.connect``); the router's mirror Pod
  (``turbok.node.routerpod``) is forwarded to the router's Unix socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from turbok.api.status import ApiError, BadRequest
from turbok.node import logs as container_logs
from turbok.node import podspec
from turbok.node.client import Obj
from turbok.node.routerpod import RouterPod
from turbok.node.suspend import runtime_id as default_runtime_id
from turbok.runtime.cri import ContainerState, PodRuntime, Stream
from turbok.runtime.errors import RuntimeError_
from turbok.runtime.network import NetworkError, PortNotListening

__all__ = ["NodeStreams", "PodConnector", "pick_attempt"]


class PodConnector(Protocol):
    """What port-forward needs of the pod network (``PodNetwork`` is one)."""

    async def connect(self, target: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...


def _status_of(pod: Obj, container: str) -> Obj | None:
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for entry in status.get(key) or []:
            if entry.get("name") == container:
                return dict(entry)
    return None


def pick_attempt(pod: Obj, container: str, *, previous: bool) -> int:
    """Which attempt's log to read, as the kubelet decides it; ``BadRequest`` with its message otherwise.

    Attempts count from 0; the one running (or last terminated) is ``restartCount``.
    """
    name = pod["metadata"]["name"]
    status = _status_of(pod, container)
    if status is None:
        raise BadRequest(f'container "{container}" in pod "{name}" is not available')
    restarts = int(status.get("restartCount") or 0)
    state = status.get("state") or {}
    last = (status.get("lastState") or {}).get("terminated")
    if previous:
        if not last:
            raise BadRequest(f'previous terminated container "{container}" in pod "{name}" not found')
        # Running again (or ended again): the previous is the one before. Waiting: the last that ran.
        return restarts if "waiting" in state else restarts - 1
    if "running" in state or "terminated" in state:
        return restarts
    if last:
        return restarts
    reason = (state.get("waiting") or {}).get("reason") or ""
    if reason == "ErrImagePull":
        raise BadRequest(f'container "{container}" in pod "{name}" is waiting to start: image can\'t be pulled')
    if reason == "ImagePullBackOff":
        raise BadRequest(f'container "{container}" in pod "{name}" is waiting to start: '
                         "trying and failing to pull image")
    if reason:
        raise BadRequest(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
    raise BadRequest(f'container "{container}" in pod "{name}" is waiting to start - no logs yet')


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover (makes this an async generator)


class _Session:
    """A runtime ``Stream`` as the API server's ``ProcessStream``."""

    def __init__(self, stream: Stream, *, attach: bool) -> None:
        self.stream = stream
        self.attach = attach

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        return self.stream.process.stdout

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        return self.stream.process.stderr

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)

    async def close_stdin(self) -> None:
        await self.stream.close_stdin()

    async def resize(self, columns: int, rows: int) -> None:
        await self.stream.resize(columns, rows)

    async def wait(self) -> int:
        return await self.stream.process.wait()

    async def close(self) -> None:
        await self.stream.close()  # attach: detach (the container goes on); exec: kill the command
        if not self.attach:
            await self.stream.process.kill()  # also where a runtime's stream has nothing to close


class NodeStreams:
    """``PodStreams`` over this node's runtime and pod network; see the module docstring."""

    def __init__(self, runtime: PodRuntime, *, network: PodConnector | None = None, router: RouterPod | None = None,
                 node_name: str | None = None, runtime_id: Callable[[Obj], str] = default_runtime_id) -> None:
        self.runtime = runtime
        self.network = network
        self.router = router
        self.node_name = node_name
        self.runtime_id = runtime_id

    def _check_here(self, pod: Obj) -> None:
        node = (pod.get("spec") or {}).get("nodeName")
        if self.node_name is not None and node != self.node_name:
            raise ApiError("pod does not exist")  # the kubelet's 404 for a Pod that is not its own

    async def logs(self, pod: Obj, container: str, *, follow: bool = False, previous: bool = False,
                   since: float | None = None, timestamps: bool = False, tail_lines: int | None = None,
                   limit_bytes: int | None = None) -> AsyncIterator[bytes]:
        if self.router is not None and self.router.is_mirror(pod):
            return _nothing()  # the router logs to the control plane's log, not to a container log
        self._check_here(pod)
        attempt = pick_attempt(pod, container, previous=previous)
        rid = self.runtime_id(pod)
        path = self.runtime.log_path(rid, container, attempt)
        if previous and not path.exists():
            raise BadRequest(f'previous terminated container "{container}" in pod '
                             f'"{pod["metadata"]["name"]}" not found')

        async def running() -> bool:
            status = await self.runtime.container_status(rid, container)
            return status.state == ContainerState.RUNNING and status.attempt == attempt

        # A file not there yet (nothing written so far) reads empty, or is waited for by a follow.
        return container_logs.read_log(path, follow=follow, tail_lines=tail_lines, since=since,
                                       timestamps=timestamps, limit_bytes=limit_bytes, running=running)

    async def _running_container(self, pod: Obj, container: str) -> str:
        if self.router is not None and self.router.is_mirror(pod):
            raise ApiError(f'container not found ("{container}"): the router runs inside the turbok control '
                           "plane, not in a container")
        self._check_here(pod)
        rid = self.runtime_id(pod)
        status = await self.runtime.container_status(rid, container)
        if status.state != ContainerState.RUNNING:
            raise ApiError(f'container not found ("{container}")')
        return rid

    async def exec(self, pod: Obj, container: str, command: Sequence[str], *, stdin: bool, stdout: bool,
                   stderr: bool, tty: bool) -> _Session:
        rid = await self._running_container(pod, container)
        try:
            stream = await self.runtime.exec(rid, container, command, tty=tty, stdin=stdin)
        except RuntimeError_ as e:
            raise ApiError(f"error executing command in container: {e}") from e
        return _Session(stream, attach=False)

    async def attach(self, pod: Obj, container: str, *, stdin: bool, stdout: bool, stderr: bool,
                     tty: bool) -> _Session:
        rid = await self._running_container(pod, container)
        try:
            stream = await self.runtime.attach(rid, container)
        except RuntimeError_ as e:
            raise ApiError(f"error attaching to container: {e}") from e
        return _Session(stream, attach=True)

    async def port_forward(self, pod: Obj, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.router is not None and self.router.is_mirror(pod):
            return await self.router.connect(port)
        self._check_here(pod)
        if self.network is None:
            raise ApiError("this node runs Pods without a pod network: there is no address to forward to")
        status: dict[str, Any] = pod.get("status") or {}
        rid = self.runtime_id(pod)
        try:
            try:
                return await self.network.connect(rid, port)
            except PortNotListening:
                # The sandboxd agent starts on demand (``PodRuntime.ensure_agent``): SandboxdPodTunnel's first call.
                if port not in podspec.agent(pod).get("agent_ports", ()) or not await self.runtime.ensure_agent(rid):
                    raise
                return await self.network.connect(rid, port)
        except PortNotListening:
            where = status.get("podIP") or "the pod"
            raise ApiError(f"dial tcp4 {where}:{port}: connect: connection refused") from None
        except NetworkError as e:
            raise ApiError(str(e)) from e
