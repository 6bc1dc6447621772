"""Who may touch which part of the memory tier, and for how long: leases, pins, receipts.

A *lease* is a training process's claim on a part it is filling, from
``acquire`` to ``staged``. It belongs to the connection that took it and dies
with it: when that connection closes (the trainer exited, or was killed -9
half-way through its copy) or when ``lease_timeout_s`` passes without
``staged``, the agent drops the half-written part and the next ``acquire`` of
the same key succeeds (issue 12, bug 1: a dead trainer's lease used to stay
until the agent restarted). A live lease held by another connection still
refuses a second writer.

A *pin* keeps a part where it is (never evicted for room, never retired by
retention) while someone uses it: the drain pipeline, a peer reading it, a
restore handed to a library. Every pin is a handle released exactly once;
pins taken for a client belong to its connection and are released with it,
so a library that dies between ``restore`` and ``release`` frees its part.
A part is pinned while at least one handle is held: one lifetime, counted.

A *receipt* marks a replica being received from a peer (replica.py).

Everything here is bookkeeping under the agent's condition variable; no I/O.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

from turbok.checkpoint.errors import CheckpointError
from turbok.checkpoint.manifest import PartKey

__all__ = ["Lease", "Pin", "Residency"]


@dataclass(frozen=True)
class Lease:
    key: PartKey
    owner: int  # the connection that holds it
    deadline: float  # time.monotonic() after which it is void
    session: str = ""  # the library instance: its other connections may stage the part


class Pin:
    """A handle on a pinned part; ``release()`` once (later calls do nothing)."""

    def __init__(self, residency: Residency, key: PartKey, owner: int | None) -> None:
        self.residency, self.key, self.owner = residency, key, owner
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.residency._unpin(self)

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Residency:
    """Leases, pins and receipts of one agent; thread-safe under ``cond``."""

    def __init__(self, cond: threading.Condition, *, lease_timeout: float) -> None:
        self.cond = cond
        self.lease_timeout = lease_timeout
        self._leases: dict[PartKey, Lease] = {}
        self._pins: Counter[PartKey] = Counter()
        self._owned: dict[int, list[Pin]] = {}
        self._receiving: dict[PartKey, str] = {}

    # -- leases -----------------------------------------------------------------------------------
    def take_lease(self, key: PartKey, owner: int, session: str = "") -> None:
        """Claim ``key`` for filling by connection ``owner``; CheckpointError if a live one holds it."""
        now = time.monotonic()
        with self.cond:
            held = self._leases.get(key)
            if held is not None and held.owner != owner and held.deadline > now:
                raise CheckpointError(f"{key} is already being saved by another client")
            if key in self._receiving:
                raise CheckpointError(f"{key} is being received from a peer")
            self._leases[key] = Lease(key, owner, now + self.lease_timeout, session)

    def end_lease(self, key: PartKey, owner: int, session: str = "") -> bool:
        """``staged``: the lease becomes the agent's; False when neither ``owner`` nor ``session``
        holds it (any more)."""
        with self.cond:
            held = self._leases.get(key)
            if held is None or held.deadline <= time.monotonic():
                return False
            if held.owner != owner and not (session and held.session == session):
                return False
            del self._leases[key]
            return True

    def cancel_lease(self, key: PartKey, owner: int, session: str = "") -> bool:
        with self.cond:
            held = self._leases.get(key)
            if held is None or (held.owner != owner and not (session and held.session == session)):
                return False
            del self._leases[key]
            return True

    def leased(self, key: PartKey) -> bool:
        with self.cond:
            return key in self._leases

    def drop_owner(self, owner: int) -> list[PartKey]:
        """A connection closed: release its pins; return the keys whose leases died with it."""
        with self.cond:
            dead = [k for k, lease in self._leases.items() if lease.owner == owner]
            for k in dead:
                del self._leases[k]
            pins = self._owned.pop(owner, [])
        for p in pins:
            p.release()
        return dead

    def expired(self) -> list[PartKey]:
        """Leases past their deadline, removed."""
        now = time.monotonic()
        with self.cond:
            dead = [k for k, lease in self._leases.items() if lease.deadline <= now]
            for k in dead:
                del self._leases[k]
            return dead

    # -- pins -------------------------------------------------------------------------------------
    def pin(self, key: PartKey, owner: int | None = None) -> Pin:
        """Pin ``key``; with ``owner``, the pin is released when that connection closes, if not before."""
        handle = Pin(self, key, owner)
        with self.cond:
            self._pins[key] += 1
            if owner is not None:
                self._owned.setdefault(owner, []).append(handle)
        return handle

    def release_owned(self, key: PartKey, owner: int) -> bool:
        """The library's ``release``: drop one of ``owner``'s pins on ``key``."""
        with self.cond:
            for p in self._owned.get(owner, []):
                if p.key == key and not p._released:
                    break
            else:
                return False
        p.release()
        return True

    def _unpin(self, pin: Pin) -> None:
        with self.cond:
            self._pins[pin.key] -= 1
            if self._pins[pin.key] <= 0:
                del self._pins[pin.key]
            if pin.owner is not None:
                owned = self._owned.get(pin.owner, [])
                if pin in owned:
                    owned.remove(pin)
            self.cond.notify_all()

    def pinned(self, key: PartKey) -> bool:
        with self.cond:
            return self._pins[key] > 0

    # -- receipts ---------------------------------------------------------------------------------
    def begin_receiving(self, key: PartKey, target: str) -> None:
        with self.cond:
            if key in self._leases or key in self._receiving:
                raise CheckpointError(f"{key} is already being written here")
            self._receiving[key] = target

    def retarget(self, key: PartKey, target: str) -> None:
        with self.cond:
            self._receiving[key] = target

    def receiving(self, key: PartKey) -> str | None:
        with self.cond:
            return self._receiving.get(key)

    def end_receiving(self, key: PartKey) -> None:
        with self.cond:
            self._receiving.pop(key, None)
            self.cond.notify_all()

    # -- all of it --------------------------------------------------------------------------------
    def busy(self) -> set[PartKey]:
        """Parts that must stay where they are: leased, pinned or being received."""
        with self.cond:
            return set(self._leases) | {k for k, n in self._pins.items() if n > 0} | set(self._receiving)
