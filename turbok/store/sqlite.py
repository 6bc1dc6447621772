"""Durable objects in SQLite, with one global revision and an in-memory index.

Each write is one transaction: the row and the new revision commit together,
so a crash leaves either the old object or the new one. WAL with
``synchronous=NORMAL`` survives a crash of the process (what a control-plane
restart is); a power loss may lose the last transactions, as documented.

Rows are keyed ``(resource, namespace, name)``; cluster-scoped objects use the
empty namespace. Reads are served from the index (JSON text plus labels), so
listing thousands of sandboxes with a label selector costs no disk reads.
This class is not thread-safe: the control plane calls it from its event loop.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Row", "SqliteStore"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_SCHEMA = """
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
    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Commits never fsync in WAL+NORMAL; checkpoints do, and can take tens of milliseconds on a
        # busy disk. They run on a thread of their own, so no write waits for one.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = _Checkpointer(str(path)) if str(path) != ":memory:" else None
        self.revision: int = self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]
        # resource -> namespace -> name -> Row
        self._index: dict[str, dict[str, dict[str, Row]]] = {}
        for resource, ns, name, rv, data in self._db.execute("SELECT resource, namespace, name, rv, data FROM objects"):
            labels = (json.loads(data).get("metadata") or {}).get("labels") or {}
            self._index.setdefault(resource, {}).setdefault(ns, {})[name] = Row(rv, data, labels)

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
                yield ns, name, names[name]

    def count(self, resource: str, namespace: str | None = None) -> int:
        by_ns = self._index.get(resource, {})
        if namespace is not None:
            return len(by_ns.get(namespace, {}))
        return sum(len(v) for v in by_ns.values())

    # ------------------------------------------------------------ writes

    def put(self, resource: str, namespace: str, name: str, obj: Obj) -> Row:
        """Insert or replace; stamps ``metadata.resourceVersion`` with the new revision."""
        rev = self.revision + 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(rev)
        data = json.dumps(obj, separators=(",", ":"))
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO objects (resource, namespace, name, rv, data) VALUES (?, ?, ?, ?, ?)",
                (resource, namespace, name, rev, data),
            )
            self._db.execute("UPDATE meta SET value=? WHERE key='revision'", (rev,))
        self.revision = rev
        row = Row(rev, data, (obj.get("metadata") or {}).get("labels") or {})
        self._index.setdefault(resource, {}).setdefault(namespace, {})[name] = row
        return row

    def delete(self, resource: str, namespace: str, name: str) -> int:
        """Remove a row; returns the revision of the deletion."""
        rev = self.revision + 1
        with self._tx():
            self._db.execute(
                "DELETE FROM objects WHERE resource=? AND namespace=? AND name=?", (resource, namespace, name)
            )
            self._db.execute("UPDATE meta SET value=? WHERE key='revision'", (rev,))
        self.revision = rev
        names = self._index.get(resource, {}).get(namespace, {})
        names.pop(name, None)
        return rev

    def _tx(self) -> sqlite3.Connection:
        # sqlite3's connection context manager commits or rolls back; BEGIN makes it one transaction.
        self._db.execute("BEGIN IMMEDIATE")
        return self._db


class _Checkpointer(threading.Thread):
    """Copies the WAL into the database once a second (PASSIVE: it never blocks the writer)."""

    def __init__(self, path: str, every: float = 1.0) -> None:
        super().__init__(name="sqlite-checkpointer", daemon=True)
        self.path = path
        self.every = every
        self._stopping = threading.Event()
        self.start()

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopping.wait(self.every):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:  # a checkpoint that fails is retried by the next one, or at open
            log.warning("sqlite checkpoint of %s failed: %s", self.path, e)
        finally:
            db.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)
