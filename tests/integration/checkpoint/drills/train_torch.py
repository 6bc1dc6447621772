"""A small data-parallel training job for the failure drills, run with torchrun (gloo, CPU).

Each rank saves through DCP with ``TurbokStorageWriter`` to its own node agent
(``TURBOK_DRILL_AGENTS``, one per rank), every ``TURBOK_DRILL_EVERY`` steps, and writes
what it did to ``TURBOK_DRILL_OUT/rank-R.json``: the step it resumed from, the loss of
every step it ran (as float.hex, so equality is bitwise), the steps it saved, a digest of
its parameters and optimizer state at every step it saved (``digests``) and at the end
(``digest``, absent if the run was killed). The file is rewritten after every save, so a
run that is killed still says how far it got.

``TURBOK_DRILL_RESUME=1`` restores the newest good step first (``dcp.load`` with
``TurbokStorageReader``: the ranks agree on it). ``TURBOK_DRILL_KILL=STAGE:STEP:RANK``
makes that rank kill itself with SIGKILL during the save of STEP: ``copy`` (while the
snapshot is still being copied: pair with TURBOK_CHECKPOINT_FAULTS), ``staged`` (as soon
as the agent owns it), or ``agent`` (a moment after staging, while the agent is in a stage
the test slowed down: disk commit, replication, backup).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel

from turbok.checkpoint import CheckpointManager
from turbok.checkpoint.torch import TurbokStorageReader, TurbokStorageWriter


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    env = os.environ
    agents = env["TURBOK_DRILL_AGENTS"].split(",")
    steps, every = int(env.get("TURBOK_DRILL_STEPS", "12")), int(env.get("TURBOK_DRILL_EVERY", "3"))
    out = Path(env["TURBOK_DRILL_OUT"])
    kill = env.get("TURBOK_DRILL_KILL", "")
    kill_stage, kill_step, kill_rank = (kill.split(":") + ["", "", ""])[:3] if kill else ("", "-1", "-1")
    durable = env.get("TURBOK_DRILL_DURABLE", "disk")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 64))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mgr = CheckpointManager(env["TURBOK_DRILL_JOB"], rank=rank, world_size=world, agent=agents[rank % len(agents)],
                            durable=durable, agent_retry_s=10)
    start = 0
    if env.get("TURBOK_DRILL_RESUME"):
        model_sd, optim_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": optim_sd, "meta": {"step": 0}}
        reader = TurbokStorageReader(mgr)
        dcp.load(state, storage_reader=reader)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        start = int(reader.step or 0)
    losses: dict[int, str] = {}
    saved: list[int] = []
    digests: dict[int, str] = {}
    out.mkdir(parents=True, exist_ok=True)

    def report(**extra: str) -> None:
        (out / f"rank-{rank}.json").write_text(json.dumps({"start": start, "losses": losses, "saved": saved,
                                                           "digests": digests, **extra}))

    for step in range(start + 1, steps + 1):
        g = torch.Generator().manual_seed(1000 * step + rank)
        x, y = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[step] = float(loss.item()).hex()
        if step % every == 0:
            model_sd, optim_sd = get_state_dict(model, opt)
            writer = TurbokStorageWriter(mgr)
            dcp.save({"model": model_sd, "optim": optim_sd, "meta": {"step": step}}, storage_writer=writer, checkpoint_id=step)
            saved.append(step)
            digests[step] = _digest(model, opt)
            report()
            if step == int(kill_step) and rank == int(kill_rank):
                if kill_stage == "copy":
                    time.sleep(0.5)  # the snapshot is still being copied (a fault holds the copy)
                else:
                    assert writer.future is not None and writer.future.wait_copied(60)
                    if kill_stage == "agent":
                        time.sleep(0.5)  # the agent is now in the stage the test slowed down
                os.kill(os.getpid(), signal.SIGKILL)
    mgr.wait_until_finished()
    report(digest=_digest(model, opt))
    mgr.close()
    dist.destroy_process_group()


def _digest(model: torch.nn.Module, opt: torch.optim.Optimizer) -> str:
    digest = hashlib.sha256()
    for t in [*model.state_dict().values(), *[v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]]:
        digest.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    main()
