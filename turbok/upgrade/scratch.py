"""A scratch control plane on loopback: etcd and the user's own kube-apiserver, controllers on demand.

It exists so a plan can be tried on real binaries before a real cluster sees
it: one etcd keeps its data while kube-apiserver binaries are swapped and
``--emulated-version`` changes, exactly as in a real upgrade.

Call order (``ScratchControlPlane`` is a context manager; leaving it stops every
process and deletes the scratch directory):

1. ``start_etcd()`` once.
2. ``start_apiserver(binary, emulated=...)``: stops the running one first, starts
   the new one on the same port and waits for ``/readyz``. A binary that refuses
   its flags (an emulated version outside its range) raises ``ScratchError`` with
   its last log lines, and nothing keeps running in its place.
3. ``client()`` talks to it as the admin through the project's one REST client
   (``turbok.client.api.Api``), verifying the self-signed serving certificate
   kube-apiserver wrote into the scratch directory (it is reused by every binary
   started on it, as is ``kubeconfig``, which carries it).
4. ``run_controllers(kcm, scheduler, emulated=...)`` starts both against it, waits
   for their ``/healthz`` and stops them again (they have no state of their own);
   ``start_controller_manager(kcm)`` keeps one running until ``close`` (garbage
   collection and namespace deletion, for tests that need them).

Every address is 127.0.0.1; Services get ClusterIPs from 127.96.0.0/16. The
token lives in 0600 files and is never logged. Health probes (etcd's
``/health``, kube-apiserver's ``/readyz``, the controllers' ``/healthz``) go
through ``Api`` too, each TLS server verified against the self-signed
certificate it wrote at its start. etcd runs with ``--unsafe-no-fsync``: the
data is thrown away afterwards. Called by the rehearsal and by the tests that
read facts off the binaries (tests/integration/upgrade); other tests start
their clusters with tests/kube_cluster.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from turbok.api import status as st
from turbok.client.api import Api, status_code
from turbok.client.errors import ConnectionFailed
from turbok.client.kubeconfig import ClusterConfig
from turbok.upgrade.errors import ScratchError
from turbok.upgrade.versions import Version

__all__ = ["ScratchControlPlane", "free_port"]

SERVICE_RANGE = "127.96.0.0/16"
_READY_TIMEOUT_S = 90.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _certificate(path: Path) -> bytes | None:
    """A PEM file a component writes at its start; None while absent or still being written."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return None
    return pem if pem.rstrip().endswith(b"-----END CERTIFICATE-----") else None


class _Process:
    """One child process with its log file; started in its own session so a terminal's Ctrl-C reaches us first."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def tail(self, lines: int = 3) -> str:
        """The last log lines that say something (errors first), for a one-line failure message."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [ln for ln in text if ln.startswith(("E", "F", "Error")) or "error" in ln.lower()]
        picked = (errors or text)[-lines:]
        return " | ".join(ln.strip()[:300] for ln in picked)


class ScratchControlPlane:
    """etcd plus one kube-apiserver at a time, in a private temporary directory."""

    def __init__(self, etcd: Path, *, workdir: Path | None = None) -> None:
        self.etcd_binary = etcd
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="turbok-scratch-")) if workdir is None else workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(24)
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._kept: list[_Process] = []
        self._etcd_url = ""
        self.apiserver_binary: Path | None = None
        self._write_credentials()

    # --- lifecycle ---

    def __enter__(self) -> ScratchControlPlane:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process; delete the scratch directory if this object made it."""
        for p in (*self._kept, self._apiserver, self._etcd):
            if p is not None:
                p.stop()
        self._apiserver = self._etcd = None
        self._kept = []
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _write_credentials(self) -> None:
        from cryptography.hazmat.primitives import serialization  # only when a scratch control plane is made
        from cryptography.hazmat.primitives.asymmetric import rsa

        tokens = self.dir / "tokens.csv"
        fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.token},admin,admin-uid,system:masters\n")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        fd = os.open(self.dir / "sa.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        (self.dir / "sa.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def _write_kubeconfig(self, ca: Path) -> None:
        kubeconfig = (
            "apiVersion: v1\nkind: Config\ncurrent-context: scratch\n"
            f"clusters:\n- name: scratch\n  cluster:\n    server: {self.server}\n    certificate-authority: {ca}\n"
            f"users:\n- name: admin\n  user:\n    token: {self.token}\n"
            "contexts:\n- name: scratch\n  context:\n    cluster: scratch\n    user: admin\n"
        )
        fd = os.open(self.dir / "kubeconfig", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(kubeconfig)

    @property
    def kubeconfig(self) -> Path:
        """An admin kubeconfig for this control plane (0600, token inside), once kube-apiserver has started."""
        return self.dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        """kube-apiserver's self-signed serving certificate (and its CA), written at its first start."""
        return self.dir / "certs" / "apiserver.crt"

    def config(self) -> ClusterConfig | None:
        """The admin's ``ClusterConfig``; None until kube-apiserver has written its serving certificate."""
        pem = _certificate(self.ca_file)
        if pem is None:
            return None
        return ClusterConfig(server=self.server, context="scratch", cluster_name="scratch", user_name="admin",
                             token=self.token, ca_pem=pem, source=str(self.dir))

    # --- etcd ---

    def start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self._etcd_url = f"http://127.0.0.1:{client}"
        self._etcd = _Process("etcd", [
            str(self.etcd_binary), "--data-dir", str(self.dir / "etcd"), "--unsafe-no-fsync",
            "--listen-client-urls", self._etcd_url, "--advertise-client-urls", self._etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}", "--initial-cluster", f"default=http://127.0.0.1:{peer}",
        ], self.dir / "etcd.log")
        url = self._etcd_url
        self._wait(self._etcd, "/health", lambda: ClusterConfig(server=url))

    # --- kube-apiserver ---

    def apiserver_args(self, binary: Path, *, emulated: Version | None = None,
                       extra: Sequence[str] = ()) -> list[str]:
        d = self.dir
        args = [
            str(binary), "--etcd-servers", self._etcd_url, "--bind-address", "127.0.0.1",
            "--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none",
            "--secure-port", str(self.port), "--cert-dir", str(d / "certs"), "--token-auth-file", str(d / "tokens.csv"),
            "--authorization-mode", "Node,RBAC", "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(d / "sa.pub"), "--service-account-signing-key-file", str(d / "sa.key"),
            "--service-cluster-ip-range", SERVICE_RANGE, "--allow-privileged=true",
        ]
        if emulated is not None:
            args.append(f"--emulated-version={emulated}")
        return [*args, *extra]

    def start_apiserver(self, binary: Path, *, emulated: Version | None = None, extra: Sequence[str] = ()) -> None:
        """Replace the running kube-apiserver (if any) by ``binary``; wait until ``/readyz`` answers ok."""
        if self._etcd is None:
            raise ScratchError("start etcd before kube-apiserver")
        self.stop_apiserver()
        self.apiserver_binary = binary
        name = f"kube-apiserver {binary.parent.name}" + (f" --emulated-version={emulated}" if emulated else "")
        log = self.dir / "kube-apiserver.log"
        log.write_text("")  # a fresh log per start, so a failure names this start's error
        self._apiserver = _Process(name, self.apiserver_args(binary, emulated=emulated, extra=extra), log)
        self._wait(self._apiserver, "/readyz", self.config)
        self._write_kubeconfig(self.ca_file)

    def stop_apiserver(self) -> None:
        if self._apiserver is not None:
            self._apiserver.stop()
            self._apiserver = None

    @property
    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.alive()

    def client(self, timeout: float = 30.0) -> Api:
        """The admin's ``Api`` for the running kube-apiserver (the caller closes it)."""
        config = self.config()
        if config is None or not self.apiserver_running:
            raise ScratchError("kube-apiserver is not running: start it before asking for a client")
        return Api(config, timeout=timeout, user_agent="turbok-scratch")

    # --- controllers ---

    def run_controllers(self, controller_manager: Path | None, scheduler: Path | None, *,
                        emulated: Version | None = None) -> list[str]:
        """Start kube-controller-manager and kube-scheduler, wait for their ``/healthz``, stop them.

        Returns what each did (``"kube-scheduler 1.37.2: healthy"``); raises
        ``ScratchError`` when one exits or never becomes healthy.
        """
        out: list[str] = []
        for name, binary in (("kube-controller-manager", controller_manager), ("kube-scheduler", scheduler)):
            if binary is None:
                continue
            proc = self._controller(name, binary, emulated)
            try:
                out.append(f"{name} {binary.parent.name}: healthy")
            finally:
                proc.stop()
        return out

    def start_controller_manager(self, binary: Path) -> None:
        """Keep a kube-controller-manager running (until ``close``), once it is healthy."""
        self._kept.append(self._controller("kube-controller-manager", binary, None))

    def _controller(self, name: str, binary: Path, emulated: Version | None) -> _Process:
        port = free_port()
        certs = self.dir / f"{name}-certs"  # its self-signed serving certificate, for the probe to verify
        args = [str(binary), "--kubeconfig", str(self.kubeconfig), "--bind-address", "127.0.0.1",
                "--secure-port", str(port), "--cert-dir", str(certs), "--leader-elect=false",
                "--authentication-kubeconfig", str(self.kubeconfig),
                "--authorization-kubeconfig", str(self.kubeconfig)]
        if name == "kube-controller-manager":
            args += ["--controllers", "*,-node-ipam-controller,-kube-apiserver-serving-clustertrustbundle-publisher-controller",
                     "--service-account-private-key-file", str(self.dir / "sa.key"),
                     "--root-ca-file", str(self.dir / "certs" / "apiserver.crt")]
        if emulated is not None:
            args.append(f"--emulated-version={emulated}")
        proc = _Process(name, args, self.dir / f"{name}.log")

        def serving() -> ClusterConfig | None:
            pem = _certificate(certs / f"{name}.crt")
            return None if pem is None else ClusterConfig(server=f"https://127.0.0.1:{port}", ca_pem=pem)

        self._wait(proc, "/healthz", serving)
        return proc

    # --- waiting ---

    def _wait(self, proc: _Process, path: str, config: Callable[[], ClusterConfig | None]) -> None:
        """Until GET ``path`` answers 2xx on the server of ``config()`` (None: its certificate is not written yet)."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        last = "no serving certificate"
        api: Api | None = None
        try:
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise ScratchError(f"{proc.name} exited with code {proc.proc.returncode}: {proc.tail()}")
                if api is None and (ready := config()) is not None:
                    api = Api(ready, timeout=5.0, user_agent="turbok-scratch")
                if api is not None:
                    try:
                        api.send("GET", path, accept="*/*")
                        return
                    except st.ApiError as e:
                        last = str(status_code(e))
                    except ConnectionFailed as e:
                        last = str(e)
                        api.close()  # its certificate may have been read before it was whole: read it again
                        api = None
                time.sleep(0.2)
        finally:
            if api is not None:
                api.close()
        proc.stop()
        raise ScratchError(f"{proc.name} was not ready within {_READY_TIMEOUT_S:.0f} s (last answer {last}): {proc.tail()}")

    def logs(self) -> Iterator[Path]:
        """The log files of every process started so far."""
        return iter(sorted(self.dir.glob("*.log")))
