"""Whether the host has room for one more sandbox: the embedded scheduler's look at what the machine has now.

Requests are admitted against the Node's allocatable (``scheduler``), which
comes from the machine's size. This module looks at what is left at the
moment, so a host running short of memory, tasks or disk makes new Pods wait
(Pending, ``PodScheduled=False``, ``Unschedulable``) instead of starting
sandboxes that would push the running ones into the OOM killer, failed forks
or ENOSPC. Nothing running is touched: only binding waits.

A Pod is refused, counting every Pod bound here and not yet Running
(``starting``: booting sandboxes not yet seen in the host's figures) as one
idle sandbox more, when:

- ``MemAvailable`` less ``memory_reserve`` cannot hold ``starting + 1`` idle
  sandboxes of 22Mi (``BUILTIN_DEFAULT_REQUESTS``): ``Insufficient memory``;
- the host's tasks in use plus ``starting + 1`` x 60 (``IDLE_POD_TASKS``)
  would pass 90% of ``kernel.pid_max`` (the PIDPressure line):
  ``Insufficient pids``;
- the pod network's bridge has no port left for ``starting + 1`` more
  (``BRIDGE_PORTS``, the kernel's limit): ``Too many pods``;
- the home's filesystem has less than ``disk_reserve`` free (kept above the
  runtime's own floor, ``HOME_RESERVE_BYTES``, so Pods already bound can still
  restart): ``Insufficient ephemeral-storage``.

Facts are read once per scheduling pass (``expire()`` at its start: the Pods
queued together share one reading), and again within a long pass when older
than ``READ_SECONDS`` (``nodeinfo.refresh_machine``: ``/proc/meminfo``,
``/proc/loadavg``, one ``statvfs``), never per sandbox. The scheduler
(``Scheduler``) asks ``short()`` once per Pod it tries and, while Pods wait
for room, ``short(fresh=True)`` every ``RETRY_SECONDS``. Who calls:
``turbok.node.scheduler`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from turbok.api.limitrange import BUILTIN_DEFAULT_REQUESTS
from turbok.api.quantity import parse_quantity
from turbok.node import nodeinfo
from turbok.node.clock import Clock, MonotonicClock
from turbok.node.nodeinfo import Machine

__all__ = ["DEFAULT_DISK_RESERVE", "DEFAULT_MEMORY_RESERVE", "IDLE_POD_MEMORY", "READ_SECONDS", "RETRY_SECONDS",
           "HostRoom", "host_facts"]

log = logging.getLogger(__name__)

#: Memory kept free of new sandboxes (TURBOK_NODE_MEMORY_RESERVE): the kubelet's hard eviction line (100Mi)
#: plus room for running sandboxes to grow and for the control plane itself.
DEFAULT_MEMORY_RESERVE = 256 * 2**20
#: Free space of the home below which no Pod is bound (TURBOK_NODE_DISK_RESERVE): twice the runtime's own
#: floor (64Mi, ``turbok.runtime.pods.HOME_RESERVE_BYTES``), so Pods bound already can still (re)start.
DEFAULT_DISK_RESERVE = 128 * 2**20
#: How long one reading of the host's facts is used.
READ_SECONDS = 1.0
#: How often Pods waiting for host room look again (one reading each time; nothing while none waits).
RETRY_SECONDS = 2.0
#: What an idle sandbox takes of the host's memory (its cgroup's usage with the sandboxd agent).
IDLE_POD_MEMORY = int(parse_quantity(BUILTIN_DEFAULT_REQUESTS["memory"]))
#: The reasons this module gives, in kube-scheduler's words.
MEMORY, PIDS, DISK = "Insufficient memory", "Insufficient pids", "Insufficient ephemeral-storage"
PODS = "Too many pods"
#: Ports one Linux bridge takes (the kernel's BR_MAX_PORTS, 1024, port 0 unused): the pod network's bridge is
#: the machine's, so this many Pods of every control plane on it; past it the kernel refuses the next veth
#: ("Exchange full").
BRIDGE_PORTS = 1023


def host_facts(disk: Path, internal_ip: str = "127.0.0.1") -> Callable[[], Machine]:
    """The machine's facts for the host-room check: one full ``probe_machine``, then only what moves."""
    base: list[Machine] = []

    def read() -> Machine:
        if not base:
            base.append(nodeinfo.probe_machine(disk, internal_ip))
            return base[0]
        return nodeinfo.refresh_machine(base[0], disk)

    return read


def _mi(value: int) -> str:
    return f"{value / 2**20:.0f}Mi"


@dataclass
class HostRoom:
    """Whether one more idle sandbox fits what the host has left (the module's docstring says how)."""

    machine: Callable[[], Machine]
    clock: Clock = field(default_factory=MonotonicClock)
    memory_reserve: int = DEFAULT_MEMORY_RESERVE
    disk_reserve: int = DEFAULT_DISK_RESERVE
    #: the pod network bridge's ports in use (``PodNetwork.bridge_ports``); None: no pod network
    bridge_ports: Callable[[], int] | None = None
    _facts: Machine | None = None
    _ports: int = 0
    _read_at: float = float("-inf")
    _said: frozenset[str] = frozenset()

    def expire(self) -> None:
        """A new scheduling pass begins: the next question reads the host again."""
        self._facts = None

    def facts(self, *, fresh: bool = False) -> Machine:
        """The host's facts, read again after ``expire()``, when older than ``READ_SECONDS``, or ``fresh``."""
        now = self.clock.now()
        if self._facts is None or fresh or now - self._read_at >= READ_SECONDS:
            self._facts = self.machine()
            self._ports = self.bridge_ports() if self.bridge_ports is not None else 0
            self._read_at = now
        return self._facts

    def short(self, starting: int = 0, *, fresh: bool = False) -> list[str]:
        """What the host lacks for one more idle sandbox beside ``starting`` booting ones (empty: room)."""
        f = self.facts(fresh=fresh)
        sandboxes = starting + 1
        lacking: list[str] = []
        details: list[str] = []
        memory_left = f.memory_available_bytes - self.memory_reserve - starting * IDLE_POD_MEMORY
        if memory_left < IDLE_POD_MEMORY:
            lacking.append(MEMORY)
            details.append(f"memory: {_mi(f.memory_available_bytes)} available, {_mi(self.memory_reserve)} "
                           f"reserved (TURBOK_NODE_MEMORY_RESERVE), {starting} sandboxes starting")
        pids_limit = int(f.pid_max * nodeinfo.PID_PRESSURE_FRACTION)
        if f.pids_used + sandboxes * nodeinfo.IDLE_POD_TASKS > pids_limit:
            lacking.append(PIDS)
            details.append(f"pids: {f.pids_used} tasks in use, {starting} sandboxes starting, "
                           f"{pids_limit} allowed (90% of kernel.pid_max {f.pid_max})")
        if f.disk_bytes > 0 and f.disk_available_bytes < self.disk_reserve:
            lacking.append(DISK)
            details.append(f"disk: {_mi(f.disk_available_bytes)} free in the home, {_mi(self.disk_reserve)} "
                           f"reserved (TURBOK_NODE_DISK_RESERVE)")
        if self._ports + sandboxes > BRIDGE_PORTS:
            lacking.append(PODS)
            details.append(f"pod network: {self._ports} of its bridge's {BRIDGE_PORTS} ports in use, {starting} "
                           "sandboxes starting")
        said = frozenset(lacking)
        if said != self._said:  # one line per change, not per Pod
            if lacking:
                log.warning("host has no room for another sandbox (%s): new Pods stay Pending until it has",
                            "; ".join(details))
            else:
                log.info("host has room for sandboxes again: Pods waiting for it are scheduled")
            self._said = said
        return lacking

    def fits(self, starting: int = 0, *, fresh: bool = False) -> int:
        """How many more idle sandboxes the host holds beside ``starting`` booting ones (0: not one)."""
        if self.short(starting, fresh=fresh):
            return 0
        f = self.facts()
        by_memory = (f.memory_available_bytes - self.memory_reserve) // IDLE_POD_MEMORY - starting
        by_pids = (int(f.pid_max * nodeinfo.PID_PRESSURE_FRACTION) - f.pids_used) // nodeinfo.IDLE_POD_TASKS \
            - starting
        limits = [by_memory, by_pids]
        if self.bridge_ports is not None:
            limits.append(BRIDGE_PORTS - self._ports - starting)
        return max(1, min(limits))
