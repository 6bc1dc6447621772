"""The host's limits that scale with the number of sandboxes, checked once when ``turbok serve`` starts.

Each sandbox costs the host tasks (about 60 with the sandboxd agent:
``kernel.pid_max``, ``kernel.threads-max``), inotify watches in the control
plane per CRI log file, about 3 (``fs.inotify.max_user_watches``; the
control plane holds two inotify instances of the user's
``fs.inotify.max_user_instances``), open files in the control plane
(``RLIMIT_NOFILE``), and a Sentry process whose guest memory can take tens of
thousands of mappings (``vm.max_map_count``, per process; gVisor's memory
manager was seen at ~70,000 where Linux used ~100: google/gvisor#11360).

``check_host_limits(sandboxes)`` raises this process's soft ``RLIMIT_NOFILE``
to its hard limit, then logs one warning line per limit too low for
``sandboxes`` (the Node's pods capacity before ``pid_max`` caps it), naming
the knob, its value, the value wanted and the command that raises it
(``scripts/setup.sh`` does all of them). Nothing is refused: a limit that is
too low shows later as ``Insufficient pids`` (``hostroom``), failed forks or
log lines without a watch. Who calls: ``turbok.embedded.controlplane``.
"""

from __future__ import annotations

import logging
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from turbok.node.nodeinfo import IDLE_POD_TASKS, PID_PRESSURE_FRACTION

__all__ = ["HostLimit", "check_host_limits", "host_limits", "raise_nofile", "read_sysctl"]

log = logging.getLogger(__name__)

#: Tasks of everything on the machine that is not a sandbox (a busy desktop: a few thousand).
BASE_TASKS = 4_096
#: Watches the rest of the user's programs may hold.
BASE_WATCHES = 1_024
#: inotify watches the control plane holds per running sandbox (its containers' CRI logs and their rotation):
#: measured 12 for 4 idle Sandboxes (runsc 20221219, with the sandboxd agent).
WATCHES_PER_SANDBOX = 3
#: Open files of the control plane itself (the store, the API's connections) and per sandbox: measured 21
#: idle, 34 with 4 idle Sandboxes (about 3 each); 8 leaves room for streams and the agent's connections.
BASE_FILES = 4_096
FILES_PER_SANDBOX = 8
#: What scripts/setup.sh sets (kind's advice for inotify; 262144 the common advice for map counts).
SETUP_VALUES = {"kernel.pid_max": 4_194_304, "kernel.threads-max": 4_194_304,
                "fs.inotify.max_user_watches": 524_288, "fs.inotify.max_user_instances": 512,
                "vm.max_map_count": 262_144}
#: Limits that bound each process, not the sum over sandboxes.
PER_PROCESS = frozenset({"vm.max_map_count"})


@dataclass(frozen=True)
class HostLimit:
    """One limit too low: its name, its value, what is wanted and how to raise it."""

    knob: str
    value: int
    wanted: int
    #: who wants it: "1091 sandboxes", or one busy sandbox for a per-process limit
    who: str
    fix: str

    def line(self) -> str:
        return f"{self.knob} is {self.value}, {self.who} want at least {self.wanted}: {self.fix}"


def read_sysctl(knob: str) -> int | None:
    """A sysctl's value from ``/proc/sys`` (None when it cannot be read)."""
    try:
        raw = Path("/proc/sys", *knob.split(".")).read_text().split()
    except OSError:
        return None
    return int(raw[0]) if raw and raw[0].isdigit() else None


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (allowed without privilege); the pair."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:  # e.g. infinity above fs.nr_open
            log.debug("raising RLIMIT_NOFILE to %s: %s", hard, e)
    return soft, hard


def _wanted(sandboxes: int) -> dict[str, int]:
    tasks = math.ceil(sandboxes * IDLE_POD_TASKS / PID_PRESSURE_FRACTION) + BASE_TASKS
    return {"kernel.pid_max": tasks, "kernel.threads-max": tasks,
            "fs.inotify.max_user_watches": WATCHES_PER_SANDBOX * sandboxes + BASE_WATCHES, "fs.inotify.max_user_instances": 128,
            "vm.max_map_count": SETUP_VALUES["vm.max_map_count"]}


def host_limits(sandboxes: int, *, read: Callable[[str], int | None] = read_sysctl,
                nofile: tuple[int, int] | None = None) -> list[HostLimit]:
    """The limits too low for ``sandboxes``; ``nofile`` is (soft, hard) of ``RLIMIT_NOFILE`` when known."""
    out = []
    for knob, wanted in _wanted(sandboxes).items():
        value = read(knob)
        if value is not None and value < wanted:
            target = max(wanted, SETUP_VALUES[knob])
            who = "busy sandboxes (each Sentry's own mappings)" if knob in PER_PROCESS else f"{sandboxes} sandboxes"
            out.append(HostLimit(knob, value, wanted, who, f"raise it with `sysctl -w {knob}={target}` as root "
                                                           "(scripts/setup.sh does)"))
    files = BASE_FILES + FILES_PER_SANDBOX * sandboxes
    if nofile is not None and nofile[0] != resource.RLIM_INFINITY and nofile[0] < files:
        target = max(files, 1_048_576)
        out.append(HostLimit("RLIMIT_NOFILE", nofile[0], files, f"{sandboxes} sandboxes",
                             f"start turbok where `ulimit -n {target}` works (hard limit {nofile[1]}: as root, or "
                             f"LimitNOFILE={target} in its systemd unit)"))
    return out


def check_host_limits(sandboxes: int) -> list[HostLimit]:
    """Raise the soft open-files limit, then log one warning line per limit too low for ``sandboxes``."""
    found = host_limits(sandboxes, nofile=raise_nofile())
    for limit in found:
        log.warning("host limit: %s", limit.line())
    return found
