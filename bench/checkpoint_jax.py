"""JAX checkpointing: turbok (``turbok.checkpoint.jax``) against Orbax, in the same run.

    .venv/bin/python bench/checkpoint_jax.py [--mib 288] [--rounds 3] [--devices 4] [--dir DIR]

The state: a pytree of float32 ``jax.Array``s (8 leaves, ``--mib`` in all) sharded over
``--devices`` CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``), filled with
normally distributed values as trained weights are (``--data constant`` fills each leaf with one
value: zstd then shrinks Orbax's writes to almost nothing, which no training state allows). The
node agent runs in its own process (as in production); Orbax writes to ``--dir`` (default: a
temporary directory on the same disk as the agent's disk tier).

Figures, turbok vs Orbax (``ocp.CheckpointManager``, async), both ways Orbax writes: ``zstd``
(``StandardSave``, its default: zstd level 1 in OCDBT) and ``raw`` (``PyTreeSave`` with
``use_compression=False``); in turn, medians of ``--rounds``:
  stall     what ``save()`` takes before training may go on
  durable   save until committed on local disk (Orbax: ``wait_until_finished``; it fsyncs its files)
  restore   into the same shardings (Orbax: ``StandardRestore`` / ``PyTreeRestore``), each restore in
            a fresh child process: wall time; the child's peak RSS over its RSS before the restore (sampled every
            millisecond);
            RSS and anonymous RSS kept after it (RSS includes the memory tier's tmpfs pages turbok
            maps: shared with the agent, not extra memory)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ap = argparse.ArgumentParser()
ap.add_argument("--mib", type=int, default=288)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--devices", type=int, default=4)
ap.add_argument("--dir", default="")
ap.add_argument("--data", choices=("random", "constant"), default="random")
ap.add_argument("--child", default="")  # internal: "turbok AGENT STEP", "zstd DIR STEP" or "raw DIR STEP"
args = ap.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from turbok.checkpoint import CheckpointManager  # noqa: E402
from turbok.checkpoint import jax as tjax  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint import AgentProc  # noqa: E402


def layout(mib: int) -> tuple[tuple[int, int], NamedSharding]:
    mesh = Mesh(np.array(jax.devices()), ("x",))
    rows = (mib << 20) // 8 // 4 // 1024
    rows -= rows % len(jax.devices())
    return (rows, 1024), NamedSharding(mesh, P("x", None))


def make_state(mib: int) -> dict[str, jax.Array]:
    shape, sharding = layout(mib)
    if args.data == "constant":
        return {f"layer{i}": jax.device_put(jnp.full(shape, float(i), dtype=jnp.float32) + i, sharding) for i in range(8)}
    rng = np.random.default_rng(0)
    return {f"layer{i}": jax.device_put(rng.standard_normal(shape, dtype=np.float32), sharding) for i in range(8)}


def orbax_manager(kind: str, where: str | Path, **options: Any) -> ocp.CheckpointManager:
    """Orbax's manager writing ``kind`` ("zstd": its default handler; "raw": no compression)."""
    handler = ocp.StandardCheckpointHandler() if kind == "zstd" else ocp.PyTreeCheckpointHandler(use_compression=False)
    return ocp.CheckpointManager(where, item_handlers=handler, options=ocp.CheckpointManagerOptions(**options))


def orbax_save_args(kind: str, state: Any) -> Any:
    return ocp.args.StandardSave(state) if kind == "zstd" else ocp.args.PyTreeSave(state)


def orbax_restore_args(kind: str, like: Any) -> Any:
    if kind == "zstd":
        return ocp.args.StandardRestore(like)
    return ocp.args.PyTreeRestore(like, restore_args=ocp.checkpoint_utils.construct_restore_args(like))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def anon() -> int:
    """Anonymous resident memory: what the process holds itself (not the memory tier's shared
    tmpfs pages it maps, which the agent holds anyway)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def child(spec: str) -> None:
    """One restore in this fresh process: prints seconds and peak RSS growth (bytes)."""
    kind, where, step = spec.split()
    shape, sharding = layout(args.mib)  # shapes and shardings only: nothing allocated
    like = {f"layer{i}": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding) for i in range(8)}
    # the runtime's one-time allocations and the managers come before the measurement
    jax.device_put(np.zeros(len(jax.devices()) * 1024, np.float32), NamedSharding(sharding.mesh, P("x"))).block_until_ready()
    tmgr = CheckpointManager("jaxbench", agent=where) if kind == "turbok" else None
    omgr = orbax_manager(kind, where) if kind != "turbok" else None
    before, anon_before = rss(), anon()
    peak = [before]
    done = threading.Event()

    def sample() -> None:  # ru_maxrss would include the imports' peak
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if tmgr is not None:
        _, got = tjax.restore(tmgr, like, int(step))
    else:
        assert omgr is not None
        got = omgr.restore(int(step), args=orbax_restore_args(kind, like))
    jax.block_until_ready(got)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    print(json.dumps({"seconds": seconds, "peak_growth": max(peak[0], rss()) - before, "rss_growth": rss() - before,
                      "anon_growth": anon() - anon_before}))


def run_child(spec: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--mib", str(args.mib), "--devices", str(args.devices), "--child", spec],
                         capture_output=True, text=True, timeout=600, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="turbok-bench-jax-", dir=args.dir or None))
    agent = AgentProc(work, "agent", memory_size=f"{max(1, 3 * args.mib // 1024 + 1)}Gi")
    state = make_state(args.mib)
    jax.block_until_ready(state)
    nbytes = sum(a.nbytes for a in state.values())
    print(f"state {nbytes / (1 << 20):.0f} MiB ({args.data}) over {len(jax.devices())} CPU devices; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    mgr = CheckpointManager("jaxbench", agent=agent.address)
    kinds = ("zstd", "raw")
    orbax = {k: orbax_manager(k, work / k, max_to_keep=2, enable_async_checkpointing=True) for k in kinds}
    figures: dict[str, list[float]] = {f"{who}_{what}": [] for who in ("turbok", *kinds) for what in ("stall", "durable")}
    try:
        for step in range(1, args.rounds + 2):  # the first round warms them all (buffers, compilation)
            t0 = time.perf_counter()
            future = tjax.save(mgr, step, state)
            stall = time.perf_counter() - t0
            future.result()
            durable = time.perf_counter() - t0
            if step > 1:
                figures["turbok_stall"].append(stall)
                figures["turbok_durable"].append(durable)
            for kind, omgr in orbax.items():
                t0 = time.perf_counter()
                omgr.save(step, args=orbax_save_args(kind, state))
                stall = time.perf_counter() - t0
                omgr.wait_until_finished()
                durable = time.perf_counter() - t0
                if step > 1:
                    figures[f"{kind}_stall"].append(stall)
                    figures[f"{kind}_durable"].append(durable)
        last = args.rounds + 1
        restores: dict[str, list[dict[str, float]]] = {"turbok": [], **{k: [] for k in kinds}}
        # Who goes first turns round by round: on this VM the first process to touch memory another one
        # just freed can pay for the host backing it again (seconds per GiB now and then).
        order = ["turbok", *kinds]
        for r in range(args.rounds):
            for who in order[r % len(order):] + order[: r % len(order)]:
                where = agent.address if who == "turbok" else work / who
                restores[who].append(run_child(f"{who} {where} {last}"))
        med = statistics.median
        for kind in kinds:
            t, o = med(figures["turbok_stall"]), med(figures[f"{kind}_stall"])
            print(f"stall    turbok {t:.4f} s | orbax {kind} {o:.4f} s | ratio {t / o:.2f} (target <= 1)")
        for kind in kinds:
            t, o = med(figures["turbok_durable"]), med(figures[f"{kind}_durable"])
            print(f"durable  turbok {t:.3f} s | orbax {kind} {o:.3f} s | orbax/turbok {o / t:.2f} (target >= 3)")
        for key, what in (("seconds", "restore s"), ("peak_growth", "restore peak RSS growth"), ("rss_growth", "restore RSS kept"),
                          ("anon_growth", "restore anon RSS kept")):
            scale, unit = (1.0, "s") if key == "seconds" else (1 / (1 << 20), "MiB")
            t = med([r[key] for r in restores["turbok"]])
            row = " | ".join(f"orbax {k} {med([r[key] for r in restores[k]]) * scale:.3f} {unit}" for k in kinds)
            ratio = " | orbax/turbok " + " ".join(
                f"{med([r[key] for r in restores[k]]) / t:.2f}" for k in kinds) + " (target >= 2)" if key == "seconds" else ""
            print(f"{what:24s} turbok {t * scale:.3f} {unit} | {row}{ratio}")
        for who, runs in restores.items():
            print(f"restore samples {who}: " + " ".join(f"{r['seconds']:.3f}" for r in runs))
        print(f"load at the end {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        mgr.close()
        for omgr in orbax.values():
            omgr.close()
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if args.child:
        child(args.child)
    else:
        main()
