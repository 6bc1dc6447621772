"""Where turbok keeps its state on this machine.

``$TURBOK_HOME`` or ``~/.turbok``: the SQLite store, the kubeconfig with the
API token, the runtime's sandbox directories, images, logs and the lock (pid)
file of the control plane. Only paths live here; who writes what is said next
to each.

The home holds secrets (tokens, keys, claim env values in the store), so it is
private to its owner: ``ensure`` makes it 0700 and every file it knows of 0600,
on every start, also for homes made by older versions that were 0755/0644.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PRIVATE_FILES", "Home", "home"]

#: Files directly in the home that only its owner may read (0600): secrets, or text that names them.
PRIVATE_FILES = (
    "store.db", "store.db-wal", "store.db-shm", "token", "router-token", "kubeconfig", "endpoints.json",
    "ports.json", "turbok.log", "turbok.pid",
)


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def store(self) -> Path:
        """SQLite database of the embedded control plane (apiserver, store)."""
        return self.root / "store.db"

    @property
    def kubeconfig(self) -> Path:
        """Kubeconfig with the API token and the router's URL and token, written by ``turbok serve``."""
        return self.root / "kubeconfig"

    @property
    def token(self) -> Path:
        """The API's bearer token (admin), made once per home by the control plane."""
        return self.root / "token"

    @property
    def router_token(self) -> Path:
        """The router's own bearer token, made once per home; it grants no access to the API."""
        return self.root / "router-token"

    @property
    def endpoints(self) -> Path:
        """JSON with the api and router URLs (no token) and the pid of the running control plane."""
        return self.root / "endpoints.json"

    @property
    def ports(self) -> Path:
        """JSON with the api and router ports, chosen once and kept across restarts."""
        return self.root / "ports.json"

    @property
    def pidfile(self) -> Path:
        """The home's lock: the control plane holds an flock on it for its life and writes its pid in it."""
        return self.root / "turbok.pid"

    @property
    def log(self) -> Path:
        return self.root / "turbok.log"

    @property
    def sandboxes(self) -> Path:
        """One directory per sandbox: bundle, writable layer, work directory."""
        return self.root / "sandboxes"

    @property
    def images(self) -> Path:
        """Unpacked image root filesystems (the built-in base image among them)."""
        return self.root / "images"

    def ensure(self) -> Home:
        """Create the home if needed and make it private: the home 0700, its known files 0600."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)  # also a home made 0755 by an older version
        for name in PRIVATE_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).chmod(0o600)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "pki").chmod(0o700)
        return self

    def create_private(self, path: Path) -> None:
        """Create ``path`` empty with mode 0600 if it is missing (so a writer that creates files 0644,
        like SQLite, inherits a private mode)."""
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def home() -> Home:
    """The home of this user, honouring ``$TURBOK_HOME``."""
    root = os.environ.get("TURBOK_HOME") or os.path.join(os.path.expanduser("~"), ".turbok")
    return Home(Path(root).absolute())
