"""Where turbok keeps its state on this machine.

``$TURBOK_HOME`` or ``~/.turbok``: the SQLite store, the kubeconfig with the
API token, the runtime's sandbox directories, images, logs and the pid file of
``turbok up``. Only paths live here; who writes what is said next to each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Home", "home"]


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def store(self) -> Path:
        """SQLite database of the embedded control plane (apiserver, store)."""
        return self.root / "store.db"

    @property
    def kubeconfig(self) -> Path:
        """Kubeconfig with the bearer token, written by ``turbok serve``."""
        return self.root / "kubeconfig"

    @property
    def endpoints(self) -> Path:
        """JSON with the api and router URLs of the running control plane."""
        return self.root / "endpoints.json"

    @property
    def pidfile(self) -> Path:
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
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self


def home() -> Home:
    """The home of this user, honouring ``$TURBOK_HOME``."""
    root = os.environ.get("TURBOK_HOME") or os.path.join(os.path.expanduser("~"), ".turbok")
    return Home(Path(root).absolute())
