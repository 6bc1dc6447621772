"""A damaged store of a real `turbok serve`: start-up refuses it with one line, `turbok store check` names the
damage, `turbok store repair` keeps every good object and the control plane starts again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ControlPlaneProcess
from turbok.client.kubeconfig import load_kubeconfig
from turbok.client.rest import RestClient

PAGE = 4096


def turbok(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turbok", *args], env={**os.environ, "TURBOK_HOME": str(home)},
                          capture_output=True, text=True, timeout=timeout)


def rows(path: Path) -> dict[tuple[str, str, str], str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {(r, ns, n): d for r, ns, n, d in db.execute("SELECT resource, namespace, name, data FROM objects")}
    finally:
        db.close()


def sql(path: Path, statement: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(statement)
    finally:
        db.close()


def corrupt_page(path: Path) -> None:
    offset = path.read_bytes().find(b"MARK-t07-")
    with open(path, "r+b") as f:
        f.seek(offset // PAGE * PAGE)
        f.write(os.urandom(PAGE))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size * 3 // 4 // PAGE * PAGE)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "corrupted-page": corrupt_page,
    "bad-json": lambda p: sql(p, "UPDATE objects SET data = '{\"kind\": ' WHERE name = 't03'"),
    "wrong-shape": lambda p: sql(p, "UPDATE objects SET data = '\"just a string\"' WHERE name = 't04'"),
    "lowered-revision": lambda p: sql(p, "UPDATE meta SET value = 3 WHERE key = 'revision'"),
}


def test_damaged_stores_refuse_to_start_and_repair_keeps_every_good_object(
        make_control_plane: Callable[..., ControlPlaneProcess], tmp_path: Path) -> None:
    cp = make_control_plane()
    api = RestClient(load_kubeconfig(cp.kubeconfig))
    templates = api.resource("sandboxtemplates")
    for i in range(12):
        api.create(templates, {
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
            "metadata": {"name": f"t{i:02}", "annotations": {"marker": f"MARK-t{i:02}-" + "x" * 3000}},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}}},
        }, "default")
    api.close()
    cp.stop()  # a clean stop: everything is in store.db
    good = rows(cp.home / "store.db")
    # each template also owns the NetworkPolicy upstream's controller makes for it (t00-network-policy...)
    assert len([k for k in good if k[0].endswith("/sandboxtemplates")]) == 12

    for damage, harm in DAMAGES.items():
        home = tmp_path / damage
        home.mkdir(mode=0o700)
        shutil.copy(cp.home / "store.db", home / "store.db")
        harm(home / "store.db")

        serve = turbok("serve", home=home)
        assert serve.returncode == 1, (damage, serve.stderr)
        lines = [line for line in serve.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in serve.stderr, (damage, serve.stderr)
        assert "turbok store check" in lines[0] and "store.db" in lines[0]

        check = turbok("store", "check", home=home)
        assert check.returncode == 3, (damage, check.stdout, check.stderr)
        assert "damaged" in check.stdout
        if damage == "bad-json":
            assert "t03" in check.stdout and "not valid JSON" in check.stdout
        if damage == "lowered-revision":
            assert "revision counter: 3 is below" in check.stdout

        repair = turbok("store", "repair", home=home)
        assert repair.returncode == 0, (damage, repair.stdout, repair.stderr)
        assert turbok("store", "check", home=home).returncode == 0
        after = rows(home / "store.db")
        assert all(good[key] == data for key, data in after.items()), damage
        lost = {key[2] for key in set(good) - set(after)}
        if damage in ("bad-json", "wrong-shape"):
            assert lost == {"t03" if damage == "bad-json" else "t04"}
            quarantine = next(home.glob("store-quarantine-*.jsonl"))
            assert json.loads(quarantine.read_text().splitlines()[0])["name"] in lost
        elif damage == "lowered-revision":
            assert not lost
        else:
            assert lost and "default" not in lost  # only rows of the damaged pages
        assert next(home.glob("store.db.damaged-*")).exists()

    # The repaired store of a lowered counter serves again, every object there, every version newer.
    home = tmp_path / "lowered-revision"
    again = make_control_plane(home)
    api = RestClient(load_kubeconfig(again.kubeconfig))
    try:
        listed = api.list(api.resource("sandboxtemplates"), "default")
        assert sorted(o["metadata"]["name"] for o in listed["items"]) == [f"t{i:02}" for i in range(12)]
        highest = max(int(o["metadata"]["resourceVersion"]) for o in listed["items"])
        assert int(listed["metadata"]["resourceVersion"]) > highest
    finally:
        api.close()


def test_repair_refuses_while_a_control_plane_holds_the_home(
        make_control_plane: Callable[..., ControlPlaneProcess]) -> None:
    cp = make_control_plane()
    assert cp.proc is not None
    # Frozen, the control plane still holds the home but writes nothing (it goes on publishing its startup
    # objects after it answers), so any change to the rows is the refused repair's.
    cp.proc.send_signal(signal.SIGSTOP)
    try:
        before = rows(cp.home / "store.db")
        repair = turbok("store", "repair", home=cp.home)
        after = rows(cp.home / "store.db")
    finally:
        cp.proc.send_signal(signal.SIGCONT)
    assert repair.returncode == 1
    lines = [line for line in repair.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"pid {cp.proc.pid}" in lines[0] and "turbok down" in lines[0], repair.stderr
    assert after == before
    assert not list(cp.home.glob("store.db.damaged-*"))
    cp.stop(signal.SIGTERM)
