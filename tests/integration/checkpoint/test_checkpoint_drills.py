"""Failure drills with real processes: torchrun (gloo, 2 ranks, each on its own simulated node
with its own agent), killed at every stage of a save, nodes and clusters lost, copies
corrupted on each tier. Every drill resumes and saves again, and each resumed run's losses
and parameters and optimizer state at every save (and at the end) must be bitwise identical
to an uninterrupted run with the same seed (drills/train_torch.py writes them).

A torchrun costs about 4 s here (three processes importing torch on two cores), so the
drills are chained: one run's resume is the previous drill's check and the setting of
the next one (14 torchruns in all).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from turbok.checkpoint.agent import Agent
from turbok.checkpoint.config import Settings
from turbok.checkpoint.healing import scrub
from turbok.checkpoint.manifest import PartKey
from turbok.checkpoint.tiers.disk import DiskTier
from turbok.checkpoint.tiers.files import DirectoryTier

from .conftest import AgentProc, free_port, settings_for

SCRIPT = Path(__file__).parent / "drills" / "train_torch.py"
RANKS = 2
STEPS = 21  # the baseline's length: every chain below ends at or before it
Record = dict[int, dict[str, Any]]


def torchrun(out: Path, job: str, agents: list[str], *, expect_ok: bool = True, **env: str) -> Record:
    """Run the drill script; returns each rank's record (a killed run's ranks say how far they got)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "TURBOK_DRILL_OUT": str(out), "TURBOK_DRILL_JOB": job,
            "TURBOK_DRILL_AGENTS": ",".join(agents), **env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(RANKS),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--max-restarts", "0", str(SCRIPT)]
    proc = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=int(os.environ.get("DRILL_TIMEOUT", "120")))
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-4000:]
    else:
        assert proc.returncode != 0, "the run was expected to die"
    return {r: json.loads((out / f"rank-{r}.json").read_text()) for r in range(RANKS) if (out / f"rank-{r}.json").exists()}


def assert_continues(baseline: Record, resumed: Record, *, start: set[int]) -> int:
    """Each rank of ``resumed`` started from one step of ``start`` (the same for all), saved again,
    and every loss and every saved state since is bitwise the baseline's. Returns the start."""
    assert resumed, "no rank got as far as its first save"
    first = next(iter(resumed.values()))["start"]
    assert first in start, f"resumed from {first}, expected one of {sorted(start)}"
    for r, got in resumed.items():
        ref = baseline[r]
        assert got["start"] == first, "the ranks restored different steps"
        assert got["losses"], f"rank {r} ran no step after the resume"
        assert got["losses"] == {s: ref["losses"][s] for s in got["losses"]}, f"rank {r}: losses differ"
        if "digest" in got:  # a run that was killed: the caller checks the save it was killed in
            assert any(int(s) > first for s in got["saved"]), f"rank {r}: no save after the resume"
        for s, digest in got["digests"].items():
            assert digest == ref["digests"][s], f"rank {r}: parameters or optimizer state at step {s} differ"
        if "digest" in got:
            assert got["digest"] == ref["digests"][str(max(int(s) for s in got["losses"]))], f"rank {r}: final state differs"
    return int(first)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Record]:
    work = tmp_path_factory.mktemp("baseline")
    agents = [Agent(Settings.from_dict({**settings_for(work, f"n{r}"), "memory_dir": f"/dev/shm/turbok-drill-{free_port()}"}))
              for r in range(RANKS)]
    for a in agents:
        a.start()
    try:
        record = torchrun(work / "out", "baseline", [a.address for a in agents], TURBOK_DRILL_STEPS=str(STEPS))
        assert all(str(s) in record[r]["digests"] for r in range(RANKS) for s in range(3, STEPS + 1, 3))
        yield record
    finally:
        for a in agents:
            a.stop()
            shutil.rmtree(a.memory.root, ignore_errors=True)


def _pair(agents: Callable[..., Agent], **extra: Any) -> list[Agent]:
    pair = [agents(f"n{r}", **extra) for r in range(RANKS)]
    for a in pair:
        a.settings.peers = [p.address for p in pair]
    return pair


def _flip(tier: DirectoryTier, key: PartKey) -> None:
    manifest = tier.committed_manifest(key)
    assert manifest is not None, f"{key} is not on {tier.name}"
    shard = max(manifest.shards, key=lambda s: s.size)
    with open(tier.data_path(key), "r+b") as f:
        f.seek(shard.offset + shard.size // 2)
        byte = f.read(1)
        f.seek(shard.offset + shard.size // 2)
        f.write(bytes([byte[0] ^ 0x10]))


# (stage, step whose save rank 1 is killed in, the run's environment, the agents' slowed stage)
KILLS: list[tuple[str, int, dict[str, str], dict[str, float]]] = [
    ("copy", 6, {"TURBOK_DRILL_KILL": "copy:6:1", "TURBOK_CHECKPOINT_FAULTS": json.dumps({"stager.before_copy@6": 30})}, {}),
    ("staged", 9, {"TURBOK_DRILL_KILL": "staged:9:1"}, {}),
    ("disk commit", 12, {"TURBOK_DRILL_KILL": "agent:12:1"}, {"disk.before_commit@12": 1.5}),
    ("replica", 15, {"TURBOK_DRILL_KILL": "agent:15:1"}, {"replicate.before_commit@15": 1.5}),
    ("backup", 18, {"TURBOK_DRILL_KILL": "agent:18:1"}, {"object.before_commit@18": 1.5}),
]


def test_a_rank_killed_at_every_stage_of_a_save_resumes_bitwise_and_saves_again(
        baseline: Record, agents: Callable[..., Agent], workdir: Path) -> None:
    """Each run resumes from the previous one's kill, saves (issue 12, bug 1: the first save
    after a crash failed) and is killed in the next stage; the last one runs to the end."""
    pair = _pair(agents, replication_factor=1, storage_url=f"file://{workdir}/bucket")
    addresses = [a.address for a in pair]
    killed: tuple[str, int] | None = None
    for n, (stage, step, env, faults) in enumerate([*KILLS, ("end", STEPS, {}, {})]):
        for a in pair:
            a.settings.fault_delays = faults
        resume = {"TURBOK_DRILL_RESUME": "1"} if killed else {}
        got = torchrun(workdir / f"run{n}", "k9", addresses, expect_ok=stage == "end",
                       TURBOK_DRILL_STEPS=str(STEPS), **env, **resume)
        if stage != "end":
            assert got.get(1, {}).get("saved", [])[-1:] == [step], f"{stage}: rank 1 died before its save of step {step}"
        if killed is not None:
            was, at = killed  # a step whose copy never finished is never offered
            assert_continues(baseline, got, start={at - 3} if was == "copy" else {at - 3, at})
        killed = (stage, step)
    assert "digest" in got[0] and "digest" in got[1]


def test_node_loss_then_cluster_loss_resume_from_a_peer_then_object_storage(
        baseline: Record, agent_procs: Callable[..., AgentProc], s3: dict[str, Any], workdir: Path) -> None:
    # every 9th step is backed up: step 6 exists only on the nodes, so after node a is lost its
    # rank comes back from the replica on b; after both are lost, step 9 comes from S3, found
    # by latest_step() (issue 12, bug 2)
    store = {"storage_url": s3["storage_url"], "storage_options": s3["storage_options"], "backup_every_steps": 9}
    a, b = agent_procs("a", replication_factor=1, **store), agent_procs("b", replication_factor=1, **store)
    for x in (a, b):
        x.start(peers=[a.address, b.address])
    torchrun(workdir / "run1", "loss", [a.address, b.address], TURBOK_DRILL_STEPS="6", TURBOK_DRILL_DURABLE="peers")
    a.kill()
    shutil.rmtree(a.config["memory_dir"])
    shutil.rmtree(a.config["disk_dir"])
    fresh = agent_procs("a2", replication_factor=1, **store).start(peers=[b.address])
    resumed = torchrun(workdir / "run2", "loss", [fresh.address, b.address], TURBOK_DRILL_RESUME="1",
                       TURBOK_DRILL_STEPS="9", TURBOK_DRILL_DURABLE="object")
    assert_continues(baseline, resumed, start={6})
    for x in (fresh, b):
        x.kill()
        shutil.rmtree(x.config["memory_dir"])
        shutil.rmtree(x.config["disk_dir"])
    new = [agent_procs(f"c{r}", **store).start() for r in range(RANKS)]
    resumed = torchrun(workdir / "run3", "loss", [x.address for x in new], TURBOK_DRILL_RESUME="1", TURBOK_DRILL_STEPS="12")
    assert_continues(baseline, resumed, start={9})


def test_corruption_on_every_tier_is_repaired_and_the_newest_step_corrupt_everywhere_falls_back(
        baseline: Record, agents: Callable[..., Agent], workdir: Path) -> None:
    bucket = workdir / "bucket"
    pair = _pair(agents, replication_factor=1, storage_url=f"file://{bucket}", keep_memory=2, keep_disk=2)
    addresses = [a.address for a in pair]
    backups = DiskTier(bucket, name="object")  # the file:// object store has the disk tier's layout

    def settled(step: int) -> tuple[PartKey, PartKey]:
        k0, k1 = PartKey("rot", step, 0), PartKey("rot", step, 1)
        assert pair[1].pipeline.wait(k0, "disk", 30) and pair[0].pipeline.wait(k1, "disk", 30), "replicas did not land"
        return k0, k1

    torchrun(workdir / "run1", "rot", addresses, TURBOK_DRILL_STEPS="6", TURBOK_DRILL_DURABLE="object")
    # memory and disk: rank 0's memory copy flipped; rank 1's only local copy, on disk, flipped
    k0, k1 = settled(6)
    _flip(pair[0].memory, k0)
    pair[1].memory.delete(k1)
    _flip(pair[1].disk, k1)
    resumed = torchrun(workdir / "run2", "rot", addresses, TURBOK_DRILL_RESUME="1", TURBOK_DRILL_STEPS="9",
                       TURBOK_DRILL_DURABLE="object")
    assert_continues(baseline, resumed, start={6})
    assert pair[0].metrics.failures.labels("memory", "verify")._value.get() >= 1
    assert pair[1].metrics.failures.labels("disk", "verify")._value.get() >= 1
    for a in pair:
        assert scrub(a.ctx, "rot", step=6)["findings"] == [], "a corrupt copy was left behind"

    # a peer's replica and a backup: rank 0's node lost its copies and the replica on node 1 is
    # corrupt; rank 1's backup is corrupt. `turbok checkpoint repair` fixes both.
    k0, k1 = settled(9)
    for tier in (pair[0].memory, pair[0].disk):
        tier.delete(k0)
    for tier in (pair[1].memory, pair[1].disk):
        if tier.exists(k0):
            _flip(tier, k0)
    _flip(backups, k1)
    out = subprocess.run([sys.executable, "-m", "turbok", "checkpoint", "repair", "--job", "rot", "--agent", addresses[1]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "repaired" in out.stdout, (out.stdout, out.stderr)
    resumed = torchrun(workdir / "run3", "rot", addresses, TURBOK_DRILL_RESUME="1", TURBOK_DRILL_STEPS="12",
                       TURBOK_DRILL_DURABLE="object")
    assert_continues(baseline, resumed, start={9})
    assert scrub(pair[1].ctx, "rot", step=9, include_object=True)["findings"] == []

    # the newest step corrupt everywhere: restore falls back to the previous good one
    _, k1 = settled(12)
    copies = [t for a in pair for t in (a.memory, a.disk) if t.exists(k1)] + [backups]
    assert len(copies) >= 3
    for tier in copies:
        _flip(tier, k1)
    resumed = torchrun(workdir / "run4", "rot", addresses, TURBOK_DRILL_RESUME="1", TURBOK_DRILL_STEPS="12")
    assert_continues(baseline, resumed, start={9})
    assert any(e["reason"] == "Quarantined" and e["step"] == 12 for a in pair for e in a.ctx.events.list("rot"))
