"""Benchmark of the router: a command's round trip through it against a raw ``runsc exec ID true``.

One pod sandbox (``GvisorPodRuntime``, the built-in image, on a pod network of its
own, with the sandboxd agent in it, as the node runs a Sandbox), same run,
alternating round by round:

1. reference: ``runsc --root=R exec CID true`` spawned from here (pipes, wait);
2. sandboxd ``Execute`` of ``/bin/sh -c true`` through the router (gRPC with the
   official client's generated stubs, ``x-sandbox-id`` metadata, one channel);
   and the same straight to the agent at ``podIP:9090`` (what the official
   client's sandboxd in-cluster mode does): the router's share;
3. ``/execute`` of ``true`` through the router with turbok's SDK (httpx, keep-alive);
4. the same with the unchanged official client (requests, keep-alive);
5. ``GET /`` (the sandbox's health: auth, headers, resolver, no command): the
   router's own cost per request.

The router runs in a child process with its own event loop, as the control
plane serves it, so client and server do not share an interpreter lock. The
figure is the p50 ratio of (2) to (1); issue 11 asks for <= 0.5 (a command no
longer costs a ``runsc exec``: the agent inside the sandbox runs it).

Usage (root, nft, base image built: ``turbok image build-base``)::

    .venv/bin/python bench/router.py [--rounds 200]
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
import time
from collections.abc import Callable
from pathlib import Path

IMAGE = "python-runtime-sandbox"
TOKEN = "bench-token"
NAME = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def serve() -> None:
    """Child: start a pod sandbox with its agent, serve the router, print where, run until stdin closes."""
    from turbok.runtime.cri import ContainerConfig, PodSandboxConfig
    from turbok.runtime.ids import sandbox_id
    from turbok.runtime.images import ImageStore
    from turbok.runtime.network import PodNetwork
    from turbok.runtime.pods_gvisor import GvisorPodRuntime
    from turbok.sandboxd import StaticResolver, create_router_app, serve_router
    from turbok.sandboxd.injection import agent_injection

    root = Path(tempfile.mkdtemp(prefix="turbok-bench-router-"))
    network = PodNetwork(root / "net", cidr="10.239.250.0/28", name="tkbnch")  # a range of the bench's own
    network.ensure_host()
    images = ImageStore()
    runtime = GvisorPodRuntime(root / "pods", images, network=network)
    runtime.injection = agent_injection(images, root / "agent")
    sid = sandbox_id(f"bench-router-{root.name}")
    config = PodSandboxConfig(id=sid, name=NAME, namespace="default", uid=root.name, hostname=NAME,
                              single_container=True, agent_container="main", agent_ports=(8080, 9090))
    await runtime.run_pod_sandbox(config)
    status = await runtime.start_container(sid, ContainerConfig("main", IMAGE))
    try:
        resolver = StaticResolver({("default", NAME): sid})
        running = await serve_router(create_router_app(runtime=runtime, resolver=resolver, token=TOKEN))
        ip = (await runtime.pod_sandbox_status(sid)).ip
        info = {"url": running.url, "ip": ip, "id": status.container_id.removeprefix("gvisor://"), "runsc": runtime.runsc,
                "state_dir": str(runtime.state_dir), "notes": list(status.notes)}
        print(json.dumps(info), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
        await running.close()
    finally:
        await runtime.remove_pod_sandbox(sid)
        network.remove_host()
        shutil.rmtree(root, ignore_errors=True)


class _NoKubernetes:
    injected_api_client = None

    def get_sandbox(self, name: str, namespace: str) -> dict[str, object]:
        return {"status": {}}


def measure(rounds: int, info: dict[str, str]) -> dict[str, list[float]]:
    from k8s_agent_sandbox.models import SandboxDirectConnectionConfig
    from k8s_agent_sandbox.sandbox import Sandbox

    from turbok.sdk import SandboxConnection, auth_headers

    raw_cmd = [info["runsc"], f"--root={info['state_dir']}", "exec", info["id"], "true"]
    conn = SandboxConnection(info["url"], TOKEN, "default", NAME)
    official = Sandbox(
        claim_name="bench",
        sandbox_id=NAME,
        connection_config=SandboxDirectConnectionConfig(api_url=info["url"], extra_headers=auth_headers(TOKEN)),
        k8s_helper=_NoKubernetes(),  # type: ignore[arg-type]
    )
    assert official.commands is not None
    official_run = official.commands.run

    import grpc
    from k8s_agent_sandbox.commands._process_stubs import process_pb2 as pb
    from k8s_agent_sandbox.commands._process_stubs import process_pb2_grpc as pb_grpc

    assert not info.get("notes"), info["notes"]  # the agent started
    stub = pb_grpc.ProcessServiceStub(grpc.insecure_channel(info["url"].removeprefix("http://")))
    meta = [("authorization", f"Bearer {TOKEN}"), ("x-sandbox-id", NAME)]
    request = pb.ExecuteRequest(config=pb.ProcessConfig(command=["/bin/sh", "-c", "true"]))

    direct = pb_grpc.ProcessServiceStub(grpc.insecure_channel(f"{info['ip']}:9090"))

    def grpc_execute() -> None:
        assert stub.Execute(request, metadata=meta, timeout=30).exit_code == 0

    def grpc_direct() -> None:
        assert direct.Execute(request, timeout=30).exit_code == 0

    def raw() -> None:
        done = subprocess.run(raw_cmd, stdin=subprocess.DEVNULL, capture_output=True)
        assert done.returncode == 0, done.stderr

    def sdk() -> None:
        assert conn.commands.run("true").exit_code == 0

    def official_client() -> None:
        assert official_run("true").exit_code == 0

    def health() -> None:
        conn.health()

    cases: dict[str, Callable[[], None]] = {
        "raw runsc exec true": raw,
        "router sandboxd Execute (gRPC)": grpc_execute,
        "sandboxd Execute straight to the Pod (no router)": grpc_direct,
        "router /execute true (turbok sdk)": sdk,
        "router /execute true (official client)": official_client,
        "router GET / (no exec)": health,
    }
    for fn in cases.values():  # warm up: connections, page cache, gVisor's first exec
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    conn.close()
    official.close_connection()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
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
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            sys.exit("the router process failed to start (see its stderr above)")
        times = measure(args.rounds, json.loads(line))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=60)

    ref = pct(times["raw runsc exec true"], 0.5)
    load = os.getloadavg()
    print(f"rounds: {args.rounds} (alternating), one gVisor sandbox, router in its own process")
    print(f"host: {os.cpu_count()} cpus, load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'':50} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10}")
    for name, values in times.items():
        p50, p99 = pct(values, 0.5), pct(values, 0.99)
        print(f"{name:50} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f} {p50 / ref:10.2f}")
    grpc_times = times["router sandboxd Execute (gRPC)"]
    paired = [s / r for s, r in zip(grpc_times, times["raw runsc exec true"], strict=True)]
    print(f"paired: median of per-round (router Execute / raw) = {pct(paired, 0.5):.2f}")
    print(f"figure: router sandboxd Execute p50 / raw runsc exec p50 = {pct(grpc_times, 0.5) / ref:.2f} "
          "(target <= 0.50)")


if __name__ == "__main__":
    main()
