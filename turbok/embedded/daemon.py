"""``turbok up``/``down``/``status``: the control plane as a background process.

``up`` starts ``turbok serve`` in a new session with its output in
``<home>/turbok.log`` (0600), then waits until ``endpoints.json`` names it and
``/readyz`` answers. Which process serves a home is whoever holds its lock
(``embedded.lock``), so ``status`` and ``down`` see a ``turbok serve`` started by
hand as well as one started by ``up``, and a second control plane on one home
refuses to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx

from turbok.embedded.lock import SERVE, STOP_SANDBOXES, HomeLock, HomeLocked, holder
from turbok.errors import TurbokError
from turbok.home import Home
from turbok.printable import printable

__all__ = ["DaemonError", "down", "status", "stop_sandboxes", "up"]


class DaemonError(TurbokError):
    """The background control plane could not be started or stopped."""


def _endpoints(home: Home) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(home.endpoints.read_text())
        return data
    except (OSError, ValueError):
        return None


def _ready(api: str, home: Home) -> bool:
    try:
        ca = home.root / "pki" / "ca.crt"
        return httpx.get(f"{api}/readyz", timeout=1.0, verify=str(ca) if ca.exists() else True).status_code == 200
    except httpx.HTTPError:
        return False


def status(home: Home) -> dict[str, Any]:
    """Whether a control plane serves ``home``, and where: api and router URLs (no token), its pid."""
    who = holder(home)
    pid = who.pid if who is not None and who.role == SERVE else None
    ep = _endpoints(home) if pid else None
    running = bool(ep and ep.get("pid") == pid and _ready(ep["api"], home))
    return {"running": running, "home": str(home.root), "pid": pid if running else None,
            "api": ep["api"] if running and ep else None, "router": ep["router"] if running and ep else None,
            "kubeconfig": str(home.kubeconfig)}


def _last_line(path: Path) -> str:
    """The last line of a log (read from its tail only: the log is appended to across runs)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return printable(lines[-1].strip())[:300] if lines else ""


def _serves_on(current: dict[str, Any], port: int | None, router_port: int | None) -> bool:
    return all(want is None or urllib.parse.urlsplit(current[key]).port == want
               for key, want in (("api", port), ("router", router_port)))


def up(home: Home, *, timeout: float = 60.0, port: int | None = None,
       router_port: int | None = None, simulated_gpus: int = 0) -> dict[str, Any]:
    """Start ``turbok serve`` in the background (ports, ``--simulated-gpus``: as ``serve``'s options) unless one
    serves already."""
    home.ensure()
    current = status(home)
    if current["running"] and _serves_on(current, port, router_port):
        return current
    if (who := holder(home)) is not None:
        if current["running"]:
            raise DaemonError(f"turbok (pid {who.pid}) already serves {home.root} on other ports; "
                              "to move them, `turbok down` first")
        if who.role != SERVE:
            raise DaemonError(f"turbok (pid {who.pid or 'unknown'}) is stopping the sandboxes of {home.root}; "
                              "try again when it is done")
        raise DaemonError(f"a turbok process (pid {who.pid or 'unknown'}) holds {home.root} but does not answer; "
                          f"stop it with `turbok down` or `kill {who.pid}`")
    home.endpoints.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "turbok", "serve"]
    if port is not None:
        argv += ["--port", str(port)]
    if router_port is not None:
        argv += ["--router-port", str(router_port)]
    if simulated_gpus:
        argv += ["--simulated-gpus", str(simulated_gpus)]
    fd = os.open(home.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:  # the child keeps its own copy of the descriptor
        os.fchmod(fd, 0o600)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=os.environ.copy())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            reason = _last_line(home.log)
            raise DaemonError(f"the control plane exited with code {proc.returncode}"
                              f"{': ' + reason if reason else ''} (see {home.log})")
        current = status(home)
        if current["running"] and current["pid"] == proc.pid:
            return current
        time.sleep(0.05)
    raise DaemonError(f"the control plane did not answer within {timeout:.0f}s; see {home.log}")


def down(home: Home, *, timeout: float = 30.0) -> bool:
    """Stop the control plane serving ``home`` (SIGTERM, then SIGKILL after ``timeout``); False if none did.

    Returns once the home's lock is free: the process is gone, not merely signalled.
    """
    who = holder(home)
    if who is None:
        return False
    if who.role != SERVE:  # another `turbok down --stop-sandboxes`: not a control plane, let it finish
        raise DaemonError(f"turbok (pid {who.pid or 'unknown'}) is stopping the sandboxes of {home.root}; "
                          "try again when it is done")
    if not who.pid:
        raise DaemonError(f"a turbok process holds {home.root} but has not written its pid yet; try again")
    pid = who.pid
    _signal(pid, signal.SIGTERM)
    if not _released(home, pid, timeout):
        _signal(pid, signal.SIGKILL)
        if not _released(home, pid, 10.0):  # the kernel frees the lock as the process dies
            raise DaemonError(f"turbok (pid {pid}) still holds {home.root} after SIGKILL")
    if (_endpoints(home) or {}).get("pid") == pid:  # a killed process could not remove its own
        home.endpoints.unlink(missing_ok=True)
    return True


def _released(home: Home, pid: int, timeout: float) -> bool:
    """Wait until ``pid`` no longer holds ``home`` (another process may hold it by then)."""
    deadline = time.monotonic() + timeout
    while (who := holder(home)) is not None and who.pid == pid:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited between the probe and the signal
        os.kill(pid, sig)


def stop_sandboxes(home: Home, *, remove: bool = False) -> int:
    """Stop every runtime sandbox of this home (keeping disks unless ``remove``); returns how many.

    Hibernated sandboxes are left as they are (their memory stays saved) unless ``remove``.

    For ``turbok down --stop-sandboxes`` and test teardown: with the control plane down
    nothing else will, and a detached gVisor sandbox runs until told to stop. Runs under the
    home's lock, so never beside a live control plane (which would restart what it stops):
    ``DaemonError`` if one holds the home, and a ``turbok serve`` started meanwhile waits its turn
    by failing with the pid of this process.
    """
    if not home.sandboxes.exists() and not (home.root / "pods").exists():
        return 0
    try:
        lock = HomeLock.acquire(home, role=STOP_SANDBOXES)
    except HomeLocked as e:
        if e.holder.role != SERVE:
            raise DaemonError(f"not stopping sandboxes: turbok (pid {e.pid or 'unknown'}) is already stopping "
                              f"those of {home.root}") from e
        raise DaemonError(f"not stopping sandboxes: a control plane (pid {e.pid or 'unknown'}) serves "
                          f"{home.root} and would restart them; stop it first with `turbok down`") from e
    with lock:
        wait_for_boots(home.root)
        return _stop_all(home, remove=remove)


#: runsc commands that make a sandbox: one still running when its control plane stopped registers the sandbox
#: after a stop looked for it, which then runs on, unseen, holding its pod's disk.
_BOOTS = frozenset({b"run", b"create", b"start", b"restore"})


def boots_in_flight(root: Path) -> list[int]:
    """Pids of runsc commands booting a sandbox whose state is under ``root`` (``--root=...`` below it)."""
    from turbok.runtime.runsc import command_lines

    prefixes = tuple({f"--root={root.absolute()}/".encode(), f"--root={root.resolve()}/".encode()})
    return [pid for pid, argv in command_lines() if any(a.startswith(prefixes) for a in argv) and _BOOTS.intersection(argv)]


def wait_for_boots(root: Path, timeout: float = 30.0) -> None:
    """Let boots a stopped control plane left in flight finish (a boot takes well under a second), so that
    stopping the home's sandboxes sees them; after ``timeout`` go on without them."""
    deadline = time.monotonic() + timeout
    while boots_in_flight(root) and time.monotonic() < deadline:
        time.sleep(0.05)


def _pod_network(home: Home) -> Any:
    """The pods' network, for ``remove`` to take their namespaces and addresses away (None if unusable)."""
    from turbok.runtime.errors import RuntimeError_
    from turbok.runtime.network import PodNetwork

    try:
        return PodNetwork.from_env(home.root / "network")
    except RuntimeError_:
        return None


def _stop_all(home: Home, *, remove: bool) -> int:
    import asyncio

    from turbok.node.storage import unmount_volumes
    from turbok.runtime.factory import make_pod_runtime
    from turbok.runtime.legacy import LegacySandboxes

    runtime = LegacySandboxes(home.sandboxes)  # the old runtime's, until pods take them over
    pods = make_pod_runtime(home.root / "pods", network=_pod_network(home)) if (home.root / "pods").exists() else None

    # A stop is ~2 s of waiting and ~0.2 s of CPU: a few at a time keep the machine usable.
    limit = asyncio.Semaphore(8)

    async def one(rid: str) -> bool:
        async with limit:
            if remove:
                await runtime.remove(rid)
            elif runtime.hibernated(rid):
                return False  # nothing runs, and a stop would throw its saved memory away
            else:
                await runtime.stop(rid)
            return True

    async def one_pod(pid: str) -> bool:  # the node's pods (turbok.runtime.cri), kept the same way
        assert pods is not None
        async with limit:
            if remove:
                await pods.remove_pod_sandbox(pid)
            elif (await pods.pod_sandbox_status(pid)).reason in ("Hibernated", "Stopped"):
                return False
            else:
                await pods.stop_pod_sandbox(pid)
            return True

    async def run() -> int:
        ids = runtime.list()
        pod_ids = await pods.list_pod_sandboxes() if pods is not None else []
        results = await asyncio.gather(*(one(i) for i in ids), *(one_pod(i) for i in pod_ids),
                                       return_exceptions=True)
        ids = [*ids, *pod_ids]
        for rid, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                raise DaemonError(f"could not stop sandbox {rid}: {result}")
        if all(result is True for result in results[len(ids) - len(pod_ids):]):
            # No pod is left hibernated on them: the volumes' disks (PVs, bounded emptyDirs) go unmounted too.
            await asyncio.to_thread(unmount_volumes, home.root / "storage")
        return sum(1 for result in results if result is True)

    return asyncio.run(run())
