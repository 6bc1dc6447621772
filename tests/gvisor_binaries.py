"""The runsc binaries tests run sandboxes with: Debian's package and the current one of ../shared/gvisor.

Tests that build a pod runtime (``GvisorPodRuntime(...)``, ``make_pod_runtime``, ``turbok serve``) take
their runsc from ``TURBOK_RUNSC`` like a real start does, so one run covers one binary. The pytest option
``--runsc`` sets it for the whole run, subprocesses included::

    pytest --runsc=default ...   # TURBOK_RUNSC as it is (unset: Debian's /usr/bin/runsc)
    pytest --runsc=shared ...    # ../shared/gvisor's runsc, unpacked once into the cache below
    pytest --runsc=/path/runsc   # any other

``shared_runsc()`` unpacks ``../shared/gvisor/runsc.xz`` with its ``unpack.sh`` into
``$XDG_CACHE_HOME/turbok-gvisor`` (``~/.cache/...``; ../shared is read-only and never written) the first
time, checking its SHA-256; ``None`` when ../shared/gvisor does not exist (``SHARED_MISSING`` says so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_GVISOR = REPO.parent / "shared" / "gvisor"
SHARED_MISSING = f"needs the current runsc of {SHARED_GVISOR / 'unpack.sh'}, which does not exist here"
DEBIAN_RUNSC = "/usr/bin/runsc"

_lock = threading.Lock()


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "turbok-gvisor"


def shared_runsc() -> Path | None:
    """The unpacked current runsc, or None when ../shared/gvisor is absent; RuntimeError if unpacking fails."""
    unpack = SHARED_GVISOR / "unpack.sh"
    if not unpack.is_file():
        return None
    with _lock:
        done = subprocess.run(["sh", str(unpack), str(_cache())], capture_output=True, text=True, timeout=300,
                              check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{unpack} failed: {done.stderr.strip()}")
    return Path(done.stdout.strip())


def debian_runsc() -> str | None:
    """Debian's packaged runsc (the default a fresh machine installs), or None."""
    return DEBIAN_RUNSC if os.access(DEBIAN_RUNSC, os.X_OK) else shutil.which("runsc")


def resolve(choice: str) -> str | None:
    """``--runsc``'s value as a ``TURBOK_RUNSC`` (None: leave it as it is)."""
    if choice == "default":
        return None
    if choice == "shared":
        found = shared_runsc()
        if found is None:
            raise RuntimeError(f"--runsc=shared {SHARED_MISSING}")
        return str(found)
    return choice
