"""The Node object of this machine and its Lease: what ``kubectl get nodes`` shows, and the heartbeat.

As the kubelet registers and reports itself:

- ``Node`` ``<hostname>`` (lowercased), labels ``kubernetes.io/hostname``,
  ``kubernetes.io/os``, ``kubernetes.io/arch`` (and their ``beta.`` twins);
  ``status.capacity`` from the machine: ``cpu`` (the CPUs this process may
  use), ``memory`` (MemTotal), ``pods`` (``max_pods`` when set, else what the
  machine holds: ``pods_capacity``, the allocatable memory, CPUs and pids each
  over what an idle gVisor sandbox takes; the kubelet's fixed 110 would refuse
  a warm pool of a few hundred that this machine runs), ``ephemeral-storage``
  (the size of the home's filesystem);
  ``allocatable`` = capacity less the kubelet's default hard eviction
  thresholds (memory 100Mi, ephemeral-storage 10%), and ``cpu`` = the CPUs x
  ``cpu_overcommit`` (``NodeSettings``: gVisor sandboxes idle at a thousandth
  of a core; 1 gives the kubelet's accounting); conditions
  ``MemoryPressure`` (MemAvailable < 100Mi), ``DiskPressure`` (the home's
  filesystem < 10% free), ``PIDPressure`` (over 90% of ``pid_max`` in use),
  ``Ready`` with the kubelet's reasons and messages; ``addresses``
  (InternalIP, Hostname); ``nodeInfo`` (kernel, OS image, machine and boot
  ids, architecture, ``containerRuntimeVersion`` ``gvisor://<runsc version>``,
  ``kubeletVersion`` = the API server's version).
- ``Lease`` ``kube-node-lease/<node>`` (coordination.k8s.io/v1), owned by the
  Node, ``leaseDurationSeconds: 40``, renewed every 10 s.
- The Node's status is recomputed every 10 s and written when it changed, or
  every 5 minutes (``lastHeartbeatTime``), as the kubelet does with leases.

``NodeReporter.register()`` creates or updates both at start;
``run()`` loops. Machine facts come from ``/proc`` and ``os`` (``probe_machine``),
replaceable in tests; ``refresh_machine`` re-reads only what moves (memory, tasks, free disk) for the
scheduler's host-room check (``hostroom``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import platform
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from turbok.api import meta as m
from turbok.api.limitrange import BUILTIN_DEFAULT_REQUESTS
from turbok.api.quantity import parse_quantity
from turbok.api.status import AlreadyExists, ApiError, Conflict, NotFound
from turbok.node.client import NodeClient, Obj
from turbok.node.clock import Clock, MonotonicClock

__all__ = ["LEASE_NAMESPACE", "Machine", "NodeReporter", "node_name", "pods_capacity", "probe_machine",
           "refresh_machine"]

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40
LEASE_RENEW = 10.0
STATUS_PERIOD = 10.0
STATUS_REPORT = 300.0
#: ``max_pods`` when none is given: ``pods_capacity`` of the machine.
DEFAULT_MAX_PODS = 0
#: Host tasks (processes and threads) a Sandbox's Pod uses idle: 60-61 measured with the sandboxd agent
#: (runsc 20221219, ptrace), about 41 without it (docs/runtime.md).
IDLE_POD_TASKS = 60
#: The kubelet's default hard eviction thresholds, subtracted from capacity for allocatable.
EVICTION_MEMORY = 100 * 2**20
EVICTION_DISK_FRACTION = Decimal("0.10")
#: PIDPressure above this share of ``pid_max`` in use.
PID_PRESSURE_FRACTION = 0.9

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def node_name(hostname: str | None = None) -> str:
    """This machine's Node name: its hostname, lowercased, made a DNS subdomain."""
    name = (hostname or socket.gethostname()).lower()
    name = re.sub(r"[^a-z0-9.-]", "-", name).strip("-.")[:253]
    return name or "localhost"


@dataclass(frozen=True)
class Machine:
    """What the Node object says about the machine."""

    cpus: int
    memory_bytes: int
    memory_available_bytes: int
    disk_bytes: int
    disk_available_bytes: int
    pids_used: int = 0
    pid_max: int = 4_194_304
    kernel: str = ""
    os_image: str = ""
    architecture: str = "amd64"
    machine_id: str = ""
    boot_id: str = ""
    internal_ip: str = "127.0.0.1"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return platform.system()


def probe_machine(disk: Path, internal_ip: str = "127.0.0.1") -> Machine:
    """The machine as ``/proc``, ``os`` and the filesystem of ``disk`` (the home) say (a few file reads)."""
    mem = _meminfo()
    st = os.statvfs(disk)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    pid_max = _read("/proc/sys/kernel/pid_max")
    return Machine(
        cpus=cpus,
        memory_bytes=mem.get("MemTotal", 0),
        memory_available_bytes=mem.get("MemAvailable", mem.get("MemFree", 0)),
        disk_bytes=st.f_blocks * st.f_frsize,
        disk_available_bytes=st.f_bavail * st.f_frsize,
        pids_used=_tasks(),
        pid_max=int(pid_max) if pid_max.isdigit() else 4_194_304,
        kernel=platform.release(),
        os_image=_os_image(),
        architecture=_ARCH.get(platform.machine(), platform.machine()),
        machine_id=_read("/etc/machine-id"),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        internal_ip=internal_ip,
    )


def _tasks() -> int:
    """Host tasks (processes and threads: what ``pid_max`` bounds) in use: ``/proc/loadavg``'s 4th field
    (running/total), the kernel's own count, as the kubelet's ``pid.available`` reads it (sysinfo)."""
    fields = _read("/proc/loadavg").split()
    total = fields[3].partition("/")[2] if len(fields) > 3 else ""
    return int(total) if total.isdigit() else 0


def refresh_machine(machine: Machine, disk: Path) -> Machine:
    """``machine`` with what changes by the second read again: available memory (``/proc/meminfo``), tasks
    in use (``/proc/loadavg``) and the home's free space (one ``statvfs``): three reads, no directory walk;
    the scheduler's host-room check (``hostroom``) calls it at most once a second."""
    mem = _meminfo()
    try:
        st = os.statvfs(disk)
        disk_available = st.f_bavail * st.f_frsize
    except OSError:
        disk_available = machine.disk_available_bytes
    return dataclasses.replace(machine, memory_available_bytes=mem.get("MemAvailable", mem.get("MemFree", 0)),
                               pids_used=_tasks(), disk_available_bytes=disk_available)


def pods_capacity(machine: Machine, *, pids: bool = True) -> int:
    """How many idle sandboxes the machine holds: its allocatable memory and CPUs over an idle sandbox's
    requests (``BUILTIN_DEFAULT_REQUESTS``: what a Pod asking nothing is given), and the pids under the
    PIDPressure threshold over an idle sandbox's tasks; the smallest of the three, at least 1. Without
    ``pids``: what memory and CPUs alone allow (what ``hostlimits`` wants ``kernel.pid_max`` to serve)."""
    idle = {name: parse_quantity(value) for name, value in BUILTIN_DEFAULT_REQUESTS.items()}
    by_memory = int(max(machine.memory_bytes - EVICTION_MEMORY, 0) // idle["memory"])
    by_cpu = int(machine.cpus // idle["cpu"])
    by_pids = int(machine.pid_max * PID_PRESSURE_FRACTION) // IDLE_POD_TASKS if pids else by_memory
    return max(1, min(by_memory, by_cpu, by_pids))


def _cpu(cores: Decimal) -> str:
    """A cpu quantity as the kubelet writes it: whole cores, else millicores."""
    return str(int(cores)) if cores == cores.to_integral_value() else f"{int(cores * 1000)}m"


def _ki(value: int) -> str:
    return f"{value // 1024}Ki"


@dataclass
class NodeReporter:
    """Registers the Node and its Lease, then keeps them current."""

    client: NodeClient
    name: str
    machine: Callable[[], Machine]
    runtime_version: str
    kubelet_version: str
    max_pods: int = DEFAULT_MAX_PODS
    cpu_overcommit: float = 1.0
    pod_cidr: str | None = None
    clock: Clock = field(default_factory=MonotonicClock)
    _uid: str = ""
    _last_report: float = float("-inf")
    _written: Obj = field(default_factory=dict)
    _allocatable: dict[str, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.node_kind = self.client.kinds.by_kind("v1", "Node")
        self.lease_kind = self.client.kinds.by_kind("coordination.k8s.io/v1", "Lease")
        self.namespace_kind = self.client.kinds.by_kind("v1", "Namespace")

    @property
    def allocatable(self) -> dict[str, Decimal]:
        """The Node's allocatable as numbers (cpu in cores, memory and storage in bytes, pods)."""
        return dict(self._allocatable)

    # ------------------------------------------------------------ the object

    def labels(self, machine: Machine) -> dict[str, str]:
        return {"beta.kubernetes.io/arch": machine.architecture, "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": machine.architecture, "kubernetes.io/hostname": self.name,
                "kubernetes.io/os": "linux"}

    def status(self, machine: Machine, previous: Obj) -> Obj:
        disk_alloc = int(Decimal(machine.disk_bytes) * (1 - EVICTION_DISK_FRACTION))
        mem_alloc = max(machine.memory_bytes - EVICTION_MEMORY, 0)
        pods = self.max_pods or pods_capacity(machine)
        capacity = {"cpu": str(machine.cpus), "ephemeral-storage": _ki(machine.disk_bytes),
                    "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": _ki(machine.memory_bytes),
                    "pods": str(pods)}
        cpu_alloc = (Decimal(machine.cpus) * Decimal(str(self.cpu_overcommit)) * 1000).to_integral_value() / 1000
        allocatable = {"cpu": _cpu(cpu_alloc), "ephemeral-storage": str(disk_alloc), "hugepages-1Gi": "0",
                       "hugepages-2Mi": "0", "memory": _ki(mem_alloc), "pods": str(pods)}
        self._allocatable = {"cpu": cpu_alloc, "memory": Decimal(mem_alloc),
                             "ephemeral-storage": Decimal(disk_alloc), "pods": Decimal(pods)}
        memory_pressure = machine.memory_available_bytes < EVICTION_MEMORY
        disk_pressure = machine.disk_bytes > 0 and \
            Decimal(machine.disk_available_bytes) < Decimal(machine.disk_bytes) * EVICTION_DISK_FRACTION
        pid_pressure = machine.pids_used > machine.pid_max * PID_PRESSURE_FRACTION
        wanted = [
            ("MemoryPressure", memory_pressure, ("KubeletHasInsufficientMemory", "kubelet has insufficient memory "
             "available") if memory_pressure else ("KubeletHasSufficientMemory", "kubelet has sufficient memory "
                                                   "available")),
            ("DiskPressure", disk_pressure, ("KubeletHasDiskPressure", "kubelet has disk pressure") if disk_pressure
             else ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")),
            ("PIDPressure", pid_pressure, ("KubeletHasInsufficientPID", "kubelet has insufficient PID available")
             if pid_pressure else ("KubeletHasSufficientPID", "kubelet has sufficient PID available")),
            ("Ready", True, ("KubeletReady", "kubelet is posting ready status")),
        ]
        before = {c.get("type"): c for c in previous.get("conditions") or []}
        now = m.now()
        conditions = []
        for type_, value, (reason, message) in wanted:
            status = "True" if value else "False"
            old = before.get(type_) or {}
            conditions.append({"type": type_, "status": status, "lastHeartbeatTime": now,
                               "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == status
                               else now, "reason": reason, "message": message})
        return {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": machine.internal_ip},
                          {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": machine.machine_id, "systemUUID": machine.machine_id,
                         "bootID": machine.boot_id, "kernelVersion": machine.kernel, "osImage": machine.os_image,
                         "containerRuntimeVersion": self.runtime_version, "kubeletVersion": self.kubelet_version,
                         "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": machine.architecture},
        }

    # ------------------------------------------------------------ writing

    async def register(self) -> Obj:
        """Create the Node (or take over the one left by an earlier start), write its status, and the Lease."""
        machine = self.machine()
        node = await self.client.try_get(self.node_kind, "", self.name)
        if node is None:
            body: Obj = {"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": self.name, "labels": self.labels(machine),
                                      "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                                      "volumes.kubernetes.io/controller-managed-attach-detach":
                                                          "true"}},
                         "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]} if self.pod_cidr else {}}
            try:
                node = await self.client.create(self.node_kind, body)
            except AlreadyExists:
                node = await self.client.get(self.node_kind, "", self.name)
        else:
            labels = node["metadata"].setdefault("labels", {})
            if any(labels.get(k) != v for k, v in self.labels(machine).items()):
                labels.update(self.labels(machine))
                node = await self.client.update(self.node_kind, node)
        self._uid = node["metadata"]["uid"]
        await self._write_status(node, machine, force=True)
        await self._ensure_lease_namespace()
        await self.renew_lease()
        return node

    async def report(self) -> None:
        """Recompute the Node's status; write it when it changed or every ``STATUS_REPORT`` seconds."""
        node = await self.client.try_get(self.node_kind, "", self.name)
        if node is None:  # deleted by a user: register again, as the kubelet does
            await self.register()
            return
        await self._write_status(node, self.machine(), force=False)

    async def _write_status(self, node: Obj, machine: Machine, *, force: bool) -> None:
        status = self.status(machine, node.get("status") or {})
        due = force or self.clock.now() - self._last_report >= STATUS_REPORT
        if not due and _without_heartbeats(status) == _without_heartbeats(self._written):
            return
        for _ in range(3):
            node["status"] = {**(node.get("status") or {}), **status}
            try:
                await self.client.update_status(self.node_kind, node)
                break
            except Conflict:
                node = await self.client.get(self.node_kind, "", self.name)
        self._written = status
        self._last_report = self.clock.now()

    async def _ensure_lease_namespace(self) -> None:
        if await self.client.try_get(self.namespace_kind, "", LEASE_NAMESPACE) is None:
            with contextlib.suppress(AlreadyExists):
                await self.client.create(self.namespace_kind, {"apiVersion": "v1", "kind": "Namespace",
                                                                "metadata": {"name": LEASE_NAMESPACE}})

    async def renew_lease(self) -> None:
        now = _micro_time()
        lease = await self.client.try_get(self.lease_kind, LEASE_NAMESPACE, self.name)
        owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._uid}
        if lease is None:
            try:
                await self.client.create(self.lease_kind, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE, "ownerReferences": [owner]},
                    "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_DURATION,
                             "renewTime": now}})
                return
            except AlreadyExists:
                lease = await self.client.get(self.lease_kind, LEASE_NAMESPACE, self.name)
        lease["metadata"]["ownerReferences"] = [owner]
        lease["spec"] = {**(lease.get("spec") or {}), "holderIdentity": self.name,
                         "leaseDurationSeconds": LEASE_DURATION, "renewTime": now}
        with contextlib.suppress(Conflict, NotFound):  # the next renewal tries again
            await self.client.update(self.lease_kind, lease)

    async def run(self) -> None:
        """Renew the Lease every 10 s and report status every 10 s, until cancelled."""
        while True:
            await self.clock.sleep(LEASE_RENEW)
            try:
                await self.renew_lease()
                await self.report()
            except ApiError as e:
                log.warning("node %s: heartbeat failed: %s", self.name, e)


def _micro_time() -> str:
    """A MicroTime, as Leases carry it (RFC 3339 with microseconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _without_heartbeats(status: Obj) -> Obj:
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastHeartbeatTime"}
                         for c in status.get("conditions") or []]
    return out
