"""Sandbox processes this process adopts and reaps itself, so that tearing one down never waits on PID 1.

``runsc run --detach`` leaves the sandbox and its gofers behind as orphans; the
kernel hands an orphan to the nearest ancestor that is a *child subreaper*, else
to PID 1. ``runsc delete`` kills the sandbox and then polls ``kill(pid, 0)``
every 100 ms until the process is gone, which is when its new parent reaps the
zombie: under this VM's init that took 1.3-1.8 s per sandbox (measured: the
zombie appears 2 ms after SIGKILL; bench/churn.py's raw reference), under
systemd or tini a few milliseconds. ``adopt()`` makes this process the
subreaper (what containerd's shims do), so its sandboxes are its own children:

- ``kill_and_reap(pids)`` (blocking: the runtime's teardown threads) kills a
  sandbox's processes and reaps them at once; ``runsc delete`` then finds them
  gone and only removes its state and cgroups (about 20 ms);
- a collector thread reaps, every ``COLLECT_SECONDS`` where ``waitid`` says a
  child has ended (nothing is read per sandbox otherwise), zombie children named
  ``exe`` (runsc re-executes ``/proc/self/exe`` for its sandbox and gofers):
  sandboxes that ended on their own (a solo container's exit, an OOM kill);
  and any other zombie child left unreaped for ``ABANDONED_SECONDS``: an
  orphan of some other descendant (a process that started a holder and
  exited), which PID 1 would have reaped.

Children turbok starts itself (``runsc``, ``nice``, anything under asyncio's
child watcher or ``subprocess``) are named after their binary, never ``exe``,
and their owners reap them at once (asyncio's watcher, a waiting thread): their
exit statuses are not taken from them. Sandboxes started by an earlier control
plane stay PID 1's and are deleted the slow way. Linux only; elsewhere
``adopt()`` says False and nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ABANDONED_SECONDS", "COLLECT_SECONDS", "adopt", "adopted", "children", "collect", "kill_and_reap"]

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
#: How often ended sandboxes nobody tears down are reaped (a zombie holds only its pid until then).
COLLECT_SECONDS = 0.5
#: A zombie child of another name is reaped once it has been one this long: nobody else will.
ABANDONED_SECONDS = 10.0
#: ``comm`` of runsc's re-executed sandbox and gofer processes.
_RUNSC_COMM = "exe"

_lock = threading.Lock()
_adopted = False


def adopted() -> bool:
    """Whether this process is the subreaper of the sandboxes it starts from now on."""
    return _adopted


def adopt() -> bool:
    """Make this process the subreaper of its orphans and start the collector; idempotent. False where the
    kernel refuses (not Linux): sandboxes then go to PID 1 as before."""
    global _adopted
    with _lock:
        if _adopted:
            return True
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                log.info("cannot become the subreaper of sandboxes: %s", os.strerror(ctypes.get_errno()))
                return False
        except (OSError, AttributeError) as e:
            log.info("cannot become the subreaper of sandboxes: %s", e)
            return False
        _adopted = True
        threading.Thread(target=_collector, name="sandbox-orphans", daemon=True).start()
        return True


def _stat(pid: int) -> tuple[str, str, int, int] | None:
    """(comm, state, ppid, start time in ticks) of ``pid``, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    head, _, rest = raw.rpartition(b") ")
    fields = rest.split()
    comm = head.partition(b" (")[2].decode(errors="replace")
    return comm, fields[0].decode(), int(fields[1]), int(fields[19])


def _ours(pid: int) -> tuple[str, str] | None:
    """(comm, state) of a runsc process that is this process' child, else None."""
    st = _stat(pid)
    if st is None or st[2] != os.getpid() or st[0] != _RUNSC_COMM:
        return None
    return st[0], st[1]


def children() -> list[int]:
    """Pids of this process' children (every thread's: a child belongs to the thread that forked it)."""
    found: set[int] = set()
    try:
        tasks = os.scandir("/proc/self/task")
    except OSError:
        return []
    with tasks:
        for task in tasks:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in Path(task.path, "children").read_text().split())
    return sorted(found)


def _reap(pid: int) -> bool:
    """Reap ``pid`` if it has ended; True once it is no longer a zombie of ours."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # reaped already (the collector, another teardown)
    return done == pid


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def kill_and_reap(pids: Iterable[int], *, owner: bytes, timeout: float = 5.0) -> int:
    """SIGKILL each of ``pids`` that is a runsc process of ours whose command line names ``owner`` (its pod's
    directory: a pid read from an old state file may have been reused by another pod's sandbox), in order,
    and reap them; how many were. A zombie is only reaped (it names nothing any more, and is dead whoever's it
    was). Pids that are not our children (PID 1's, gone) are left alone. Blocking."""
    mine = []
    for pid in dict.fromkeys(pids):
        st = _ours(pid) if pid > 0 else None
        if st is None:
            continue
        if st[1] != "Z":
            if owner not in _cmdline(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mine.append(pid)
    deadline = time.monotonic() + timeout
    for pid in mine:
        try:
            fd = os.pidfd_open(pid)
        except OSError as e:
            if e.errno == errno.ESRCH:
                continue
            fd = -1
        try:
            while not _reap(pid):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("sandbox process %d did not end within %.0f s of SIGKILL", pid, timeout)
                    break
                if fd >= 0:  # readable once it has ended
                    select.select([fd], [], [], left)
                else:
                    time.sleep(0.005)
        finally:
            if fd >= 0:
                os.close(fd)
    return len(mine)


def _any_zombie() -> bool:
    """Whether some child has ended and is not reaped yet: one ``waitid`` that reaps nothing (``WNOWAIT``), so
    the collector reads nothing per sandbox while none has ended."""
    try:
        return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


def collect(zombies: dict[tuple[int, int], float] | None = None) -> int:
    """Reap every zombie runsc process of ours now, and other zombie children first seen (``zombies``: by pid
    and start time, when) ``ABANDONED_SECONDS`` ago; how many."""
    if not _any_zombie():
        if zombies:
            zombies.clear()
        return 0
    reaped, now, seen = 0, time.monotonic(), set()
    for pid in children():
        st = _stat(pid)
        if st is None or st[1] != "Z" or st[2] != os.getpid():
            continue
        key = (pid, st[3])
        if st[0] != _RUNSC_COMM and zombies is not None:
            seen.add(key)
            if now - zombies.setdefault(key, now) < ABANDONED_SECONDS:
                continue
        elif st[0] != _RUNSC_COMM:
            continue
        if _reap(pid):
            reaped += 1
            seen.discard(key)
    if zombies is not None:
        for key in set(zombies) - seen:
            del zombies[key]
    return reaped


def _collector() -> None:
    zombies: dict[tuple[int, int], float] = {}
    while True:
        time.sleep(COLLECT_SECONDS)
        try:
            collect(zombies)
        except Exception:  # never let the collector die: zombies would pile up
            log.exception("reaping ended sandbox processes")
