"""PyTorch DCP: turbok's storage writer/reader against DCP's own file system writer, same run.

    .venv/bin/python bench/checkpoint_dcp.py [--gib 1] [--rounds 3] [--dir DIR]

The state: 8 float32 CPU tensors (``--gib`` in all), saved with ``dcp.save`` /
``dcp.async_save`` (one process, a gloo group of one). The node agent runs in its own process
(memory tier 2.2 x the state: saves alternate buffers); DCP's ``FileSystemWriter`` writes to
``--dir`` (default: a temporary directory on the same disk), fsyncing its files (its default).
Each case runs in turn, round by round; medians of ``--rounds`` after one warm-up round.

Figures:
  stall    turbok: ``dcp.save(..., TurbokStorageWriter)`` until the snapshot is copied
           (``writer.future.wait_copied()``: training may modify the tensors from then on; the
           call itself returns earlier) | ``dcp.async_save(..., FileSystemWriter)`` until it
           returns | a memcpy of the same tensors into a reused, touched buffer
  durable  turbok: until committed on local disk (``writer.future.result()``) | ``dcp.save``
           with ``FileSystemWriter`` | ``dcp.async_save`` until its future is done
  restore  ``dcp.load`` into the same tensors: ``TurbokStorageReader`` (from the memory tier)
           | ``FileSystemReader`` (the files just written, likely in the page cache) | memcpy
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint import AgentProc, free_port, make_state, memcpy_tensors  # noqa: E402

from turbok.checkpoint import CheckpointManager  # noqa: E402
from turbok.checkpoint.torch import TurbokStorageReader, TurbokStorageWriter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="")
    args = ap.parse_args()
    size = int(args.gib * (1 << 30))
    work = Path(tempfile.mkdtemp(prefix="turbok-bench-dcp-", dir=args.dir or None))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    agent = AgentProc(work, "agent", memory_size=int(size * 2.2), keep_memory=1, keep_disk=2)
    state = make_state(size)
    sd = {"model": state}
    touched = np.ones(size, dtype=np.uint8)
    mgr = CheckpointManager("dcpbench", agent=agent.address)
    f: dict[str, list[float]] = {k: [] for k in (
        "t_return", "t_stall", "t_durable", "a_stall", "a_durable", "s_durable", "memcpy",
        "t_restore", "fs_restore", "memcpy_restore")}
    print(f"state {size / (1 << 30):.2f} GiB; load {os.getloadavg()[0]:.1f}", flush=True)
    try:
        for step in range(1, args.rounds + 2):
            keep = step > 1
            t0 = time.perf_counter()
            memcpy_tensors(state, touched)
            if keep:
                f["memcpy"].append(time.perf_counter() - t0)

            writer = TurbokStorageWriter(mgr)
            t0 = time.perf_counter()
            dcp.save(sd, storage_writer=writer, checkpoint_id=step)
            returned = time.perf_counter() - t0
            assert writer.future is not None
            writer.future.wait_copied()
            copied = time.perf_counter() - t0
            writer.future.result()
            durable = time.perf_counter() - t0
            if keep:
                f["t_return"].append(returned)
                f["t_stall"].append(copied)
                f["t_durable"].append(durable)

            path = work / f"async-{step}"
            t0 = time.perf_counter()
            future = dcp.async_save(sd, storage_writer=dcp.FileSystemWriter(path), checkpoint_id=path)
            stall = time.perf_counter() - t0
            future.result()
            durable = time.perf_counter() - t0
            if keep:
                f["a_stall"].append(stall)
                f["a_durable"].append(durable)

            path = work / f"sync-{step}"
            t0 = time.perf_counter()
            dcp.save(sd, storage_writer=dcp.FileSystemWriter(path), checkpoint_id=path)
            if keep:
                f["s_durable"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            dcp.load(sd, storage_reader=TurbokStorageReader(mgr), checkpoint_id=step)
            if keep:
                f["t_restore"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            dcp.load(sd, storage_reader=dcp.FileSystemReader(path), checkpoint_id=path)
            if keep:
                f["fs_restore"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            memcpy_tensors(state, touched)
            if keep:
                f["memcpy_restore"].append(time.perf_counter() - t0)
            shutil.rmtree(work / f"async-{step}", ignore_errors=True)
            shutil.rmtree(path, ignore_errors=True)
        m = {k: statistics.median(v) for k, v in f.items()}
        print(f"stall    turbok {m['t_stall']:.3f} s (dcp.save returned after {m['t_return']:.3f} s) | "
              f"dcp.async_save {m['a_stall']:.3f} s | memcpy {m['memcpy']:.3f} s")
        print(f"         turbok / memcpy {m['t_stall'] / m['memcpy']:.2f} (target <= 1.0); "
              f"async_save / turbok {m['a_stall'] / m['t_stall']:.1f} (target >= 10)")
        print(f"durable  turbok {m['t_durable']:.3f} s | dcp.save {m['s_durable']:.3f} s | dcp.async_save {m['a_durable']:.3f} s"
              f" | dcp.save / turbok {m['s_durable'] / m['t_durable']:.2f} (target >= 3)")
        print(f"restore  turbok {m['t_restore']:.3f} s | FileSystemReader {m['fs_restore']:.3f} s | memcpy {m['memcpy_restore']:.3f} s"
              f" | turbok / memcpy {m['t_restore'] / m['memcpy_restore']:.2f} (target <= 1.1)")
        print(f"load at the end {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        mgr.close()
        agent.stop()
        dist.destroy_process_group()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
