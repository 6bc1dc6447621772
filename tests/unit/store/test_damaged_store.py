"""A damaged store: opening refuses it with one line naming the damage, and repair keeps every good object.

Each case starts from a copy of a real store written through the registry (namespaces, sandboxes, pools,
deletions), closed cleanly, then damaged the way a disk or a hand edit would: truncated, a page overwritten,
a row with bad JSON, a row of the wrong shape, a lowered revision counter.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from turbok.store import repair as store_repair
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore, StoreDamaged

from .conftest import KINDS, POOL, SANDBOX, pool, sandbox

PAGE = 4096


def objects_of(path: Path) -> dict[tuple[str, str, str], str]:
    db = SqliteStore(path)
    try:
        return {(kind.key, ns, name): row.data for kind in KINDS for ns, name, row in db.rows(kind.key)}
    finally:
        db.close()


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, str, str], str], int]:
    """A store of ~120 objects, each with a unique marker, some big enough to span pages; closed cleanly."""
    path = tmp_path_factory.mktemp("real") / "store.db"
    reg = ObjectRegistry(SqliteStore(path), KINDS)
    reg.ensure_namespace("default")
    reg.ensure_namespace("team")
    for i in range(60):
        body = sandbox(f"s{i:03}", labels={"n": str(i)}, annotations={"marker": f"MARK-s{i:03}-" + "x" * 2500})
        reg.create(SANDBOX, body, namespace="default")
    for i in range(60):
        reg.create(POOL, pool(f"p{i:03}", "team", annotations={"marker": f"MARK-p{i:03}"}), namespace="team")
    reg.delete(POOL, "team", "p059")  # the highest revision belongs to a deletion
    revision = reg.db.revision
    reg.db.close()
    assert not Path(f"{path}-wal").exists()  # closed cleanly: everything is in the file
    return path, objects_of(path), revision


@pytest.fixture
def copy_store(tmp_path: Path, real_store: tuple[Path, dict[tuple[str, str, str], str], int]) -> Path:
    target = tmp_path / "home" / "store.db"
    target.parent.mkdir()
    shutil.copy(real_store[0], target)
    return target


def sql(path: Path, statement: str, *args: object) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(statement, args)
    finally:
        db.close()


def marker_page(path: Path, marker: str) -> int:
    """The page number (0-based) holding ``marker`` in the file."""
    offset = path.read_bytes().find(marker.encode())
    assert offset > 0, marker
    return offset // PAGE


def corrupt_page(path: Path) -> None:
    page = marker_page(path, "MARK-s030-")
    with open(path, "r+b") as f:
        f.seek(page * PAGE)
        f.write(os.urandom(PAGE))


def truncate(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate((size * 3 // 4) // PAGE * PAGE)


def bad_json(path: Path) -> None:
    sql(path, "UPDATE objects SET data = '{\"apiVersion\": \"agents.x-k8s.io/v1beta1\", truncated' "
              "WHERE name = 's007'")


def wrong_shape(path: Path) -> None:
    sql(path, "UPDATE objects SET data = '[1, 2, 3]' WHERE name = 'p003'")


def lowered_revision(path: Path) -> None:
    sql(path, "UPDATE meta SET value = 5 WHERE key = 'revision'")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": truncate, "corrupted-page": corrupt_page, "bad-json": bad_json, "wrong-shape": wrong_shape,
    "lowered-revision": lowered_revision,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_opening_a_damaged_store_is_one_clear_error(copy_store: Path, damage: str) -> None:
    DAMAGES[damage](copy_store)
    with pytest.raises(StoreDamaged) as raised:
        SqliteStore(copy_store).close()
    message = str(raised.value)
    assert "\n" not in message and "turbok store check" in message and str(copy_store) in message
    if damage == "bad-json":
        assert "default/s007" in message and "not valid JSON" in message
    if damage == "wrong-shape":
        assert "team/p003" in message and "not an object" in message
    if damage == "lowered-revision":
        assert "revision counter (5)" in message


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_repair_keeps_every_good_object(copy_store: Path, damage: str,
                                        real_store: tuple[Path, dict[tuple[str, str, str], str], int]) -> None:
    _, before, revision = real_store
    DAMAGES[damage](copy_store)
    damaged_bytes = copy_store.read_bytes()
    report = store_repair.check(copy_store)
    assert not report.ok
    assert copy_store.read_bytes() == damaged_bytes  # check changes nothing
    repaired = store_repair.repair(copy_store)
    assert repaired is not None
    assert repaired.backup.read_bytes() == damaged_bytes  # the damaged store is kept as it was
    after = objects_of(copy_store)  # opens: the repaired store passes the start-up checks
    quarantined = []
    if repaired.quarantine is not None:
        assert repaired.quarantine.stat().st_mode & 0o777 == 0o600
        quarantined = [json.loads(line) for line in repaired.quarantine.read_text().splitlines()]
    # Nothing comes back changed, and nothing readable is lost: what is missing was on an unreadable page.
    assert all(before[key] == data for key, data in after.items())
    missing = set(before) - set(after)
    if damage in ("bad-json", "wrong-shape"):
        name = "s007" if damage == "bad-json" else "p003"
        assert [key[2] for key in missing] == [name]
        assert [q["name"] for q in quarantined] == [name] and quarantined[0]["problem"]
    elif damage == "lowered-revision":
        assert not missing and not quarantined
    elif damage == "corrupted-page":
        # Only the rows on the overwritten page (here: one sandbox, its marker and data) are gone.
        assert missing and all(key[2] == "s030" for key in missing), missing
    else:  # truncated: every row whose page is still in the file is kept
        assert missing
        for key in missing:
            assert damaged_bytes.find(f"MARK-{key[2]}".encode()) == -1, key
    db = SqliteStore(copy_store)
    try:
        # Never below anything handed out before: the counter kept, or bumped past every stored version.
        assert db.revision >= revision
        if damage == "lowered-revision":
            highest = max(int(json.loads(data)["metadata"]["resourceVersion"]) for data in before.values())
            assert db.revision >= highest + store_repair.REVISION_BUMP
    finally:
        db.close()
    assert store_repair.check(copy_store).ok
    assert store_repair.repair(copy_store) is None  # a sound store is left alone


def test_check_of_a_sound_store_is_ok(copy_store: Path) -> None:
    report = store_repair.check(copy_store)
    assert report.ok and len(report.good) == 2 + 60 + 59  # namespaces, sandboxes, pools
