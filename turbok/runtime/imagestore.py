"""The machine's content-addressed store of pulled OCI images, shared by every home.

Layout (``$TURBOK_IMAGE_STORE``, default ``/var/lib/turbok/images``; 0700, root's)::

    blobs/sha256/<hex>        manifests, indexes and configs, verified
    layers/<hex>/             one unpacked layer per diff_id (overlayfs format: turbok.runtime.layers)
    layers/<hex>.json         its compressed digest, sizes, what was skipped
    images/<hex>/image.json   one image per platform manifest digest: layers, config, repo digest
    images/<hex>/rootfs/      its root filesystem: a read-only overlay of its layers (nosuid,nodev)
    refs.json                 reference (tag or digest) -> manifest digest
    tmp/                      partial downloads (<hex>.partial, kept to resume) and unpacks in progress
    gc.lock, refs.lock        flocks: pulls share gc.lock, prune/rm take it alone

A layer is downloaded once per machine and unpacked once (decided by measurement:
bench/images.py, docs/architecture.md "Images"): each layer of a pull streams from the
registry through its sha256, the gzip (or zstd) decoder and the diff_id's sha256 into
the unpacker, layers in parallel threads, the compressed bytes also appended to
``tmp/<hex>.partial`` so an interrupted pull resumes with a ``Range`` request. A blob
whose digest differs is refused (``BlobCorrupt``) and nothing of it is kept. The image's
root filesystem is mounted when first resolved (after a reboot, again) and a container's
writable layer goes on top of it (turbok.runtime.overlay).

``OciStore.pull(ref, credentials)`` does the network part (``turbok.runtime.registry``);
``find``/``images``/``remove``/``prune`` are local. ``turbok.runtime.images.ImageStore`` is
what callers use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from turbok.runtime import mounts
from turbok.runtime.errors import BlobCorrupt, ImageError, ImageInUse, ImagePullFailed, UnsafeLayer
from turbok.runtime.imageconfig import ImageConfig
from turbok.runtime.layers import unpack
from turbok.runtime.reference import Reference
from turbok.runtime.registry import INDEX_TYPES, Credential, RegistryClient

__all__ = ["LayerRecord", "OciStore", "Progress", "PruneResult", "StoredImage", "default_store_dir",
           "machine_platform"]

log = logging.getLogger("turbok.runtime.images")

_GZIP = ("application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
         "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
_ZSTD = ("application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")
_PLAIN = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.nondistributable.v1.tar")
_CHUNK = 1 << 20
#: Layers fetched and unpacked at once (each a thread: network, sha256, gunzip, unpack).
PARALLEL_LAYERS = 3
#: overlayfs takes its lower directories in one mount option, at most a page long.
_MAX_OPTIONS = 4000

#: ``progress(layer digest, bytes done, bytes total)``; done == total when a layer is in the store.
Progress = Callable[[str, int, int], None]


def default_store_dir() -> Path:
    """``$TURBOK_IMAGE_STORE``, else ``/var/lib/turbok/images`` (root) or ``~/.local/share/turbok/images``."""
    env = os.environ.get("TURBOK_IMAGE_STORE")
    if env:
        return Path(env).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/turbok/images")
    return Path.home() / ".local" / "share" / "turbok" / "images"


def machine_platform() -> tuple[str, str, str]:
    """``(os, architecture, variant)`` of this machine in OCI's words."""
    machine = platform.machine().lower()
    arch, variant = {"x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"),
                     "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
                     "i686": ("386", ""), "i386": ("386", ""), "ppc64le": ("ppc64le", ""),
                     "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}.get(machine, (machine, ""))
    return "linux", arch, variant


def _hex(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexd


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def _flock(path: Path, kind: int = fcntl.LOCK_EX) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LayerRecord:
    digest: str  # of the compressed blob, as the manifest names it
    diff_id: str  # of the uncompressed tar: names the unpacked directory
    size: int  # compressed
    media_type: str


@dataclass(frozen=True)
class StoredImage:
    """One pulled image (one platform)."""

    id: str  # its manifest's digest
    repo_digest: str  # ``name@digest`` of what was asked for (an index's digest when it was one)
    config_digest: str
    layers: tuple[LayerRecord, ...]
    config: ImageConfig
    platform: str
    pulled_at: float
    refs: tuple[str, ...] = ()
    unpacked_bytes: int = 0
    #: compressed bytes of the layers the pull that returned this fetched (0: all were here)
    fetched: int = 0

    @property
    def size(self) -> int:
        """Compressed bytes of its layers (what a pull transfers)."""
        return sum(x.size for x in self.layers)


@dataclass
class PruneResult:
    images: list[str] = field(default_factory=list)
    layers: int = 0
    blobs: int = 0
    bytes: int = 0


class _BlobReader(io.RawIOBase):
    """A blob's bytes: first those already in ``partial`` (an interrupted pull), then the network's,
    appended to ``partial``; sha256 over all of them, checked against ``digest`` at the end."""

    def __init__(self, partial: Path, digest: str, size: int, fetch: Callable[[int], tuple[Iterator[bytes], int]],
                 progress: Callable[[int], None], what: str) -> None:
        super().__init__()
        self.digest, self.size, self.what = digest, size, what
        self.hash = hashlib.sha256()
        self.done = 0
        self._progress = progress
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()
            have = 0
        self._chunks: Iterator[bytes] | None = None
        if have < size:
            chunks, start = fetch(have)
            self._chunks = chunks
            if start != have:  # the registry ignored Range: start again
                have = 0
        self._local: IO[bytes] | None = open(partial, "rb") if have else None  # noqa: SIM115
        self._local_left = have
        self._out = open(partial, "r+b" if have else "wb")  # noqa: SIM115
        self._out.seek(have)
        self._out.truncate()
        self._buf = b""
        self.resumed_from = have

    def readable(self) -> bool:
        return True

    def _next(self) -> bytes:
        if self._local is not None and self._local_left > 0:
            data = self._local.read(min(_CHUNK, self._local_left))
            self._local_left -= len(data)
            if not data:
                raise ImagePullFailed(f"{self.what}: the partial download shrank", reference=self.what)
        elif self._chunks is not None:
            data = next(self._chunks, b"")
            if data:
                self._out.write(data)
        else:
            data = b""
        if data:
            self.hash.update(data)
            self.done += len(data)
            if self.done > self.size:
                raise BlobCorrupt(f"{self.what}: the registry sent more than the {self.size} bytes the manifest "
                                  "says: refused", reference=self.what)
            self._progress(self.done)
        return data

    def readinto(self, b: Any) -> int:
        if not self._buf:
            self._buf = self._next()
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if not self._buf:
            self._buf = self._next()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def finish(self) -> None:
        """Read what is left and check the digest; ``BlobCorrupt`` when it differs."""
        while self.read(_CHUNK):
            pass
        got = "sha256:" + self.hash.hexdigest()
        if self.done != self.size or got != self.digest:
            raise BlobCorrupt(f"{self.what}: blob {self.digest} has {self.done} bytes hashing to {got} (the manifest "
                              f"says {self.size} bytes): corrupted in the registry or on the way, refused",
                              reference=self.what)

    def close(self) -> None:
        for f in (self._local, self._out):
            if f is not None:
                f.close()
        super().close()


class _Hashing(io.RawIOBase):
    """Reads through ``inner``, hashing what passes (the diff_id of a decompressed layer)."""

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self.inner = inner
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.hash.update(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _decompressor(media: str, raw: BinaryIO, what: str) -> Any:
    if media in _GZIP:
        try:
            from isal import igzip  # ISA-L: about 2.5 x zlib's speed (bench/images.py)

            return igzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]
        except ImportError:
            import gzip

            return gzip.GzipFile(fileobj=raw, mode="rb")
    if media in _ZSTD:
        try:
            import zstandard
        except ImportError:
            raise ImagePullFailed(f"{what}: a zstd layer needs the 'zstandard' package", reference=what) from None
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    if media in _PLAIN:
        return raw
    raise ImagePullFailed(f"{what}: layer media type {media!r} is not one turbok unpacks", reference=what)


class OciStore:
    """The store under ``root`` (see the module docstring)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_store_dir()).absolute()
        if "," in str(self.root) or ":" in str(self.root):
            raise ValueError(f"image store path {self.root} must not contain ',' or ':' (overlayfs options)")
        self.blobs = self.root / "blobs" / "sha256"
        self.layers_dir = self.root / "layers"
        self.images_dir = self.root / "images"
        self.tmp = self.root / "tmp"
        self.refs_file = self.root / "refs.json"

    # ---- layout

    def ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # two homes' first pulls may race here
        os.chmod(self.root, 0o700)  # setuid files of images: nobody but root reaches them
        for d in (self.blobs, self.layers_dir, self.images_dir, self.tmp):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _gc_lock(self, kind: int) -> contextlib.AbstractContextManager[None]:
        self.ensure()
        return _flock(self.root / "gc.lock", kind)

    def layer_path(self, diff_id: str) -> Path:
        return self.layers_dir / _hex(diff_id)

    def rootfs_path(self, image_id: str) -> Path:
        return self.images_dir / _hex(image_id) / "rootfs"

    # ---- references

    def _refs(self) -> dict[str, str]:
        try:
            data = json.loads(self.refs_file.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("image store: %s is not JSON; treating it as empty", self.refs_file)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _update_refs(self, change: Callable[[dict[str, str]], None]) -> None:
        with _flock(self.root / "refs.lock"):
            refs = self._refs()
            change(refs)
            _write_atomic(self.refs_file, json.dumps(refs, indent=1, sort_keys=True).encode())

    def _load(self, image_id: str, refs: dict[str, str] | None = None) -> StoredImage | None:
        try:
            doc = json.loads((self.images_dir / _hex(image_id) / "image.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        refs = self._refs() if refs is None else refs
        return StoredImage(
            id=doc["id"], repo_digest=doc["repo_digest"], config_digest=doc["config_digest"],
            layers=tuple(LayerRecord(**x) for x in doc["layers"]),
            config=ImageConfig.parse(doc["config"]), platform=doc.get("platform", ""),
            pulled_at=float(doc.get("pulled_at", 0)), unpacked_bytes=int(doc.get("unpacked_bytes", 0)),
            refs=tuple(sorted(r for r, v in refs.items() if v == image_id)),
        )

    def find(self, ref: Reference) -> StoredImage | None:
        """The image pulled as ``ref`` (its tag, or its digest: an index's or the manifest's), or None."""
        refs = self._refs()
        image_id = refs.get(str(ref))
        if image_id is None and ref.digest:
            image_id = refs.get(ref.by_digest)
            if image_id is None and (self.images_dir / _hex(ref.digest) / "image.json").exists():
                image_id = ref.digest  # the platform manifest's own digest, under another name
        if image_id is None:
            return None
        image = self._load(image_id, refs)
        if image is None or not all(self.layer_path(x.diff_id).is_dir() for x in image.layers):
            return None
        return image

    def images(self) -> list[StoredImage]:
        refs = self._refs()
        out = []
        if self.images_dir.is_dir():
            for entry in sorted(self.images_dir.iterdir()):
                image = self._load(f"sha256:{entry.name}", refs) if len(entry.name) == 64 else None
                if image is not None:
                    out.append(image)
        return out

    # ---- pulling

    def pull(self, ref: Reference, credentials: Sequence[Credential | None] = (None,), *,
             progress: Progress | None = None, platform_: tuple[str, str, str] | None = None) -> StoredImage:
        """Pull ``ref`` into the store (layers already here are not fetched); tries each credential in turn
        while the registry refuses them (401/403), then raises the last ``ImagePullFailed``."""
        self.ensure()
        last: ImagePullFailed | None = None
        for cred in credentials or (None,):
            with RegistryClient(ref, cred) as client:
                try:
                    with self._gc_lock(fcntl.LOCK_SH):
                        return self._pull(client, ref, progress, platform_ or machine_platform())
                except ImagePullFailed as e:
                    if e.status not in (401, 403):
                        raise
                    last = e
        assert last is not None
        raise last

    def _verified(self, data: bytes, digest: str, what: str) -> bytes:
        got = _sha256(data)
        if got != digest:
            raise BlobCorrupt(f'failed to pull image "{what}": {digest} has digest {got}: corrupted in the registry or '
                              "on the way, refused", reference=what)
        return data

    def _manifest(self, client: RegistryClient, ref: Reference, plat: tuple[str, str, str]) -> tuple[bytes, str, str]:
        """``(manifest bytes, its digest, the digest asked for)``, through an index when there is one."""
        what = str(ref)
        data, media, header = client.manifest(ref.digest or ref.tag or "latest")
        first = data
        if ref.digest:
            top = ref.digest
            self._verified(data, top, what)
        else:
            top = _sha256(data)
            if header and header != top:
                raise BlobCorrupt(f'failed to pull image "{what}": the registry says the manifest is {header} but '
                                  f"it hashes to {top}: refused", reference=what)
        try:
            doc = json.loads(data)
        except ValueError:
            raise ImagePullFailed(f'failed to pull image "{what}": the manifest is not JSON', reference=what) from None
        if media in INDEX_TYPES or (not media and "manifests" in doc):
            child = self._choose(doc, plat, what)
            data, _media, _h = client.manifest(child)
            self._verified(data, child, what)
            self._save_blob(top, first)
            return data, child, top
        if doc.get("schemaVersion") == 1:
            raise ImagePullFailed(f'failed to pull image "{what}": Docker schema 1 manifests are not supported '
                                  "(push the image again with a current tool)", reference=what)
        return data, top, top

    @staticmethod
    def _choose(index: dict[str, Any], plat: tuple[str, str, str], what: str) -> str:
        os_, arch, variant = plat
        seen, fallback = [], None
        for m in index.get("manifests") or []:
            p = m.get("platform") or {}
            name = f"{p.get('os', '?')}/{p.get('architecture', '?')}" + (f"/{p['variant']}" if p.get("variant") else "")
            seen.append(name)
            if p.get("os") == os_ and p.get("architecture") == arch:
                if not variant or not p.get("variant") or p.get("variant") == variant:
                    return str(m["digest"])
                fallback = fallback or str(m["digest"])
        if fallback:
            return fallback
        wanted = f"{os_}/{arch}" + (f"/{variant}" if variant else "")
        raise ImagePullFailed(f'failed to pull image "{what}": no {wanted} image in its index (it has: '
                              f"{', '.join(n for n in seen if not n.startswith('unknown')) or 'none'})", reference=what)

    def _save_blob(self, digest: str, data: bytes | None) -> None:
        if data is not None:
            path = self.blobs / _hex(digest)
            if not path.exists():
                _write_atomic(path, data)

    def _pull(self, client: RegistryClient, ref: Reference, progress: Progress | None,
              plat: tuple[str, str, str]) -> StoredImage:
        what = str(ref)
        manifest_bytes, image_id, top = self._manifest(client, ref, plat)
        manifest = json.loads(manifest_bytes)
        try:
            cfg_desc = manifest["config"]
            config_digest = str(cfg_desc["digest"])
            _hex(config_digest)
            layers_desc = list(manifest.get("layers") or [])
        except (KeyError, TypeError, ValueError):
            raise ImagePullFailed(f'failed to pull image "{what}": the manifest has no config', reference=what) from None
        cached = self.blobs / _hex(config_digest)
        config_bytes = cached.read_bytes() if cached.exists() else self._verified(
            client.small_blob(config_digest), config_digest, what)
        try:
            config_doc = json.loads(config_bytes)
            ImageConfig.parse(config_doc)  # refuse a config we could not run from
            diff_ids = [str(d) for d in (config_doc.get("rootfs") or {}).get("diff_ids") or []]
        except (ValueError, AttributeError):
            raise ImagePullFailed(f'failed to pull image "{what}": its config is not an image config',
                                  reference=what) from None
        if len(diff_ids) != len(layers_desc):
            raise ImagePullFailed(f'failed to pull image "{what}": the manifest has {len(layers_desc)} layers and the '
                                  f"config {len(diff_ids)} diff_ids", reference=what)
        layers = []
        for desc, diff_id in zip(layers_desc, diff_ids, strict=True):
            try:
                _hex(str(desc["digest"])), _hex(diff_id)
                layers.append(LayerRecord(str(desc["digest"]), diff_id, int(desc["size"]), str(desc.get("mediaType", ""))))
            except (KeyError, TypeError, ValueError):
                raise ImagePullFailed(f'failed to pull image "{what}": a layer descriptor is not valid',
                                      reference=what) from None
        self._save_blob(config_digest, config_bytes)
        self._save_blob(image_id, manifest_bytes)

        todo = []
        seen: set[str] = set()
        for layer in layers:
            if layer.diff_id in seen:
                continue
            seen.add(layer.diff_id)
            if self.layer_path(layer.diff_id).is_dir():
                if progress is not None:
                    progress(layer.digest, layer.size, layer.size)
            else:
                todo.append(layer)
        if todo:
            with ThreadPoolExecutor(max_workers=min(PARALLEL_LAYERS, len(todo)),
                                    thread_name_prefix="turbok-pull") as pool:
                futures = [pool.submit(self._fetch_layer, client, layer, what, progress) for layer in todo]
                errors = [f.exception() for f in futures]
            for err in errors:
                if err is not None:
                    raise err
        unpacked = 0
        for layer in {x.diff_id: x for x in layers}.values():
            with contextlib.suppress(OSError, ValueError):
                unpacked += int(json.loads((self.layers_dir / f"{_hex(layer.diff_id)}.json").read_bytes())
                                .get("unpacked_bytes", 0))
        record = {
            "id": image_id, "repo_digest": f"{ref.name}@{top}", "config_digest": config_digest,
            "layers": [x.__dict__ for x in layers], "config": config_doc, "platform": "/".join(p for p in plat if p),
            "pulled_at": time.time(), "unpacked_bytes": unpacked,
        }
        image_dir = self.images_dir / _hex(image_id)
        image_dir.mkdir(mode=0o700, exist_ok=True)
        (image_dir / "rootfs").mkdir(mode=0o755, exist_ok=True)
        _write_atomic(image_dir / "image.json", json.dumps(record, indent=1).encode())

        def change(refs: dict[str, str]) -> None:
            refs[str(ref)] = image_id
            refs[f"{ref.name}@{top}"] = image_id
            if ref.tag and ref.digest:
                refs[f"{ref.name}:{ref.tag}"] = image_id

        self._update_refs(change)
        image = self._load(image_id)
        assert image is not None
        return dataclasses.replace(image, fetched=sum(x.size for x in todo))

    def _fetch_layer(self, client: RegistryClient, layer: LayerRecord, what: str,
                     progress: Progress | None) -> None:
        hexd = _hex(layer.diff_id)
        final = self.layers_dir / hexd
        with _flock(self.tmp / f"{hexd}.lock"):
            if final.is_dir():  # another pull got it meanwhile
                if progress is not None:
                    progress(layer.digest, layer.size, layer.size)
                return
            partial = self.tmp / f"{_hex(layer.digest)}.partial"
            work = self.tmp / f"{hexd}.unpack.{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(mode=0o700)

            def fetch(offset: int) -> tuple[Iterator[bytes], int]:
                chunks, start, response = client.blob(layer.digest, offset=offset)
                responses.append(response)
                return chunks, start

            responses: list[Any] = []
            reader = None
            try:
                reader = _BlobReader(partial, layer.digest, layer.size, fetch,
                                     (lambda done: progress(layer.digest, done, layer.size)) if progress else
                                     (lambda done: None), what)
                if reader.resumed_from:
                    log.info("image %s: resuming layer %s at byte %d", what, layer.digest, reader.resumed_from)
                raw = io.BufferedReader(reader, _CHUNK)
                decoded = _Hashing(_decompressor(layer.media_type, raw, what))
                try:
                    stats = unpack(decoded, work, what=f'image "{what}" layer {layer.digest}')  # type: ignore[arg-type]
                except ImageError:
                    raise
                except Exception as e:  # zlib/ISA-L/zstd errors have their own classes
                    # a truncated or garbled stream: the digest tells which (corrupt blob or bad archive)
                    try:
                        reader.finish()
                    except ImagePullFailed as err:
                        raise err from None
                    raise UnsafeLayer(f'image "{what}" layer {layer.digest} cannot be unpacked: {e}',
                                      reference=what) from None
                while decoded.read(_CHUNK):
                    pass
                reader.finish()
                got = "sha256:" + decoded.hash.hexdigest()
                if got != layer.diff_id:
                    raise BlobCorrupt(f'failed to pull image "{what}": layer {layer.digest} unpacks to {got}, not the '
                                      f"config's diff_id {layer.diff_id}: refused", reference=what)
            except BaseException as e:
                shutil.rmtree(work, ignore_errors=True)
                if isinstance(e, BlobCorrupt | UnsafeLayer):
                    partial.unlink(missing_ok=True)  # never resumed from: fetched anew next time
                raise
            finally:
                if reader is not None:
                    reader.close()
                for response in responses:
                    response.close()
            meta = {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
                    "media_type": layer.media_type, "unpacked_bytes": stats.bytes, "entries": stats.entries,
                    "skipped": stats.skipped[:50]}
            _write_atomic(self.layers_dir / f"{hexd}.json", json.dumps(meta).encode())
            os.rename(work, final)
            partial.unlink(missing_ok=True)
            if stats.skipped:
                log.info("image %s: layer %s: %d entries not created (device nodes): %s", what, layer.digest,
                         len(stats.skipped), "; ".join(stats.skipped[:5]))

    # ---- the root filesystem

    def rootfs(self, image: StoredImage) -> Path:
        """The image's root filesystem, mounted read-only (nosuid, nodev) if it is not yet."""
        target = self.rootfs_path(image.id)
        if mounts.is_mount_root(target):
            return target
        with _flock(target.parent / "mount.lock"):
            if mounts.is_mount_root(target):
                return target
            target.mkdir(mode=0o755, exist_ok=True)
            lowers: list[str] = []
            for layer in reversed(image.layers):  # overlayfs: the top layer first; a repeated layer counts once
                path = str(self.layer_path(layer.diff_id))
                if path not in lowers:
                    lowers.append(path)
            flags = mounts.MS_RDONLY | mounts.SAFE
            try:
                if len(lowers) == 1:
                    mounts.mount(lowers[0], target, None, mounts.MS_BIND)
                    mounts.mount("none", target, None, mounts.MS_REMOUNT | mounts.MS_BIND | flags)
                elif not lowers:
                    empty = target.parent / "empty"
                    empty.mkdir(mode=0o755, exist_ok=True)
                    mounts.mount(str(empty), target, None, mounts.MS_BIND)
                    mounts.mount("none", target, None, mounts.MS_REMOUNT | mounts.MS_BIND | flags)
                else:
                    options = "lowerdir=" + ":".join(lowers)
                    if len(options) > _MAX_OPTIONS:
                        raise ImageError(f"image {image.repo_digest} has {len(lowers)} layers, more than one overlay "
                                         f"mount takes under {self.root}: move the store to a shorter path "
                                         "($TURBOK_IMAGE_STORE)", reference=image.repo_digest)
                    mounts.mount("overlay", target, "overlay", flags, options)
            except OSError as e:
                raise ImageError(f"mounting image {image.repo_digest} on {target} failed: {e.strerror} (needs root "
                                 "and overlayfs)", reference=image.repo_digest) from None
        return target

    def mounted_in_use(self) -> set[str]:
        """Image ids whose root filesystem is a lower layer of some overlay mounted here (a running container)."""
        prefix = str(self.images_dir) + "/"
        used: set[str] = set()
        with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if " - overlay " not in line or prefix not in line:
                    continue
                for opt in line.split(" - ", 1)[1].split()[-1].split(","):
                    if opt.startswith("lowerdir="):
                        for lower in opt[len("lowerdir="):].split(":"):
                            if lower.startswith(prefix):
                                used.add("sha256:" + lower[len(prefix):].split("/", 1)[0])
        return used

    def _unmount(self, image_id: str) -> None:
        target = self.rootfs_path(image_id)
        if target.exists() and mounts.is_mount_root(target):
            mounts.unmount(target)

    # ---- removing

    def remove(self, ref: Reference, *, force: bool = False) -> list[str]:
        """Untag ``ref``; the image goes when no tag is left (its layers when no other image has them).
        ``ImageInUse`` when a running container's root filesystem is on it (unless ``force``). Returns the
        references removed."""
        with self._gc_lock(fcntl.LOCK_EX):
            image = self.find(ref)
            if image is None:
                raise ImageError(f"image {ref} is not in the image store", reference=str(ref))
            tags = [r for r in image.refs if "@" not in r]
            drop_all = bool(ref.digest) or [str(ref)] == tags or not tags
            if drop_all and not force and image.id in self.mounted_in_use():
                raise ImageInUse(f"image {ref} is the root filesystem of a running container", reference=str(ref))
            gone = list(image.refs) if drop_all else [str(ref)]
            self._update_refs(lambda refs: _drop_refs(refs, gone))
            if drop_all:
                self._drop_image(image.id)
                self._collect()
            return gone

    def _drop_image(self, image_id: str) -> None:
        self._unmount(image_id)
        shutil.rmtree(self.images_dir / _hex(image_id), ignore_errors=True)

    def _collect(self) -> PruneResult:
        """Remove layers, blobs and partial downloads no image names (the gc lock is held)."""
        result = PruneResult()
        keep_layers: set[str] = set()
        keep_blobs: set[str] = set()
        for image in self.images():
            keep_blobs.update({_hex(image.id), _hex(image.config_digest), _hex(image.repo_digest.split("@", 1)[1])})
            keep_layers.update(_hex(x.diff_id) for x in image.layers)
        for entry in list(self.layers_dir.iterdir()) if self.layers_dir.is_dir() else []:
            name = entry.name.removesuffix(".json")
            if name in keep_layers:
                continue
            if entry.is_dir():
                result.bytes += _du(entry)
                shutil.rmtree(entry, ignore_errors=True)
                result.layers += 1
            else:
                entry.unlink(missing_ok=True)
        for entry in list(self.blobs.iterdir()) if self.blobs.is_dir() else []:
            if entry.name not in keep_blobs:
                result.bytes += entry.stat().st_size
                entry.unlink(missing_ok=True)
                result.blobs += 1
        for entry in list(self.tmp.iterdir()) if self.tmp.is_dir() else []:
            if entry.suffix == ".lock":
                continue
            result.bytes += _du(entry) if entry.is_dir() else entry.stat().st_size
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return result

    def prune(self, *, all_unused: bool = False) -> PruneResult:
        """Remove what no image needs (layers, blobs, partial downloads), images no reference names, and with
        ``all_unused`` every image no running container here is on (they are pulled again when needed)."""
        with self._gc_lock(fcntl.LOCK_EX):
            refs = self._refs()
            in_use = self.mounted_in_use()
            named = set(refs.values())
            dropped = []
            for image in self.images():
                if image.id in in_use:
                    continue
                if image.id not in named or all_unused:
                    self._drop_image(image.id)
                    dropped.append(image.repo_digest)
            gone_ids = {r for r, v in refs.items() if not (self.images_dir / _hex(v) / "image.json").exists()}
            if gone_ids:
                self._update_refs(lambda refs: _drop_refs(refs, gone_ids))
            result = self._collect()
            result.images = dropped
            return result


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _drop_refs(refs: dict[str, str], gone: Iterable[str]) -> None:
    for r in gone:
        refs.pop(r, None)
