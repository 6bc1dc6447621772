"""One control plane per home: an flock on ``<home>/turbok.pid``, held for the process's life.

Two control planes on one home would each keep their own view of the store and
overwrite each other's objects, so ``ControlPlane.start`` takes this lock before
it opens anything, and ``turbok down --stop-sandboxes`` takes it while it stops
sandboxes (never under a live control plane). The holder writes its pid and role
(``serve`` or ``stop-sandboxes``) into the file; the kernel drops the lock when the holder exits, crash or not, so a stale
pid in the file means nothing: only a held lock counts.

``holder(home)`` tells who holds it (a ``Holder``) without taking it for longer than a probe;
``turbok status``, ``down`` and ``up`` use it, so a ``turbok serve`` started by
hand is as visible as one started by ``turbok up``. The descriptor is not
inherited (``O_CLOEXEC``): sandboxes that outlive the control plane must not keep
its home locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from dataclasses import dataclass

from turbok.errors import TurbokError
from turbok.home import Home

__all__ = ["SERVE", "STOP_SANDBOXES", "Holder", "HomeLock", "HomeLocked", "holder"]

#: The roles a holder writes next to its pid: only a ``serve`` holder is a control plane to stop.
SERVE = "serve"
STOP_SANDBOXES = "stop-sandboxes"

# A probe (``holder``) holds a shared lock for a few microseconds; a starter retries this long
# before it believes someone really holds the home.
_PROBE_GRACE = 0.5
# How long a reader waits for a new holder to write its pid.
_PID_WAIT = 1.0


@dataclass(frozen=True)
class Holder:
    """Who holds a home: ``pid`` (0 if it has not written it yet) and its ``role``."""

    pid: int
    role: str = SERVE


class HomeLocked(TurbokError):
    """Another process holds the home's lock; ``holder`` says who."""

    def __init__(self, message: str, *, holder: Holder) -> None:
        super().__init__(message)
        self.holder = holder
        self.pid = holder.pid


def _open(home: Home, flags: int) -> int:
    fd = os.open(home.pidfile, flags | os.O_CLOEXEC, 0o600)
    if flags & os.O_CREAT:
        os.fchmod(fd, 0o600)
    return fd


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _read_holder(fd: int) -> Holder:
    deadline = time.monotonic() + _PID_WAIT
    while True:
        pid, _, role = os.pread(fd, 64, 0).decode("ascii", "replace").strip().partition(" ")
        if pid.isdigit():
            return Holder(int(pid), role or SERVE)
        if time.monotonic() > deadline:
            return Holder(0)
        time.sleep(0.01)


class HomeLock:
    """The held lock of one home; ``release`` (or process exit) lets it go."""

    def __init__(self, home: Home, fd: int) -> None:
        self.home = home
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, home: Home, *, role: str = SERVE) -> HomeLock:
        """Take the home's lock and write our pid and ``role`` in it; ``HomeLocked`` naming the holder if taken."""
        fd = _open(home, os.O_RDWR | os.O_CREAT)
        try:
            deadline = time.monotonic() + _PROBE_GRACE
            while not _try_lock(fd, fcntl.LOCK_EX):
                if time.monotonic() > deadline:
                    who = _read_holder(fd)
                    doing = "serves" if who.role == SERVE else "is stopping the sandboxes of"
                    raise HomeLocked(
                        f"turbok (pid {who.pid or 'unknown'}) already {doing} {home.root}; one control plane "
                        "per home: stop it with `turbok down`, or set TURBOK_HOME to another home",
                        holder=who,
                    )
                time.sleep(0.02)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(home, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(home: Home) -> Holder | None:
    """Who holds ``home`` (pid 0: held, pid not written yet), or None if nobody does."""
    try:
        fd = _open(home, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            return None  # closing below releases the probe's shared lock
        return _read_holder(fd)
    finally:
        os.close(fd)
