"""Producing the credentials a kubeconfig names: exec plugins, the httpx auth, client certificates.

Internal to ``turbok.client``: ``kubeconfig.ClusterConfig`` builds on these and
re-exports ``ExecPlugin``; import them from there. Nothing here reads a
kubeconfig. Every failure is a ``CredentialError`` or ``TlsConfigError``.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from turbok.client.errors import CredentialError, TlsConfigError

__all__ = ["CredentialAuth", "ExecPlugin", "load_cert_chain"]

_EXEC_TIMEOUT_S = 60.0
_EXEC_DEFAULT_TTL_S = 300.0  # a credential without expirationTimestamp is asked for again after this
_EXEC_EARLY_S = 30.0  # refresh this long before the expiry, so no request carries a credential about to die


@dataclass
class ExecPlugin:
    """A client-go credential plugin: a command that prints an ``ExecCredential``.

    ``credential()`` runs it (non-interactively, in ``base_dir``) and caches the
    ``status`` until ``expirationTimestamp`` (or five minutes); ``invalidate()``
    forgets it, which the httpx auth does when the server answers 401.
    """

    command: str
    args: list[str]
    env: dict[str, str]
    api_version: str
    base_dir: Path
    install_hint: str = ""
    cluster: dict[str, Any] = field(default_factory=dict)  # ExecCredential spec.cluster
    _cached: dict[str, Any] | None = field(default=None, repr=False)
    _expires: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def credential(self) -> dict[str, Any]:
        """``status`` of the ExecCredential (``token``, or client certificate data)."""
        with self._lock:
            if self._cached is not None and time.time() < self._expires - _EXEC_EARLY_S:
                return self._cached
            status = self._run()
            self._cached = status
            expiry = status.get("expirationTimestamp")
            self._expires = _parse_time(str(expiry)) if expiry else time.time() + _EXEC_DEFAULT_TTL_S
            return status

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def _run(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster:
            spec["cluster"] = self.cluster
        request = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(request)}
        name = f"credential plugin {self.command!r}"
        try:
            done = subprocess.run([self.command, *self.args], env=env, cwd=self.base_dir, capture_output=True,
                                  text=True, timeout=_EXEC_TIMEOUT_S, check=False)
        except (FileNotFoundError, PermissionError) as e:
            hint = f": {self.install_hint.strip()}" if self.install_hint.strip() else ""
            raise CredentialError(f"{name} is not installed or not on PATH{hint}") from e
        except subprocess.TimeoutExpired as e:
            raise CredentialError(f"{name} did not answer within {_EXEC_TIMEOUT_S:.0f} s") from e
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise CredentialError(f"{name} failed (exit {done.returncode}): {last}")
        try:
            status = json.loads(done.stdout)["status"]
            if not isinstance(status, dict):
                raise TypeError("status is not an object")
        except (ValueError, KeyError, TypeError) as e:
            raise CredentialError(f"{name} did not print an ExecCredential with a status") from e
        return status


class CredentialAuth(httpx.Auth):
    """Sets ``Authorization`` on every request from ``authorization()``, so token files
    and exec credentials stay fresh; after a 401, asks ``plugin`` again and retries once
    with what it gives, as client-go does."""

    def __init__(self, authorization: Callable[[], str | None], plugin: ExecPlugin | None = None) -> None:
        self._authorization = authorization
        self._plugin = plugin

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sent = self._authorization()
        if sent:
            request.headers["Authorization"] = sent
        response = yield request
        if response.status_code == 401 and self._plugin is not None:
            self._plugin.invalidate()
            fresh = self._authorization()
            if fresh and fresh != sent:
                request.headers["Authorization"] = fresh
                yield request


def load_cert_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Load a PEM client certificate and key (``key`` may be empty when ``cert`` holds both) into ``ctx``."""
    # ssl loads certificates from files only: they live in a private directory for the call.
    with tempfile.TemporaryDirectory(prefix="turbok-kubeconfig-") as tmp:
        cert_path, key_path = Path(tmp, "client.crt"), Path(tmp, "client.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ctx.load_cert_chain(str(cert_path), str(key_path) if key else None)
        except ssl.SSLError as e:
            raise TlsConfigError(f"the client certificate or key in the kubeconfig is not usable: {e}") from e


def _parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time() + _EXEC_DEFAULT_TTL_S
