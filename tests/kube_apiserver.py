"""A real etcd + kube-apiserver on loopback, to compare turbok's API with (differential tests).

The binaries are the unmodified 1.37.2 builds of /work/shared/kube, unpacked at
``~/.cache/turbok-kube-assets`` (``TURBOK_KUBE_ASSETS`` overrides); without them
the tests that need one are skipped, naming what is missing. Everything listens
on 127.0.0.1 with free ports; Service ClusterIPs come from 127.96.0.0/16, as
the assets' README says, so nothing ever leaves the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

VERSION = "1.37.2"
ASSETS = Path(os.environ.get("TURBOK_KUBE_ASSETS", Path.home() / ".cache" / "turbok-kube-assets"))
#: The range kube-apiserver allocates ClusterIPs from here (and turbok by default): loopback.
SERVICE_RANGE = "127.96.0.0/16"


def missing() -> str | None:
    """Why a real kube-apiserver cannot be started here, or None when it can."""
    for name in ("etcd", "kube-apiserver"):
        if not (ASSETS / VERSION / name).exists():
            return f"{ASSETS / VERSION / name} is absent (unpack /work/shared/kube with its unpack.sh)"
    if shutil.which("openssl") is None:
        return "openssl is not installed (it makes the service-account key)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class KubeApiServer:
    url: str
    token: str
    client: httpx.Client


@contextmanager
def kube_apiserver() -> Iterator[KubeApiServer]:
    """Start etcd and kube-apiserver, wait for /readyz, yield a client with the admin token, stop both."""
    bin_dir = ASSETS / VERSION
    work = Path(tempfile.mkdtemp(prefix="kube-apiserver-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        token = secrets.token_hex(16)
        tokens = work / "tokens.csv"
        tokens.write_text(f"{token},admin,admin-uid,system:masters\n")
        tokens.chmod(0o600)
        subprocess.run(["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
                       check=True, capture_output=True)
        ep, pp, api = _free_port(), _free_port(), _free_port()
        with open(work / "log", "wb") as log:
            procs.append(subprocess.Popen(
                [str(bin_dir / "etcd"), "--data-dir", str(work / "etcd"), "--unsafe-no-fsync",
                 "--listen-client-urls", f"http://127.0.0.1:{ep}", "--advertise-client-urls",
                 f"http://127.0.0.1:{ep}", "--listen-peer-urls", f"http://127.0.0.1:{pp}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                 "--initial-cluster", f"default=http://127.0.0.1:{pp}"], stdout=log, stderr=log))
            procs.append(subprocess.Popen(
                [str(bin_dir / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{ep}",
                 "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
                 "--endpoint-reconciler-type", "none", "--secure-port", str(api), "--cert-dir", str(work / "certs"),
                 "--token-auth-file", str(tokens), "--authorization-mode", "RBAC",
                 "--service-account-issuer", "https://kubernetes.default.svc",
                 "--service-account-key-file", str(work / "sa.pub"),
                 "--service-account-signing-key-file", str(work / "sa.key"),
                 "--service-cluster-ip-range", SERVICE_RANGE, "--allow-privileged=true"], stdout=log, stderr=log))
        url = f"https://127.0.0.1:{api}"
        client = httpx.Client(base_url=url, verify=False, headers={"Authorization": f"Bearer {token}"},
                              timeout=30)
        deadline = time.monotonic() + 90
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"kube-apiserver did not start: {(work / 'log').read_text()[-3000:]}")
            time.sleep(0.3)
        try:
            yield KubeApiServer(url, token, client)
        finally:
            client.close()
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)
