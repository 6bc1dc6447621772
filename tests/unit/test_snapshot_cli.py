"""``turbok sandbox snapshot|snapshots|restore|fork``: bad input is one clear line and a non-zero exit, before any
request (the kubeconfig named here does not exist: a command that got as far as connecting would say so instead).
What they do against a control plane: tests/integration/controlplane/test_snapshots.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from turbok.cli.main import app


@pytest.mark.parametrize(("args", "said"), [
    (["snapshot", "box", "--name", "Bad_Name"], "invalid snapshot name 'Bad_Name'"),
    (["snapshot", "box", "--name", "x" * 64], "invalid snapshot name"),
    (["restore", "box", "../etc"], "invalid snapshot name '../etc'"),
    (["fork", "snap", "ok", "NOT-OK"], "invalid sandbox name 'NOT-OK'"),
    (["fork", "bad-", "copy"], "invalid snapshot name 'bad-'"),
])
def test_bad_names_are_refused_before_any_request(tmp_path: Path, args: list[str], said: str) -> None:
    result = CliRunner().invoke(app, ["sandbox", *args, "--kubeconfig", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert said in result.output and "missing" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
