"""Host cgroups of sandboxes: why one died, and limits for the bubblewrap fallback.

runsc creates and removes its sandboxes' cgroups itself (``cgroupsPath`` in
the bundle, ``<parent>/<id>`` in every controller); this module only reads
their counters, so ``state`` can say ``OOMKilled`` or ``PidsLimit`` instead of
"it stopped". The bubblewrap runtime has no such helper, so ``Cgroup`` also
creates, fills and removes one. cgroup v1 (this host: one hierarchy per
controller under /sys/fs/cgroup) and v2 (unified) are both understood.

The parent of all sandboxes (``/turbok``) can keep the control plane
schedulable: a low CPU weight (``weigh_parent``) and a memory limit that
leaves a reserve to the rest of the host (``bound_parent_memory`` of
``sandboxes_memory_limit``: ``$TURBOK_SANDBOXES_MEMORY``, else the machine's
memory less a reserve). The old per-Sandbox runtime set both at start-up; the pod
runtime does not call them yet (docs/runtime.md, "Limits").
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from turbok.api.quantity import QuantityError, to_bytes

__all__ = [
    "CGROUP_ROOT",
    "RESERVED_MEMORY_BYTES",
    "RESERVED_MEMORY_FRACTION",
    "SANDBOXES_MEMORY_ENV",
    "Cgroup",
    "Counters",
    "bound_parent_memory",
    "cgroup_version",
    "host_memory_bytes",
    "sandboxes_memory_bytes",
    "sandboxes_memory_limit",
    "weigh_parent",
]

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Memory all sandboxes together may use, as a quantity (``16Gi``); default: the machine's less a reserve.
SANDBOXES_MEMORY_ENV = "TURBOK_SANDBOXES_MEMORY"
_V1_CONTROLLERS = ("memory", "cpu", "pids")


def cgroup_version(root: Path = CGROUP_ROOT) -> int | None:
    """2 on a unified hierarchy, 1 when the v1 controllers are mounted, None without cgroups."""
    if (root / "cgroup.controllers").exists():
        return 2
    if (root / "memory").is_dir() and (root / "pids").is_dir():
        return 1
    return None


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


@dataclass(frozen=True)
class Counters:
    """Events of one cgroup since it was created."""

    oom_kills: int = 0
    pids_limit_hits: int = 0


class Cgroup:
    """The cgroup ``<name>`` (e.g. ``/turbok/<id>``) in every controller turbok uses."""

    def __init__(self, name: str, root: Path = CGROUP_ROOT) -> None:
        self.name = name.strip("/")
        self.root = root
        self.version = cgroup_version(root)

    def dirs(self) -> list[Path]:
        if self.version == 2:
            return [self.root / self.name]
        if self.version == 1:
            return [self.root / c / self.name for c in _V1_CONTROLLERS]
        return []

    def _dir(self, controller: str) -> Path:
        return self.root / self.name if self.version == 2 else self.root / controller / self.name

    def exists(self) -> bool:
        dirs = self.dirs()
        return bool(dirs) and dirs[0].is_dir()

    def counters(self) -> Counters:
        """OOM kills and refused forks; zeros when the cgroup is gone."""
        if self.version == 2:
            mem = _read_kv(self._dir("memory") / "memory.events")
            pids = _read_kv(self._dir("pids") / "pids.events")
        else:
            mem = _read_kv(self._dir("memory") / "memory.oom_control")
            pids = _read_kv(self._dir("pids") / "pids.events")
        return Counters(oom_kills=mem.get("oom_kill", 0), pids_limit_hits=pids.get("max", 0))

    # -- for runtimes that manage their own cgroups (bubblewrap) --

    def create(self, *, cpu_quota_us: int | None, cpu_period_us: int, memory_bytes: int | None, pids: int | None) -> None:
        """Create the cgroup with these limits (idempotent)."""
        if self.version is None:
            raise OSError("no cgroup hierarchy on this host")
        for d in self.dirs():
            d.mkdir(parents=True, exist_ok=True)
        if self.version == 2:
            # Each ancestor must hand the controllers down to its children.
            cur = self.root
            for part in Path(self.name).parts:
                with contextlib.suppress(OSError):
                    (cur / "cgroup.subtree_control").write_text("+cpu +memory +pids")
                cur = cur / part
            d = self.root / self.name
            (d / "cpu.max").write_text(f"{cpu_quota_us or 'max'} {cpu_period_us}")
            (d / "memory.max").write_text(str(memory_bytes or "max"))
            (d / "pids.max").write_text(str(pids or "max"))
            return
        (self._dir("cpu") / "cpu.cfs_period_us").write_text(str(cpu_period_us))
        (self._dir("cpu") / "cpu.cfs_quota_us").write_text(str(cpu_quota_us or -1))
        (self._dir("memory") / "memory.limit_in_bytes").write_text(str(memory_bytes or -1))
        (self._dir("pids") / "pids.max").write_text(str(pids or "max"))

    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` files a new process writes its pid to, to join."""
        return [d / "cgroup.procs" for d in self.dirs()]

    def pids(self) -> list[int]:
        dirs = self.dirs()
        try:
            return [int(p) for p in (dirs[0] / "cgroup.procs").read_text().split()] if dirs else []
        except OSError:
            return []

    def remove(self, *, timeout: float = 5.0) -> None:
        """Remove the cgroup once its processes are gone (they are being killed)."""
        deadline = time.monotonic() + timeout
        for d in self.dirs():
            while d.is_dir():
                try:
                    os.rmdir(d)
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


#: CPU weight of all sandboxes together against the rest of the machine (cgroup v1 shares;
#: v2 weight is derived). Low, so that under contention the control plane (weight 1024 per
#: runnable thread at nice 0) keeps answering while sandboxes boot or spin.
SANDBOXES_CPU_SHARES = 256
#: Where the kernel has it (5.15 and later, v1 and v2), the sandboxes' parent is also marked ``cpu.idle``:
#: all sandboxes together then run only when no task of the host wants the CPU, and any host task
#: that wakes takes a core from them at once. A weight alone does not do that: while a warm pool
#: refilled under 20 claims/s, sandboxes booting at weight 256 held claim -> Ready p99 at 94-235 ms
#: over five runs, against 33 ms with the parent idle (bench/RESULTS.md, "Claims"). The price: a busy
#: host starves its sandboxes. ``TURBOK_SANDBOXES_CPU_IDLE=0`` keeps the weight only.
SANDBOXES_CPU_IDLE_ENV = "TURBOK_SANDBOXES_CPU_IDLE"


def weigh_parent(parent: str, *, shares: int = SANDBOXES_CPU_SHARES, idle: bool | None = None,
                 root: Path = CGROUP_ROOT) -> bool:
    """Create the sandboxes' parent cgroup in the cpu controller, set its weight and, where the kernel has it and
    ``idle`` (None: ``$TURBOK_SANDBOXES_CPU_IDLE``, default on) says so, mark it idle; False if impossible."""
    version = cgroup_version(root)
    if idle is None:
        idle = os.environ.get(SANDBOXES_CPU_IDLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    if version not in (1, 2):
        return False
    d = root / ("cpu" if version == 1 else "") / parent.strip("/")
    try:
        d.mkdir(parents=True, exist_ok=True)
        if (d / "cpu.idle").exists():
            (d / "cpu.idle").write_text("1" if idle else "0")  # idle: the kernel's own weight, the lowest
            if idle:
                return True
        if version == 1:
            (d / "cpu.shares").write_text(str(shares))
        else:  # cgroup v2 weight 1..10000, default 100 <-> v1 shares 1024
            (d / "cpu.weight").write_text(str(max(1, shares * 100 // 1024)))
    except OSError:
        return False
    return True


#: Memory kept out of all sandboxes' reach, for the control plane and the rest of the host: the larger
#: of these two. Like the kubelet's system-reserved, so that sandboxes filling memory together meet
#: their parent cgroup's limit (and the kernel's OOM killer there) before the control plane does.
RESERVED_MEMORY_BYTES = 1 << 30
RESERVED_MEMORY_FRACTION = 0.10


def host_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemTotal of this machine, None if unreadable."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def sandboxes_memory_bytes(total: int | None = None) -> int | None:
    """What all sandboxes together may use: the machine's memory less the reserve (None if unknown)."""
    total = host_memory_bytes() if total is None else total
    if total is None:
        return None
    return max(total - max(RESERVED_MEMORY_BYTES, int(total * RESERVED_MEMORY_FRACTION)), 0)


def sandboxes_memory_limit() -> int | None:
    """``$TURBOK_SANDBOXES_MEMORY`` if set, else the machine's memory less the control plane's reserve."""
    value = os.environ.get(SANDBOXES_MEMORY_ENV, "").strip()
    if value:
        try:
            return to_bytes(value) or None
        except QuantityError:
            log.warning("ignoring %s=%r: not a quantity such as 16Gi", SANDBOXES_MEMORY_ENV, value)
    return sandboxes_memory_bytes()


def bound_parent_memory(parent: str, limit_bytes: int | None, *, root: Path = CGROUP_ROOT) -> bool:
    """Set the memory limit of the sandboxes' parent cgroup (None: no limit); False if impossible
    (no cgroups, not writable, or more than that already in use)."""
    version = cgroup_version(root)
    try:
        if version == 1:
            d = root / "memory" / parent.strip("/")
            d.mkdir(parents=True, exist_ok=True)
            (d / "memory.limit_in_bytes").write_text(str(limit_bytes if limit_bytes is not None else -1))
        elif version == 2:
            d = root / parent.strip("/")
            d.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                (root / "cgroup.subtree_control").write_text("+memory")
            (d / "memory.max").write_text(str(limit_bytes if limit_bytes is not None else "max"))
        else:
            return False
    except OSError:
        return False
    return True
