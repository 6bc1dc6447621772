"""Benchmark of the Pod streams (kubectl exec, kubectl logs) against their physical references, same run.

A ``turbok serve`` in its own process (a temporary home; TLS, the node, gVisor)
runs one Pod of the base image that writes ``--mb`` MB of log (lines of 1000
bytes) and then sleeps. Then, alternating round by round:

1. Exec: ``kubectl exec POD -- true`` (kubectl's process, TLS, the WebSocket
   ``v5.channel.k8s.io``, the API server, ``NodeStreams``, ``PodRuntime.exec``,
   ``runsc exec``) against a raw ``runsc --root=R exec CID true`` of the same
   container; ``kubectl get pod POD -o name`` (kubectl's fixed cost: process
   start, kubeconfig, TLS, one request) to show where the difference goes; and
   the same exec session from a client already running (aiohttp, a new TLS
   connection and WebSocket per exec, as kubectl makes), which is turbok's part.
2. Logs: ``kubectl logs POD`` of the whole log into /dev/null (the API server
   reads the CRI file, strips the prefixes, streams chunked over TLS; kubectl
   copies to its stdout) against ``cat FILE > /dev/null`` of the CRI file
   itself (more bytes: it holds the prefixes) and kubectl's fixed cost again.

Usage (root, runsc, the base image built, kubectl on PATH)::

    .venv/bin/python bench/streams.py [--execs 20] [--logs 5] [--mb 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from turbok.node.suspend import runtime_id
from turbok.runtime.podlayout import PodDir

#: Bytes per log line, newline included: long enough that 10 MB of output and its CRI prefixes (about
#: 41 bytes a line) stay under one log file (10 MiB, the rotation size; kubectl logs reads the live file).
LINE = 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(argv: list[str], env: dict[str, str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def session_times(api: str, token: str, ca: Path, n: int, raw: list[str], env: dict[str, str]) -> tuple[
        list[float], list[float]]:
    """An exec session of ``true`` over ``v5.channel.k8s.io`` from a running client, alternating with raw runsc."""
    context = ssl.create_default_context(cafile=str(ca))
    url = f"{api}/api/v1/namespaces/default/pods/bench/exec?command=true&stdout=true&stderr=true"

    async def one() -> float:
        start = time.perf_counter()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
                http.ws_connect(url, protocols=("v5.channel.k8s.io",), ssl=context) as ws:
            async for msg in ws:
                if msg.data[:1] == b"\x03" and len(msg.data) > 1:
                    assert b"Success" in msg.data, msg.data
        return time.perf_counter() - start

    async def run() -> tuple[list[float], list[float]]:
        ours, ref = [], []
        for i in range(n + 3):
            if i % 2:
                a = await one()
                b = await asyncio.to_thread(timed, raw, env)
            else:
                b = await asyncio.to_thread(timed, raw, env)
                a = await one()
            if i >= 3:
                ours.append(a)
                ref.append(b)
        return ours, ref

    return asyncio.run(run())


def row(name: str, ours: list[float], ref_name: str, ref: list[float], unit: str = "ms") -> str:
    p50, r50 = statistics.median(ours), statistics.median(ref)
    scale = 1e3
    return (f"| {name} | {p50 * scale:.1f} / {pct(ours, 0.99) * scale:.1f} {unit} | {ref_name} | "
            f"{r50 * scale:.1f} / {pct(ref, 0.99) * scale:.1f} {unit} | {p50 / r50:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--execs", type=int, default=20)
    ap.add_argument("--logs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=10)
    args = ap.parse_args()
    kubectl = shutil.which("kubectl")
    if kubectl is None or shutil.which("runsc") is None:
        sys.exit("needs kubectl and runsc on PATH")
    home = Path(tempfile.mkdtemp(prefix="turbok-bench-streams-"))
    env = {**os.environ, "TURBOK_HOME": str(home),
           "TURBOK_IMAGES": os.environ.get("TURBOK_IMAGES", str(Path("~/.turbok/images").expanduser()))}
    server = subprocess.Popen([sys.executable, "-m", "turbok", "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(home / "serve.log", "wb"), start_new_session=True)  # noqa: SIM115
    try:
        deadline = time.monotonic() + 60
        while not (home / "endpoints.json").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"turbok serve did not start:\n{(home / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.1)
        kenv = {**env, "KUBECONFIG": str(home / "kubeconfig")}
        k = [kubectl, f"--cache-dir={home / 'kube-cache'}"]
        lines = args.mb * 1_000_000 // LINE
        script = (f"import sys, time; sys.stdout.write(('x' * {LINE - 1} + chr(10)) * {lines}); "
                  "sys.stdout.flush(); time.sleep(86400)")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bench"},
               "spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox",
                                        "command": ["python3", "-c", script]}]}}
        subprocess.run([*k, "apply", "-f", "-"], input=json.dumps(pod).encode(), env=kenv, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*k, "wait", "--for=condition=Ready", "pod/bench", "--timeout=120s"], env=kenv, check=True,
                       stdout=subprocess.DEVNULL)
        got = json.loads(subprocess.run([*k, "get", "pod", "bench", "-o", "json"], env=kenv, check=True,
                                        capture_output=True).stdout)
        pdir = PodDir(home / "pods", runtime_id(got))
        log_file = pdir.cri_log("main", 0)
        cid = json.loads(pdir.container("main").record.read_text())["cid"]
        raw_exec = ["runsc", f"--root={home / 'pods' / '.runsc'}", "exec", cid, "true"]
        want = lines * LINE
        deadline = time.monotonic() + 120
        while not (log_file.exists() and log_file.read_bytes().count(b"\n") >= lines):
            # the whole output as CRI lines (the runtime writes them as the output comes)
            if time.monotonic() > deadline:
                sys.exit("the pod's log did not reach its size")
            time.sleep(0.5)
        fixed = [*k, "get", "pod", "bench", "-o", "name"]
        print(f"load average at the start: {os.getloadavg()[0]:.1f}; CRI log {log_file.stat().st_size / 1e6:.1f} MB "
              f"for {want / 1e6:.1f} MB of output")
        for _ in range(3):  # warm: kubectl's discovery cache, page cache, runsc
            timed([*k, "exec", "bench", "--", "true"], kenv)
            timed(raw_exec, kenv)
        execs: dict[str, list[float]] = {"kubectl": [], "raw": [], "fixed": []}
        for i in range(args.execs):
            order = [("kubectl", [*k, "exec", "bench", "--", "true"]), ("raw", raw_exec), ("fixed", fixed)]
            for name, argv in order if i % 2 else reversed(order):
                execs[name].append(timed(argv, kenv))
        endpoints = json.loads((home / "endpoints.json").read_text())
        api_session, api_raw = session_times(endpoints["api"], (home / "token").read_text().strip(),
                                             home / "pki" / "ca.crt", args.execs, raw_exec, kenv)
        out = subprocess.run([*k, "logs", "bench"], env=kenv, capture_output=True, check=True).stdout
        assert len(out) == want and out == (b"x" * (LINE - 1) + b"\n") * lines, "kubectl logs gave other bytes"
        logs: dict[str, list[float]] = {"kubectl": [], "cat": [], "fixed": []}
        for i in range(args.logs):
            order = [("kubectl", [*k, "logs", "bench"]), ("cat", ["cat", str(log_file)]), ("fixed", fixed)]
            for name, argv in order if i % 2 else reversed(order):
                logs[name].append(timed(argv, kenv))
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        print("| figure (p50 / p99) | measured | reference | reference (p50 / p99) | ratio |")
        print("|---|---|---|---|---|")
        print(row("`kubectl exec POD -- true`", execs["kubectl"], "raw `runsc exec CID true`", execs["raw"]))
        print(row("`kubectl exec POD -- true`", execs["kubectl"], "`kubectl get pod -o name` (kubectl's fixed cost)",
                  execs["fixed"]))
        print(row("exec session of `true` (WebSocket v5, client already running)", api_session,
                  "raw `runsc exec CID true`", api_raw))
        print(row(f"`kubectl logs POD` ({want / 1e6:.0f} MB)", logs["kubectl"],
                  f"`cat` of the CRI file ({log_file.stat().st_size / 1e6:.1f} MB)", logs["cat"]))
        print(row(f"`kubectl logs POD` ({want / 1e6:.0f} MB)", logs["kubectl"], "`kubectl get pod -o name`",
                  logs["fixed"]))
        mbs = want / statistics.median(logs["kubectl"]) / 1e6
        print(f"kubectl logs throughput: {mbs:.0f} MB/s")
    finally:
        with_kube = {**env, "KUBECONFIG": str(home / "kubeconfig")}
        subprocess.run([shutil.which("kubectl") or "kubectl", "delete", "pod", "bench", "--timeout=60s",
                        "--ignore-not-found"], env=with_kube, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
