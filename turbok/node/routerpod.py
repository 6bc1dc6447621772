"""The router's mirror Pod and ``sandbox-router-svc``: the router as the official client finds it.

On a cluster the Agent Sandbox router is a Deployment behind the Service
``sandbox-router-svc`` (port 8080), and the official client's default
LocalTunnel mode runs ``kubectl port-forward svc/sandbox-router-svc
<local>:8080 -n agent-sandbox-system``. Here the router runs inside the
control plane, so the node stands for it the way a kubelet stands for a static
Pod: a **mirror Pod** (annotation ``kubernetes.io/config.mirror``), named
``sandbox-router-<node>``, bound to this node, owned by the Node object,
Running and Ready while the control plane serves; the node's pod workers never
run it (``turbok.node.node.MIRROR_ANNOTATION``). The Service selects it by
upstream's labels (``app.kubernetes.io/name``/``component: sandbox-router``,
port ``proxy`` 8080).

A port-forward to the Pod's port 8080 reaches the router's Unix socket
(``<home>/router.sock``, mode 0600, served by the control plane beside the
router's TCP port). The router trusts what arrives there without its own
token: only the home's owner can open the socket, and a port-forward was
authenticated by the API server (``turbok.sandboxd.router``).

``RouterPod.start`` makes the namespace ``agent-sandbox-system``, the Service
and the Pod when missing, and sets the Pod's status; it puts them back when
someone deletes them (a mirror Pod deleted gracefully is removed at once and
made again, as a kubelet does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
from pathlib import Path

from turbok import __version__
from turbok.api import meta as m
from turbok.api.status import AlreadyExists, ApiError, Conflict, NotFound
from turbok.node.client import NodeClient, Obj, ObjectEvent

__all__ = ["CONTAINER", "LABELS", "NAMESPACE", "PORT", "SERVICE", "RouterPod", "open_unix_connection"]

log = logging.getLogger(__name__)

NAMESPACE = "agent-sandbox-system"
SERVICE = "sandbox-router-svc"
PORT = 8080
CONTAINER = "sandbox-router"
LABELS = {"app.kubernetes.io/name": "sandbox-router", "app.kubernetes.io/component": "sandbox-router"}
MIRROR = "kubernetes.io/config.mirror"
MANAGED_BY = {"app.kubernetes.io/managed-by": "turbok"}


async def open_unix_connection(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a Unix socket, also when its path is longer than ``sun_path`` allows (through /proc)."""
    if len(os.fsencode(path)) < 100:
        return await asyncio.open_unix_connection(str(path))
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(f"/proc/self/fd/{folder}/{path.name}")
        except OSError:
            sock.close()
            raise
    finally:
        os.close(folder)
    return await asyncio.open_unix_connection(sock=sock)


class RouterPod:
    def __init__(self, client: NodeClient, *, node_name: str, socket_path: Path, host_ip: str = "127.0.0.1") -> None:
        self.client = client
        self.node_name = node_name
        self.socket_path = socket_path
        self.host_ip = host_ip
        self.name = f"sandbox-router-{node_name}"[:253]
        self.pod_kind = client.kinds.by_kind("v1", "Pod")
        self.service_kind = client.kinds.by_kind("v1", "Service")
        self.namespace_kind = client.kinds.by_kind("v1", "Namespace")
        self.node_kind = client.kinds.by_kind("v1", "Node")
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what the node asks

    def is_mirror(self, pod: Obj) -> bool:
        md = pod.get("metadata") or {}
        return (md.get("namespace") == NAMESPACE and md.get("name") == self.name
                and MIRROR in (md.get("annotations") or {}))

    async def connect(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if port != PORT:
            raise ApiError(f"dial tcp4 127.0.0.1:{port}: connect: connection refused (the router serves port {PORT})")
        try:
            return await open_unix_connection(self.socket_path)
        except OSError as e:
            raise ApiError(f"the router does not answer on {self.socket_path.name}: {e.strerror or e}") from None

    # -- the objects

    def pod(self, node_uid: str | None) -> Obj:
        spec: Obj = {
            "nodeName": self.node_name,
            "containers": [{"name": CONTAINER, "image": f"turbok/sandbox-router:{__version__}",
                            "ports": [{"name": "proxy", "containerPort": PORT, "protocol": "TCP"}]}],
            "tolerations": [{"operator": "Exists", "effect": "NoExecute"}],
        }
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]
        md: Obj = {"name": self.name, "namespace": NAMESPACE, "labels": {**LABELS, **MANAGED_BY},
                   "annotations": {MIRROR: digest, "kubernetes.io/config.hash": digest,
                                   "kubernetes.io/config.source": "turbok",
                                   "kubernetes.io/config.seen": m.now()}}
        if node_uid:
            md["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node_uid,
                                      "controller": True}]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec}

    def status(self, started: str) -> Obj:
        conditions = [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": started}
                      for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                "PodScheduled")]
        return {"phase": "Running", "conditions": conditions, "hostIP": self.host_ip,
                "hostIPs": [{"ip": self.host_ip}], "startTime": started, "qosClass": "BestEffort",
                "containerStatuses": [{"name": CONTAINER, "state": {"running": {"startedAt": started}},
                                       "ready": True, "started": True, "restartCount": 0,
                                       "image": f"turbok/sandbox-router:{__version__}", "imageID": "",
                                       "containerID": f"turbok://{self.name}"}]}

    @staticmethod
    def service() -> Obj:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {**LABELS, **MANAGED_BY}},
                "spec": {"type": "ClusterIP", "selector": dict(LABELS),
                         "ports": [{"name": "proxy", "port": PORT, "targetPort": "proxy", "protocol": "TCP"}]}}

    # -- keeping them

    async def start(self) -> None:
        await self.ensure()
        self.client.subscribe(self._on_event)
        self._task = asyncio.create_task(self._keep(), name="router-mirror-pod")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_event(self, event: ObjectEvent) -> None:
        if event.namespace != NAMESPACE:
            return
        ours = event.resource == self.pod_kind.key and event.name == self.name
        if not ours and not (event.resource == self.service_kind.key and event.name == SERVICE):
            return
        if event.type == "DELETED" or (ours and event.object()["metadata"].get("deletionTimestamp")):
            self._dirty.set()

    async def _keep(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.ensure()
            except ApiError as e:  # a full disk, say: the next change tries again
                log.warning("could not put back the router's mirror Pod or Service: %s", e)

    async def ensure(self) -> None:
        if await self.client.try_get(self.namespace_kind, "", NAMESPACE) is None:
            with contextlib.suppress(AlreadyExists):
                await self.client.create(self.namespace_kind, {
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        if await self.client.try_get(self.service_kind, NAMESPACE, SERVICE) is None:
            with contextlib.suppress(AlreadyExists):
                await self.client.create(self.service_kind, self.service())
        pod = await self.client.try_get(self.pod_kind, NAMESPACE, self.name)
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            # Deleted gracefully: as a kubelet does for a mirror Pod, remove it now and make it again.
            await self.client.delete(self.pod_kind, NAMESPACE, self.name, grace_period_seconds=0,
                                     uid=pod["metadata"].get("uid"))
            pod = None
        if pod is None:
            node = await self.client.try_get(self.node_kind, "", self.node_name)
            try:
                pod = await self.client.create(self.pod_kind, self.pod(node["metadata"]["uid"] if node else None))
            except AlreadyExists:
                return  # made meanwhile; its events bring us back
        if (pod.get("status") or {}).get("phase") != "Running":
            pod["status"] = self.status(m.now())
            with contextlib.suppress(Conflict, NotFound):
                await self.client.update_status(self.pod_kind, pod)
