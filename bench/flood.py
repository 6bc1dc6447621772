"""Benchmark of output floods: what a ``yes`` flood through the router costs the control plane and a neighbour.

Two gVisor pod sandboxes of the base image (each with the sandboxd agent) behind one router, the router in a child
process with its own event loop (as ``turbok serve`` runs it). Three phases of
``--seconds`` each:

1. quiet: nothing else runs;
2. execute flood: a client loops ``POST /execute`` of ``yes`` into the first
   sandbox (``--flood-timeout`` seconds each; the router stops a flood at its
   output limit, older routers read it until the timeout);
3. stream flood: a client loops the exec stream of ``yes`` into the first
   sandbox, reading frames as fast as it can.

In every phase the second sandbox (the neighbour) is measured round by round,
alternating: ``/execute`` of ``true`` through the router (turbok's SDK), and a raw
``runsc --root=R exec ID true`` spawned from here. The router process's CPU
time (``/proc/PID/stat``: its own, and the ``runsc exec`` clients it reaped) is
sampled at the start and end of each phase.

Figures: the router's CPU during a flood, as a share of one core (the issue asks
for a small one; before, one ``yes`` took 57 %), and the neighbour's ``/execute``
p50 under the flood against the quiet one, each next to raw ``runsc exec`` in
the same phase (a flood's own CPU inside gVisor slows every exec on a 2-core
host; the router should add nothing to that).

Usage (root, base image built: ``turbok image build-base``)::

    .venv/bin/python bench/flood.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE = "python-runtime-sandbox"
TOKEN = "bench-token"
FLOOD, CALM = "flood", "calm"
_TICK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def serve() -> None:
    """Child: start two pod sandboxes with their agents, serve the router, print where, run until stdin closes."""
    from turbok.runtime.cri import ContainerConfig, PodSandboxConfig
    from turbok.runtime.ids import sandbox_id
    from turbok.runtime.images import ImageStore
    from turbok.runtime.network import PodNetwork
    from turbok.runtime.pods import release_root
    from turbok.runtime.pods_gvisor import GvisorPodRuntime
    from turbok.sandboxd import StaticResolver, create_router_app, serve_router
    from turbok.sandboxd.injection import agent_injection

    root = Path(tempfile.mkdtemp(prefix="turbok-bench-flood-"))
    network = PodNetwork(root / "net", cidr="10.239.251.0/28", name="tkbfld")  # a range of the bench's own
    network.ensure_host()
    images = ImageStore()
    runtime = GvisorPodRuntime(root / "pods", images, network=network)
    runtime.injection = agent_injection(images, root / "agent")
    ids = {name: sandbox_id(f"bench-flood-{name}-{root.name}") for name in (FLOOD, CALM)}
    containers: dict[str, str] = {}
    try:
        for name, sid in ids.items():
            config = PodSandboxConfig(id=sid, name=name, namespace="default", uid=f"{root.name}-{name}",
                                      hostname=name, single_container=True, agent_container="main",
                                      agent_ports=(8080, 9090))
            await runtime.run_pod_sandbox(config)
            status = await runtime.start_container(sid, ContainerConfig("main", IMAGE))
            containers[name] = status.container_id.removeprefix("gvisor://")
        resolver = StaticResolver({("default", name): sid for name, sid in ids.items()})
        running = await serve_router(create_router_app(runtime=runtime, resolver=resolver, token=TOKEN))
        info = {
            "url": running.url,
            "ids": containers,  # what a raw `runsc exec` names: the container, not the pod
            "runsc": runtime.runsc,
            "state_dir": str(runtime.state_dir),
            "pid": os.getpid(),
        }
        print(json.dumps(info), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
        await running.close()
    finally:
        for sid in ids.values():
            await runtime.remove_pod_sandbox(sid)
        network.remove_host()
        release_root(root / "pods")  # the runtime binds its root nosuid,nodev onto itself
        shutil.rmtree(root, ignore_errors=True)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own user+system, reaped children's user+system) of ``pid``, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = int(fields[11]) + int(fields[12])
    children = int(fields[13]) + int(fields[14])
    return own / _TICK, children / _TICK


class Flooder(threading.Thread):
    """Loops one kind of flood into the flood sandbox until stopped; counts what came back."""

    def __init__(self, url: str, kind: str, timeout: float) -> None:
        super().__init__(daemon=True)
        self.url, self.kind, self.timeout = url, kind, timeout
        self.stop = threading.Event()
        self.commands = 0
        self.bytes = 0
        self.stopped = 0
        self.durations: list[float] = []

    def run(self) -> None:
        from turbok.sdk import SandboxConnection

        with SandboxConnection(self.url, TOKEN, "default", FLOOD, timeout=self.timeout + 30) as conn:
            while not self.stop.is_set():
                started = time.perf_counter()
                if self.kind == "execute":
                    r = conn.commands.run("yes", timeout=self.timeout)
                    self.bytes += len(r.stdout)
                    self.stopped += int(r.truncated and not r.timed_out)
                else:
                    with conn.commands.stream(["yes"], timeout=self.timeout) as run:
                        for frame in run:
                            self.bytes += len(frame.data)
                            if self.stop.is_set():
                                break
                self.commands += 1
                self.durations.append(time.perf_counter() - started)


@dataclass
class Phase:
    wall: float
    own_cpu: float  # share of one core
    kids_cpu: float
    raw: list[float] = field(default_factory=list)
    router: list[float] = field(default_factory=list)
    flooder: Flooder | None = None


def measure_phase(info: dict[str, Any], seconds: float, flooder: Flooder | None) -> Phase:
    from turbok.sdk import SandboxConnection

    raw_cmd = [info["runsc"], f"--root={info['state_dir']}", "exec", info["ids"][CALM], "true"]
    conn = SandboxConnection(info["url"], TOKEN, "default", CALM, timeout=60)

    def raw() -> None:
        done = subprocess.run(raw_cmd, stdin=subprocess.DEVNULL, capture_output=True)
        assert done.returncode == 0, done.stderr

    def router() -> None:
        assert conn.commands.run("true").exit_code == 0

    cases: dict[str, Callable[[], None]] = {"raw": raw, "router": router}
    for fn in cases.values():
        for _ in range(3):
            fn()
    if flooder is not None:
        flooder.start()
        time.sleep(1.0)  # let the flood get going
    times: dict[str, list[float]] = {name: [] for name in cases}
    own0, kids0 = cpu_seconds(info["pid"])
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    own1, kids1 = cpu_seconds(info["pid"])
    if flooder is not None:
        flooder.stop.set()
        flooder.join(timeout=flooder.timeout + 60)
    conn.close()
    return Phase(wall, (own1 - own0) / wall, (kids1 - kids0) / wall, times["raw"], times["router"], flooder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--flood-timeout", type=float, default=10.0, help="timeout of each flood command")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    if os.geteuid() != 0:
        sys.exit("run as root (runsc needs it)")
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    phases: dict[str, Phase] = {}
    load_start = os.getloadavg()
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            sys.exit("the router process failed to start (see its stderr above)")
        info = json.loads(line)
        phases["quiet"] = measure_phase(info, args.seconds, None)
        for kind in ("execute", "stream"):
            phases[f"{kind} flood"] = measure_phase(
                info, args.seconds, Flooder(info["url"], kind, args.flood_timeout)
            )
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=120)

    load = os.getloadavg()
    quiet_router = pct(phases["quiet"].router, 0.5)
    quiet_raw = pct(phases["quiet"].raw, 0.5)
    print(f"phases of {args.seconds:g} s; two gVisor sandboxes; router in its own process (pid {info['pid']})")
    print(f"host: {os.cpu_count()} cpus, load average {load_start[0]:.2f} at the start, {load[0]:.2f} at the end")
    header = (
        f"{'phase':15} {'router cpu':>10} {'+ runsc':>8} {'nbr p50':>8} {'nbr p99':>8} {'raw p50':>8} "
        f"{'raw p99':>8} {'nbr/quiet':>9} {'raw/quiet':>9} {'nbr/raw':>7}  flood"
    )
    print(header)
    for name, ph in phases.items():
        r50, w50 = pct(ph.router, 0.5), pct(ph.raw, 0.5)
        flood = ""
        if (f := ph.flooder) is not None:
            flood = (
                f"{f.commands} commands ({f.stopped} stopped at the cap), {f.bytes / 2**20:.0f} MiB to the "
                f"client, p50 {pct(f.durations, 0.5):.2f} s each"
            )
        print(
            f"{name:15} {ph.own_cpu * 100:9.1f}% {ph.kids_cpu * 100:7.1f}% "
            f"{r50 * 1e3:8.2f} {pct(ph.router, 0.99) * 1e3:8.2f} {w50 * 1e3:8.2f} {pct(ph.raw, 0.99) * 1e3:8.2f} "
            f"{r50 / quiet_router:9.2f} {w50 / quiet_raw:9.2f} {r50 / w50:7.2f}  {flood}"
        )


if __name__ == "__main__":
    main()
