"""Helpers for the pod runtime tests: configs with ids unique per test process, waiting, and leftovers.

``leftovers(rt, ids)`` lists everything of those pods that still exists on the
host: runsc registrations, mounts (not runsc's ``null-netns`` pin), loop devices, cgroups, processes holding a
file of the root (holders, gofers, sandboxes) or naming an id, and directories.
A test that removes its pods asserts it is empty. ``old_sandbox`` makes a sandbox
directory as the old, per-Sandbox runtime (before Pods) left it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from turbok.runtime import loopdev
from turbok.runtime.cri import ContainerState, ContainerStatus, PodRuntime, PodSandboxConfig
from turbok.runtime.disk import Disks, bounds
from turbok.runtime.ids import sandbox_id
from turbok.runtime.legacy import LegacySandboxes
from turbok.runtime.podlayout import SandboxDir
from turbok.runtime.pods import LocalPodRuntime
from turbok.runtime.runsc import NULL_NETNS

IMAGE = "python-runtime-sandbox"
BUSYBOX = "busybox"


def pod_config(name: str, **kw: Any) -> PodSandboxConfig:
    fields: dict[str, Any] = {"id": sandbox_id(f"pod-{name}-{os.getpid()}"), "name": name, "namespace": "test",
                              "uid": f"uid-{name}", "hostname": name, "network": False}
    fields.update(kw)
    return PodSandboxConfig(**fields)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 20.0, every: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(every)


async def wait_exited(rt: PodRuntime, id: str, name: str, timeout: float = 20.0) -> ContainerStatus:
    async def done() -> bool:
        return (await rt.container_status(id, name)).state is ContainerState.EXITED

    await wait_for(done, timeout)
    return await rt.container_status(id, name)


async def log_text(rt: PodRuntime, id: str, name: str, attempt: int = 0) -> str:
    from turbok.runtime.crilog import read_lines

    return "".join(r.text.decode() + ("" if r.partial else "\n") for r in read_lines(rt.log_path(id, name, attempt)))


async def wait_log(rt: PodRuntime, id: str, name: str, text: str, attempt: int = 0, timeout: float = 20.0) -> str:
    async def there() -> bool:
        return text in await log_text(rt, id, name, attempt)

    await wait_for(there, timeout)
    return await log_text(rt, id, name, attempt)


def old_sandbox(legacy: Path, id: str, *, app: dict[str, str], layer: dict[str, str],
                mounted: bool = False) -> SandboxDir:
    """A sandbox directory as the old runtime left it: ``spec.json`` and its own disk holding its writable
    layer (``upper/``: ``layer``, paths inside the sandbox) and ``/app`` (``app``), unmounted unless
    ``mounted`` (as while it ran)."""
    sdir = SandboxDir(legacy, id)
    sdir.path.mkdir(mode=0o700, parents=True)
    for sub in ("rootfs", "run"):
        (sdir.path / sub).mkdir()
    (sdir.path / "spec.json").write_text(json.dumps({"id": id, "hostname": "legacy", "image": IMAGE}))
    disks = Disks()
    disks.prepare(sdir, bounds(None))
    for base, files in ((sdir.disk / "app", app), (sdir.disk / "upper", layer)):
        base.mkdir()
        for name, text in files.items():
            path = base / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    (sdir.disk / "ovwork").mkdir()
    if not mounted:
        disks.unmount(sdir)
    return sdir


async def settled_leftovers(rt: LocalPodRuntime | LegacySandboxes, ids: list[str], *, kept: frozenset[str] =
                            frozenset(), timeout: float = 30.0) -> dict[str, list[str]]:
    """``leftovers`` once only the ``kept`` kinds are left, else after ``timeout``: a loop device detached
    lazily goes a moment after its unmount (seconds on a loaded machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := leftovers(rt, ids)).keys() <= kept and loop.time() < deadline:
        await asyncio.sleep(0.2)
    return found


def leftovers(rt: LocalPodRuntime | LegacySandboxes, ids: list[str]) -> dict[str, list[str]]:
    root = str(rt.root)
    found: dict[str, list[str]] = {}
    state_dir = getattr(rt, "state_dir", None)
    if state_dir is not None and state_dir.is_dir():
        found["runsc"] = [p.name for p in state_dir.iterdir() if any(i in p.name for i in ids)]
    with open("/proc/self/mountinfo") as f:  # runsc's null-netns pin is no pod's (see turbok.runtime.runsc)
        found["mounts"] = [line.split()[4] for line in f if line.split()[4].startswith(root + "/")
                           and Path(line.split()[4]).name != NULL_NETNS]
    found["loop"] = []
    for dev in Path("/sys/block").glob("loop*"):
        backing = loopdev.backing_file(f"/dev/{dev.name}")
        if backing and backing.startswith(root + "/"):
            found["loop"].append(f"{dev.name} -> {backing}")
    found["cgroups"] = [str(p) for i in ids for p in Path("/sys/fs/cgroup").glob(f"*/turbok/{i}*")]
    found["processes"] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            fds = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(i in cmdline for i in ids) or any(fd.startswith(root + "/") for fd in fds):
            found["processes"].append(f"{proc.name}: {cmdline.replace(chr(0), ' ')[:120]}")
    found["dirs"] = [i for i in ids if (rt.root / i).exists()]
    return {k: v for k, v in found.items() if v}
