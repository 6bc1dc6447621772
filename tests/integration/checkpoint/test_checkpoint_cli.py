"""``turbok checkpoint ls / verify / restore`` against a running agent, and their bad-input answers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from turbok.checkpoint import CheckpointManager
from turbok.checkpoint.agent import Agent
from turbok.checkpoint.inventory import load
from turbok.checkpoint.manifest import PartKey


def turbok(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turbok", "checkpoint", *args], capture_output=True, text=True, timeout=120)


def test_ls_verify_restore(agents: Callable[..., Agent], tmp_path: Path) -> None:
    a, b = agents("a", replication_factor=1), agents("b", replication_factor=1)
    a.settings.peers = b.settings.peers = [a.address, b.address]
    for r, x in enumerate((a, b)):
        with CheckpointManager("cli", rank=r, world_size=2, agent=x.address) as m:
            for step in (1, 2):
                m.save(step, {"w": np.full(1000, r * 10 + step)})
                m.wait(step, "peers")
    with CheckpointManager("cli", rank=0, world_size=2, agent=a.address) as m:
        m.save(3, {"w": np.zeros(3)})  # rank 1 never saves step 3
        m.wait(3, "disk")

    out = turbok("ls", "--job", "cli", "--agent", a.address, "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    steps = {s["step"]: s for s in doc["steps"]}
    assert steps[2]["complete"] and not steps[3]["complete"]
    tiers = {c["tier"] for c in steps[2]["ranks"]["0"]}
    assert f"disk@{a.address}" in tiers and f"memory@{b.address}" in tiers | {c["tier"] for c in steps[2]["ranks"]["0"]} or f"disk@{b.address}" in tiers
    table = turbok("ls", "--job", "cli", "--agent", a.address)
    assert table.returncode == 0 and "cli" in table.stdout

    assert turbok("verify", "--job", "cli", "--agent", a.address).returncode == 0
    bad = a.disk.data_path(PartKey("cli", 2, 0))
    raw = bytearray(bad.read_bytes())
    raw[10] ^= 1
    bad.write_bytes(bytes(raw))
    v = turbok("verify", "--job", "cli", "--step", "2", "--agent", a.address)
    assert v.returncode == 1 and f"disk@{a.address}" in v.stdout and "hash mismatch" in v.stdout
    assert v.stderr.count("\n") == 1 and "failed verification" in v.stderr

    out_dir = tmp_path / "restored"
    r = turbok("restore", "--job", "cli", "--step", "2", "--to", str(out_dir), "--agent", a.address)
    assert r.returncode == 0, r.stderr
    for rank in (0, 1):
        np.testing.assert_array_equal(load(out_dir, "cli", 2, rank)["w"], np.full(1000, rank * 10 + 2))


def test_cli_bad_input_is_one_line(agents: Callable[..., Agent], tmp_path: Path) -> None:
    a = agents("a")
    for args, needle in (
        (("ls", "--job", "ghost", "--agent", a.address), "ghost"),
        (("restore", "--job", "ghost", "--to", str(tmp_path / "x"), "--agent", a.address), "no checkpoint"),
        (("ls", "--job", "ghost", "--agent", "127.0.0.1:1"), "not reachable"),
        (("ls", "--job", "bad/name", "--agent", a.address), "job name"),
    ):
        out = turbok(*args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("memory_sise: 1Gi\n")
    out = turbok("agent", "--config", str(cfg))
    assert out.returncode == 1 and "unknown checkpoint settings" in out.stderr
