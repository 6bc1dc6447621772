"""Shared fixtures for the upgrade planner's unit tests: paths to the test data, the packaged catalogs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from turbok.upgrade.apis import ApiCatalog, api_catalog
from turbok.upgrade.versions import ReleaseCatalog, catalog

DATA = Path(__file__).resolve().parents[2] / "data" / "upgrade"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def apis() -> ApiCatalog:
    return api_catalog()


@pytest.fixture(scope="session")
def releases() -> ReleaseCatalog:
    return catalog()


@pytest.fixture(scope="session")
def guide_removals() -> list[dict[str, str | None]]:
    """The guide's removals, written by hand for the tests (tests/data/upgrade/guide_removals.yaml)."""
    return list(yaml.safe_load((DATA / "guide_removals.yaml").read_text())["removals"])
