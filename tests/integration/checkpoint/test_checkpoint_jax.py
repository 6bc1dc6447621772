"""JAX through the Orbax-shaped manager, with real processes: two JAX processes (gloo on CPU,
two CPU devices each, one node agent each) train with optax; one is killed with SIGKILL right
after a save; the job resumes from ``latest_step()`` and saves again, and its losses and state
are bitwise those of an uninterrupted run. Also: Orbax's own ``ocp.CheckpointManager`` with
``TurbokCheckpointHandler`` on four CPU devices of one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from turbok.checkpoint.agent import Agent

from .conftest import free_port

pytest.importorskip("jax", reason="JAX is not installed (the jax extra)")
pytest.importorskip("orbax.checkpoint", reason="orbax-checkpoint is not installed (the orbax extra)")
pytest.importorskip("optax", reason="optax is not installed (a dev dependency)")

SCRIPT = Path(__file__).parent / "drills" / "train_jax.py"
Record = dict[int, dict[str, Any]]


def jax_job(out: Path, job: str, agents: list[str], *, killed: int | None = None, cache: Path | None = None, **env: str) -> Record:
    """Both processes of the job; ``killed``: the process that kills itself (the other is then stuck
    in a collective and is killed too, as a launcher would)."""
    full = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
            "OMP_NUM_THREADS": "1", "TURBOK_DRILL_OUT": str(out), "TURBOK_DRILL_JOB": job,
            "TURBOK_DRILL_AGENTS": ",".join(agents), "TURBOK_DRILL_COORDINATOR": f"127.0.0.1:{free_port()}", **env}
    if cache is not None:  # the runs compile the same programs: XLA's persistent cache skips that
        full |= {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(p)], env=full, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for p in range(2)]
    try:
        if killed is None:
            outputs = [p.communicate(timeout=120)[0] for p in procs]
            assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
        else:
            procs[killed].wait(timeout=120)
            assert procs[killed].returncode == -9, procs[killed].communicate()[0][-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    return {r: json.loads((out / f"rank-{r}.json").read_text()) for r in range(2) if (out / f"rank-{r}.json").exists()}


def test_a_killed_jax_process_resumes_from_latest_step_bitwise_and_saves_again(
        agents: Callable[..., Agent], workdir: Path) -> None:
    pair = [agents(f"n{r}") for r in range(2)]
    for a in pair:
        a.settings.peers = [p.address for p in pair]
    addresses = [a.address for a in pair]
    cache = workdir / "xla-cache"
    baseline = jax_job(workdir / "base", "jbase", addresses, cache=cache)
    assert baseline[0]["saved"] == [2, 4, 6, 8]
    assert baseline[0]["all_steps"] == [6, 8], "max_to_keep=2, set by the job, was not applied"

    died = jax_job(workdir / "run1", "jk9", addresses, killed=1, cache=cache, TURBOK_DRILL_KILL="4:1")
    assert died[1]["saved"][-1] == 4
    resumed = jax_job(workdir / "run2", "jk9", addresses, cache=cache, TURBOK_DRILL_RESUME="1")
    for r in range(2):
        got, ref = resumed[r], baseline[r]
        assert got["start"] == 4, "latest_step() did not offer the step saved before the kill"
        assert got["restored_digest"] == ref["digests"]["4"], f"process {r}: the restored state differs"
        assert got["resharded_equal"], "a restore into other shardings changed values"
        assert got["losses"] == {s: ref["losses"][s] for s in got["losses"]} and "8" in got["losses"]
        assert got["digests"] == {s: ref["digests"][s] for s in got["digests"]} and got["saved"] == [6, 8]
        assert got["digest"] == ref["digest"], f"process {r}: final state differs"


def test_orbax_own_manager_keeps_its_arrays_in_turbok(agents: Callable[..., Agent], workdir: Path) -> None:
    agent = agents("n0")
    script = textwrap.dedent(f"""
        import json, os, sys, time
        import jax, jax.numpy as jnp, numpy as np, orbax.checkpoint as ocp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from turbok.checkpoint import CheckpointManager
        from turbok.checkpoint.orbax import TurbokCheckpointHandler, TurbokRestore, TurbokSave
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("x", "y"))
        tree = {{"w": jax.device_put(jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32), NamedSharding(mesh, P("x", "y"))),
                 "b": jax.device_put(jnp.arange(32, dtype=jnp.bfloat16), NamedSharding(mesh, P()))}}
        mgr = ocp.CheckpointManager({str(workdir / "orbax")!r}, options=ocp.CheckpointManagerOptions(max_to_keep=1),
                                    item_handlers=TurbokCheckpointHandler(CheckpointManager("oh", agent={agent.address!r})))
        t0 = time.perf_counter()
        mgr.save(5, args=TurbokSave(tree))
        stall = time.perf_counter() - t0
        mgr.wait_until_finished()
        like = {{"w": jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("y", None))),
                 "b": jax.ShapeDtypeStruct((32,), jnp.bfloat16, sharding=NamedSharding(mesh, P("x")))}}
        got = mgr.restore(5, args=TurbokRestore(like))
        print(json.dumps({{"latest": mgr.latest_step(), "stall": stall,
                          "files": sorted(os.listdir({str(workdir / "orbax")!r} + "/5/default")),
                          "equal": all(bool(jnp.array_equal(got[k], tree[k])) for k in tree),
                          "sharding": list(got["w"].sharding.spec), "devices": len(got["w"].sharding.device_set)}}))
        mgr.close()
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["latest"] == 5 and facts["equal"] and facts["devices"] == 4
    assert facts["sharding"] == ["y", None], "not restored into the asked sharding"
    # Orbax's own commit marker, and turbok's pointer: no array bytes in Orbax's directory
    assert [f for f in facts["files"] if f != "commit_success.txt"] == ["turbok.json"], facts["files"]
    deadline = time.monotonic() + 10
    while not agent.disk.list("oh") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [s.key.step for s in agent.disk.list("oh") if s.committed] == [5]


def test_a_scalar_saved_by_another_process_is_restored_whole(agents: Callable[..., Agent]) -> None:
    """A replicated scalar (optax's step count) is saved once, by the first device's process; the
    others read it from that rank's part: all of its bytes, not the first one only."""
    import jax.numpy as jnp
    import numpy as np

    from turbok.checkpoint import CheckpointManager
    from turbok.checkpoint import jax as tjax

    agent = agents("n0")
    tree = {"count": jnp.asarray(0x12345678, dtype=jnp.int32), "w": jnp.arange(8, dtype=jnp.float32)}
    managers = [CheckpointManager("scalar", rank=r, world_size=2, agent=agent.address) for r in range(2)]
    try:
        for m in managers:
            tjax.save(m, 1, tree).result()
        step, got = tjax.restore(managers[1], like=tree)  # rank 1 holds neither: both come from rank 0
        assert step == 1
        assert int(got["count"]) == 0x12345678
        np.testing.assert_array_equal(np.asarray(got["w"]), np.arange(8, dtype=np.float32))
    finally:
        for m in managers:
            m.close()


def test_a_corrupt_memory_copy_is_caught_while_restoring_and_repaired(agents: Callable[..., Agent]) -> None:
    import jax.numpy as jnp
    import numpy as np

    from turbok.checkpoint import CheckpointManager
    from turbok.checkpoint import jax as tjax
    from turbok.checkpoint.manifest import PartKey

    agent = agents("n0")
    tree = {"w": jnp.arange(1 << 16, dtype=jnp.float32), "n": np.arange(10)}
    with CheckpointManager("jrot", agent=agent.address) as m:
        tjax.save(m, 1, tree).result()
        key = PartKey("jrot", 1, 0)
        manifest = agent.memory.committed_manifest(key)
        assert manifest is not None
        shard = max(manifest.shards, key=lambda s: s.size)
        with open(agent.memory.data_path(key), "r+b") as f:
            f.seek(shard.offset + 7)
            byte = f.read(1)
            f.seek(shard.offset + 7)
            f.write(bytes([byte[0] ^ 0x08]))
        _, got = tjax.restore(m, like=tree, step=1)
        np.testing.assert_array_equal(np.asarray(got["w"]), np.arange(1 << 16, dtype=np.float32))
        np.testing.assert_array_equal(got["n"], np.arange(10))
        assert agent.metrics.failures.labels("memory", "verify")._value.get() >= 1


def _mapped_from(address: int) -> str:
    """The file (or "") of the mapping of this process holding ``address``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5] if len(fields) == 6 else ""
    return ""


def test_a_restore_uses_the_lent_part_in_place_and_keeps_it_while_the_agent_reuses_buffers(
        agents: Callable[..., Agent]) -> None:
    """No copy and no new memory: the restored arrays are the memory tier's file, mapped copy-on-write. The agent
    never rewrites or pools a lent file: later saves reuse other buffers, and dropping the step unlinks it."""
    import jax.numpy as jnp
    import numpy as np

    from turbok.checkpoint import CheckpointManager
    from turbok.checkpoint import jax as tjax
    from turbok.checkpoint.manifest import PartKey

    agent = agents("n0", keep_memory=1)
    w = np.random.default_rng(7).standard_normal(1 << 18).astype(np.float32)
    n = np.arange(4096, dtype=np.float64)
    with CheckpointManager("lend", agent=agent.address) as m:
        tjax.save(m, 1, {"w": jnp.asarray(w), "n": n}).result()
        _, got = tjax.restore(m, like={"w": jnp.asarray(w), "n": n}, step=1)
        data = agent.memory.data_path(PartKey("lend", 1, 0))
        assert agent.memory.lent(data)
        inode = data.stat().st_ino
        for leaf in (np.asarray(got["w"]), got["n"]):
            assert _mapped_from(leaf.ctypes.data).endswith(str(data)), "a restored leaf is not the lent part in place"
        got["n"][:3] = -1  # the job's own memory: copy on write, the part stays as saved
        key = PartKey("lend", 1, 0)
        manifest = agent.memory.committed_manifest(key)
        assert manifest is not None
        shard = manifest.shard("a/['n']@")
        assert bytes(agent.memory.get(key, shard.offset, shard.size)) == n.tobytes()
        for step in (2, 3, 4):  # keep_memory=1: each save drops the step before it and pools its buffer
            tjax.save(m, step, {"w": jnp.full(w.shape, float(step), jnp.float32), "n": n * step}).result()
        deadline = time.monotonic() + 30
        while data.exists() and data.stat().st_ino == inode and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not data.exists() or data.stat().st_ino != inode, "the lent step 1 was not dropped"
        pooled = {p.stat().st_ino for p in agent.memory.pool.iterdir()}
        assert inode not in pooled, "a lent file went to the pool"
        np.testing.assert_array_equal(np.asarray(got["w"]), w)
        np.testing.assert_array_equal(got["n"][3:], n[3:])
        assert (got["n"][:3] == -1).all()
