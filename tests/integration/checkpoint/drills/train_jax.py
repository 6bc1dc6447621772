"""A small multi-process JAX/optax training job for the failure drills (CPU, gloo collectives).

Started once per process by the test (``python train_jax.py PROCESS_ID``), each process with
two CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``) and its own node
agent (``TURBOK_DRILL_AGENTS``, one per process). The parameters and AdamW state are
``jax.Array``s sharded over a 2 x 2 mesh spanning both processes. Checkpoints go through
``turbok.checkpoint.orbax.CheckpointManager`` configured as an ``ocp.CheckpointManager``
would be (``max_to_keep``, ``save_interval_steps``; ``StandardSave``/``StandardRestore``).

Each process writes ``TURBOK_DRILL_OUT/rank-P.json`` after every save and at the end: the step
it resumed from, every loss it computed (float.hex: equality is bitwise), the steps it saved,
a digest of its shards of the state at every save and at the end, what ``all_steps()`` said,
and whether a restore into other shardings (a transposed mesh) gave the same values.
``TURBOK_DRILL_RESUME=1`` restores ``latest_step()`` first. ``TURBOK_DRILL_KILL=STEP:PROCESS``
makes that process kill itself with SIGKILL as soon as its snapshot of STEP is copied.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402 - after the collectives are chosen
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from turbok.checkpoint.orbax import CheckpointManager  # noqa: E402


def main() -> None:
    env = os.environ
    pid = int(sys.argv[1])
    jax.distributed.initialize(coordinator_address=env["TURBOK_DRILL_COORDINATOR"], num_processes=2, process_id=pid)
    steps, every = int(env.get("TURBOK_DRILL_STEPS", "8")), int(env.get("TURBOK_DRILL_EVERY", "2"))
    kill_step, kill_pid = (int(x) for x in env.get("TURBOK_DRILL_KILL", "-1:-1").split(":"))
    out = Path(env["TURBOK_DRILL_OUT"])
    out.mkdir(parents=True, exist_ok=True)

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("x", "y"))
    spec = {"w": P("x", "y"), "b": P("y")}
    rng = np.random.default_rng(0)  # numpy: nothing to compile
    init = {"w": (rng.standard_normal((32, 16)) * 0.1).astype(np.float32), "b": np.zeros((16,), np.float32)}
    params = {k: jax.device_put(v, NamedSharding(mesh, spec[k])) for k, v in init.items()}
    tx = optax.adamw(1e-2)
    opt_state = jax.jit(tx.init)(params)
    state = {"params": params, "opt": opt_state}

    def loss_fn(p: Any, step: Any) -> Any:
        k = jax.random.fold_in(jax.random.PRNGKey(1), step)
        x = jax.random.normal(k, (64, 32))
        y = jnp.sin(x[:, :16])
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    @jax.jit
    def train(state: Any, step: Any) -> tuple[Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], step)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    mgr = CheckpointManager(env["TURBOK_DRILL_JOB"], ocp.CheckpointManagerOptions(max_to_keep=2, save_interval_steps=every),
                            agent=env["TURBOK_DRILL_AGENTS"].split(",")[pid])
    record: dict[str, Any] = {"start": 0, "losses": {}, "saved": [], "digests": {}}
    if env.get("TURBOK_DRILL_RESUME"):
        start = mgr.latest_step()
        assert start is not None, "latest_step() found nothing to resume"
        # the shardings the training step gives the state (as ``ocp.utils.to_shape_dtype_struct`` of it)
        probe, _ = train(state, 0)
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), probe)
        state = mgr.restore(start, args=ocp.args.StandardRestore(abstract))
        # the same step into other shardings (the mesh transposed): values must not change
        transposed = Mesh(np.array(jax.devices()).reshape(2, 2).T, ("x", "y"))
        moved = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(transposed, a.sharding.spec))
            if a.ndim else a, abstract)
        other = mgr.restore(start, args=ocp.args.StandardRestore(moved))
        whole = functools.partial(multihost_utils.process_allgather, tiled=True)
        record["resharded_equal"] = all(np.array_equal(whole(a), whole(b)) for a, b in zip(
            jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(other), strict=True))
        record["start"] = start
        record["restored_digest"] = _digest(state)

    def report(**extra: Any) -> None:
        (out / f"rank-{pid}.json").write_text(json.dumps({**record, **extra}))

    for step in range(record["start"] + 1, steps + 1):
        state, loss = train(state, step)
        record["losses"][step] = float(loss).hex()
        if mgr.save(step, args=ocp.args.StandardSave(state)):
            record["saved"].append(step)
            record["digests"][step] = _digest(state)
            report()
            if step == kill_step and pid == kill_pid:
                mgr.manager.wait_copied(60)  # the agent owns the step: it must be offered
                os.kill(os.getpid(), signal.SIGKILL)
    mgr.wait_until_finished()
    record["all_steps"] = mgr.all_steps()
    report(digest=_digest(state))
    mgr.close()
    jax.distributed.shutdown()


def _digest(state: Any) -> str:
    """This process's shards of every leaf, in a fixed order."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state):
        by_index = {str(s.index): s for s in leaf.addressable_shards}  # a replica counts once
        for index in sorted(by_index):
            digest.update(np.asarray(by_index[index].data).tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    main()
