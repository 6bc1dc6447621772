"""GPU tensors: the save stall against a pinned device-to-host copy of the same bytes, same run.

    .venv/bin/python bench/checkpoint_gpu.py [--gib 1] [--rounds 5]

Prepared for a machine with a CUDA GPU (issue 12: stall <= 1.2 x a pinned device-to-host copy);
NOT RUN where it was written (no GPU there): it exits 2 with one line when torch sees no CUDA.

State: 8 float32 tensors on ``cuda:0`` (``--gib`` in all). The node agent runs in its own process
(memory tier 2.2 x the state). Alternating, medians of ``--rounds`` after one warm-up:
  reference  ``copy_`` of every tensor into one pinned host buffer (non_blocking, one stream),
             then ``torch.cuda.synchronize()``
  stall      ``CheckpointManager.save()`` until it returns, plus the delay the step hook adds to
             the training stream (``wait_copied()`` then ``synchronize()``: an upper bound, as if
             the optimizer step came right after the save)
  returned   ``save()`` alone (the copies are queued on a side stream)
  durable    until committed on local disk
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint import AgentProc  # noqa: E402

from turbok.checkpoint import CheckpointManager  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/checkpoint_gpu.py: no CUDA GPU here (torch.cuda.is_available() is False)", file=sys.stderr)
        sys.exit(2)
    size = int(args.gib * (1 << 30))
    per = size // 8 // 4
    state = {f"layer{i}": torch.full((per,), float(i), device="cuda") for i in range(8)}
    pinned = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    work = Path(tempfile.mkdtemp(prefix="turbok-bench-gpu-"))
    agent = AgentProc(work, "agent", memory_size=int(size * 2.2), keep_memory=1, keep_disk=2)
    mgr = CheckpointManager("gpubench", agent=agent.address, device="auto")
    f: dict[str, list[float]] = {k: [] for k in ("ref", "stall", "returned", "durable")}
    print(f"{torch.cuda.get_device_name(0)}; state {size / (1 << 30):.2f} GiB", flush=True)
    try:
        for step in range(1, args.rounds + 2):
            keep = step > 1
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            off = 0
            for t in state.values():
                n = t.numel() * t.element_size()
                pinned[off : off + n].view(torch.float32).copy_(t, non_blocking=True)
                off += n
            torch.cuda.synchronize()
            if keep:
                f["ref"].append(time.perf_counter() - t0)

            torch.cuda.synchronize()
            t0 = time.perf_counter()
            future = mgr.save(step, state)
            returned = time.perf_counter() - t0
            future.wait_copied()
            torch.cuda.synchronize()
            stall = time.perf_counter() - t0
            future.result()
            if keep:
                f["returned"].append(returned)
                f["stall"].append(stall)
                f["durable"].append(time.perf_counter() - t0)
        m = {k: statistics.median(v) for k, v in f.items()}
        print(f"pinned D2H copy {m['ref']:.3f} s | save() returned {m['returned']:.4f} s | stall (upper bound) "
              f"{m['stall']:.3f} s = {m['stall'] / m['ref']:.2f} x the copy (target <= 1.2) | durable {m['durable']:.3f} s")
    finally:
        mgr.close()
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
