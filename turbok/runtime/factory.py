"""Choosing the pod runtime of this machine: gVisor, else bubblewrap, else nothing.

``make_pod_runtime(root)`` returns a ``GvisorPodRuntime`` when the runsc of
``TURBOK_RUNSC`` (default ``runsc``) is installed and answers ``--version``, on the
platform ``turbok.runtime.runsc.choose`` picks (``TURBOK_RUNSC_PLATFORM``; one log
line says binary, version and platform); otherwise a ``BubblewrapPodRuntime``
(logged as a warning; every ``PodSandboxStatus`` then says ``isolation=bubblewrap``,
which the Pod's conditions show); otherwise it raises ``NoIsolationAvailable``:
turbok never runs sandboxed code unisolated. A ``TURBOK_RUNSC`` that names another
binary must work: a ``SettingError`` rather than a quiet fall back to bubblewrap.
Called once by the control plane at start-up; tests point it at a missing runsc to
get the fallback.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from pathlib import Path

from turbok.runtime.cri import PodRuntime
from turbok.runtime.errors import NoIsolationAvailable
from turbok.runtime.images import ImageStore
from turbok.runtime.injection import Injection
from turbok.runtime.pods import LocalPodRuntime, PodNetworkLike
from turbok.runtime.runsc import DEFAULT_BINARY, RunscSettings, choose, other_binaries
from turbok.settings import SettingError

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
    runsc: str | None = None,
    platform: str | None = None,
    bwrap: str = "bwrap",
    injection: Injection | None = None,
) -> PodRuntime:
    """The node's ``PodRuntime``: gVisor, else bubblewrap (a warning), else ``NoIsolationAvailable``.

    ``network`` is the node's ``turbok.runtime.network.PodNetwork`` (None: pods get a private
    loopback only); ``legacy_root`` the old runtime's root, whose sandboxes a pod of the same id
    takes over (their disks: nothing stored is lost); ``injection`` what goes into a Pod's
    ``agent_container`` (``turbok.runtime.injection``: the sandboxd agent); ``runsc`` and ``platform``
    the gVisor binary and platform (None: ``TURBOK_RUNSC``, ``TURBOK_RUNSC_PLATFORM``)."""
    from turbok.runtime.pods_bubblewrap import BubblewrapPodRuntime
    from turbok.runtime.pods_gvisor import GvisorPodRuntime

    net = network
    runtime: LocalPodRuntime
    wanted = RunscSettings.from_env(binary=runsc, platform=platform)  # a bad value stops the start here
    if (path := tool_works(wanted.binary)) is not None:
        chosen = choose(dataclasses.replace(wanted, binary=path))
        log.info("%s", chosen.describe())
        runtime = GvisorPodRuntime(root, images, runsc=chosen, network=net, legacy_root=legacy_root)
        if others := other_binaries(runtime.state_dir, chosen.path):
            log.warning("%d sandbox(es) under %s run on another runsc (%s): this one cannot drive them; stop "
                        "them with that TURBOK_RUNSC first (turbok down --stop-sandboxes)", len(others), root,
                        ", ".join(sorted(set(others.values()))))
        runtime.injection = injection
        return runtime
    if runsc is None and wanted.binary != DEFAULT_BINARY:
        raise SettingError(f"TURBOK_RUNSC={wanted.binary!r}: not found, or `--version` fails; unset it to use "
                           "the installed runsc")
    if (path := tool_works(bwrap)) is not None and shutil.which("nsenter"):
        log.warning(
            "runsc (gVisor) is not usable at %r: pods run under bubblewrap, which shares the host kernel",
            wanted.binary)
        runtime = BubblewrapPodRuntime(root, images, bwrap=path, network=net, legacy_root=legacy_root)
        runtime.injection = injection
        return runtime
    raise NoIsolationAvailable(
        f"neither runsc ({wanted.binary!r}) nor bubblewrap ({bwrap!r}) works on this machine, and turbok never "
        "runs sandboxed code unisolated: install gVisor (apt-get install -y runsc) or bubblewrap"
    )

