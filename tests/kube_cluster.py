"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok.

The one place tests start a real cluster (``kube_cluster``): tests/kube (the Kubernetes engine), the
checkpoint operator's, the conformance checker's and the differential tests each ask it for the parts
they need. (The upgrade rehearsal's tests use turbok's own ``ScratchControlPlane``: it is what they test.)

Where the binaries come from, envtest's convention first: ``$KUBEBUILDER_ASSETS`` (a directory holding
``etcd``, ``kube-apiserver``... as kubebuilder's ``setup-envtest`` lays them out); else the unpacked
``~/.cache/turbok-kube-assets/current`` (``TURBOK_KUBE_ASSETS`` moves it); else ``../shared/kube/unpack.sh``
is run once to unpack it there (about 16 s). A test that asserts one release's answers asks for it
(``version="1.37.2"``): that release of the unpacked ../shared/kube, whatever KUBEBUILDER_ASSETS says.
Without any of them ``missing()`` says which, and the tests that need a cluster skip with that reason.
kube-controller-manager, kube-scheduler and kwok are optional per cluster (a KUBEBUILDER_ASSETS of envtest
has no kwok: those tests skip naming it).

Everything listens on 127.0.0.1 on free ports. Every address the cluster hands out is loopback: Service
ClusterIPs from 127.96.0.0/16, kwok's Pod IPs from 127.64.0.0/16 (its node's InternalIP 127.63.0.1), so a
test can listen on a Pod's IP and port with a real process standing in for the container. The apiserver
writes an audit log when asked (``audit.jsonl``: every request, at Metadata level) for the RBAC tests.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_KUBE = REPO.parent / "shared" / "kube"
CACHE = Path(os.environ.get("TURBOK_KUBE_ASSETS", Path.home() / ".cache" / "turbok-kube-assets"))
#: The release of ../shared/kube that tests asserting one release's answers ask for (differential, conformance,
#: checkpoint).
RELEASE = "1.37.2"
SERVICE_RANGE = "127.96.0.0/16"
POD_CIDR = "127.64.0.0/16"
NODE_IP = "127.63.0.1"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

_unpack_lock = threading.Lock()


def assets_dir(version: str | None = None) -> Path | None:
    """The directory with the binaries (``KUBEBUILDER_ASSETS``, the cache, or the cache after unpacking);
    with ``version``, that release's directory of the unpacked ../shared/kube."""
    env = os.environ.get("KUBEBUILDER_ASSETS")
    if env and version is None:
        return Path(env)
    wanted = CACHE / (version or "current")
    if (wanted / "kube-apiserver").exists():
        return wanted
    unpack = SHARED_KUBE / "unpack.sh"
    if not unpack.exists():
        return None
    with _unpack_lock:
        if not (wanted / "kube-apiserver").exists():
            subprocess.run(["sh", str(unpack), str(CACHE)], check=True, capture_output=True, timeout=300)
    return wanted if (wanted / "kube-apiserver").exists() else None


def binary(name: str, version: str | None = None) -> Path | None:
    """A binary of the assets (``kubectl``, ``helm``, ``kwok``...), or None."""
    found = assets_dir(version)
    if found is None:
        return None
    for candidate in (found / name, found.parent / "bin" / name):
        if candidate.exists():
            return candidate
    return None


def missing(*names: str, version: str | None = None) -> str | None:
    """Why a control plane with ``names`` (besides etcd and kube-apiserver) cannot start here, or None."""
    found = assets_dir(version)
    if found is None:
        if version is not None:
            return f"no Kubernetes {version} binaries in {CACHE / version} ({SHARED_KUBE} is absent or lacks them)"
        return ("no Kubernetes binaries: KUBEBUILDER_ASSETS is unset, ~/.cache/turbok-kube-assets is empty and "
                f"{SHARED_KUBE / 'unpack.sh'} does not exist")
    for name in ("etcd", "kube-apiserver", *names):
        if binary(name, version) is None:
            return f"{name} is not in {found} (KUBEBUILDER_ASSETS or the unpacked ../shared/kube)"
    if shutil.which("openssl") is None:
        return "openssl is not installed (it makes the service-account key)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


@dataclass
class KubeCluster:
    """A running control plane; ``client`` speaks as the admin (``system:masters``)."""

    url: str
    token: str
    work: Path
    client: httpx.Client
    kubeconfig: Path
    audit_log: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _paths: dict[tuple[str, str], tuple[str, str, bool]] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.work / "certs" / "apiserver.crt"

    def write_kubeconfig(self, path: Path, token: str, *, namespace: str = "default") -> Path:
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode()}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def service_account_token(self, namespace: str, name: str, *, seconds: int = 3600) -> str:
        """A token for ServiceAccount ``namespace/name`` from the TokenRequest API."""
        r = self.client.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                             json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                   "spec": {"expirationSeconds": seconds}})
        r.raise_for_status()
        return str(r.json()["status"]["token"])

    def path_of(self, obj: dict[str, Any], *, collection: bool = False) -> str:
        """The REST path of ``obj`` (its collection's with ``collection``), from the server's discovery."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        if (api_version, kind) not in self._paths:
            root = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
            for r in self.client.get(root).json().get("resources", []):
                if "/" not in r["name"]:
                    self._paths[(api_version, r["kind"])] = (root, r["name"], r["namespaced"])
        root, plural, namespaced = self._paths[(api_version, kind)]
        md = obj.get("metadata") or {}
        base = f"{root}/namespaces/{md.get('namespace') or 'default'}/{plural}" if namespaced else f"{root}/{plural}"
        return base if collection else f"{base}/{md['name']}"

    def apply(self, *objs: dict[str, Any]) -> None:
        """Server-side apply ``objs`` as the admin (field manager ``tests``)."""
        for obj in objs:
            r = self.client.patch(self.path_of(obj), params={"fieldManager": "tests", "force": "true"},
                                  content=json.dumps(obj),
                                  headers={"Content-Type": "application/apply-patch+yaml"})
            if r.status_code >= 400:
                raise AssertionError(f"apply {obj['kind']} {obj['metadata']['name']}: {r.status_code} {r.text}")

    def add_kwok_node(self, name: str = "kwok-node-0", *, cpu: str = "1000", memory: str = "4000Gi",
                      pods: str = "2000") -> None:
        """A Node kwok manages (Ready, InternalIP 127.63.0.1); the scheduler binds Pods to it."""
        r = self.client.post("/api/v1/nodes", json={
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                         "labels": {"kubernetes.io/hostname": name, "type": "kwok"}},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods},
                       "capacity": {"cpu": cpu, "memory": memory, "pods": pods}}})
        if r.status_code not in (201, 409):
            raise AssertionError(f"node {name}: {r.status_code} {r.text}")

    def audit(self, user: str) -> list[dict[str, Any]]:
        """Audit events of requests made by ``user``: ResponseComplete, and ResponseStarted of watches (a
        watch still open, or closed a moment ago, has no ResponseComplete yet)."""
        out = []
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            if event.get("user", {}).get("username") != user:
                continue
            if event.get("stage") == "ResponseComplete" or (
                    event.get("stage") == "ResponseStarted" and event.get("verb") == "watch"):
                out.append(event)
        return out

    def wait(self, what: str, predicate: Any, timeout: float = 30.0, every: float = 0.1) -> Any:
        """``predicate()``'s first truthy value; fails naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(every)


def _wait_ready(client: httpx.Client, procs: dict[str, subprocess.Popen[bytes]], log: Path,
                timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if time.monotonic() > deadline or dead:
            raise RuntimeError(f"kube-apiserver did not start ({dead}): {log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextmanager
def kube_cluster(*, controller_manager: bool = True, scheduler: bool = True, kwok: bool = True,
                 extra_users: tuple[tuple[str, str], ...] = (), audit: bool = False,
                 prepare: Callable[[KubeCluster], None] | None = None,
                 version: str | None = None, watch_cache: bool = True) -> Iterator[KubeCluster]:
    """Start the control plane, yield it, stop it (SIGTERM, then SIGKILL) and remove its files.

    ``controller_manager`` (garbage collection, namespace deletion, ServiceAccounts), ``scheduler`` and
    ``kwok`` (simulated nodes that run Pods) are what tests differ by: the differential tests compare a
    bare kube-apiserver, the conformance checks need namespaces to go away, tests/kube need all three.
    ``version``: that release of ../shared/kube (for tests that assert its answers), not the default assets.

    ``extra_users``: (name, group) pairs given static tokens in ``tokens.csv`` (``cluster.work / name``).
    ``audit``: write the audit log (every request, blocking: it costs the apiserver a fair share of its CPU).
    ``watch_cache=False``: the apiserver reads etcd for every list (``--watch-cache=false``).
    ``prepare`` runs once the apiserver serves, before the controller-manager starts: CRDs installed
    there are watched by its garbage collector at once (it finds later ones only at its next discovery,
    up to 30 s on).
    """
    found = assets_dir(version)
    assert found is not None, missing(version=version)

    def bin_(name: str) -> str:
        return str(binary(name, version))

    work = Path(tempfile.mkdtemp(prefix="kube-cluster-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    log_path = work / "log"
    log = open(log_path, "wb")  # noqa: SIM115 (the children write it for the cluster's life)
    try:
        token = secrets.token_hex(16)
        lines = [f"{token},admin,admin-uid,system:masters"]
        for name, group in extra_users:
            user_token = secrets.token_hex(16)
            (work / name).write_text(user_token)
            lines.append(f"{user_token},{name},{name}-uid,{group}")
        tokens = work / "tokens.csv"
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)
        subprocess.run(["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
                       check=True, capture_output=True)
        (work / "audit-policy.yaml").write_text(yaml.safe_dump(_AUDIT_POLICY))
        audit_log = work / "audit.jsonl"
        ep, pp, api = free_port(), free_port(), free_port()
        procs["etcd"] = subprocess.Popen(
            [bin_("etcd"), "--data-dir", str(work / "etcd"), "--unsafe-no-fsync",
             "--listen-client-urls", f"http://127.0.0.1:{ep}", "--advertise-client-urls", f"http://127.0.0.1:{ep}",
             "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls",
             f"http://127.0.0.1:{pp}", "--initial-cluster", f"default=http://127.0.0.1:{pp}"],
            stdout=log, stderr=log)
        procs["kube-apiserver"] = subprocess.Popen(
            [bin_("kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{ep}",
             "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
             "--endpoint-reconciler-type", "none", "--secure-port", str(api), "--cert-dir", str(work / "certs"),
             "--token-auth-file", str(tokens), "--authorization-mode", "Node,RBAC",
             "--service-account-issuer", "https://kubernetes.default.svc",
             "--service-account-key-file", str(work / "sa.pub"),
             "--service-account-signing-key-file", str(work / "sa.key"),
             "--service-cluster-ip-range", SERVICE_RANGE, "--allow-privileged=true",
             *([] if watch_cache else ["--watch-cache=false"]),
             *(["--audit-policy-file", str(work / "audit-policy.yaml"), "--audit-log-path", str(audit_log),
                "--audit-log-format", "json", "--audit-log-mode", "blocking"] if audit else [])],
            stdout=log, stderr=log)
        url = f"https://127.0.0.1:{api}"
        client = httpx.Client(base_url=url, verify=False, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        _wait_ready(client, procs, log_path)
        cluster = KubeCluster(url=url, token=token, work=work, client=client, kubeconfig=work / "admin.kubeconfig",
                              audit_log=audit_log, procs=procs)
        cluster.write_kubeconfig(cluster.kubeconfig, token)
        if prepare is not None:
            prepare(cluster)
        kc = str(cluster.kubeconfig)
        if controller_manager:
            procs["kube-controller-manager"] = subprocess.Popen(
                [bin_("kube-controller-manager"), "--kubeconfig", kc, "--bind-address", "127.0.0.1",
                 "--secure-port", "0", "--leader-elect=false",
                 "--controllers", "*,-node-ipam-controller,-kube-apiserver-serving-clustertrustbundle-publisher-controller",
                 "--service-account-private-key-file", str(work / "sa.key"),
                 "--root-ca-file", str(cluster.ca_file), "--concurrent-gc-syncs", "20"],
                stdout=log, stderr=log)
        if scheduler:
            procs["kube-scheduler"] = subprocess.Popen(
                [bin_("kube-scheduler"), "--kubeconfig", kc, "--bind-address", "127.0.0.1",
                 "--secure-port", "0", "--leader-elect=false", "--kube-api-qps", "500", "--kube-api-burst", "1000"],
                stdout=log, stderr=log)
        if kwok:
            stages = found / "kwok-stages.yaml"
            if not stages.exists():
                stages = found.parent / "kwok-stages.yaml"
            procs["kwok"] = subprocess.Popen(
                [bin_("kwok"), "--kubeconfig", kc, "--config", str(stages), "--manage-all-nodes=false",
                 "--manage-nodes-with-annotation-selector", f"{KWOK_NODE_ANNOTATION}=fake",
                 "--cidr", POD_CIDR, "--node-ip", NODE_IP],
                stdout=log, stderr=log)
        if controller_manager:
            # the default ServiceAccount appears once the controller-manager's token controllers run
            cluster.wait("the default ServiceAccount",
                         lambda: client.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200,
                         timeout=60)
        try:
            yield cluster
        finally:
            client.close()
    finally:
        # etcd last: a kube-apiserver whose etcd is gone hangs on its way out (until killed, 2 s later)
        for batch in ([n for n in reversed(procs) if n != "etcd"], [n for n in procs if n == "etcd"]):
            for name in batch:
                procs[name].terminate()
            deadline = time.monotonic() + 3  # nothing of a test cluster is worth a slow drain: its files go too
            for name in batch:
                try:
                    procs[name].wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    procs[name].kill()
                    procs[name].wait()
        log.close()
        if os.environ.get("TURBOK_KEEP_KUBE_LOGS"):
            print(f"kube cluster files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
