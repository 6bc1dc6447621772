"""Choosing the pod runtime of this machine: gVisor, else bubblewrap, else nothing.

``make_pod_runtime(root)`` returns a ``GvisorPodRuntime`` when ``runsc`` is installed
and answers ``--version``; otherwise a ``BubblewrapPodRuntime`` (logged as a
warning; every ``PodSandboxStatus`` then says ``isolation=bubblewrap``, which the
Pod's conditions show); otherwise it raises ``NoIsolationAvailable``: turbok
never runs sandboxed code unisolated. Called once by the control plane at
start-up; tests point it at a missing runsc to get the fallback.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from turbok.runtime.cri import PodRuntime
from turbok.runtime.errors import NoIsolationAvailable
from turbok.runtime.images import ImageStore
from turbok.runtime.injection import Injection
from turbok.runtime.pods import LocalPodRuntime, PodNetworkLike

__all__ = ["make_pod_runtime", "tool_works"]

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


def make_pod_runtime(
    root: Path,
    images: ImageStore | None = None,
    *,
    network: PodNetworkLike | None = None,
    legacy_root: Path | None = None,
    runsc: str = "runsc",
    bwrap: str = "bwrap",
    injection: Injection | None = None,
) -> PodRuntime:
    """The node's ``PodRuntime``: gVisor, else bubblewrap (a warning), else ``NoIsolationAvailable``.

    ``network`` is the node's ``turbok.runtime.network.PodNetwork`` (None: pods get a private
    loopback only); ``legacy_root`` the old runtime's root, whose sandboxes a pod of the same id
    takes over (their disks: nothing stored is lost); ``injection`` what goes into a Pod's
    ``agent_container`` (``turbok.runtime.injection``: the sandboxd agent)."""
    from turbok.runtime.pods_bubblewrap import BubblewrapPodRuntime
    from turbok.runtime.pods_gvisor import GvisorPodRuntime

    net = network
    runtime: LocalPodRuntime
    if (path := tool_works(runsc)) is not None:
        runtime = GvisorPodRuntime(root, images, runsc=path, network=net, legacy_root=legacy_root)
        runtime.injection = injection
        return runtime
    if (path := tool_works(bwrap)) is not None and shutil.which("nsenter"):
        log.warning(
            "runsc (gVisor) is not usable at %r: pods run under bubblewrap, which shares the host kernel", runsc
        )
        runtime = BubblewrapPodRuntime(root, images, bwrap=path, network=net, legacy_root=legacy_root)
        runtime.injection = injection
        return runtime
    raise NoIsolationAvailable(
        f"neither runsc ({runsc!r}) nor bubblewrap ({bwrap!r}) works on this machine, and turbok never "
        "runs sandboxed code unisolated: install gVisor (apt-get install -y runsc) or bubblewrap"
    )

