"""An image whose entrypoint imports a heavy library (numpy), for the snapshot tests and bench/snapshots.py.

``build(images_dir)`` makes a private images directory: the built-in base image
(linked from the shared ``~/.turbok/images``), and ``numpy-sandbox``, the base
root filesystem (hard links: nothing copied) plus numpy from this virtualenv
(the same CPython 3.11 ABI as the image's Debian python3) and ``/opt/holder.py``,
its default command. Point ``TURBOK_IMAGES`` (or an ``ImageStore``) at it.

The holder is a Python interpreter that imports numpy, draws a random token
(so a process that came from a snapshot is told from one that started afresh),
then serves its state on TCP port ``PORT``: one JSON line per connection
(``token``, ``numpy`` loaded, ``pid``, seconds since its import finished), and it
waits for the client to close first, so it never leaves a connection in
TIME_WAIT inside the sandbox (runsc 20221219 could not checkpoint it then).
``ask(...)`` is such a client; ``ask_inside`` runs one in the sandbox by exec.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy

IMAGE = "numpy-sandbox"
PORT = 8642
HOLDER = r'''
import json, os, random, socket, sys, time
t0 = time.monotonic()
import numpy
imported = time.monotonic()
token = "%016x" % random.getrandbits(64)
numpy.ones(1000).sum()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8642)); s.listen(64)
print("ready", token, "import took %.3f s" % (imported - t0), flush=True)
while True:
    c, _ = s.accept()
    try:
        state = {"token": token, "numpy": "numpy" in sys.modules, "version": numpy.__version__, "pid": os.getpid(),
                 "since_import": time.monotonic() - imported}
        c.sendall((json.dumps(state) + "\n").encode())
        c.settimeout(10)
        while c.recv(4096):  # the client closes first
            pass
    except OSError:
        pass
    finally:
        c.close()
'''
ASK_INSIDE = ("import json, socket, struct; c = socket.create_connection(('127.0.0.1', 8642), timeout=10); "
              "line = c.makefile().readline(); "
              "c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close(); "
              "print(line.strip())")


def shared_images() -> Path:
    env = os.environ.get("TURBOK_IMAGES")
    return Path(env) if env else Path(os.path.expanduser("~")) / ".turbok" / "images"


def build(images_dir: Path, base: Path | None = None) -> Path:
    """The images directory (see the module docstring); idempotent."""
    base = base or shared_images()
    images_dir.mkdir(parents=True, exist_ok=True)
    link = images_dir / "python-runtime-sandbox"
    if not link.exists():
        link.symlink_to(base / "python-runtime-sandbox")
    rootfs = images_dir / IMAGE / "rootfs"
    if not (rootfs / "opt" / "holder.py").exists():
        shutil.rmtree(rootfs.parent, ignore_errors=True)
        rootfs.parent.mkdir(parents=True)
        subprocess.run(["cp", "-al", str(base / "python-runtime-sandbox" / "rootfs"), str(rootfs)], check=True)
        site = rootfs / "usr" / "local" / "lib" / "python3.11" / "dist-packages"
        site.mkdir(parents=True, exist_ok=True)
        here = Path(numpy.__file__).parent
        for name in ("numpy", "numpy.libs"):
            if (here.parent / name).exists():
                shutil.copytree(here.parent / name, site / name, symlinks=True)
        (rootfs / "opt").mkdir(exist_ok=True)
        (rootfs / "opt" / "holder.py").write_text(HOLDER)
    (images_dir / "images.yaml").write_text(
        "images:\n"
        f"  - name: {IMAGE}\n"
        "    description: the base image, numpy, and an interpreter that imports it and serves its state\n"
        f"    rootfs: {rootfs}\n"
        '    command: ["python3", "/opt/holder.py"]\n'
        "    env: {SANDBOX_BASE_DIR: /app}\n"  # like the runtime image: /app served from the host
        "    workingDir: /app\n"
        f"    match: [{IMAGE}, \"{IMAGE}:*\"]\n")
    return images_dir


def ask(ip: str, port: int = PORT, timeout: float = 30.0, netns: Any = None) -> dict[str, Any]:
    """The holder's state, asked over TCP from the host (retried until ``timeout`` while it is not up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection((ip, port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    try:
        line = s.makefile().readline()
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset: no TIME_WAIT
        s.close()
    return dict(json.loads(line))
