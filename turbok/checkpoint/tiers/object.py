"""The object-storage tier: S3, GCS, Azure Blob or a local path, through obstore.

Why obstore: one maintained library (Rust's ``object_store``, used by the
Arrow and Delta ecosystems) for S3, GCS, Azure and local files behind one URL,
with multipart uploads and concurrent ranged reads built in, a real retry
policy (exponential backoff with jitter, bounded by a timeout), and I/O that
runs without the GIL, so a backup never slows the agent's other threads.
fsspec would need a different package per cloud (s3fs, gcsfs, adlfs), each
with its own retry and multipart behaviour.

Layout under the URL's prefix: ``<job>/<step:012d>/rank-<r:05d>.{data,manifest.json,commit}``;
the data is uploaded first (multipart, parallel parts), then the manifest,
then the marker holding the manifest's digest. Object stores make each PUT
atomic, so the marker appears only after the data and manifest are complete.

Failures after obstore's retries become TierUnavailableError; a missing
object becomes StepNotFoundError. Called by the agent's backup worker, the
restore planner and the CLI.
"""

from __future__ import annotations

import contextlib
import datetime
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import NotFoundError as ObstoreNotFound

from turbok.checkpoint.errors import ManifestError, StepNotFoundError, TierUnavailableError
from turbok.checkpoint.manifest import Manifest, PartKey
from turbok.checkpoint.tiers.base import OnChunk, PartState, Tier

__all__ = ["ObjectTier"]

# obstore raises its own errors and, for some conditions, Python's built-in ones.
_NOT_FOUND = (ObstoreNotFound, FileNotFoundError)
_FAILED = (ObstoreError, OSError)
_CLIENT_KEYS = {"allow_http", "allow_invalid_certificates", "connect_timeout", "timeout", "read_timeout", "user_agent", "proxy_url"}
_RANGE = 16 << 20


def _store(url: str, options: dict[str, Any], retry_timeout: float, max_retries: int) -> Any:
    if url.startswith("file://") or url.startswith("/"):
        path = Path(url.removeprefix("file://"))
        path.mkdir(parents=True, exist_ok=True)
        return obstore.store.LocalStore(path)
    client: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for k, v in options.items():
        if k in _CLIENT_KEYS:
            client[k] = v.lower() == "true" if isinstance(v, str) and k.startswith("allow") else v
        else:
            config[k] = v
    retry: dict[str, Any] = {
        "max_retries": max_retries,
        "retry_timeout": datetime.timedelta(seconds=retry_timeout),
        "backoff": {"init_backoff": datetime.timedelta(milliseconds=100), "max_backoff": datetime.timedelta(seconds=15), "base": 2},
    }
    return obstore.store.from_url(url, client_options=client or None, retry_config=retry, **config)  # type: ignore[call-overload]


class ObjectTier(Tier):
    """Parts in an object store; thread-safe (obstore clients are)."""

    speed = 30

    def __init__(
        self,
        url: str,
        *,
        options: dict[str, Any] | None = None,
        retry_timeout: float = 60.0,
        max_retries: int = 10,
        concurrency: int = 8,
        chunk_size: int = 16 << 20,
    ) -> None:
        self.url = url
        self.name = "object"
        self.concurrency = concurrency
        self.chunk_size = chunk_size
        try:
            self.store = _store(url, options or {}, retry_timeout, max_retries)
        except (*_FAILED, ValueError, TypeError) as e:
            raise TierUnavailableError(f"object store {url}: cannot configure ({e})") from e

    @staticmethod
    def _path(key: PartKey, suffix: str) -> str:
        return f"{key.job}/{key.step_dir}/{key.stem}.{suffix}"

    def _fail(self, what: str, key: PartKey | None, e: Exception) -> Exception:
        if isinstance(e, _NOT_FOUND):
            return StepNotFoundError(f"object store {self.url}: {key} not found")
        return TierUnavailableError(f"object store {self.url}: {what} {key or ''} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

    def put(self, key: PartKey, data: memoryview | bytes | Path) -> None:
        src: Any = data if isinstance(data, Path) else memoryview(data).cast("B")
        try:
            for suffix in ("commit", "corrupt"):  # an overwrite uncommits first
                with contextlib.suppress(*_NOT_FOUND):
                    obstore.delete(self.store, self._path(key, suffix))
            obstore.put(self.store, self._path(key, "data"), src, chunk_size=self.chunk_size, max_concurrency=self.concurrency)
        except _FAILED as e:
            raise self._fail("upload of", key, e) from e

    def commit(self, manifest: Manifest) -> None:
        key = manifest.key
        try:
            head = obstore.head(self.store, self._path(key, "data"))
            if int(head["size"]) < manifest.data_size:
                raise ManifestError(f"object store: {key} holds {head['size']} bytes, manifest says {manifest.data_size}")
            obstore.put(self.store, self._path(key, "manifest.json"), manifest.to_json())
            obstore.put(self.store, self._path(key, "commit"), manifest.digest().encode())
        except _FAILED as e:
            raise self._fail("commit of", key, e) from e

    def _read(self, path: str) -> bytes:
        return bytes(obstore.get(self.store, path).bytes())

    def manifest(self, key: PartKey) -> Manifest | None:
        try:
            digest = self._read(self._path(key, "commit")).decode().strip()
            manifest = Manifest.from_json(self._read(self._path(key, "manifest.json")), where=f"object store {key}")
        except _NOT_FOUND:
            return None
        except _FAILED as e:
            raise self._fail("read of", key, e) from e
        return manifest if manifest.digest() == digest and manifest.key == key else None

    def exists(self, key: PartKey) -> bool:
        try:
            return self.manifest(key) is not None
        except ManifestError:
            return False

    def get(self, key: PartKey, offset: int = 0, length: int | None = None) -> memoryview | bytes:
        manifest = self.manifest(key)
        if manifest is None:
            raise StepNotFoundError(f"object store {self.url}: {key} is not committed")
        if length is None:
            length = manifest.data_size - offset
        buf = bytearray(length)
        self._ranges(key, offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, key: PartKey, offset: int, dest: memoryview, on_chunk: OnChunk | None = None) -> None:
        self._ranges(key, offset, dest, on_chunk)

    def _ranges(self, key: PartKey, offset: int, dest: memoryview, on_chunk: OnChunk | None = None) -> None:
        starts = list(range(offset, offset + dest.nbytes, _RANGE))
        lengths = [min(_RANGE, offset + dest.nbytes - s) for s in starts]
        try:
            chunks = obstore.get_ranges(self.store, self._path(key, "data"), starts=starts, lengths=lengths)
        except _FAILED as e:
            raise self._fail("download of", key, e) from e
        for s, chunk in zip(starts, chunks, strict=True):
            mv = memoryview(chunk)
            dest[s - offset : s - offset + mv.nbytes] = mv
            if on_chunk is not None:
                on_chunk(s, dest[s - offset : s - offset + mv.nbytes])

    def list(self, job: str | None = None) -> list[PartState]:
        found: dict[PartKey, dict[str, int]] = {}
        try:
            for batch in obstore.list(self.store, prefix=f"{job}/" if job else None, chunk_size=1000):
                for meta in batch:
                    parts = str(meta["path"]).split("/")
                    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].startswith("rank-"):
                        continue
                    stem, _, suffix = parts[2].partition(".")
                    try:
                        key = PartKey(parts[0], int(parts[1]), int(stem[5:]))
                    except (ValueError, ManifestError):
                        continue
                    found.setdefault(key, {})[suffix] = int(meta["size"])
        except _FAILED as e:
            raise self._fail("listing of", None, e) from e

        def state(item: tuple[PartKey, dict[str, int]]) -> PartState | None:
            key, files = item
            if "data" not in files:
                return None
            manifest = None
            if "commit" in files and "manifest.json" in files:
                try:
                    manifest = self.manifest(key)
                except ManifestError:
                    manifest = None
            corrupt = manifest is None and "corrupt" in files
            return PartState(key, self.name, manifest is not None, manifest, files["data"], corrupt)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return [s for s in pool.map(state, sorted(found.items())) if s is not None]

    def quarantine(self, key: PartKey, reason: str) -> None:
        try:
            obstore.put(self.store, self._path(key, "corrupt"), reason.encode())
            with contextlib.suppress(*_NOT_FOUND):
                obstore.delete(self.store, self._path(key, "commit"))
        except _FAILED as e:
            raise self._fail("quarantine of", key, e) from e

    def delete(self, key: PartKey) -> None:
        for suffix in ("commit", "corrupt", "manifest.json", "data"):
            try:
                obstore.delete(self.store, self._path(key, suffix))
            except _NOT_FOUND:
                pass
            except _FAILED as e:
                raise self._fail("delete of", key, e) from e

    def put_file(self, key: PartKey, path: Path) -> None:
        """Upload a blob straight from a file (read by obstore's own threads)."""
        self.put(key, path)
