"""Choosing the runtime of this machine: gVisor, else bubblewrap, else nothing.

``make_runtime(root)`` returns a ``RunscRuntime`` when ``runsc`` is installed
and answers ``--version``; otherwise a ``BubblewrapRuntime`` (logged as a
warning; every ``RuntimeState`` then says ``isolation=bubblewrap``, which the
Sandbox status shows); otherwise it raises ``NoIsolationAvailable``: turbok
never runs sandboxed code unisolated. Called once by the control plane at
start-up; tests point it at a missing runsc to get the fallback.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from turbok.runtime.base import Runtime
from turbok.runtime.errors import NoIsolationAvailable
from turbok.runtime.images import ImageStore

__all__ = ["make_runtime", "tool_works"]

log = logging.getLogger("turbok.runtime")


def tool_works(name: str) -> str | None:
    """The tool's path if it is installed and ``NAME --version`` succeeds, else None."""
    path = shutil.which(name)
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--version"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if done.returncode == 0 else None


def make_runtime(
    root: Path,
    images: ImageStore | None = None,
    *,
    runsc: str = "runsc",
    bwrap: str = "bwrap",
) -> Runtime:
    from turbok.runtime.bubblewrap import BubblewrapRuntime
    from turbok.runtime.gvisor import RunscRuntime

    if (path := tool_works(runsc)) is not None:
        return RunscRuntime(root, images, runsc=path)
    if (path := tool_works(bwrap)) is not None and shutil.which("nsenter"):
        log.warning(
            "runsc (gVisor) is not usable at %r: sandboxes run under bubblewrap, which shares the host kernel",
            runsc,
        )
        return BubblewrapRuntime(root, images, bwrap=path)
    raise NoIsolationAvailable(
        f"neither runsc ({runsc!r}) nor bubblewrap ({bwrap!r}) works on this machine, and turbok never "
        "runs sandboxed code unisolated: install gVisor (apt-get install -y runsc) or bubblewrap"
    )
