"""The real Kubernetes binaries of ../shared/kube, unpacked where tests may write.

``kube_assets_dir()`` returns an envtest-style directory laid out like
``unpack.sh``'s output (``DIR/<version>/kube-apiserver``...). It reuses
``$XDG_CACHE_HOME/turbok-kube-assets`` (``~/.cache/...``) when every binary is
already there, and otherwise runs ``../shared/kube/unpack.sh`` into it (about
16 s the first time; ``../shared`` itself is read-only in CI and is never
written). When ``../shared/kube`` does not exist, the tests that need these
binaries are skipped with that reason. Shared by tests/integration/upgrade and
tests/integration/conformance.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SHARED_KUBE = REPO.parent / "shared" / "kube"
VERSIONS = ("1.35.4", "1.36.3", "1.37.2")
SKIP_REASON = f"needs the Kubernetes binaries of {SHARED_KUBE} (kube-apiserver 1.35.4/1.36.3/1.37.2, etcd), which this machine lacks"


def _dest() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "turbok-kube-assets"


def _complete(dest: Path) -> bool:
    names = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
    return all(os.access(dest / v / n, os.X_OK) for v in VERSIONS for n in names)


def kube_assets_dir() -> Path:
    """The unpacked binaries; ``pytest.skip`` when ../shared/kube is absent."""
    if not (SHARED_KUBE / "unpack.sh").is_file():
        pytest.skip(SKIP_REASON)
    dest = _dest()
    if not _complete(dest):
        out = subprocess.run(["sh", str(SHARED_KUBE / "unpack.sh"), str(dest)], capture_output=True, text=True,
                             timeout=600, check=False)
        if out.returncode != 0:
            pytest.fail(f"unpack.sh failed: {out.stderr.strip()}")
    return dest
