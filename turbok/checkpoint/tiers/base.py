"""The one interface every tier implements, and its contract.

A tier stores *parts* (one rank's blob for one step, see manifest.py) under a
``PartKey``. For one part, the calls come in this order:

1. ``put(key, data)``: write the whole blob. Afterwards the bytes are durable
   to the tier's own standard (page cache for memory, fsync'd for disk, a
   completed upload for object storage) but the part is NOT committed:
   ``exists`` is False, ``get`` refuses it, ``list`` shows it as partial.
2. ``commit(manifest)``: only after ``put`` returned. Writes the manifest, then
   (after the manifest is durable) a commit marker holding the manifest's
   digest. From the moment the marker exists the part is committed. A tier
   must check that the data it holds has the manifest's ``data_size``.

At any time:

- ``exists(key)``: True only for committed parts.
- ``get(key, offset=0, length=None)``: bytes of a committed part (a range of
  it when asked); raises StepNotFoundError for anything not committed.
- ``read_into(key, offset, dest, on_chunk=None)``: ``get`` straight into a
  caller's buffer; tiers override it to avoid the copy. ``on_chunk(offset,
  view)`` is called, in order, for contiguous pieces of ``dest`` as they are
  filled (the whole of it at the end at the latest), so a caller can hash
  while the rest arrives.
- ``list(job=None)``: every part the tier holds, committed or partial, as
  ``PartState``; committed ones carry their manifest. An unknown job is an
  empty list, not an error (the caller decides, across tiers).
- ``delete(key)``: idempotent. Removes the marker first, so a part is never
  committed with some of its data gone.
- ``quarantine(key, reason)``: a committed copy found corrupt stops being
  committed (the marker goes) but its bytes stay for inspection; ``list``
  shows it with ``corrupt`` set, it is never offered again, and only
  ``delete`` (retention, ``turbok checkpoint repair``) or a new ``put`` removes it.

Tiers are used from several threads at once; each implementation says what it
assumes. Nothing here verifies hashes: that is the caller's job (restore.py),
so one corrupted tier can be skipped in favour of another.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from turbok.checkpoint.manifest import Manifest, PartKey

__all__ = ["OnChunk", "PartState", "Tier"]

#: ``read_into``'s progress callback: (offset in the blob, view of the bytes now in the destination)
OnChunk = Callable[[int, memoryview], None]


@dataclass(frozen=True)
class PartState:
    """What a tier holds for one part."""

    key: PartKey
    tier: str
    committed: bool
    manifest: Manifest | None = None
    size: int = 0
    corrupt: bool = False


class Tier(ABC):
    """One storage tier; see the module docstring for the contract."""

    #: short name shown by ``turbok checkpoint ls`` ("memory", "disk", "peer 127.0.0.1:7481", "object")
    name: str = "tier"
    #: restore order: lower is tried first
    speed: int = 100

    @abstractmethod
    def put(self, key: PartKey, data: memoryview | bytes) -> None:
        """Store the blob of ``key``, uncommitted."""

    @abstractmethod
    def commit(self, manifest: Manifest) -> None:
        """Make ``manifest.key`` visible, atomically, after its data is durable."""

    @abstractmethod
    def get(self, key: PartKey, offset: int = 0, length: int | None = None) -> memoryview | bytes:
        """Bytes of a committed part."""

    @abstractmethod
    def exists(self, key: PartKey) -> bool:
        """Whether ``key`` is committed here."""

    @abstractmethod
    def list(self, job: str | None = None) -> list[PartState]:
        """Every part held, committed or partial."""

    @abstractmethod
    def delete(self, key: PartKey) -> None:
        """Forget ``key`` (marker first); no error when absent."""

    @abstractmethod
    def quarantine(self, key: PartKey, reason: str) -> None:
        """Uncommit a copy that failed its hashes, keeping its bytes; no error when absent."""

    def read_into(self, key: PartKey, offset: int, dest: memoryview, on_chunk: OnChunk | None = None) -> None:
        """Fill ``dest`` with the committed bytes of ``key`` from ``offset``."""
        data = self.get(key, offset, dest.nbytes)
        dest[:] = memoryview(data).cast("B")
        if on_chunk is not None:
            on_chunk(offset, dest)

    def manifest(self, key: PartKey) -> Manifest | None:
        """The committed manifest of ``key``, or None."""
        for state in self.list(key.job):
            if state.key == key and state.committed:
                return state.manifest
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and mappings."""
