"""The sandboxd agent run on this machine, outside any sandbox, for tests that need no gVisor.

``host_agent(tmp)`` stages the agent as the pod runtime does for a sandbox
(``turbok.sandboxd.injection.stage``: the package as ``tkagent`` beside the ``h2``
it imports, byte-compiled) and starts it with this interpreter in isolated mode
without site-packages (``-I -S``: it gets nothing but what was staged), in the
foreground, on an address of its own in 127.0.0.0/8 (so the router's fixed agent
port, 48888, is free there) with its REST and gRPC ports picked by the OS.
Its root (``/app`` in a sandbox) is a directory under ``tmp``. Commands it runs are
children of this machine's shell: tests run only harmless ones.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from turbok.sandboxd.agent import AGENT_PORT, READY
from turbok.sandboxd.injection import stage

__all__ = ["HostAgent", "free_port", "host_agent", "loopback_address"]


@dataclass
class HostAgent:
    ip: str
    rest_port: int
    grpc_port: int
    root: Path
    log: Path


def loopback_address() -> str:
    """An address in 127.0.0.0/8 nobody else here uses (tests bind fixed ports on it)."""
    for _ in range(50):
        ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket() as s:
            try:
                s.bind((ip, AGENT_PORT))
            except OSError:
                continue
        return ip
    raise RuntimeError("no free loopback address")


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@contextmanager
def host_agent(tmp: Path, env: dict[str, str] | None = None) -> Iterator[HostAgent]:
    code = stage(tmp / "agent-code")
    root = tmp / "app"
    root.mkdir(exist_ok=True)
    ip = loopback_address()
    rest, grpc = free_port(ip), free_port(ip)
    boot = f"import sys; sys.path[:0] = [{str(code)!r}]; from tkagent.main import main; main()"
    log = tmp / "agent.log"
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), **(env or {})}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", boot, "--root", str(root), "--host", ip, "--port", str(AGENT_PORT),
             "--port", str(rest), "--port", str(grpc), "--foreground"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=environ, cwd=root)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == READY.encode(), f"the agent did not start: {log.read_text()}"
        yield HostAgent(ip=ip, rest_port=rest, grpc_port=grpc, root=root, log=log)
    finally:
        proc.terminate()
        proc.wait(10)
