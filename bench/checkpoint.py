"""Checkpointing benchmarks: each figure next to its physical reference, measured in the same run.

    .venv/bin/python bench/checkpoint.py [--gib 1] [--object-mib 256] [--saves 20] [--rounds 5]

Node agents run as their own processes (``turbok checkpoint agent``, as in
production); this process plays the training process. Figures and references
are measured in alternation, ``--rounds`` times each, and the medians compared,
so that load from other work on the machine hits both alike.

Figures (S = state size: 8 torch float32 tensors):
  stall      save() of S until its copy is done      vs memcpy of the same tensors into a touched buffer
  durable    save() until committed on disk          vs O_DIRECT write + fsync of S (a new file)
  peer       replication to a peer agent (loopback)  vs raw socket copy of S over loopback (sendall/recv_into)
  object     backup to S3 (moto, own process)        vs obstore.put of the same bytes, same client and server
  restore    from memory (verified / trusted)        vs memcpy of S into touched memory
             from disk (verified)                    vs O_DIRECT cold read of the same file
  memory     peak extra memory over --saves saves    vs S (one-part memory tier, so saves alternate with drains)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import mmap
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from turbok.checkpoint import CheckpointManager
from turbok.checkpoint.wire import Client

ROWS: list[str] = []


def row(name: str, figure: float, ref_name: str, ref: float, unit: str, target: str) -> None:
    line = f"{name:40s} {figure:8.3f} {unit:5s} | {ref_name:40s} {ref:8.3f} {unit:5s} | ratio {figure / ref:5.2f} (target {target})"
    ROWS.append(line)
    print(line, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def med(xs: list[float]) -> float:
    return statistics.median(xs)


class AgentProc:
    """``turbok checkpoint agent`` in its own process."""

    def __init__(self, root: Path, name: str, **settings: Any) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.memory_dir = f"/dev/shm/turbok-bench-{name}-{uuid.uuid4().hex[:6]}"
        self.disk_dir = root / name
        cfg = {"memory_dir": self.memory_dir, "disk_dir": str(self.disk_dir), "listen": self.address, "replication_factor": 0, **settings}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "turbok", "checkpoint", "agent", "--config", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:  # warnings (e.g. from OpenBLAS) may come first
            seen.append(line)
            if "listening on" in line:
                break
        else:
            raise RuntimeError(f"agent {name} did not start: {''.join(seen)[-2000:]}")
        out = self.proc.stdout
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()  # keep the pipe drained
        self.client = Client(self.address, timeout=600)

    def wait(self, job: str, step: int, tier: str, rank: int = 0) -> None:
        self.client.call("wait", job=job, step=step, rank=rank, tier=tier, wait_s=600, timeout=630)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            shutil.rmtree(self.memory_dir, ignore_errors=True)


def counter(mgr: CheckpointManager, name: str, tier_prefix: str, op: str) -> float:
    total = 0.0
    for line in mgr.metrics().splitlines():
        if line.startswith(name + "{") and f'op="{op}"' in line and f'tier="{tier_prefix}' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def throughput(mgr: CheckpointManager, tier_prefix: str, op: str) -> tuple[float, float]:
    return counter(mgr, "turbok_checkpoint_bytes_total", tier_prefix, op), counter(mgr, "turbok_checkpoint_seconds_total", tier_prefix, op)


def make_state(nbytes: int) -> dict[str, torch.Tensor]:
    n = 8
    per = nbytes // n // 4
    return {f"layer{i}.weight": torch.full((per,), float(i), dtype=torch.float32) + torch.arange(per, dtype=torch.float32) for i in range(n)}


# ---- references ---------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def memcpy_tensors(state: dict[str, torch.Tensor], dst: np.ndarray) -> None:
    """One memcpy of every tensor's bytes into an already-touched buffer (one thread, like memcpy)."""
    off = 0
    for t in state.values():
        b = t.reshape(-1).view(torch.uint8).numpy()
        np.copyto(dst[off : off + b.size], b)
        off += b.size


def numpy_memcpy(dst: np.ndarray) -> float:
    """The best case of memcpy here: numpy arrays (huge-page advised) on both sides."""
    src = np.ones(dst.size, dtype=np.uint8)
    return min(timed(lambda: np.copyto(dst, src)) for _ in range(3))


def odirect_write(path: Path, buf: mmap.mmap) -> float:
    """A new file each time; the caller deletes them later, so that the discard of their blocks
    (this file system is mounted with ``discard``) is not charged to whatever runs next."""
    path = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}")
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    mv = memoryview(buf)
    for off in range(0, len(buf), 32 << 20):
        os.pwrite(fd, mv[off : off + (32 << 20)], off)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t0


def odirect_read(path: Path, buf: mmap.mmap, nbytes: int) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    mv = memoryview(buf)
    for off in range(0, nbytes, 32 << 20):
        os.preadv(fd, [mv[off : min(off + (32 << 20), nbytes)]], off)
    os.close(fd)
    return time.perf_counter() - t0


class Loopback:
    """A raw socket copy over loopback: sendall from a touched buffer, recv_into a touched buffer."""

    def __init__(self, nbytes: int) -> None:
        self.n = nbytes
        self.src, self.dst = mmap.mmap(-1, nbytes), mmap.mmap(-1, nbytes)
        np.frombuffer(self.src, dtype=np.uint8)[:] = 1
        np.frombuffer(self.dst, dtype=np.uint8)[:] = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen()

    def copy(self) -> float:
        def recv() -> None:
            c, _ = self.srv.accept()
            mv, got = memoryview(self.dst), 0
            while got < self.n:
                got += c.recv_into(mv[got:], min(self.n - got, 16 << 20))
            c.sendall(b"k")
            c.close()

        th = threading.Thread(target=recv)
        th.start()
        s = socket.create_connection(self.srv.getsockname())
        t0 = time.perf_counter()
        s.sendall(memoryview(self.src))
        s.recv(1)
        took = time.perf_counter() - t0
        s.close()
        th.join()
        return took


def drop_caches() -> None:
    os.system("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")


# ---- phases -------------------------------------------------------------------------------------
def local_phase(root: Path, state: dict[str, torch.Tensor], size: int, rounds: int, touched: np.ndarray) -> None:
    agent = AgentProc(root, "local", memory_size=int(size * 2.2), keep_memory=1, keep_disk=2)
    wbuf = mmap.mmap(-1, size)
    np.frombuffer(wbuf, dtype=np.uint8)[:] = 3
    try:
        mgr = CheckpointManager("bench", agent=agent.address)
        stalls, durables, ref_copy, ref_write, writes, hashes = [], [], [], [], [], []
        first = 0.0
        warmup = 3  # the two staging buffers and the disk pool's first file
        for step in range(1, warmup + rounds + 1):
            if step > warmup and step % 2:
                ref_write.append(odirect_write(root / "reference.bin", wbuf))
            ref_copy.append(timed(lambda: memcpy_tensors(state, touched)))
            w0, h0 = counter(mgr, "turbok_checkpoint_seconds_total", "disk", "write"), counter(mgr, "turbok_checkpoint_seconds_total", "memory", "hash")
            t0 = time.perf_counter()
            # save() returns before the copy; the optimizer step waits for it: count it all
            mgr.save(step, state).wait_copied()
            stall = time.perf_counter() - t0
            mgr.wait(step, "disk")
            durable = time.perf_counter() - t0
            if step == 1:
                first = stall
            if step > warmup:
                stalls.append(stall)
                durables.append(durable)
                writes.append(counter(mgr, "turbok_checkpoint_seconds_total", "disk", "write") - w0)
                hashes.append(counter(mgr, "turbok_checkpoint_seconds_total", "memory", "hash") - h0)
                if step % 2 == 0:
                    ref_write.append(odirect_write(root / "reference.bin", wbuf))
        row(f"save() stall (median of {rounds} warm)", med(stalls), "memcpy of the same tensors, touched dst", med(ref_copy), "s", "<= 1.25")
        print(f"  first save (fresh tmpfs buffer): {first:.3f} s; all warm stalls: {', '.join(f'{x:.3f}' for x in stalls)}")
        row("save() -> committed on local disk", med(durables), "O_DIRECT write + fsync (new file)", med(ref_write), "s", "<= 1.3")
        print(f"  inside the agent (medians): O_DIRECT write + fsync {med(writes):.3f} s, BLAKE3 of every shard {med(hashes):.3f} s (concurrent)")
        for f in root.glob("reference.bin.*"):
            f.unlink()

        target = {k: torch.empty_like(v) for k, v in state.items()}
        for t in target.values():
            t.zero_()
        for verify, label in ((True, "verified"), (False, "trusted, verify=False")):
            times, refs = [], []
            for _ in range(rounds):
                refs.append(timed(lambda: memcpy_tensors(state, touched)))
                times.append(timed(lambda: mgr.restore(into=target, verify=verify)))  # noqa: B023
            assert all(torch.equal(target[k], state[k]) for k in state)
            row(f"restore from memory ({label})", med(times), "memcpy of the same bytes, touched dst", med(refs), "s", "close to 1")
            for t in target.values():
                t.zero_()

        last = warmup + rounds
        rbuf = mmap.mmap(-1, size + (1 << 20))
        times, refs = [], []
        data = agent.disk_dir / "bench" / f"{last:012d}" / "rank-00000.data"
        for i in range(min(rounds, 3)):
            for marker in Path(agent.memory_dir).glob(f"bench/{last:012d}/*.commit"):
                marker.unlink()  # the memory copy is gone: the disk tier must serve it
            drop_caches()
            if i % 2:
                refs.append(odirect_read(data, rbuf, data.stat().st_size))
            times.append(timed(lambda: mgr.restore(step=last, into=target)))  # noqa: B023
            if not i % 2:
                drop_caches()
                refs.append(odirect_read(data, rbuf, data.stat().st_size))
        assert all(torch.equal(target[k], state[k]) for k in state)
        row("restore from local disk (verified)", med(times), "O_DIRECT cold read of the same file", med(refs), "s", "<= 1.3")
        mgr.close()
    finally:
        agent.stop()


def peer_phase(root: Path, state: dict[str, torch.Tensor], size: int, rounds: int) -> None:
    peer = AgentProc(root, "peer", memory_size=int(size * 2.2), keep_memory=1, keep_disk=1)
    agent = AgentProc(root, "sender", memory_size=int(size * 2.2), keep_memory=1, keep_disk=1, peers=[peer.address], replication_factor=1)
    loop = Loopback(size)
    try:
        mgr = CheckpointManager("peer", agent=agent.address)
        rates, refs = [], []
        warmup = 2  # the peer's pool of touched buffers fills once retention retires a replica
        for step in range(1, warmup + rounds + 1):
            b0, s0 = throughput(mgr, "peer", "replicate")
            mgr.save(step, state)
            mgr.wait(step, "peers")
            b1, s1 = throughput(mgr, "peer", "replicate")
            peer.wait("peer", step, "disk")  # the replica's own drain, off the next measurement
            if step > warmup:
                rates.append((b1 - b0) / (s1 - s0) / 1e9)
                refs.append(size / loop.copy() / 1e9)
        row("peer replication, committed on the peer", med(rates), "raw loopback socket copy", med(refs), "GB/s", ">= 0.7")
        mgr.close()
    finally:
        agent.stop()
        peer.stop()


def object_phase(root: Path, size: int, rounds: int) -> None:
    import obstore

    from turbok.checkpoint.tiers.object import ObjectTier

    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
        options = {"endpoint": endpoint, "region": "us-east-1", "allow_http": "true", "access_key_id": "bench", "secret_access_key": "bench"}
        state = make_state(size)
        agent = AgentProc(root, "object", memory_size=int(size * 2.5), storage_url="s3://bench/ckpt", storage_options=options, keep_object_last=1)
        raw = ObjectTier("s3://bench/raw", options=options)
        payload = root / "payload.bin"
        with open(payload, "wb") as f:
            for t in state.values():
                f.write(t.numpy().tobytes())
        rates, refs = [], []
        try:
            with CheckpointManager("obj", agent=agent.address) as om:
                for step in range(1, rounds + 1):
                    t = timed(lambda: obstore.put(raw.store, "plain.bin", payload, chunk_size=raw.chunk_size, max_concurrency=raw.concurrency))
                    refs.append(size / t / 1e9)
                    b0, s0 = throughput(om, "object", "backup")
                    om.save(step, state)
                    om.wait(step, "object", timeout=600)
                    b1, s1 = throughput(om, "object", "backup")
                    rates.append((b1 - b0) / (s1 - s0) / 1e9)
        finally:
            agent.stop()
        row(f"object backup ({size >> 20} MiB, moto S3)", med(rates), "plain obstore.put, same client+server", med(refs), "GB/s", ">= 0.7")
    finally:
        moto.terminate()
        moto.wait(timeout=30)


def _rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def _tree_bytes(path: str) -> int:
    """Allocated bytes of the files under ``path``, each inode once (a file renamed from the
    pool into place while the walk runs would otherwise be seen twice)."""
    seen: dict[tuple[int, int], int] = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(dirpath, name))
                seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values())


def _system_used() -> int:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            info[k] = int(v.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def memory_phase(root: Path, state: dict[str, torch.Tensor], size: int, saves: int) -> None:
    agent = AgentProc(root, "mem", memory_size=int(size * 1.05), keep_memory=1, keep_disk=1)
    try:
        pids = [os.getpid(), agent.proc.pid]

        def parts() -> tuple[int, int, int]:
            return _rss_anon(pids[0]), _rss_anon(pids[1]), _tree_bytes(agent.memory_dir)

        def ours() -> int:  # anonymous memory of both processes plus the memory tier's tmpfs pages
            return sum(parts())

        start = parts()

        gc.collect()
        base, sys_base = ours(), _system_used()
        peak, sys_peak = [base], [sys_base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], ours())
                sys_peak[0] = max(sys_peak[0], _system_used())
                time.sleep(0.002)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        per_save, sys_per_save = [], []
        with CheckpointManager("mem", agent=agent.address) as mm:
            for step in range(1, saves + 1):
                mm.save(step, state)
                mm.wait(step, "disk")
                per_save.append(peak[0] - base)
                sys_per_save.append(sys_peak[0] - sys_base)
        stop.set()
        th.join()
        end = parts()
        print("  growth by source (MiB): " + ", ".join(f"{n} {(b - a) / 2**20:+.1f}" for n, a, b in zip(("training process", "agent", "memory tier"), start, end, strict=True)))
        row(f"peak extra memory over {saves} saves", max(per_save) / 2**30, "state size", size / 2**30, "GiB", "<= 1.1, no growth")
        print(
            f"  (training process + agent anonymous memory + memory-tier tmpfs, against the same before save 1)\n"
            f"  after save 1: {per_save[0] / 2**30:.3f} GiB, after save {saves}: {per_save[-1] / 2**30:.3f} GiB, "
            f"growth from save 2 on: {(per_save[-1] - per_save[1]) / 2**20:.1f} MiB\n"
            f"  whole machine (MemTotal - MemAvailable, other tenants included): peak extra {max(sys_per_save) / 2**30:.3f} GiB"
        )
    finally:
        agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--object-mib", type=int, default=256)
    ap.add_argument("--saves", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="local,peer,object,memory", help="comma-separated phases")
    ap.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    phases = set(args.only.split(","))
    root = Path(tempfile.mkdtemp(prefix="turbok-bench-", dir=os.getcwd()))
    state = make_state(int(args.gib * (1 << 30)))
    size = sum(t.numel() * 4 for t in state.values())
    load = os.getloadavg()
    if not args.quiet:
        print(f"state: {len(state)} tensors, {size / 2**30:.2f} GiB; {os.cpu_count()} CPUs; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    touched = np.empty(size, dtype=np.uint8)
    if phases & {"local"}:
        touched[:] = 0
        numpy_copy = numpy_memcpy(touched)
        print(f"context: np.copyto of a huge-page numpy array into one: {numpy_copy:.3f} s ({size / numpy_copy / 1e9:.1f} GB/s)")
    try:
        if "local" in phases:
            local_phase(root, state, size, args.rounds, touched)
        if "peer" in phases:
            peer_phase(root, state, size, args.rounds)
        if "object" in phases:
            object_phase(root, args.object_mib << 20, max(2, args.rounds // 2))
        if "memory" in phases and len(phases) == 1:
            memory_phase(root, state, size, args.saves)
        elif "memory" in phases:
            # In a fresh process: what the earlier phases allocated and freed would blur the figure.
            sys.stdout.flush()
            subprocess.run([sys.executable, __file__, "--only", "memory", "--gib", str(args.gib), "--saves", str(args.saves), "--quiet"], check=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if not args.quiet:
        load = os.getloadavg()
        print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
