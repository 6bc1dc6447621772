"""Durable objects in SQLite, with one global revision and an in-memory index.

Each write is one transaction: the row and the new revision commit together,
so a crash leaves either the old object or the new one. WAL with
``synchronous=NORMAL`` survives a crash of the process (what a control-plane
restart is); a power loss may lose the last transactions, as documented.

Rows are keyed ``(resource, namespace, name)``; cluster-scoped objects use the
empty namespace. Reads are served from the index (JSON text plus labels), so
listing thousands of sandboxes with a label selector costs no disk reads.

Opening checks what it reads (``row_problem``; SQLite's ``quick_check``; the
revision counter against the highest stored resourceVersion) and refuses a
damaged store with ``StoreDamaged``, one line naming the file and the first bad
row; ``turbok store check|repair`` (``store.repair``) take it from there.
A write the disk has no room for is ``InsufficientStorage`` (507) and leaves
nothing behind: not in the file, the index, the revision or the watch.

Space: the WAL is checkpointed once a second on a thread of its own and
truncated back to ``StoreLimits.wal_bytes``; free pages beyond
``StoreLimits.free_bytes`` go back to the file system (incremental vacuum), a
little at a time so the writer never waits long for the lock.

Writes come from the control plane's event loop; reads also from the registry's
worker threads (dict reads are atomic under the GIL, and ``rows`` tolerates a
row removed while it iterates).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbok.api.status import ApiError, InsufficientStorage, RequestEntityTooLarge
from turbok.errors import TurbokError
from turbok.store.limits import StoreLimits

__all__ = ["Row", "SqliteStore", "StoreDamaged", "StoreError", "row_problem"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    resource  TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    rv        INTEGER NOT NULL,
    data      TEXT NOT NULL,
    PRIMARY KEY (resource, namespace, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
"""

#: SQLite's primary result codes that mean the file itself is damaged, and a full disk.
_DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
_FULL = 13  # SQLITE_FULL

_CHECK_HINT = "run `turbok store check` (and `turbok store repair`, which keeps every good object)"


class StoreError(TurbokError):
    """The store could not be opened or used; the message says why and what to run."""


class StoreDamaged(StoreError):
    """The store's file, a row or the revision counter is damaged."""


def _code(e: sqlite3.Error) -> int:
    return int(getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF


def row_problem(resource: Any, namespace: Any, name: Any, rv: Any, data: Any) -> str | None:
    """Why a stored row cannot be served (bad JSON, the wrong shape, a key that disagrees), or None."""
    return _read_row(resource, namespace, name, rv, data)[0]


def _read_row(resource: Any, namespace: Any, name: Any, rv: Any, data: Any) -> tuple[str | None, Obj]:
    """(why the row cannot be served or None, its object): each row is parsed once at start."""
    if not all(isinstance(v, str) for v in (resource, namespace, name)) or not name:
        return "its key is not (resource, namespace, name) text", {}
    if not isinstance(rv, int) or isinstance(rv, bool) or rv <= 0:
        return f"its resourceVersion column {rv!r} is not a positive integer", {}
    if not isinstance(data, str):
        return "its data is not text", {}
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        return f"its data is not valid JSON ({e})", {}
    if not isinstance(obj, dict):
        return f"its data is a JSON {type(obj).__name__}, not an object", {}
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            return f"its data has no {key}", obj
    md = obj.get("metadata")
    if not isinstance(md, dict):
        return "its data has no metadata object", obj
    if md.get("name") != name:
        return f"metadata.name {md.get('name')!r} is not the row's name", obj
    if (md.get("namespace") or "") != namespace:
        return f"metadata.namespace {md.get('namespace')!r} is not the row's namespace {namespace!r}", obj
    if md.get("resourceVersion") != str(rv):
        return f"metadata.resourceVersion {md.get('resourceVersion')!r} is not the row's {rv}", obj
    labels = md.get("labels")
    if labels is not None and not (isinstance(labels, dict)
                                   and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        return "metadata.labels is not a map of strings", obj
    return None, obj


@dataclass
class Row:
    rv: int
    data: str
    labels: dict[str, str]

    def object(self) -> Obj:
        """A fresh copy of the object, safe to mutate."""
        obj: Obj = json.loads(self.data)
        return obj


class SqliteStore:
    def __init__(self, path: Path | str, *, limits: StoreLimits | None = None, checkpoint_every: float = 1.0) -> None:
        self.path = str(path)
        self.limits = limits or StoreLimits.from_env()
        self.revision: int = 0
        # resource -> namespace -> name -> Row
        self._index: dict[str, dict[str, dict[str, Row]]] = {}
        self._checkpointer: _Checkpointer | None = None
        self._db = self._connect()
        try:
            self._open()
        except sqlite3.Error as e:
            self._db.close()
            if _code(e) in _DAMAGED:
                raise StoreDamaged(f"{self.path} is damaged ({e}); {_CHECK_HINT}") from None
            if _code(e) == _FULL:
                raise StoreError(f"the disk holding {self.path} is full; free some space and start again") from None
            raise StoreError(f"cannot open {self.path}: {e}") from None
        except StoreError:
            self._db.close()
            raise
        if self.path != ":memory:":
            self._checkpointer = _Checkpointer(self.path, self.limits, checkpoint_every)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    def _open(self) -> None:
        db = self._db
        fresh = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if fresh:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect only on a new, empty file
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        # Commits never fsync in WAL+NORMAL; checkpoints do, and can take tens of milliseconds on a
        # busy disk. They run on a thread of their own, so no write waits for one.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA journal_size_limit={int(self.limits.wal_bytes)}")
        problems = [r[0] for r in db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise StoreDamaged(f"{self.path} is damaged ({'; '.join(problems)}); {_CHECK_HINT}")
        revision = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        if revision is None or not isinstance(revision[0], int):
            raise StoreDamaged(f"{self.path}: the revision counter is missing or not a number; {_CHECK_HINT}")
        self.revision = revision[0]
        highest = 0
        for resource, ns, name, rv, data in db.execute("SELECT resource, namespace, name, rv, data FROM objects"):
            problem, obj = _read_row(resource, ns, name, rv, data)
            if problem is not None:
                raise StoreDamaged(f"{self.path}: the row {str(resource).lstrip('/')} {ns + '/' if ns else ''}{name} "
                                   f"(resourceVersion {rv}) is damaged: {problem}; {_CHECK_HINT}")
            labels = obj["metadata"].get("labels") or {}
            self._index.setdefault(resource, {}).setdefault(ns, {})[name] = Row(rv, data, labels)
            highest = max(highest, rv)
        if highest > self.revision:
            # Handing out resourceVersions below stored ones would break every client's ordering.
            raise StoreDamaged(f"{self.path}: the revision counter ({self.revision}) is below the highest stored "
                               f"resourceVersion ({highest}); {_CHECK_HINT}")
        if not fresh and db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            self._enable_incremental_vacuum()

    def _enable_incremental_vacuum(self) -> None:
        """Stores made before incremental vacuum are rebuilt once (VACUUM), so freed space can go back."""
        try:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("VACUUM")
        except sqlite3.OperationalError as e:  # no room for the copy VACUUM makes: try again next start
            log.warning("could not enable incremental vacuum on %s: %s", self.path, e)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._db.close()

    # ------------------------------------------------------------ reads

    def get(self, resource: str, namespace: str, name: str) -> Row | None:
        return self._index.get(resource, {}).get(namespace, {}).get(name)

    def rows(self, resource: str, namespace: str | None = None) -> Iterator[tuple[str, str, Row]]:
        """(namespace, name, row) of a resource, in one namespace or all, in name order."""
        by_ns = self._index.get(resource, {})
        spaces = [namespace] if namespace is not None else sorted(by_ns)
        for ns in spaces:
            names = by_ns.get(ns, {})
            for name in sorted(names):
                row = names.get(name)  # gone if deleted while a worker thread iterates
                if row is not None:
                    yield ns, name, row

    def count(self, resource: str, namespace: str | None = None) -> int:
        by_ns = self._index.get(resource, {})
        if namespace is not None:
            return len(by_ns.get(namespace, {}))
        return sum(len(v) for v in by_ns.values())

    # ------------------------------------------------------------ writes

    def put(self, resource: str, namespace: str, name: str, obj: Obj, *,
            encoded: tuple[str, str] | None = None) -> Row:
        """Insert or replace; stamps ``metadata.resourceVersion`` with the new revision.

        ``encoded``: ``obj`` already encoded (on a worker thread) with ``metadata.resourceVersion`` set
        to a one-off placeholder, as (placeholder, JSON); only the placeholder is replaced here.
        ``RequestEntityTooLarge`` for an object over ``limits.max_object_bytes``; ``InsufficientStorage``
        when the disk is full. Either way nothing is written.
        """
        rev = self.revision + 1
        md = obj.setdefault("metadata", {})
        previous_rv = md.get("resourceVersion")
        md["resourceVersion"] = str(rev)
        if encoded is not None:
            placeholder, text = encoded
            data = text.replace(f'"resourceVersion":"{placeholder}"', f'"resourceVersion":"{rev}"', 1)
        else:
            data = json.dumps(obj, separators=(",", ":"))
        if len(data) > self.limits.max_object_bytes:
            _restore(md, previous_rv)
            raise RequestEntityTooLarge(
                f"Request entity too large: the object would be {len(data)} bytes stored; the limit is "
                f"{self.limits.max_object_bytes} (etcd's request limit)", name=name)
        try:
            self._write((
                ("INSERT OR REPLACE INTO objects (resource, namespace, name, rv, data) VALUES (?, ?, ?, ?, ?)",
                 (resource, namespace, name, rev, data)),
                ("UPDATE meta SET value=? WHERE key='revision'", (rev,)),
            ))
        except ApiError:
            _restore(md, previous_rv)
            raise
        self.revision = rev
        row = Row(rev, data, md.get("labels") or {})
        self._index.setdefault(resource, {}).setdefault(namespace, {})[name] = row
        return row

    def delete(self, resource: str, namespace: str, name: str) -> int:
        """Remove a row; returns the revision of the deletion."""
        rev = self.revision + 1
        self._write((
            ("DELETE FROM objects WHERE resource=? AND namespace=? AND name=?", (resource, namespace, name)),
            ("UPDATE meta SET value=? WHERE key='revision'", (rev,)),
        ))
        self.revision = rev
        names = self._index.get(resource, {}).get(namespace, {})
        names.pop(name, None)
        return rev

    def _write(self, statements: tuple[tuple[str, tuple[Any, ...]], ...]) -> None:
        """One transaction; rolled back whole (the file, and nothing else touched yet) on any error."""
        try:
            # sqlite3's connection context manager commits, or rolls back (also when COMMIT fails).
            self._db.execute("BEGIN IMMEDIATE")
            with self._db:
                for sql, args in statements:
                    self._db.execute(sql, args)
        except sqlite3.Error as e:
            if _code(e) == _FULL:
                raise InsufficientStorage(
                    "the disk of the turbok home is full: nothing was written; free some space and retry "
                    f"({Path(self.path).name} could not grow)") from None
            log.error("store write to %s failed: %s", self.path, e)
            raise ApiError("the store could not write the object; see the turbok log") from None


def _restore(md: Obj, previous_rv: Any) -> None:
    if previous_rv is None:
        md.pop("resourceVersion", None)
    else:
        md["resourceVersion"] = previous_rv


class _Checkpointer(threading.Thread):
    """Copies the WAL into the database once a second (PASSIVE: it never blocks the writer), truncates a
    grown WAL and gives free pages back, a little at a time."""

    #: Pages freed per turn: each incremental_vacuum holds the write lock, and the loop's writer waits for it.
    VACUUM_PAGES = 256

    def __init__(self, path: str, limits: StoreLimits, every: float = 1.0) -> None:
        super().__init__(name="sqlite-checkpointer", daemon=True)
        self.path = path
        self.limits = limits
        self.every = every
        self._stopping = threading.Event()
        self._failing = False
        self.start()

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA journal_size_limit={int(self.limits.wal_bytes)}")
            db.execute("PRAGMA synchronous=NORMAL")  # as the writer: the vacuum's commits need no fsync
            while not self._stopping.wait(self.every):
                self._turn(db)
            self._guarded(db, "PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def _turn(self, db: sqlite3.Connection) -> None:
        busy = self._guarded(db, "PRAGMA wal_checkpoint(PASSIVE)")
        if busy is None:
            return
        try:
            wal = os.path.getsize(self.path + "-wal")
        except OSError:
            wal = 0
        if wal > self.limits.wal_bytes and busy[0] == 0 and busy[1] == busy[2]:
            # Everything is copied: TRUNCATE has nothing left to do but give the file back.
            self._guarded(db, "PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        if free * page > self.limits.free_bytes:
            # executescript steps the pragma to the end; execute would free one page and stop.
            self._guarded(db, f"PRAGMA incremental_vacuum({self.VACUUM_PAGES})", script=True)

    def _guarded(self, db: sqlite3.Connection, sql: str, *, script: bool = False) -> tuple[Any, ...] | None:
        """Run one maintenance statement; a failure (a full disk, a busy writer) is retried next turn."""
        try:
            if script:
                db.executescript(sql)
                row: list[Any] = []
            else:
                row = db.execute(sql).fetchall()
        except sqlite3.Error as e:
            if not self._failing:  # once per streak: a full disk would otherwise log every second
                log.warning("sqlite maintenance of %s failed (%s), will retry: %s", self.path, sql, e)
            self._failing = True
            return None
        if self._failing:
            log.info("sqlite maintenance of %s works again", self.path)
        self._failing = False
        return tuple(row[0]) if row else ()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)
