"""Fixtures: an ObjectRegistry over a real SQLite file in a temporary directory, and object builders."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from turbok.api.kinds import NAMESPACE, Kind, default_registry
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

KINDS = default_registry()
SANDBOX = KINDS.by_kind("agents.x-k8s.io/v1beta1", "Sandbox")
POOL = KINDS.by_kind("extensions.agents.x-k8s.io/v1beta1", "SandboxWarmPool")
TEMPLATE = KINDS.by_kind("extensions.agents.x-k8s.io/v1beta1", "SandboxTemplate")
CLAIM = KINDS.by_kind("extensions.agents.x-k8s.io/v1beta1", "SandboxClaim")

__all__ = ["CLAIM", "KINDS", "NAMESPACE", "POOL", "SANDBOX", "TEMPLATE", "pool", "sandbox", "snapshot"]


def sandbox(name: str = "s1", namespace: str = "default", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "python:3.11-slim"}]}}},
    }


def pool(name: str = "p1", namespace: str = "default", replicas: int = 2, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": "t"}},
    }


def snapshot(reg: ObjectRegistry) -> tuple[int, dict[tuple[str, str, str], str]]:
    """The store's revision and every row's JSON: equal snapshots mean nothing was written."""
    rows = {}
    for kind in KINDS:
        for ns, name, row in reg.db.rows(kind.key):
            rows[(kind.key, ns, name)] = row.data
    return reg.db.revision, rows


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def registry(db_path: Path) -> Iterator[ObjectRegistry]:
    reg = ObjectRegistry(SqliteStore(db_path), KINDS)
    reg.ensure_namespace("default")
    yield reg
    reg.db.close()


def kind_of(obj: dict[str, Any]) -> Kind:
    return KINDS.by_kind(obj["apiVersion"], obj["kind"])


def copy_of(obj: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(obj)
