"""Crashes, node and cluster loss, kill -9 mid-save and mid-replication, corruption, bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from turbok.checkpoint import (
    CapacityError,
    CheckpointError,
    CheckpointManager,
    IntegrityError,
    JobNotFoundError,
    StepNotFoundError,
)
from turbok.checkpoint.agent import Agent
from turbok.checkpoint.manifest import PartKey
from turbok.checkpoint.testing import make_part
from turbok.checkpoint.tiers.disk import DiskTier
from turbok.checkpoint.tiers.memory import MemoryTier
from turbok.checkpoint.tiers.peer import PeerTier

from .conftest import AgentProc


def _state(step: int, rank: int = 0, n: int = 1 << 20) -> dict[str, Any]:
    return {"w": np.random.default_rng(step * 100 + rank).standard_normal(n // 8), "step": step}


def _metric(mgr: CheckpointManager, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in mgr.metrics().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    assert want or total >= 0
    return total


def _parts(root: str, job: str) -> list[tuple[int, bool]]:
    return sorted((s.key.step, s.committed) for s in DiskTier(root, name="x").list(job))


def test_training_process_killed_right_after_its_snapshot_is_copied(agents: Callable[..., Agent]) -> None:
    # ``save()`` returns before the copy; once ``copied`` is set the agent owns the step.
    agent = agents("a")
    child = textwrap.dedent(f"""
        import os, signal, numpy as np
        from turbok.checkpoint import CheckpointManager
        m = CheckpointManager("crash", agent="{agent.address}")
        m.save(7, {{"w": np.arange(1 << 20, dtype=np.float32)}}).wait_copied()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert proc.returncode == -9
    with CheckpointManager("crash", agent=agent.address) as mgr:
        mgr.wait(7, "memory")
        assert agent.memory.exists(PartKey("crash", 7, 0))
        restored = mgr.restore()
        assert restored.step == 7
        np.testing.assert_array_equal(restored.state["w"], np.arange(1 << 20, dtype=np.float32))
        assert _metric(mgr, "turbok_checkpoint_bytes_total", op="restore") == 0, "served from memory, no fetch"


def test_node_loss_restores_the_rank_from_a_peer_replica(agent_procs: Callable[..., AgentProc]) -> None:
    a, b = agent_procs("a", replication_factor=1), agent_procs("b", replication_factor=1)
    peers = [a.address, b.address]
    a.start(peers=peers)
    b.start(peers=peers)
    managers = [CheckpointManager("node", rank=r, world_size=2, agent=x.address) for r, x in enumerate((a, b))]
    for step in (1, 2):
        for r, m in enumerate(managers):
            m.save(step, _state(step, r))
        for m in managers:
            m.wait(step, "peers")
    managers[0].close()
    a.kill()
    shutil.rmtree(a.config["memory_dir"])
    shutil.rmtree(a.config["disk_dir"])
    fresh = agent_procs("a2").start(peers=[b.address])  # a new node, new directories
    with CheckpointManager("node", rank=0, world_size=2, agent=fresh.address) as m0:
        restored = m0.restore()
        assert restored.step == 2
        np.testing.assert_array_equal(restored.state["w"], _state(2, 0)["w"])
        assert _metric(m0, "turbok_checkpoint_bytes_total", tier="peer", op="restore") > 0
        m0.wait(2, "disk")  # the fresh node is repopulated
    assert managers[1].restore().step == 2  # the other rank agrees
    managers[1].close()


def test_cluster_loss_restores_from_object_storage(agent_procs: Callable[..., AgentProc], s3: dict[str, Any]) -> None:
    store = {"storage_url": s3["storage_url"], "storage_options": s3["storage_options"]}
    a, b = agent_procs("a", **store), agent_procs("b", **store)
    a.start(peers=[a.address, b.address])
    b.start(peers=[a.address, b.address])
    for step in (1, 2):
        for r, x in enumerate((a, b)):
            with CheckpointManager("cluster", rank=r, world_size=2, agent=x.address) as m:
                m.save(step, _state(step, r))
                m.wait(step, "object", timeout=120)
    for x in (a, b):
        x.kill()
        shutil.rmtree(x.config["memory_dir"])
        shutil.rmtree(x.config["disk_dir"])
    c = agent_procs("c", **store).start()
    for r in (0, 1):
        with CheckpointManager("cluster", rank=r, world_size=2, agent=c.address) as m:
            restored = m.restore()
            assert restored.step == 2
            np.testing.assert_array_equal(restored.state["w"], _state(2, r)["w"])
            assert _metric(m, "turbok_checkpoint_bytes_total", tier="object", op="restore") > 0


def test_agent_killed_right_after_acknowledging_a_save_adopts_it_when_it_restarts(agent_procs: Callable[..., AgentProc]) -> None:
    """Issue 12, item 9: the agent persisted the layout before answering ``staged``."""
    a = agent_procs("a").start()
    with CheckpointManager("k9", agent=a.address) as m:
        m.save(1, _state(1, n=8 << 20)).result()
    a.restart(fault_delays={"memory.before_commit": 60})
    with CheckpointManager("k9", agent=a.address, agent_retry_s=30) as m:
        future = m.save(2, _state(2, n=8 << 20))
        future.wait_copied(30)
        time.sleep(0.5)  # the agent sits before its memory commit
        assert (2, False) in _parts(a.config["memory_dir"], "k9")
        a.kill()
        # Its disk copy was being written meanwhile: left uncommitted. The restart cleans the disk before it
        # drains anything (a drain started before it, sitting uncommitted on disk meanwhile: the cleanup
        # then deleted the adopted part's new disk copy, "no data was put").
        a.start(fault_delays={"recover.before_disk_cleanup": 0.5, "disk.before_commit": 2.0})
        assert future.result(timeout=60).tiers["disk"] == "done"  # the library's wait reconnected
        restored = m.restore()
        assert restored.step == 2
        np.testing.assert_array_equal(restored.state["w"], _state(2, n=8 << 20)["w"])
        assert any(e["reason"] == "Adopted" and e["step"] == 2 for e in m.events())


def test_a_save_lost_with_the_agent_is_reported_not_waited_on(agent_procs: Callable[..., AgentProc]) -> None:
    """The node rebooted between ``staged`` and the commit: tmpfs is empty, the loss is visible."""
    a = agent_procs("a").start()
    with CheckpointManager("k9lost", agent=a.address) as m:
        m.save(1, _state(1)).result()
    a.restart(fault_delays={"memory.before_commit": 60})
    with CheckpointManager("k9lost", agent=a.address, agent_retry_s=30) as m:
        future = m.save(2, _state(2))
        future.wait_copied(30)
        time.sleep(0.3)
        a.kill()
        shutil.rmtree(Path(a.config["memory_dir"]) / "k9lost" / f"{2:012d}")
        a.start(fault_delays={})
        deadline = time.monotonic() + 60
        while not future.done():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(CheckpointError, match="step 2 failed.*lost"):
            m.save(3, _state(3))  # nobody looked at the failed future: the next save says so
        with pytest.raises(CheckpointError, match="lost"):
            future.result()
        assert m.latest_step() == 1, "a lost step is never reported"
        m.save(3, _state(3)).result()


def test_agent_killed_during_replication_offers_only_the_previous_replica(agent_procs: Callable[..., AgentProc]) -> None:
    a, b = agent_procs("a", replication_factor=1), agent_procs("b")
    a.start(peers=[a.address, b.address])
    b.start(peers=[a.address, b.address])
    with CheckpointManager("rep", agent=a.address) as m:
        m.save(1, _state(1))
        m.wait(1, "peers")
        b.restart(fault_delays={"replicate.before_commit": 60})
        m.save(2, _state(2))
        deadline = time.monotonic() + 30
        while (2, False) not in _parts(b.config["memory_dir"], "rep") + _parts(b.config["disk_dir"], "rep"):
            assert time.monotonic() < deadline, "replica of step 2 never arrived"
            time.sleep(0.05)
        b.kill()
        b.start(fault_delays={})
        peer = PeerTier(b.address)
        assert sorted((s.key.step, s.committed) for s in peer.list("rep")) == [(1, True)]
        peer.close()
    a.kill()  # only the replica on b is left
    c = agent_procs("c").start(peers=[b.address])
    with CheckpointManager("rep", agent=c.address) as m:
        assert m.restore().step == 1


def test_a_flipped_byte_is_detected_and_the_shard_taken_from_another_tier(agents: Callable[..., Agent]) -> None:
    agent = agents("a")
    with CheckpointManager("flip", agent=agent.address) as m:
        m.save(3, _state(3))
        m.wait(3, "disk")
        key = PartKey("flip", 3, 0)
        with open(agent.memory.data_path(key), "r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0x01]))
        restored = m.restore()
        np.testing.assert_array_equal(restored.state["w"], _state(3)["w"])
        assert _metric(m, "turbok_checkpoint_failures_total", tier="memory", op="verify") == 1
        assert _metric(m, "turbok_checkpoint_bytes_total", tier="disk", op="restore") > 0
        # the memory copy was repaired: a second restore needs no other tier
        before = _metric(m, "turbok_checkpoint_bytes_total", tier="disk", op="restore")
        m.restore()
        assert _metric(m, "turbok_checkpoint_bytes_total", tier="disk", op="restore") == before


def test_unknown_job_and_missing_step(agents: Callable[..., Agent]) -> None:
    agent = agents("a")
    with CheckpointManager("known", agent=agent.address) as m:
        m.save(1, {"x": b"1"})
        m.wait(1, "disk")
        with pytest.raises(StepNotFoundError, match="step 5 not found"):
            m.restore(step=5)
    with CheckpointManager("unknown", agent=agent.address) as m, pytest.raises(JobNotFoundError, match="unknown"):
        m.restore()


def test_a_full_memory_tier_fails_clearly_and_keeps_the_previous_step(agents: Callable[..., Agent]) -> None:
    agent = agents("a", memory_size="8Mi")
    with CheckpointManager("full", agent=agent.address) as m:
        m.save(1, _state(1, n=4 << 20))
        m.wait(1, "disk")
        with pytest.raises(CapacityError, match="inMemoryVolumeSize"):
            m.save(2, _state(2, n=16 << 20)).result()
        assert agent.memory.exists(PartKey("full", 1, 0))
        np.testing.assert_array_equal(m.restore().state["w"], _state(1, n=4 << 20)["w"])


def test_an_unreachable_object_store_never_blocks_training_and_is_retried(agents: Callable[..., Agent], s3: dict[str, Any]) -> None:
    from .conftest import free_port

    port = free_port()  # nothing listens here yet
    options = {**s3["storage_options"], "endpoint": f"http://127.0.0.1:{port}"}
    agent = agents("a", storage_url=s3["storage_url"], storage_options=options, object_retry_timeout_s=0.5, object_max_retries=1, backup_retry_max_s=1)
    with CheckpointManager("offline", agent=agent.address) as m:
        t0 = time.perf_counter()
        m.save(1, _state(1))
        assert time.perf_counter() - t0 < 1.0
        m.wait(1, "disk", timeout=10)
        with pytest.raises(CheckpointError, match="retrying.*object store"):
            m.wait(1, "object", timeout=3)
        assert _metric(m, "turbok_checkpoint_failures_total", tier="object", op="backup") >= 1
        info = PeerTier(agent.address)._call("describe")
        assert f"127.0.0.1:{port}" in info["errors"]["object"] or "object store" in info["errors"]["object"]
        m.save(2, _state(2))  # training goes on
        m.wait(2, "disk", timeout=10)
        # the store comes back: the pending backup goes through on a retry
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            import boto3

            boto3.client("s3", endpoint_url=options["endpoint"], region_name="us-east-1").create_bucket(Bucket="ckpt")
            assert m.wait(1, "object", timeout=30) == "done"
        finally:
            server.stop()


def test_malformed_manifest_on_one_tier_falls_back_to_another(agents: Callable[..., Agent], workdir: Path) -> None:
    agent = agents("a")
    with CheckpointManager("bad", agent=agent.address) as m:
        m.save(1, _state(1))
        m.wait(1, "disk")
        key = PartKey("bad", 1, 0)
        agent.memory.paths(key)[1].write_text("{ this is not a manifest")
        assert not agent.memory.exists(key)
        np.testing.assert_array_equal(m.restore().state["w"], _state(1)["w"])
    assert isinstance(agent.memory, MemoryTier)


def test_a_replica_that_does_not_match_its_hashes_is_never_committed(agents: Callable[..., Agent]) -> None:
    agent = agents("a")
    key = PartKey("rx", 1, 0)
    manifest, blob = make_part(key, sizes=(1000, 300_000, 5))
    bad = bytearray(blob)
    bad[manifest.shards[1].offset + 7] ^= 0x01
    peer = PeerTier(agent.address)
    try:
        with pytest.raises(CheckpointError, match="do not match their hashes"):
            peer.replicate(manifest, bytes(bad))
        assert not agent.memory.exists(key) and not agent.disk.exists(key)
        assert [s.key for s in agent.memory.list("rx") + agent.disk.list("rx")] == [], "the bad replica was left behind"
        with pytest.raises(CheckpointError, match="body of"):
            peer._call("replicate", blob[:4096], manifest=manifest.to_dict())  # a short body is drained, not parsed
        # A manifest without XXH3 checks is verified with BLAKE3 instead, as strictly.
        unchecked = manifest.with_hashes([s.hash for s in manifest.shards], [""] * len(manifest.shards))
        with pytest.raises(CheckpointError, match="do not match their hashes"):
            peer.replicate(unchecked, bytes(bad))
        peer.replicate(manifest, blob)  # the same connection is still in step
        assert agent.memory.exists(key) and bytes(agent.memory.get(key)) == blob
        info = peer._call("wait", job="rx", step=1, rank=0, tier="disk", wait_s=30)
        assert info["outcome"] == "done" and bytes(agent.disk.get(key)) == blob
    finally:
        peer.close()


def test_restore_without_verification_trusts_only_the_memory_copy(agents: Callable[..., Agent]) -> None:
    agent = agents("a")
    key = PartKey("trust", 1, 0)

    def flip(path: Path, at: int) -> None:
        with open(path, "r+b") as f:
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0x01]))

    with CheckpointManager("trust", agent=agent.address) as m:
        m.save(1, _state(1))
        m.wait(1, "disk")
        np.testing.assert_array_equal(m.restore(verify=False).state["w"], _state(1)["w"])
        offset = agent.memory.committed_manifest(key).shards[0].offset  # type: ignore[union-attr]
        flip(agent.memory.data_path(key), offset + 8)
        trusted = m.restore(verify=False).state["w"]  # the documented trade: a flipped byte in memory goes through
        assert not np.array_equal(trusted, _state(1)["w"])
        np.testing.assert_array_equal(m.restore().state["w"], _state(1)["w"])  # checked: repaired from disk
        assert _metric(m, "turbok_checkpoint_failures_total", tier="memory", op="verify") == 1
        np.testing.assert_array_equal(m.restore(verify=False).state["w"], _state(1)["w"])  # the repair stuck
        # Without a memory copy the disk copy is read, and verified whatever ``verify`` says.
        agent.memory.delete(key)
        flip(agent.disk.data_path(key), offset + 8)
        with pytest.raises(IntegrityError):
            m.restore(verify=False)


def test_a_streamed_restore_recopies_the_shard_repaired_from_another_tier(agents: Callable[..., Agent], workdir: Path) -> None:
    agent = agents("a", storage_url=f"file://{workdir}/bucket")
    state = {"a": np.arange(3 << 20, dtype=np.float64), "b": np.ones(1 << 20, dtype=np.float32)}
    key = PartKey("stream", 1, 0)
    with CheckpointManager("stream", agent=agent.address) as m:
        m.save(1, state)
        m.wait(1, "object", timeout=60)
        agent.memory.delete(key)  # the disk tier serves it, streamed; the object store holds a good copy
        shard = agent.disk.committed_manifest(key).shards[0]  # type: ignore[union-attr]
        with open(agent.disk.data_path(key), "r+b") as f:
            f.seek(shard.offset + 1234)
            byte = f.read(1)
            f.seek(shard.offset + 1234)
            f.write(bytes([byte[0] ^ 0x40]))
        into = {"a": np.zeros_like(state["a"]), "b": np.zeros_like(state["b"])}
        restored = m.restore(into=into)
        assert restored.state["a"] is into["a"]
        np.testing.assert_array_equal(into["a"], state["a"])
        np.testing.assert_array_equal(into["b"], state["b"])
        assert _metric(m, "turbok_checkpoint_bytes_total", tier="object", op="restore") == shard.size, "only the bad shard"
