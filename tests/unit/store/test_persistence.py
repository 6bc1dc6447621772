"""Durability: what is committed survives closing and reopening the SQLite file; revisions never repeat."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from turbok.api import meta as m
from turbok.api.status import Gone
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

from .conftest import KINDS, NAMESPACE, POOL, SANDBOX, pool, sandbox, snapshot


def reopen(registry: ObjectRegistry, path: Path) -> ObjectRegistry:
    registry.db.close()
    return ObjectRegistry(SqliteStore(path), KINDS)


def test_objects_survive_a_reopen_exactly(registry: ObjectRegistry, db_path: Path) -> None:
    registry.ensure_namespace("team")
    registry.create(SANDBOX, sandbox("s1", labels={"app": "x"}), namespace="default")
    registry.create(POOL, pool("p1", "team"), namespace="team")
    registry.create(POOL, pool("gone"), namespace="default")
    registry.delete(POOL, "default", "gone")
    registry.patch(POOL, "team", "p1", "application/merge-patch+json", {"status": {"replicas": 1}},
                   subresource="status")
    before = snapshot(registry)
    again = reopen(registry, db_path)
    try:
        assert snapshot(again) == before
        assert again.try_get(POOL, "default", "gone") is None
        selected = again.list(SANDBOX, label_selector=m.LabelSelector.parse("app=x"))
        assert [o["metadata"]["name"] for o in selected.items] == ["s1"]
        assert again.get(POOL, "team", "p1")["status"] == {"replicas": 1}
    finally:
        again.db.close()


def test_revisions_continue_after_a_reopen(registry: ObjectRegistry, db_path: Path) -> None:
    registry.create(POOL, pool("a"), namespace="default")
    registry.delete(POOL, "default", "a")  # the highest revision belongs to a deletion: it must not be reused
    last = registry.db.revision
    again = reopen(registry, db_path)
    try:
        assert again.db.revision == last
        created = again.create(POOL, pool("b"), namespace="default")
        assert int(created["metadata"]["resourceVersion"]) == last + 1
    finally:
        again.db.close()


def test_a_watch_from_before_a_restart_is_gone(registry: ObjectRegistry, db_path: Path) -> None:
    old = registry.create(POOL, pool("a"), namespace="default")["metadata"]["resourceVersion"]
    registry.patch(POOL, "default", "a", "application/merge-patch+json", {"spec": {"replicas": 0}})
    again = reopen(registry, db_path)
    try:
        with pytest.raises(Gone):
            again.watch(POOL, "default", resource_version=old)
        watcher, _ = again.watch(POOL, "default", resource_version=str(again.db.revision))
        watcher.close()
    finally:
        again.db.close()


def test_the_database_is_in_wal_mode_and_holds_json_rows(registry: ObjectRegistry, db_path: Path) -> None:
    registry.create(POOL, pool("a"), namespace="default")
    con = sqlite3.connect(db_path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = con.execute("SELECT resource, namespace, name, rv FROM objects ORDER BY rv").fetchall()
        assert (POOL.key, "default", "a") in [r[:3] for r in rows]
        assert (NAMESPACE.key, "", "default") in [r[:3] for r in rows]
    finally:
        con.close()


def test_a_refused_write_leaves_the_file_as_it_was(registry: ObjectRegistry, db_path: Path) -> None:
    registry.create(POOL, pool("a"), namespace="default")
    before = snapshot(registry)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; the point is what the file holds after
        registry.create(POOL, pool("b", replicas=-5), namespace="default")
    again = reopen(registry, db_path)
    try:
        assert snapshot(again) == before
    finally:
        again.db.close()
