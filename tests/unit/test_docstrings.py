"""Module docstrings name modules that exist: a module deleted or renamed leaves no pointer to it behind."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: ``turbok.<package>.<module>...`` in double backticks, as the docstrings name code.
_REFERENCE = re.compile(r"``(turbok(?:\.[A-Za-z_][A-Za-z_0-9]*)+)")


def _exists(dotted: str) -> bool:
    """Whether ``dotted`` is a module, or a name its longest module prefix defines (a function, a class...)."""
    parts = dotted.split(".")
    for i in range(len(parts), 1, -1):
        module = ROOT.joinpath(*parts[:i]).with_suffix(".py")
        package = ROOT.joinpath(*parts[:i], "__init__.py")
        source = module if module.is_file() else package if package.is_file() else None
        if source is None:
            continue
        if i == len(parts):
            return True
        tree = ast.parse(source.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
        defined |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign)
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        defined |= {(a.asname or a.name).split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                    for a in n.names}
        return parts[i] in defined
    return False


def test_module_docstrings_name_only_modules_that_exist() -> None:
    missing = []
    for path in sorted((ROOT / "turbok").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        for ref in sorted(set(_REFERENCE.findall(doc))):
            package = ROOT.joinpath(*ref.split(".")[:2])
            if not (package.is_dir() or package.with_suffix(".py").is_file()):
                continue  # not code: ``turbok.dev/...`` annotations, ``turbok.json``
            if not _exists(ref):
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert missing == []
