"""The manager as Orbax and DCP users expect it (issue 12, items 5, 8, 9 and 10's quotas).

Futures and durability, steps and deletion across every tier, the job's retention,
preemption, a save while the agent is away, quotas, the accelerator path on a simulated
device, ranged reads, and scrub/repair from the command line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from turbok.checkpoint import AgentUnavailableError, CheckpointError, CheckpointManager
from turbok.checkpoint.agent import Agent
from turbok.checkpoint.device import SimulatedBackend
from turbok.checkpoint.manifest import BLOCK, PartKey
from turbok.checkpoint.retention import JobRetention

from .conftest import AgentProc


def _state(step: int, n: int = 1 << 20) -> dict[str, Any]:
    return {"w": np.random.default_rng(step).standard_normal(n // 8), "step": step}


def _metric(mgr: CheckpointManager, name: str, **labels: str) -> float:
    total = 0.0
    for line in mgr.metrics().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_save_returns_a_future_that_resolves_on_the_durable_tier(agents: Callable[..., Agent], workdir: Path) -> None:
    agent = agents("a", storage_url=f"file://{workdir}/bucket", keep_memory=3, keep_disk=3, keep_object_last=3)
    big = torch.randn(1 << 20)  # 4 MiB: copied after save() returns
    with CheckpointManager("fut", agent=agent.address, durable="object") as m:
        future = m.save(1, {"big": big, "n": 1}, metrics={"loss": 0.5})
        result = future.result(timeout=60)
        assert result.step == 1 and result.bytes >= big.numel() * 4
        assert result.tiers["memory"] == result.tiers["disk"] == result.tiers["object"] == "done"
        assert result.seconds < result.durable_seconds
        assert future.progress()["object"] == "done"
        for step in (2, 3):
            m.save(step, {"big": big + step, "n": step})
        m.wait_until_finished()
        assert not m.is_saving_in_progress()
        assert m.all_steps() == [1, 2, 3] and m.latest_step() == 3
        assert m.steps()[0].metrics == {"loss": 0.5}


def test_delete_and_the_jobs_retention_reach_every_tier(agents: Callable[..., Agent], workdir: Path) -> None:
    store = f"file://{workdir}/bucket"
    a = agents("a", storage_url=store, replication_factor=1, keep_memory=5, keep_disk=5, keep_object_last=5)
    b = agents("b", storage_url=store, replication_factor=1, keep_memory=5, keep_disk=5, keep_object_last=5)
    a.settings.peers = b.settings.peers = [a.address, b.address]
    with CheckpointManager("ret", agent=a.address, durable="object", retention=JobRetention(max_to_keep=2)) as m:
        for step in (1, 2, 3, 4):
            m.save(step, _state(step)).result()
            m.wait(step, "peers")
        deadline = time.monotonic() + 30
        while m.all_steps() != [3, 4]:
            assert time.monotonic() < deadline, m.steps()
            time.sleep(0.2)
        where = {s.step: s.ranks[0] for s in m.steps()}
        assert set(where) == {3, 4}, "an old step survives on some tier"
        m.delete(3)
        assert m.all_steps() == [4]
        for agent in (a, b):
            assert {s.key.step for s in agent.memory.list("ret") + agent.disk.list("ret")} <= {4}
        assert {s.key.step for s in a.object.list("ret")} == {4}  # type: ignore[union-attr]


def test_preemption_saves_waits_for_the_durable_tier_and_exits(agents: Callable[..., Agent], tmp_path: Path) -> None:
    agent = agents("a")
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, numpy as np
        from turbok.checkpoint import CheckpointManager
        m = CheckpointManager("preempt", agent="{agent.address}", save_interval_steps=1000)
        m.install_preemption_handler()
        w = np.zeros(1 << 16)
        for step in range(1, 100000):
            w += 1  # a training step
            if m.should_save(step):
                m.save(step, {{"w": w, "step": step}})
            if m.reached_preemption(step):
                m.wait_until_finished()
                print("saved", step, flush=True)
                sys.exit(0)
            time.sleep(0.01)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    saved = int(out.split()[-1])
    with CheckpointManager("preempt", agent=agent.address) as m:
        assert m.latest_step() == saved
        restored = m.restore()
        assert restored.state["step"] == saved and float(restored.state["w"][0]) == saved


def test_a_save_while_the_agent_restarts_is_buffered_and_handed_over(agent_procs: Callable[..., AgentProc]) -> None:
    a = agent_procs("a").start()
    with CheckpointManager("away", agent=a.address, agent_retry_s=20) as m:
        m.save(1, _state(1)).result()
        a.kill(signal.SIGTERM)
        w = torch.randn(1 << 20)
        before = w.clone()
        opt = torch.optim.SGD([torch.nn.Parameter(w)], lr=1.0)
        future = m.save(2, {"w": w})
        assert future.wait_copied(10), "training was held while the agent is away"
        opt.param_groups[0]["params"][0].grad = torch.ones_like(w)
        opt.step()  # training goes on, changing the tensor the buffered save holds a copy of
        a.start()
        assert future.result(timeout=60).tiers["disk"] == "done"
        assert torch.equal(m.restore().state["w"], before)
        # An agent that stays away longer than the bound: the loss is visible.
        a.kill(signal.SIGTERM)
    with CheckpointManager("away", agent=a.address, agent_retry_s=1.0) as m:
        future = m.save(3, _state(3))
        with pytest.raises(AgentUnavailableError, match="step 3 was not saved"):
            future.result(timeout=30)


def test_job_memory_quota_keeps_jobs_apart_and_evictions_are_never_silent(agents: Callable[..., Agent]) -> None:
    quota = agents("q", memory_size="8Mi", job_memory_quota="4Mi", keep_memory=3, keep_disk=3)
    with CheckpointManager("one", agent=quota.address) as one, CheckpointManager("two", agent=quota.address) as two:
        one.save(1, _state(1, 3 << 20)).result()
        two.save(1, _state(2, 3 << 20)).result()
        one.save(2, _state(3, 3 << 20)).result()  # over its quota: it evicts its own step 1, not job two's
        assert quota.memory.exists(PartKey("two", 1, 0)) and not quota.memory.exists(PartKey("one", 1, 0))
        with pytest.raises(CheckpointError, match="jobMemoryQuota"):
            one.save(3, _state(4, 6 << 20)).result()
    free = agents("f", memory_size="8Mi", keep_memory=3, keep_disk=3)
    with CheckpointManager("one", agent=free.address) as one, CheckpointManager("two", agent=free.address) as two:
        one.save(1, _state(1, 4 << 20)).result()
        two.save(1, _state(2, 6 << 20)).result()  # no quota: job one's part goes, and says so
        assert any(e["reason"] == "Evicted" for e in one.events())
        assert _metric(one, "turbok_checkpoint_evictions_total", job="one") == 1


def test_a_disk_over_its_quota_fails_the_save_visibly(agents: Callable[..., Agent]) -> None:
    agent = agents("d", disk_quota="3Mi", keep_disk=1)
    with CheckpointManager("dq", agent=agent.address) as m:
        m.save(1, _state(1, 1 << 20)).result()
        with pytest.raises(CheckpointError, match="diskQuota"):
            m.save(2, _state(2, 4 << 20)).result()
        assert _metric(m, "turbok_checkpoint_failures_total", tier="disk", op="quota") == 1
        assert any(e["reason"] == "DiskQuota" for e in m.events())


def test_device_tensors_are_saved_and_restored_through_the_device_path(agents: Callable[..., Agent]) -> None:
    agent = agents("g")
    sim = SimulatedBackend(copy_delay=0.02)
    weights = [sim.mark(torch.randn(1 << 18)) for _ in range(3)]
    expect = [w.clone() for w in weights]
    with CheckpointManager("gpu", agent=agent.address, device=sim) as m:
        future = m.save(1, {"layers": weights, "cpu": torch.ones(4)})
        m.wait_copied()  # the optimizer hook: fences the training stream, the host does not wait for the copies
        sim.launch(lambda: [w.mul_(0) for w in weights])
        future.result(timeout=30)
        sim.drain()
        assert all(float(w.abs().sum()) == 0 for w in weights)
        target = {"layers": [sim.mark(torch.empty(1 << 18)) for _ in range(3)], "cpu": torch.zeros(4)}
        restored = m.restore(into=target)
        sim.drain()
        assert restored.state["layers"][0] is target["layers"][0]
        assert all(torch.equal(t, e) for t, e in zip(target["layers"], expect, strict=True))
        assert sim.registered >= 1 and "to_device" in sim.log


def test_ranged_reads_fetch_only_what_they_need_checked_block_by_block(agents: Callable[..., Agent], workdir: Path) -> None:
    agent = agents("r", storage_url=f"file://{workdir}/bucket")
    big = np.random.default_rng(0).integers(0, 255, 3 * BLOCK + 100, dtype=np.uint8)
    key = PartKey("ranged", 1, 0)
    with CheckpointManager("ranged", agent=agent.address, durable="object") as m:
        m.save(1, {"big": big}).result()
        manifest = agent.disk.committed_manifest(key)
        assert manifest is not None and len(manifest.shard("big").blocks) == 4
        out = bytearray(1000)
        m.read(1, 0, [("big", BLOCK + 5, BLOCK + 1005, memoryview(out))])  # from the memory copy
        assert bytes(out) == big[BLOCK + 5 : BLOCK + 1005].tobytes()
        agent.memory.delete(key)
        shard = manifest.shard("big")
        with open(agent.disk.data_path(key), "r+b") as f:  # corrupt block 2 on disk
            f.seek(shard.offset + 2 * BLOCK + 7)
            f.write(b"\xff\xfe")
        before = _metric(m, "turbok_checkpoint_bytes_total", tier="disk", op="read")
        out = bytearray(BLOCK)
        m.read(1, 0, [("big", 2 * BLOCK, 3 * BLOCK, memoryview(out))])
        assert bytes(out) == big[2 * BLOCK : 3 * BLOCK].tobytes()  # the bad block came from the object store
        assert _metric(m, "turbok_checkpoint_bytes_total", tier="object", op="read") == BLOCK
        assert _metric(m, "turbok_checkpoint_bytes_total", tier="disk", op="read") - before == BLOCK
        assert _metric(m, "turbok_checkpoint_failures_total", tier="disk", op="verify") == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turbok", "checkpoint", *args], capture_output=True, text=True, timeout=120)


def test_scrub_finds_and_repair_fixes_corrupt_copies_on_every_agent(agents: Callable[..., Agent], workdir: Path) -> None:
    store = f"file://{workdir}/bucket"
    a, b = agents("a", storage_url=store, replication_factor=1), agents("b", storage_url=store, replication_factor=1)
    a.settings.peers = b.settings.peers = [a.address, b.address]
    with CheckpointManager("scrub", agent=a.address, durable="object") as m:
        m.save(1, _state(1)).result()
        m.wait(1, "peers")
    key = PartKey("scrub", 1, 0)
    b.pipeline.wait(key, "disk", 30)
    for tier in (a.disk, b.memory):
        manifest = tier.committed_manifest(key)
        assert manifest is not None
        with open(tier.data_path(key), "r+b") as f:
            f.seek(manifest.shards[0].offset + 3)
            f.write(b"\x00\x01\x02")
    out = _cli("scrub", "--job", "scrub", "--agent", a.address)
    assert out.returncode == 1 and out.stdout.count("BAD") == 2, out.stdout
    assert "run `turbok checkpoint repair`" in out.stderr
    out = _cli("repair", "--job", "scrub", "--agent", a.address)
    assert out.returncode == 0 and out.stdout.count("repaired") == 2, (out.stdout, out.stderr)
    assert _cli("scrub", "--job", "scrub", "--agent", a.address).returncode == 0
    events = json.loads(_cli("events", "--job", "scrub", "--agent", a.address, "-o", "json").stdout)
    assert {"HashMismatch", "Repaired"} <= {e["reason"] for e in events}
