"""Address management for the pod network: one IPv4 address per id, one book per bridge for the whole machine.

The bridge (``turbok0``) is the machine's, not a home's: every control plane on the
machine puts its pods on it. So its addresses are allocated from one book per bridge,
``/var/lib/turbok/network/<bridge>/ipam`` (``turbok.runtime.network``), shared by
every home. Each allocation is one symbolic link, ``<book>/<address> -> <owner>:<id>``,
made with ``symlink(2)``, which fails when the name exists. So:

- **no double allocation**: two allocations of one address cannot both succeed,
  even from two processes of two homes; the loser moves on to the next address;
- **crash-safe**: an entry exists whole or not at all (no half-written file to
  repair); a crash before it exists allocates nothing, a crash after it leaves an
  allocation the id finds again at its next ``allocate``;
- **cheap**: an allocation is one ``symlink`` under the book's lock, a release one
  ``unlink``; the book is read once per ``Ipam`` (at its first use).

**Owners.** An owner is what allocates (a home's network directory). ``<book>/.owners/<token>``
(the token is a digest of the owner's path) holds the owner's path, and every ``Ipam``
of that owner holds a shared ``flock`` on it while it lives. ``lookup``, ``entries`` and
``release`` see the owner's own entries only: one control plane never takes or tears
down another's pods, nor their addresses.

**Garbage.** An entry is stale when nothing can still use it: no process of its owner
is running (nobody holds the owner's lock), the owner's directory is gone (the home was
deleted) and the id's network namespace is gone (``in_use``, asked of the caller). An
owner that is merely stopped keeps its addresses, as a restart keeps them (a hibernated
pod is restored on its address). Stale entries are removed when a book is opened and
again before ``allocate`` says the range is exhausted.

**Lock.** ``<book>/.lock``: an exclusive ``flock`` around opening the book (registering
the owner, taking over a home's older book, collecting garbage) and each allocation, so
a collector never removes an entry an owner starting at that moment has just read.

Entries are not fsynced: they survive any crash of turbok (the kernel's cache does),
and a power loss can at worst forget a fresh allocation, which the id then makes anew.
Addresses are handed out round robin, so a released address is not reused at once (a
connection still open to a deleted pod does not reach the next one); a new process goes
on after the highest address held. Own entries outside the network (the range was
changed) are released when their id allocates again, so the id moves into the new range.

``legacy``: a home's own book from before the book was per machine (``<home>/network/ipam``,
``<address> -> <id>``); its entries move into the machine's book when the book is first
opened (an address another home took meanwhile is not taken over: that id gets a new one
at its next ``setup``), then it is removed.

One ``Ipam`` per book per owner per process (the node's ``PodNetwork``); it is thread-safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from turbok.runtime.errors import RuntimeError_

__all__ = ["AddressesExhausted", "Ipam", "owner_token"]

log = logging.getLogger(__name__)

LOCK = ".lock"
OWNERS = ".owners"
_TOKEN = re.compile(r"[0-9a-f]{16}")


class AddressesExhausted(RuntimeError_):
    """Every address of the pod network is allocated."""


def owner_token(owner: Path) -> str:
    """The owner's name in entries: a digest of its real path (16 hex digits; a home named through a
    symbolic link is the same owner)."""
    return hashlib.sha256(os.path.realpath(owner).encode()).hexdigest()[:16]


class Ipam:
    def __init__(self, directory: Path, network: ipaddress.IPv4Network, *,
                 reserved: Collection[ipaddress.IPv4Address] = (), owner: Path | None = None,
                 in_use: Callable[[str], bool] | None = None, legacy: Path | None = None) -> None:
        if network.prefixlen > 30:
            raise ValueError(f"{network} has no room for hosts")
        self.directory = directory
        self.network = network
        #: Whose entries this book hands out and releases (default: the book's own directory, one owner).
        self.owner = directory if owner is None else owner
        self.token = owner_token(self.owner)
        self._in_use = in_use or (lambda id: False)
        self._legacy = legacy
        self._first = int(network.network_address) + 1
        self._last = int(network.broadcast_address) - 1
        self._reserved = {int(a) for a in reserved}
        self._lock = threading.Lock()
        self._book_fd: int | None = None  # .lock, open while this Ipam lives
        self._owner_fd: int | None = None  # .owners/<token>, shared-locked while this Ipam lives
        self._by_id: dict[str, ipaddress.IPv4Address] | None = None  # own entries
        self._used: set[int] = set()  # every owner's
        self._next = self._first

    # -- the book on disk --

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The book's exclusive lock (between processes; ``self._lock`` is between threads)."""
        assert self._book_fd is not None
        fcntl.flock(self._book_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._book_fd, fcntl.LOCK_UN)

    def _entries_on_disk(self) -> Iterator[tuple[ipaddress.IPv4Address, str, str]]:
        """(address, owner token, id) of every entry, lowest address first."""
        for entry in sorted(os.scandir(self.directory), key=lambda e: _sort_key(e.name)):
            ip = _parse(entry.name)
            if ip is None or not entry.is_symlink():
                continue  # not an entry (the lock, the owners, an editor's backup): left alone
            try:
                target = os.readlink(entry.path)
            except FileNotFoundError:
                continue
            token, sep, id = target.partition(":")
            yield (ip, token, id) if sep else (ip, "", target)  # no owner: a stray old-style entry

    def _open(self) -> dict[str, ipaddress.IPv4Address]:
        if self._by_id is not None:
            return self._by_id
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.directory / OWNERS).mkdir(mode=0o700, exist_ok=True)
        if self._book_fd is None:
            self._book_fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with self._locked():
            self._register()
            if self._legacy is not None:
                self._take_over(self._legacy)
            self._collect()
            self._by_id = self._read()
        mine = [n for n in self._used if self._first <= n <= self._last]
        if mine:  # go on after the highest address held, as the previous process would have
            self._next = max(mine) + 1 if max(mine) < self._last else self._first
        return self._by_id

    def _register(self) -> None:
        """Record the owner's path and hold its lock shared (under the book's lock)."""
        if self._owner_fd is not None:
            return
        self.owner.mkdir(mode=0o700, parents=True, exist_ok=True)  # its being gone later marks the owner gone
        path = self.directory / OWNERS / self.token
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.write(fd, os.path.realpath(self.owner).encode())
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            if os.fstat(fd).st_size == 0:  # a crash between making it and writing it
                os.write(fd, os.path.realpath(self.owner).encode())
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._owner_fd = fd

    def _read(self) -> dict[str, ipaddress.IPv4Address]:
        by_id: dict[str, ipaddress.IPv4Address] = {}
        self._used = set()
        for ip, token, id in self._entries_on_disk():
            if token == self.token:
                if id in by_id:  # two entries for one id (a crash, an old race): keep the lowest
                    log.warning("pod network: %s held %s and %s; releasing %s", id, by_id[id], ip, ip)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.directory / str(ip))
                    continue
                by_id[id] = ip
            self._used.add(int(ip))
        return by_id

    def _owner_running_or_kept(self, token: str, cache: dict[str, bool]) -> bool:
        """Does the owner still count: a process of it holds its lock, or its directory exists?"""
        if token in cache:
            return cache[token]
        if not _TOKEN.fullmatch(token):
            return False  # an entry without an owner (or not one of ours: never a path to follow)
        path = self.directory / OWNERS / token
        kept = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # never registered (an entry without an owner)
            pass
        else:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    kept = True  # running
                else:
                    home = os.read(fd, 4096).decode(errors="replace")
                    kept = bool(home) and os.path.isdir(home)
            finally:
                os.close(fd)
        cache[token] = kept
        return kept

    def _collect(self) -> list[tuple[str, ipaddress.IPv4Address]]:
        """Remove stale entries and owners (under the book's lock); the (id, address) of each entry removed."""
        owners: dict[str, bool] = {self.token: True}
        holding: set[str] = set()
        removed: list[tuple[str, ipaddress.IPv4Address]] = []
        for ip, token, id in self._entries_on_disk():
            if self._owner_running_or_kept(token, owners) or self._in_use(id):
                holding.add(token)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / str(ip))
            self._used.discard(int(ip))
            removed.append((id, ip))
        for entry in os.scandir(self.directory / OWNERS):  # an owner holding nothing and not running
            if entry.name not in holding and entry.name != self.token and not _locked_by_anyone(entry.path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        if removed:
            log.info("pod network: released %d stale address(es) of owners that are gone: %s", len(removed),
                     ", ".join(f"{ip} ({id})" for id, ip in removed[:10]))
        return removed

    def _take_over(self, legacy: Path) -> None:
        """Move a home's older book into this one (under the book's lock), then remove it."""
        try:
            entries = list(os.scandir(legacy))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            ip = _parse(entry.name)
            if ip is None or not entry.is_symlink():
                continue
            with contextlib.suppress(FileNotFoundError):
                id = os.readlink(entry.path)
                try:
                    os.symlink(f"{self.token}:{id}", self.directory / entry.name)
                except FileExistsError:
                    if os.readlink(self.directory / entry.name) != f"{self.token}:{id}":
                        log.warning("pod network: %s of %s (from %s) is another home's now; %s gets a new "
                                    "address at its next boot", ip, id, legacy, id)
                os.unlink(entry.path)
        with contextlib.suppress(OSError):  # not empty: files that were not entries stay with them
            legacy.rmdir()

    # -- reading --

    def lookup(self, id: str) -> ipaddress.IPv4Address | None:
        """The id's address in this network, or None."""
        with self._lock:
            ip = self._open().get(id)
        return ip if ip is not None and ip in self.network else None

    def owner_of(self, ip: ipaddress.IPv4Address) -> str | None:
        """The id of this owner's holding ``ip``, or None."""
        with self._lock:
            for id, held in self._open().items():
                if held == ip:
                    return id
        return None

    def entries(self) -> dict[str, ipaddress.IPv4Address]:
        """Every id of this owner holding an address (also outside the network), and the address."""
        with self._lock:
            return dict(self._open())

    # -- writing --

    def allocate(self, id: str, *,
                 avoid: Callable[[ipaddress.IPv4Address], bool] | None = None) -> ipaddress.IPv4Address:
        """The id's address: the one it holds, else the next free one (``AddressesExhausted`` if none).
        ``avoid(ip)`` True: a free address is in use all the same (outside the book); skipped this time."""
        if ":" in id or "/" in id or not id:
            raise ValueError(f"address book: invalid id {id!r}")
        with self._lock:
            index = self._open()
            held = index.get(id)
            if held is not None:
                if held in self.network:
                    return held
                self._forget(id)
            with self._locked():
                ip = self._take(id, avoid)
                if ip is None:  # full: what owners that are gone held is free, and others may have released
                    self._collect()
                    self._by_id = self._read()
                    ip = self._take(id, avoid)
            if ip is not None:
                return ip
        raise AddressesExhausted(
            f"pod network {self.network}: all {self._last - self._first + 1 - len(self._reserved)} addresses are "
            f"in use; remove pods or choose a larger range (TURBOK_POD_CIDR)"
        )

    def _take(self, id: str, avoid: Callable[[ipaddress.IPv4Address], bool] | None) -> ipaddress.IPv4Address | None:
        assert self._by_id is not None
        size = self._last - self._first + 1
        for step in range(size):
            n = self._first + (self._next - self._first + step) % size
            if n in self._used or n in self._reserved:
                continue
            ip = ipaddress.IPv4Address(n)
            if avoid is not None and avoid(ip):
                log.warning("pod network: %s is free in the book but in use on the host; skipped", ip)
                continue
            try:
                os.symlink(f"{self.token}:{id}", self.directory / str(ip))
            except FileExistsError:  # taken by another owner since we read the book: note it, go on
                self._used.add(n)
                continue
            self._by_id[id] = ip
            self._used.add(n)
            self._next = n + 1 if n < self._last else self._first
            return ip
        return None

    def release(self, id: str) -> bool:
        """Free the id's address; False when it held none."""
        with self._lock:
            self._open()
            return self._forget(id)

    def collect(self) -> list[tuple[str, ipaddress.IPv4Address]]:
        """Remove stale entries now (see the module's "Garbage"); the (id, address) of each removed."""
        with self._lock:
            self._open()
            with self._locked():
                return self._collect()

    def others(self) -> dict[ipaddress.IPv4Address, str]:
        """The addresses other owners hold (after removing stale entries), and their ids."""
        with self._lock:
            self._open()
            with self._locked():
                self._collect()
                return {ip: id for ip, token, id in self._entries_on_disk() if token != self.token}

    def close(self) -> None:
        """Let go of the book and the owner's lock (the process' exit does the same)."""
        with self._lock:
            for fd in (self._owner_fd, self._book_fd):
                if fd is not None:
                    os.close(fd)
            self._owner_fd = self._book_fd = None
            self._by_id = None

    def _forget(self, id: str) -> bool:
        assert self._by_id is not None
        ip = self._by_id.pop(id, None)
        if ip is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / str(ip))
        self._used.discard(int(ip))
        return True


def _locked_by_anyone(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _parse(name: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(name)
    except ValueError:
        return None


def _sort_key(name: str) -> tuple[int, str]:
    ip = _parse(name)
    return (int(ip) if ip is not None else -1, name)
