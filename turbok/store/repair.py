"""Checking and repairing a damaged store: what ``turbok store check`` and ``turbok store repair`` do.

``check(path)`` reads a store without changing it: SQLite's integrity check,
every row (``sqlite.row_problem``: bad JSON, the wrong shape, a key that
disagrees with its object) and the revision counter against the highest stored
resourceVersion. It reads around damaged pages: a scan by rowid that skips an
unreadable page by probing the rowids after it, then lookups of every key the
primary-key index still knows.

``repair(path)`` keeps every good object and sets everything else aside:

1. the damaged store stays as it was under ``store.db.damaged-<stamp>`` (hard
   links: no copy, the bytes are untouched);
2. bad rows go, raw, to ``store-quarantine-<stamp>.jsonl`` (0600: objects may
   carry secrets) beside the store, one JSON line per row with its problem;
3. a new store is built from the good rows (``store.db.repair``, fsynced) and
   renamed over ``store.db``. Its revision counter is the old one when that was
   sound; otherwise the highest resourceVersion seen plus ``REVISION_BUMP``, so
   no resourceVersion a client may hold is handed out again (what
   ``etcdutl snapshot restore --bump-revision`` does); watches from before get
   410 and clients re-list.

Neither may run while a control plane holds the store (the CLI checks the
home's lock first); neither imports anything of the server.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbok.store.sqlite import SCHEMA, StoreError, row_problem

__all__ = ["REVISION_BUMP", "BadRow", "Repaired", "Report", "check", "repair"]

#: How far a repaired store's revision jumps when its counter was lost or lowered.
REVISION_BUMP = 1_000_000
#: Rowids probed one by one past an unreadable page before giving up on the rest of the table.
_PROBE = 100_000

_Raw = tuple[Any, Any, Any, Any, Any]  # resource, namespace, name, rv, data


@dataclass(frozen=True)
class BadRow:
    resource: Any
    namespace: Any
    name: Any
    rv: Any
    problem: str
    data: Any

    def label(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{str(self.resource).lstrip('/')} {ns}{self.name} (resourceVersion {self.rv})"

    def to_json(self) -> str:
        data = self.data if isinstance(self.data, str) else repr(self.data)
        return json.dumps({"resource": _text(self.resource), "namespace": _text(self.namespace),
                           "name": _text(self.name), "rv": _text(self.rv), "problem": self.problem, "data": data})


def _text(value: Any) -> Any:
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else repr(value)


@dataclass
class Report:
    path: Path
    good: list[_Raw] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    #: SQLite's integrity messages and pages that could not be read.
    file_problems: list[str] = field(default_factory=list)
    #: The stored revision counter, None when it cannot be read.
    revision: int | None = None
    #: The highest resourceVersion of any row read, good or bad.
    highest_rv: int = 0

    @property
    def revision_ok(self) -> bool:
        return self.revision is not None and self.revision >= self.highest_rv

    @property
    def ok(self) -> bool:
        return not self.bad_rows and not self.file_problems and self.revision_ok

    def lines(self) -> list[str]:
        """What an operator reads: one line per finding, then the tally."""
        out = [f"file: {p}" for p in self.file_problems]
        out += [f"row {b.label()}: {b.problem}" for b in self.bad_rows]
        if self.revision is None:
            out.append("revision counter: missing or unreadable")
        elif not self.revision_ok:
            out.append(f"revision counter: {self.revision} is below the highest stored resourceVersion "
                       f"({self.highest_rv})")
        out.append(f"{len(self.good)} good object{'s' if len(self.good) != 1 else ''}, {len(self.bad_rows)} bad "
                   f"row{'s' if len(self.bad_rows) != 1 else ''}, revision {self.revision}")
        return out


@dataclass(frozen=True)
class Repaired:
    report: Report
    backup: Path
    quarantine: Path | None
    revision: int


def check(path: Path) -> Report:
    """Everything wrong with the store at ``path``, read without changing it."""
    if not path.exists():
        raise StoreError(f"no store at {path}")
    report = Report(path)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        report.file_problems.append(f"cannot be opened: {e}")
        return report
    try:
        _read(db, report)
    finally:
        db.close()
    return report


def _read(db: sqlite3.Connection, report: Report) -> None:
    # A file shorter than its header says is refused as a whole unless the schema is "writable"; that
    # flag also lets us read the pages that are still there. Nothing is written (the connection is ro).
    db.execute("PRAGMA writable_schema=ON")
    try:
        integrity = [str(r[0]) for r in db.execute("PRAGMA integrity_check(20)")]
    except sqlite3.Error as e:
        integrity = [str(e)]
    if integrity != ["ok"]:
        report.file_problems.extend(integrity)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        report.revision = row[0] if row is not None and isinstance(row[0], int) else None
    except sqlite3.Error as e:
        report.file_problems.append(f"the revision counter cannot be read: {e}")
    rows: dict[int, _Raw] = {}
    for rowid, raw in _rows_around_damage(db, report):
        rows[rowid] = raw
    by_key: dict[tuple[Any, Any, Any], _Raw] = {}
    for raw in rows.values():
        if isinstance(raw[3], int) and not isinstance(raw[3], bool):
            report.highest_rv = max(report.highest_rv, raw[3])
        problem = row_problem(*raw)
        if problem is not None:
            report.bad_rows.append(BadRow(*raw[:4], problem=problem, data=raw[4]))
            continue
        key = (raw[0], raw[1], raw[2])
        kept = by_key.get(key)
        if kept is None or kept[3] < raw[3]:
            by_key[key] = raw  # a damaged index can let a key appear twice: the newest wins
    report.good = sorted(by_key.values(), key=lambda r: (r[0], r[1], r[2]))


def _rows_around_damage(db: sqlite3.Connection, report: Report) -> Iterator[tuple[int, _Raw]]:
    """(rowid, row) of every readable row: a scan by rowid that probes past unreadable pages, then
    lookups of the keys the primary-key index knows that the scan missed."""
    cols = "rowid, resource, namespace, name, rv, data"
    seen: set[int] = set()
    keys_seen: set[tuple[Any, Any, Any]] = set()
    pos = 0
    while True:
        try:
            for r in db.execute(f"SELECT {cols} FROM objects WHERE rowid > ? ORDER BY rowid", (pos,)):
                pos = r[0]
                seen.add(r[0])
                keys_seen.add((r[1], r[2], r[3]))
                yield r[0], tuple(r[1:])
            break
        except sqlite3.Error as e:
            report.file_problems.append(f"rows after rowid {pos} could not be read: {e}")
        # Probe the rowids after the last good one, one by one, until one reads whole; the scan resumes
        # after it. Every probe moves forward, so this ends.
        found = False
        for probe in range(pos + 1, pos + _PROBE):
            try:
                r = db.execute(f"SELECT {cols} FROM objects WHERE rowid = ?", (probe,)).fetchone()
            except sqlite3.Error:
                continue
            if r is not None:
                pos = r[0]
                seen.add(r[0])
                keys_seen.add((r[1], r[2], r[3]))
                yield r[0], tuple(r[1:])
                found = True
                break
        if not found:
            break
    try:
        keys = db.execute("SELECT resource, namespace, name FROM objects INDEXED BY sqlite_autoindex_objects_1")
        missing = [k for k in keys if tuple(k) not in keys_seen]
    except sqlite3.Error:
        return  # no index to read keys from: the scan is all there is
    for key in missing:
        try:
            r = db.execute(f"SELECT {cols} FROM objects WHERE resource=? AND namespace=? AND name=?", key).fetchone()
        except sqlite3.Error as e:
            report.file_problems.append(f"the row {key[0]} {key[1]}/{key[2]} could not be read: {e}")
            continue
        if r is not None and r[0] not in seen:
            seen.add(r[0])
            yield r[0], tuple(r[1:])


def repair(path: Path, *, now: dt.datetime | None = None) -> Repaired | None:
    """Rebuild the store at ``path`` from its good rows (see the module's docstring); None if it is sound."""
    report = check(path)
    if report.ok:
        return None
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    if report.revision_ok and report.revision is not None:
        revision = report.revision
    else:
        revision = max(report.highest_rv, report.revision or 0) + REVISION_BUMP
    quarantine = None
    if report.bad_rows:
        quarantine = path.with_name(f"store-quarantine-{stamp}.jsonl")
        fd = os.open(quarantine, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            for bad in report.bad_rows:
                f.write(bad.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
    new = path.with_name(path.name + ".repair")
    _build(new, report.good, revision)
    backup = path.with_name(f"{path.name}.damaged-{stamp}")
    os.link(path, backup)
    wal = Path(f"{path}-wal")
    if wal.exists():
        os.link(wal, f"{backup}-wal")
    # The old WAL must go before the new file takes the name: SQLite would replay it into the new store.
    wal.unlink(missing_ok=True)
    Path(f"{path}-shm").unlink(missing_ok=True)
    os.replace(new, path)
    _fsync_dir(path.parent)
    return Repaired(report, backup, quarantine, revision)


def _build(path: Path, rows: list[_Raw], revision: int) -> None:
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.executescript(SCHEMA)
        db.execute("BEGIN")
        db.executemany("INSERT INTO objects (resource, namespace, name, rv, data) VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("UPDATE meta SET value=? WHERE key='revision'", (revision,))
        db.execute("COMMIT")
    finally:
        db.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
