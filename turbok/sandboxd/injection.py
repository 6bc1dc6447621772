"""How the sandboxd agent (``turbok.sandboxd.agent``) gets into a sandbox whose image has none.

Images may have no Python at all, so the agent brings its own and takes nothing
from the image: the built-in base image's root filesystem (Debian's Python 3.11
and its libraries) is bound read-only at ``BASE_MOUNT``, the agent's code at
``AGENT_MOUNT``, and the agent is started through the base image's own dynamic
loader with its library directory (``argv``), so neither the image's libc nor
its ``PATH`` matter, and nothing of this leaks into the commands the agent runs
(they are started with plain ``execve`` and the container's environment).

The code directory is staged once per content (``stage``): the agent's modules
as the package ``tkagent`` and the pure-Python ``h2``, ``hpack`` and
``hyperframe`` it imports for gRPC, byte-compiled (unchecked-hash ``.pyc``, so a
read-only directory costs no compile at each start) under
``<root>/<content hash>``; a new turbok stages a new directory while running
sandboxes keep theirs.

Measured on the development machine (gVisor, ptrace platform; bench/runtime.py,
bench/router.py, bench/RESULTS.md): the agent adds about 0.2 s to its container's
start (one ``runsc exec``, Python's start and imports), holds about 15 MiB (RSS as
the sandbox counts it), and a command through it takes about 10 ms where
``runsc exec`` takes about 29.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import py_compile
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.runtime.injection import Injection
from turbok.sandboxd import agent as agent_package
from turbok.sandboxd.agent import AGENT_PORT, READY

__all__ = ["AGENT_MOUNT", "BASE_MOUNT", "agent_injection", "argv", "stage"]

#: Where the base image's root filesystem appears in the agent's container (read-only).
BASE_MOUNT = "/.turbok/base"
#: Where the agent's staged code appears (read-only).
AGENT_MOUNT = "/.turbok/agent"
#: The base image's files the agent is started with (real paths: its symlinks are absolute).
_LOADER = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
_LIBS = "usr/lib/x86_64-linux-gnu"
_PYTHON = "usr/bin/python3.11"
#: Pure-Python packages the agent imports (for gRPC), copied beside it.
_VENDORED = ("h2", "hpack", "hyperframe")


def _sources() -> list[tuple[Path, str]]:
    """(file, path in the staged directory) of everything staged."""
    out = [(p, f"tkagent/{p.name}") for p in sorted(Path(agent_package.__file__).parent.glob("*.py"))]
    for name in _VENDORED:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"the sandboxd agent needs the Python package {name!r} (pip install h2)")
        base = Path(spec.origin).parent
        out += [(p, f"{name}/{p.relative_to(base)}") for p in sorted(base.rglob("*.py"))]
        out += [(p, f"{name}/{p.relative_to(base)}") for p in sorted(base.rglob("py.typed"))]
    return out


def stage(root: Path) -> Path:
    """The agent's code directory under ``root`` (made if missing); see the module docstring."""
    files = _sources()
    digest = hashlib.sha256()
    for path, rel in files:
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    target = root / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        for path, rel in files:
            dest = temp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            if dest.suffix == ".py":
                py_compile.compile(str(dest), cfile=str(importlib.util.cache_from_source(str(dest))),
                                   dfile=f"{AGENT_MOUNT}/{rel}", doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        for d in [temp, *temp.rglob("*")]:
            os.chmod(d, 0o755 if d.is_dir() else 0o644)
        try:
            temp.rename(target)
        except OSError:  # staged meanwhile by another process: theirs is the same
            shutil.rmtree(temp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return target


def argv(root: str, ports: Sequence[int]) -> list[str]:
    """The command that starts the agent in a container (its private port first, then ``ports``)."""
    base = BASE_MOUNT
    boot = f"import sys; sys.path[:0] = [{AGENT_MOUNT!r}]; from tkagent.main import main; main()"
    out = [f"{base}/{_LOADER}", "--library-path", f"{base}/{_LIBS}", f"{base}/{_PYTHON}", "-I", "-S", "-c", boot,
           "--root", root, "--port", str(AGENT_PORT)]
    for port in ports:
        if port != AGENT_PORT:
            out += ["--port", str(port)]
    return out


def agent_injection(images: ImageStore, stage_root: Path) -> Injection | None:
    """The ``Injection`` for the pod runtime, or None where the base image is not built (no agent then)."""
    try:
        base = images.resolve(BASE_IMAGE).rootfs
    except Exception:
        return None
    for rel in (_LOADER, _PYTHON):
        if not (base / rel).exists():
            return None
    code = stage(stage_root)
    return Injection(mounts=[(base, BASE_MOUNT), (code, AGENT_MOUNT)], argv=argv, ready=READY.encode(),
                     port=AGENT_PORT)
