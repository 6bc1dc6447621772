"""Fixtures: node agents (in this process or as killable subprocesses) and an S3 server on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from turbok.checkpoint.agent import Agent
from turbok.checkpoint.config import Settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProc:
    """A node agent in its own process, killable with any signal."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.address = config["listen"]
        self.path = workdir / f"agent-{uuid.uuid4().hex[:6]}.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.log = self.path.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **override: Any) -> AgentProc:
        if override:
            self.path.write_text(yaml.safe_dump({**self.config, **override}))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "turbok", "checkpoint", "agent", "--config", str(self.path)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        host, port = self.address.rsplit(":", 1)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection((host, int(port)), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("agent did not start")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def restart(self, **override: Any) -> AgentProc:
        self.kill(signal.SIGTERM)
        return self.start(**override)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path plus a tmpfs directory for memory tiers, removed afterwards."""
    shm = Path("/dev/shm") / f"turbok-it-{uuid.uuid4().hex[:10]}"
    shm.mkdir()
    (tmp_path / "shm").symlink_to(shm)
    yield tmp_path
    shutil.rmtree(shm, ignore_errors=True)


def settings_for(workdir: Path, name: str, **extra: Any) -> dict[str, Any]:
    port = free_port()
    return {
        "memory_dir": str((workdir / "shm").resolve() / name),
        "disk_dir": str(workdir / name / "disk"),
        "memory_size": "512Mi",
        "listen": f"127.0.0.1:{port}",
        "replication_factor": 0,
        **extra,
    }


@pytest.fixture
def agent_procs(workdir: Path) -> Iterator[Callable[..., AgentProc]]:
    procs: list[AgentProc] = []

    def make(name: str, **extra: Any) -> AgentProc:
        p = AgentProc(settings_for(workdir, name, **extra), workdir)
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.kill()


@pytest.fixture
def agents(workdir: Path) -> Iterator[Callable[..., Agent]]:
    """In-process agents (fast); same settings shape as the subprocess ones."""
    running: list[Agent] = []

    def make(name: str, **extra: Any) -> Agent:
        a = Agent(Settings.from_dict(settings_for(workdir, name, **extra)))
        a.start()
        running.append(a)
        return a

    yield make
    for a in running:
        a.stop()


@pytest.fixture
def s3() -> Iterator[dict[str, Any]]:
    """moto's S3 server on 127.0.0.1 with an empty bucket; yields storage settings."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="ckpt")
    yield {
        "storage_url": "s3://ckpt/runs",
        "storage_options": {"endpoint": endpoint, "region": "us-east-1", "allow_http": "true", "access_key_id": "testing", "secret_access_key": "testing"},
        "port": port,
        "server": server,
    }
    server.stop()
