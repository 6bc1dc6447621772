"""A real Kubernetes control plane on loopback for the checkpoint operator: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (simulated nodes that run Pods), version 1.37.2.

The binaries come from /work/shared/kube, unpacked at ``~/.cache/turbok-kube-assets``
(``TURBOK_KUBE_ASSETS`` overrides); without them the tests are skipped, naming what is
missing. Flags as the assets' README gives them; every address is loopback (ClusterIPs
127.96.0.0/16, kwok Pod IPs 127.64.0.0/16), so a test can run a real process on a kwok
Pod's IP to stand in for its container.
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
import yaml

VERSION = "1.37.2"
ASSETS = Path(os.environ.get("TURBOK_KUBE_ASSETS", Path.home() / ".cache" / "turbok-kube-assets"))
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def missing() -> str | None:
    """Why the control plane cannot run here, or None."""
    for name in BINARIES:
        if not (ASSETS / VERSION / name).exists():
            return (f"{ASSETS / VERSION / name} is absent: unpack /work/shared/kube with its unpack.sh "
                    f"(needs {', '.join(BINARIES)} {VERSION})")
    if not (ASSETS / "kwok-stages.yaml").exists():
        return f"{ASSETS / 'kwok-stages.yaml'} is absent (unpack /work/shared/kube)"
    if shutil.which("openssl") is None:
        return "openssl is not installed (it makes the service-account key)"
    return None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    url: str
    token: str
    kubeconfig: Path
    client: httpx.Client
    work: Path

    def kubeconfig_for(self, token: str, path: Path) -> Path:
        path.write_text(yaml.safe_dump(_kubeconfig(self.url, token)))
        path.chmod(0o600)
        return path


def _kubeconfig(url: str, token: str) -> dict[str, object]:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }


@contextmanager
def control_plane() -> Iterator[Cluster]:
    bins = ASSETS / VERSION
    work = Path(tempfile.mkdtemp(prefix="turbok-kube-"))
    procs: list[subprocess.Popen[bytes]] = []
    log = open(work / "log", "wb")  # noqa: SIM115 - closed below, after the processes
    try:
        token = secrets.token_hex(16)
        tokens = work / "tokens.csv"
        tokens.write_text(f"{token},admin,admin-uid,system:masters\n")
        tokens.chmod(0o600)
        subprocess.run(["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
                       check=True, capture_output=True)
        ep, pp, api = _port(), _port(), _port()
        procs.append(subprocess.Popen(
            [str(bins / "etcd"), "--data-dir", str(work / "etcd"), "--unsafe-no-fsync",
             "--listen-client-urls", f"http://127.0.0.1:{ep}", "--advertise-client-urls", f"http://127.0.0.1:{ep}",
             "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
             "--initial-cluster", f"default=http://127.0.0.1:{pp}"], stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            [str(bins / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{ep}", "--bind-address", "127.0.0.1",
             "--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none", "--secure-port", str(api),
             "--cert-dir", str(work / "certs"), "--token-auth-file", str(tokens), "--authorization-mode", "Node,RBAC",
             "--service-account-issuer", "https://kubernetes.default.svc",
             "--service-account-key-file", str(work / "sa.pub"),
             "--service-account-signing-key-file", str(work / "sa.key"),
             "--service-cluster-ip-range", "127.96.0.0/16", "--allow-privileged=true"], stdout=log, stderr=log))
        url = f"https://127.0.0.1:{api}"
        kubeconfig = work / "admin.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(_kubeconfig(url, token)))
        kubeconfig.chmod(0o600)
        client = httpx.Client(base_url=url, verify=False, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"kube-apiserver did not start: {(work / 'log').read_text()[-3000:]}")
            time.sleep(0.3)
        kc = str(kubeconfig)
        procs.append(subprocess.Popen(
            [str(bins / "kube-controller-manager"), "--kubeconfig", kc, "--bind-address", "127.0.0.1", "--secure-port", "0",
             "--leader-elect=false", "--controllers", "*,-node-ipam-controller,-kube-apiserver-serving-clustertrustbundle-publisher-controller",
             "--service-account-private-key-file", str(work / "sa.key"), "--root-ca-file", str(work / "certs" / "apiserver.crt")],
            stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            [str(bins / "kube-scheduler"), "--kubeconfig", kc, "--bind-address", "127.0.0.1", "--secure-port", "0",
             "--leader-elect=false"], stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            [str(bins / "kwok"), "--kubeconfig", kc, "--config", str(ASSETS / "kwok-stages.yaml"),
             "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
             "--cidr", "127.64.0.0/16", "--node-ip", "127.63.0.1"], stdout=log, stderr=log))
        try:
            yield Cluster(url, token, kubeconfig, client, work)
        finally:
            client.close()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(5)  # some of them linger on SIGTERM; nothing of theirs is worth keeping
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def wait_for(what: str, check: object, timeout: float = 60.0, every: float = 0.3) -> object:
    """Call ``check()`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()  # type: ignore[operator]
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
