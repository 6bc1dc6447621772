"""``turbok up``/``down``/``status``: the control plane as a background process.

``up`` starts ``turbok serve`` in a new session with its output in
``<home>/turbok.log``, then waits until ``endpoints.json`` names it and
``/readyz`` answers. A pid file guards against two control planes on one home.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from turbok.errors import TurbokError
from turbok.home import Home

__all__ = ["DaemonError", "down", "status", "stop_sandboxes", "up"]


class DaemonError(TurbokError):
    """The background control plane could not be started or stopped."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(home: Home) -> int | None:
    try:
        pid = int(home.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


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
    pid = _running_pid(home)
    ep = _endpoints(home) if pid else None
    running = bool(ep and ep.get("pid") == pid and _ready(ep["api"], home))
    return {"running": running, "home": str(home.root), "pid": pid if running else None,
            "api": ep["api"] if running and ep else None, "router": ep["router"] if running and ep else None,
            "kubeconfig": str(home.kubeconfig)}


def up(home: Home, *, timeout: float = 60.0) -> dict[str, Any]:
    home.ensure()
    current = status(home)
    if current["running"]:
        return current
    if pid := _running_pid(home):
        raise DaemonError(f"a turbok process (pid {pid}) holds {home.root} but does not answer; "
                          f"stop it with `turbok down` or `kill {pid}`")
    home.endpoints.unlink(missing_ok=True)
    with open(home.log, "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "turbok", "serve"], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
    home.pidfile.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonError(f"the control plane exited with code {proc.returncode}; see {home.log}")
        current = status(home)
        if current["running"]:
            return current
        time.sleep(0.05)
    raise DaemonError(f"the control plane did not answer within {timeout:.0f}s; see {home.log}")


def down(home: Home, *, timeout: float = 30.0) -> bool:
    pid = _running_pid(home)
    if pid is None:
        home.pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    home.pidfile.unlink(missing_ok=True)
    home.endpoints.unlink(missing_ok=True)
    return True


def stop_sandboxes(home: Home, *, remove: bool = False) -> int:
    """Stop every runtime sandbox of this home (keeping disks unless ``remove``); returns how many.

    Hibernated sandboxes are left as they are (their memory stays saved) unless ``remove``.

    For ``turbok down --stop-sandboxes`` and test teardown: with the control plane down
    nothing else will, and a detached gVisor sandbox runs until told to stop.
    """
    import asyncio

    from turbok.runtime.factory import make_runtime

    if not home.sandboxes.exists():
        return 0
    runtime = make_runtime(home.sandboxes)

    # A stop is ~2 s of waiting and ~0.2 s of CPU: a few at a time keep the machine usable.
    limit = asyncio.Semaphore(8)

    async def one(rid: str) -> bool:
        async with limit:
            if remove:
                await runtime.remove(rid)
            elif (await runtime.state(rid)).reason == "Hibernated":
                return False  # nothing runs, and a stop would throw its saved memory away
            else:
                await runtime.stop(rid)
            return True

    async def run() -> int:
        ids = await runtime.list()
        results = await asyncio.gather(*(one(i) for i in ids), return_exceptions=True)
        for rid, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                raise DaemonError(f"could not stop sandbox {rid}: {result}")
        return sum(1 for result in results if result is True)

    return asyncio.run(run())
