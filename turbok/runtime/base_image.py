"""Building the built-in base image: a read-only Debian userland with Python 3.

``build_base_image(images_dir)`` runs ``mmdebstrap --variant=minbase`` (Debian
bookworm: python3, procps, busybox; no docs, man pages or locales; about 180
MB, 25-40 s with a Debian mirror) into a temporary directory, then makes it a
sandbox image and renames it into ``<images>/python-runtime-sandbox/rootfs``
(atomic: a failed build leaves nothing half-built behind):

- nothing of the host stays: ``/etc/hostname``, ``/etc/hosts`` and
  ``/etc/resolv.conf`` (mmdebstrap copies the host's) are replaced by neutral
  ones; ``/etc/machine-id`` is empty;
- ``/app`` exists (the work directory's mount point, so no sandbox needs to
  create it in its own layer);
- ``ls`` and ``stat`` are busybox's: runsc 20221219 answers EINVAL to
  ``statx(AT_NO_AUTOMOUNT)``, which coreutils 9.1's ``ls``/``stat`` call (Python
  and everything else use ``stat``/``fstatat``); ``/usr/local/bin`` comes first
  in ``PATH``. Drop this when runsc is newer than 2023.

Called by ``turbok image build-base`` (turbok.cli.image) and by the test
fixtures when the image is missing. Needs root and ``mmdebstrap``
(``apt-get install -y mmdebstrap``). Do not rebuild under running sandboxes:
their writable layers sit on top of this directory.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from turbok.runtime.errors import ImageBuildFailed
from turbok.runtime.images import BASE_IMAGE, ImageStore

__all__ = ["BASE_PACKAGES", "BASE_SUITE", "base_image_info", "build_base_image"]

BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "procps", "busybox")
_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
#: coreutils tools that call statx(AT_NO_AUTOMOUNT); served by busybox instead.
_BUSYBOX_SHIMS = ("ls", "stat")


def base_image_info(store: ImageStore) -> dict[str, object] | None:
    """The base image's ``image.json`` (built when, from what, how big), or None if not built."""
    try:
        info: dict[str, object] = json.loads((store.builtin_dir(BASE_IMAGE) / "image.json").read_text())
    except (OSError, ValueError):
        return None
    return info if (store.builtin_dir(BASE_IMAGE) / "rootfs" / "bin").exists() else None


def _neutralize(rootfs: Path) -> None:
    etc = rootfs / "etc"
    for name, text in (
        ("hostname", "sandbox\n"),
        ("hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        ("resolv.conf", "# no network in turbok sandboxes by default\n"),
        ("machine-id", ""),
    ):
        path = etc / name
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_text(text)
    (rootfs / "app").mkdir(mode=0o755, exist_ok=True)
    local_bin = rootfs / "usr" / "local" / "bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    if (rootfs / "usr" / "bin" / "busybox").exists() or (rootfs / "bin" / "busybox").exists():
        for tool in _BUSYBOX_SHIMS:
            link = local_bin / tool
            if not link.is_symlink():
                link.symlink_to("/bin/busybox")


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def build_base_image(
    store: ImageStore,
    *,
    force: bool = False,
    mirror: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Path:
    """Build the base image into ``store``; returns its rootfs. No-op if built (unless ``force``)."""
    final_dir = store.builtin_dir(BASE_IMAGE)
    rootfs = final_dir / "rootfs"
    if base_image_info(store) is not None and not force:
        return rootfs
    tool = shutil.which("mmdebstrap")
    if tool is None:
        raise ImageBuildFailed(
            "mmdebstrap is not installed: apt-get install -y mmdebstrap", reference=BASE_IMAGE
        )
    if os.geteuid() != 0:
        raise ImageBuildFailed("building the base image needs root", reference=BASE_IMAGE)

    store.root.mkdir(parents=True, exist_ok=True)
    work = store.root / f".build-{BASE_IMAGE}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o755)
    target = work / "rootfs"
    argv = [
        tool,
        "--variant=minbase",
        "--mode=root",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--dpkgopt={opt}" for opt in _EXCLUDES),
        BASE_SUITE,
        str(target),
    ]
    if mirror:
        argv.append(mirror)
    started = time.monotonic()
    tail: list[str] = []
    try:
        with subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail = (tail + [line])[-20:]
                if on_line is not None:
                    on_line(line)
        if proc.returncode != 0:
            raise ImageBuildFailed(
                f"mmdebstrap failed with exit code {proc.returncode}: " + " | ".join(tail[-5:]),
                reference=BASE_IMAGE,
            )
        if not (target / "usr" / "bin" / "python3").exists():
            raise ImageBuildFailed("mmdebstrap finished but python3 is missing", reference=BASE_IMAGE)
        _neutralize(target)
        info = {
            "name": BASE_IMAGE,
            "suite": BASE_SUITE,
            "packages": list(BASE_PACKAGES),
            "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 1),
            "bytes": _du(target),
        }
        (work / "image.json").write_text(json.dumps(info, indent=1) + "\n")
        old = None
        if final_dir.exists():
            old = store.root / f".old-{BASE_IMAGE}-{os.getpid()}"
            os.rename(final_dir, old)
        os.rename(work, final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rootfs
