"""Build turbok's OCI image (``turbok operator``, ``turbok router``) without a container engine.

The image is two layers, assembled here in Python and written as an OCI image layout:

1. the base: a Debian bookworm userland with Python 3.11 (``--base``, a root filesystem directory;
   default the built-in base image ``$TURBOK_IMAGES/python-runtime-sandbox/rootfs`` that
   ``turbok image build-base`` makes with mmdebstrap); ``/dev``, ``/proc`` and ``/sys`` are left empty
   (runtimes mount them);
2. turbok and its runtime dependencies (``pip``'s view of ``turbok``'s requirements, no extras) copied
   from this interpreter's environment into ``/usr/local/lib/python3.11/dist-packages``, turbok itself
   from this checkout. Compiled wheels are the environment's (manylinux, cp311): the base's Python must
   be the same minor version, which is checked.

Entrypoint ``python3 -m turbok``, command ``operator``, user 65532 (non-root, as the chart runs it),
no bytecode written (the chart's root filesystem is read-only). The tarballs are reproducible: entries
sorted, owners numeric, every mtime ``SOURCE_DATE_EPOCH`` (default 0), gzip without a timestamp; the
same inputs give the same digests.

    python scripts/build_image.py --output /tmp/turbok-oci [--tag 0.1.0] [--base ROOTFS] [--level 6]
        [--push 127.0.0.1:5000/turbok:0.1.0 [--insecure]]

``--push`` copies the layout to a registry with ``skopeo copy`` (Debian's ``skopeo``); ``--insecure``
allows plain HTTP (a loopback registry). Prints the manifest digest. deploy/image/Containerfile builds
the same image with any engine (``podman build -f deploy/image/Containerfile .``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"
SITE = f"usr/local/lib/{PYTHON}/dist-packages"
USER = "65532:65532"
ENTRYPOINT = ["python3", "-m", "turbok"]
CMD = ["operator"]
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE=1",
       "PYTHONUNBUFFERED=1", "HOME=/tmp"]
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_EMPTY_DIRS = ("dev", "proc", "sys")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions() -> list[md.Distribution]:
    """The installed distributions turbok needs at run time: the checkout's pyproject.toml requirements
    (no extras), transitively."""
    import tomllib

    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = list(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = _norm(req.name)
        if key in seen:
            continue
        dist = md.distribution(req.name)
        seen[key] = dist
        todo.extend(dist.requires or [])
    return sorted(seen.values(), key=lambda d: _norm(d.metadata["Name"]))


class _Hashing:
    """A write-only file that hashes what goes through it (and may pass it on)."""

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self.sha = hashlib.sha256()
        self.out = out
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def flush(self) -> None:
        return None


class _Gzip:
    """gzip of a stream with no timestamp and no file name (a reproducible header)."""

    def __init__(self, out: _Hashing, level: int) -> None:
        self.out = out
        self.z = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.crc = 0
        self.size = 0
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.out.write(self.z.compress(data))
        return len(data)

    def close(self) -> None:
        self.out.write(self.z.flush())
        self.out.write(self.crc.to_bytes(4, "little") + (self.size & 0xFFFFFFFF).to_bytes(4, "little"))


class _Tee:
    def __init__(self, *outs: Any) -> None:
        self.outs = outs

    def write(self, data: bytes) -> int:
        for out in self.outs:
            out.write(data)
        return len(data)

    def flush(self) -> None:
        return None


class Layer:
    def __init__(self, digest: str, diff_id: str, size: int, comment: str) -> None:
        self.digest, self.diff_id, self.size, self.comment = digest, diff_id, size, comment


def _layer(blobs: Path, comment: str, level: int, fill: Callable[[tarfile.TarFile], None]) -> Layer:
    """One gzip'd tar layer written into ``blobs`` by ``fill``; its digest and diff_id."""
    with tempfile.NamedTemporaryFile(dir=blobs, delete=False) as raw:
        compressed = _Hashing(raw)
        gz = _Gzip(compressed, level)
        diff = _Hashing()
        with tarfile.open(fileobj=_Tee(gz, diff), mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            fill(tar)
        gz.close()
    digest = compressed.sha.hexdigest()
    os.chmod(raw.name, 0o644)
    os.replace(raw.name, blobs / digest)
    return Layer(f"sha256:{digest}", f"sha256:{diff.sha.hexdigest()}", compressed.size, comment)


def _normalize(epoch: int) -> Callable[[tarfile.TarInfo], tarfile.TarInfo]:
    def fix(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = epoch
        info.uname = info.gname = ""
        info.pax_headers = {}
        return info

    return fix


def _walk(root: Path) -> Iterator[Path]:
    """Every path under ``root`` in sorted order, directories before their contents."""
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        yield entry
        if entry.is_dir() and not entry.is_symlink():
            yield from _walk(entry)


def base_layer(blobs: Path, base: Path, epoch: int, level: int) -> Layer:
    fix = _normalize(epoch)

    def fill(tar: tarfile.TarFile) -> None:
        for path in _walk(base):
            rel = path.relative_to(base).as_posix()
            if rel.split("/", 1)[0] in _EMPTY_DIRS and "/" in rel:
                continue
            tar.add(path, arcname=rel, recursive=False, filter=fix)

    return _layer(blobs, f"base: {base}", level, fill)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, epoch
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
    tar.addfile(info)


def app_layer(blobs: Path, dists: list[md.Distribution], epoch: int, level: int) -> Layer:
    fix = _normalize(epoch)
    files: dict[str, Path] = {}
    for dist in dists:
        for f in dist.files or []:
            rel = Path(str(f))
            if ".." in rel.parts or "__pycache__" in rel.parts or rel.suffix == ".pyc":
                continue  # console scripts live outside site-packages; bytecode is not shipped
            src = Path(str(dist.locate_file(f)))
            if src.is_file():
                files[rel.as_posix()] = src
    package = REPO / "turbok"
    for src in package.rglob("*"):
        if src.is_file() and "__pycache__" not in src.parts and src.suffix != ".pyc":
            files[src.relative_to(REPO).as_posix()] = src
    from turbok import __version__

    info = f"turbok-{__version__}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: turbok\nVersion: {__version__}\n".encode()
    dirs = sorted({"/".join(p.split("/")[:i]) for p in [*files, f"{info}/METADATA"] for i in range(1, p.count("/") + 1)})

    def fill(tar: tarfile.TarFile) -> None:
        _add_dir(tar, "usr/local/bin", epoch)
        parts = SITE.split("/")
        for i in range(1, len(parts) + 1):
            _add_dir(tar, "/".join(parts[:i]), epoch)
        for d in dirs:
            _add_dir(tar, f"{SITE}/{d}", epoch)
        for rel in sorted(files):
            tar.add(files[rel], arcname=f"{SITE}/{rel}", recursive=False, filter=fix)
        _add_bytes(tar, f"{SITE}/{info}/METADATA", metadata, epoch)
        _add_bytes(tar, f"{SITE}/{info}/top_level.txt", b"turbok\n", epoch)
        # the `turbok` command (the checkpoint agents' DaemonSet runs it by that name)
        _add_bytes(tar, "usr/local/bin/turbok", b'#!/bin/sh\nexec python3 -m turbok "$@"\n', epoch, 0o755)

    return _layer(blobs, f"turbok {__version__} and {len(dists)} distributions", level, fill)


def _blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}"


def base_python(base: Path) -> str | None:
    """The ``pythonX.Y`` of a root filesystem (from its ``usr/lib/pythonX.Y``), or None."""
    found = sorted(p.name for p in (base / "usr" / "lib").glob("python3.*") if (p / "os.py").exists())
    return found[-1] if found else None


def build(output: Path, *, tag: str, base: Path, level: int = 6, epoch: int = 0) -> str:
    """Write the OCI layout into ``output``; returns the manifest's digest."""
    from turbok import __version__

    if not (base / "usr" / "bin" / "python3").exists():
        raise SystemExit(f"{base} is not a root filesystem with python3 (make one: turbok image build-base)")
    if base_python(base) != PYTHON:
        raise SystemExit(f"{base} has {base_python(base)}, this environment's wheels are for {PYTHON}")
    blobs = output / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layers = [base_layer(blobs, base, epoch, level), app_layer(blobs, runtime_distributions(), epoch, level)]
    created = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "created": created, "architecture": "amd64", "os": "linux",
        "config": {"User": USER, "Entrypoint": ENTRYPOINT, "Cmd": CMD, "Env": ENV, "WorkingDir": "/",
                   "Labels": {"org.opencontainers.image.title": "turbok",
                              "org.opencontainers.image.version": __version__,
                              "org.opencontainers.image.description": "turbok operator and router (docs/kube.md)"}},
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
        "history": [{"created": created, "created_by": x.comment} for x in layers],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST,
                "config": {"mediaType": CONFIG, "digest": _blob(blobs, config_bytes), "size": len(config_bytes)},
                "layers": [{"mediaType": LAYER, "digest": x.digest, "size": x.size} for x in layers]}
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    digest = _blob(blobs, manifest_bytes)
    (output / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (output / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MANIFEST, "digest": digest, "size": len(manifest_bytes),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return digest


def push(output: Path, tag: str, dest: str, *, insecure: bool) -> None:
    cmd = ["skopeo", "copy", "--quiet", *(["--dest-tls-verify=false"] if insecure else []),
           f"oci:{output}:{tag}", f"docker://{dest}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"skopeo copy to {dest} failed: {done.stderr.strip()}")


def main() -> None:
    from turbok import __version__
    from turbok.runtime.images import BASE_IMAGE, default_images_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, required=True, help="directory of the OCI image layout (made)")
    ap.add_argument("--tag", default=__version__)
    ap.add_argument("--base", type=Path, default=None, help="root filesystem with Debian's python3 "
                    "(default: the built-in base image)")
    ap.add_argument("--level", type=int, default=6, choices=range(0, 10), help="gzip level")
    ap.add_argument("--push", default="", help="registry reference to copy the image to (skopeo)")
    ap.add_argument("--insecure", action="store_true", help="--push over plain HTTP (a loopback registry)")
    args = ap.parse_args()
    base = args.base or default_images_dir() / BASE_IMAGE / "rootfs"
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    digest = build(args.output, tag=args.tag, base=base, level=args.level, epoch=epoch)
    if args.push:
        push(args.output, args.tag, args.push, insecure=args.insecure)
    print(digest)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
