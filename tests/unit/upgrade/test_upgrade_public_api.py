"""The public surface of turbok.upgrade, and the import rule: it is a client of the clusters it checks."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import turbok.upgrade

FORBIDDEN = ("turbok.store", "turbok.apiserver", "turbok.controllers", "turbok.cli")


def _modules() -> list[str]:
    return [f"turbok.upgrade.{m.name}" for m in pkgutil.iter_modules(turbok.upgrade.__path__)]


def test_every_module_has_a_docstring_and_all() -> None:
    for name in _modules():
        module = importlib.import_module(name)
        assert module.__doc__ and len(module.__doc__.strip()) > 40, name
        assert hasattr(module, "__all__"), name
        for symbol in module.__all__:
            assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol}"


def test_package_reexports_exactly_its_all() -> None:
    exported = set(turbok.upgrade.__all__)
    assert {"make_plan", "PlanRequest", "check_objects", "api_catalog", "UpgradeError", "Version"} <= exported
    for symbol in exported:
        assert getattr(turbok.upgrade, symbol) is not None


def test_upgrade_never_imports_the_engine_or_the_cli() -> None:
    root = Path(turbok.upgrade.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                # whole package names: turbok.client (the shared kubeconfig reader) is allowed, turbok.cli is not
                assert not any(n == f or n.startswith(f + ".") for f in FORBIDDEN), f"{path.name} imports {n}"


def test_data_files_are_packaged() -> None:
    from importlib import resources

    data = resources.files("turbok.upgrade").joinpath("data")
    assert data.joinpath("deprecated_apis.yaml").is_file() and data.joinpath("releases.yaml").is_file()
