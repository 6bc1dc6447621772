"""The agent's side of restore: bring a part into memory, heal what was bad, read ranges.

``Restorer.restore(job, rank, step)`` picks the step (restore.py's Catalog
over this agent's memory and disk, its peers and the object store), hands out
a committed memory copy as it is (checked by the library while it copies) or
fetches the part into the memory tier from the fastest other tier, checking
every chunk as it lands. What it finds wrong it heals, so one restore leaves
every copy good (issue 12, bug 4):

- every copy of a shard that failed its hash counts in
  ``turbok_checkpoint_failures_total{tier,op="verify"}`` and is an event;
- a bad memory copy is repaired in place; a bad disk copy is rewritten from
  the verified memory copy; a bad replica on a peer is pushed again; a bad
  object-store copy is uploaded again (in the background);
- a part no copy of which is good is *quarantined* on every tier (the marker
  goes, the bytes stay: ``Tier.quarantine``), so its step stops being
  complete everywhere and every rank's next choice is the newest good older
  step. The library retries an unpinned restore after such an
  IntegrityError, which therefore falls back by itself.

The part handed to the library is pinned for the library's connection until
it sends ``release`` (or disconnects).

``read_ranges`` serves byte ranges of shards (DCP resharding, another
process's JAX shard): from a local memory copy the library reads them itself;
otherwise the agent reads the blocks covering each range from the fastest
tier holding the part, checks each block (``Shard.blocks``; a shard without
block checks is read and checked whole), takes a bad block from the next
tier, and sends exactly the bytes asked for.

Called by the wire server (server.py).
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from turbok.checkpoint.context import AgentContext
from turbok.checkpoint.errors import CheckpointError, IntegrityError, ManifestError, StepNotFoundError
from turbok.checkpoint.leases import Pin
from turbok.checkpoint.manifest import BLOCK, Manifest, PartKey, Shard, shard_matches, verify_shards
from turbok.checkpoint.pipeline import Pipeline
from turbok.checkpoint.restore import Catalog, Source, fetch
from turbok.checkpoint.tiers.base import Tier

__all__ = ["Restorer"]

log = logging.getLogger(__name__)
_CHUNK = 64 << 20
_LEN = struct.Struct(">I")


class Restorer:
    def __init__(self, ctx: AgentContext, pipeline: Pipeline) -> None:
        self.ctx = ctx
        self.pipeline = pipeline

    def catalog(self, job: str) -> Catalog:
        return Catalog(job, self.ctx.all_tiers())

    # -- whole parts ----------------------------------------------------------------------------
    def restore(
        self,
        job: str,
        rank: int,
        step: int | None,
        *,
        owner: int | None = None,
        verify: bool = True,
        on_fetch: Callable[[Manifest, Path], None] | None = None,
        progress: Callable[[int], None] | None = None,
        repaired: list[Shard] | None = None,
    ) -> tuple[Manifest, Path, bool, Pin]:
        """Bring ``rank``'s part of the chosen step into the memory tier, pinned for ``owner``.

        Returns the manifest, the memory-tier file, whether its bytes were verified here, and the pin.
        ``verify=False`` hands out a committed memory copy without hashing it (the library then
        checks it itself while it copies, or trusts it); copies from other tiers are always
        verified as they are fetched.
        """
        c = self.ctx
        self.pipeline.settle(job, c.settings.staging_timeout_s)  # a step saved just now counts
        catalog = self.catalog(job)
        chosen = catalog.choose(step)
        key = PartKey(job, chosen, rank)
        sources = [s for s in catalog.sources(key) if s.tier is not c.memory]
        try:
            have = c.memory.committed_manifest(key)
        except ManifestError as e:
            log.warning("checkpoint agent: %s; using the other tiers", e)
            c.memory.uncommit(key)
            have = None
        if have is None and not sources:
            raise StepNotFoundError(f"job {job!r}: step {chosen} has no committed copy of rank {rank}")
        bad_tiers: set[str] = set()

        def on_bad(tier: str, shard: Shard) -> None:
            bad_tiers.add(tier)
            c.metrics.failed(tier, "verify")
            c.events.record("HashMismatch", f"{key}: shard {shard.name!r} failed its hash on {tier}", key, tier=tier)

        observe = self._observer("restore")
        pin = c.residency.pin(key, owner)
        try:
            if have is not None:
                view = c.memory.view(key, have.data_size)
                if not verify:
                    return have, c.memory.data_path(key), False, pin
                t0 = time.perf_counter()
                bad = verify_shards(view, have)
                c.metrics.moved("memory", "verify", have.data_size, time.perf_counter() - t0)
                if not bad:
                    return have, c.memory.data_path(key), True, pin
                c.memory.uncommit(key)
                manifest = self._fetch(catalog, key, sources, view, have=have, observe=observe, on_bad=on_bad)
            else:
                manifest = sources[0].manifest
                c.reserve(key, manifest.data_size, c.settings.staging_timeout_s)
                view = c.memory.view(key, manifest.data_size)
                try:
                    if on_fetch is not None:
                        on_fetch(manifest, c.memory.data_path(key))
                    manifest = self._fetch(catalog, key, sources, view, observe=observe, progress=progress,
                                           repaired=repaired, on_bad=on_bad)
                except BaseException:
                    c.memory.delete(key)
                    raise
        except BaseException:
            pin.release()
            raise
        c.memory.commit(manifest)
        c.metrics.committed("memory", job, chosen)
        self._heal(key, manifest, view, bad_tiers - {"memory"}, sources)
        if not c.disk.exists(key):
            self.pipeline.submit(manifest, hashed=True, replicate=False, backup=False)
        return manifest, c.memory.data_path(key), True, pin

    def _fetch(self, catalog: Catalog, key: PartKey, sources: list[Source], view: memoryview, **kw: Any) -> Manifest:
        try:
            return fetch(key, sources, view, **kw)
        except IntegrityError as e:
            self.quarantine(catalog, key, str(e))
            raise IntegrityError(f"{e}; quarantined on every tier, so the newest good older step is the next "
                                 "one offered") from None

    def quarantine(self, catalog: Catalog, key: PartKey, reason: str) -> None:
        """Uncommit every copy of ``key`` (keeping the bytes): no copy matched its hashes."""
        c = self.ctx
        c.metrics.failed("all", "restore")
        c.events.record("Quarantined", f"{key}: {reason}", key)
        for tier, state in catalog.states:
            if state.key == key and state.committed:
                try:
                    tier.quarantine(key, reason)
                except CheckpointError as e:
                    log.warning("checkpoint agent: cannot quarantine %s on %s: %s", key, tier.name, e)

    def _heal(self, key: PartKey, manifest: Manifest, view: memoryview, bad: set[str], sources: list[Source]) -> None:
        """Rewrite the copies that failed their hashes from the verified memory copy."""
        c = self.ctx
        if not bad:
            return
        if "disk" in bad:
            c.disk.delete(key)  # the pipeline writes it again from memory (below, in restore)
            c.events.record("Repaired", f"{key}: disk copy rewritten from a verified copy", key, tier="disk", warning=False)
        for src in sources:
            if src.tier.name not in bad or src.tier is c.disk:
                continue
            tier = src.tier

            def push(tier: Tier = tier) -> None:
                with c.residency.pin(key):
                    try:
                        if tier is c.object:
                            tier.put(key, view)
                            tier.commit(manifest)
                        elif hasattr(tier, "replicate"):
                            tier.replicate(manifest, view)
                        else:
                            return
                        c.events.record("Repaired", f"{key}: copy on {tier.name} rewritten from a verified copy",
                                        key, tier=tier.name, warning=False)
                    except CheckpointError as e:
                        c.events.record("RepairFailed", f"{key}: copy on {tier.name}: {e}", key, tier=tier.name)

            self.pipeline.io.submit(push)

    def _observer(self, op: str) -> Callable[[str, int, float], None]:
        def observe(tier: str, nbytes: int, seconds: float) -> None:
            self.ctx.metrics.moved(tier, op, nbytes, seconds)

        return observe

    # -- byte ranges ----------------------------------------------------------------------------
    def read_ranges(self, sock: socket.socket, key: PartKey, ranges: list[tuple[str, int, int]], *,
                    owner: int) -> None:
        """Answer ``read``: a local memory copy's path (the library reads it), else the bytes.

        ``ranges``: (shard name, start, end) relative to the shard. The body is every range's
        bytes, in order.
        """
        from turbok.checkpoint.wire import send_frame

        c = self.ctx
        manifest = c.memory.committed_manifest(key)
        if manifest is not None:
            pin = c.residency.pin(key, owner)
            try:
                send_frame(sock, {"ok": True, "local": True, "path": str(c.memory.data_path(key)),
                                  "manifest": manifest.to_dict()})
            except BaseException:
                pin.release()
                raise
            return
        catalog = self.catalog(key.job)
        sources = [s for s in catalog.sources(key) if s.tier is not c.memory]
        if not sources:
            raise StepNotFoundError(f"{key} has no committed copy on any reachable tier")
        manifest = sources[0].manifest
        wanted = [(manifest.shard(name), start, manifest.shard(name).size if end < 0 else end) for name, start, end in ranges]
        for shard, start, end in wanted:
            if not 0 <= start <= end <= shard.size:
                raise CheckpointError(f"{key}: range [{start}, {end}) outside shard {shard.name!r} of {shard.size} bytes")
        total = sum(end - start for _, start, end in wanted)
        header = {"ok": True, "local": False, "manifest": manifest.to_dict(), "size": total}
        raw = json.dumps(header, separators=(",", ":")).encode()
        sock.sendall(_LEN.pack(len(raw)) + raw)
        # From here on the reply is a body: a failure can only end the connection (the library
        # then reports the read as failed; the event log says why).
        try:
            self._send_ranges(sock, key, wanted, sources)
        except (CheckpointError, OSError) as e:
            raise ConnectionAbortedError(f"read of {key} failed after the reply started: {e}") from e

    def _send_ranges(self, sock: socket.socket, key: PartKey, wanted: list[tuple[Shard, int, int]],
                     sources: list[Source]) -> None:
        observe = self._observer("read")
        scratch = memoryview(bytearray(_CHUNK + 2 * BLOCK))
        for shard, start, end in wanted:
            if not shard.blocks:  # no block checks: the whole shard, checked against its check
                whole = memoryview(bytearray(shard.size))
                self._read_checked(key, shard, 0, whole, sources, observe)
                sock.sendall(whole[start:end])
                continue
            pos = start
            while pos < end:
                stop = min(end, pos + _CHUNK)
                lo, hi = shard.block_span(pos, stop)
                buf = scratch[: hi - lo]
                self._read_checked(key, shard, lo, buf, sources, observe)
                sock.sendall(buf[pos - lo : stop - lo])
                pos = stop

    def _read_checked(self, key: PartKey, shard: Shard, lo: int, dest: memoryview, sources: list[Source],
                      observe: Callable[[str, int, float], None]) -> None:
        """Fill ``dest`` with shard bytes ``[lo, lo + len)``, each block (or the whole shard) checked."""
        c = self.ctx
        pending = list(range(lo, lo + dest.nbytes, BLOCK)) if shard.blocks else [0]
        for src in sources:
            still = []
            for off in pending:
                n = min(BLOCK, lo + dest.nbytes - off) if shard.blocks else shard.size
                piece = dest[off - lo : off - lo + n]
                t0 = time.perf_counter()
                try:
                    src.tier.read_into(key, shard.offset + off, piece)
                except (CheckpointError, OSError, EOFError) as e:
                    log.warning("checkpoint agent: reading %s from %s failed: %s", key, src.tier.name, e)
                    still.append(off)
                    continue
                observe(src.tier.name, n, time.perf_counter() - t0)
                ok = (xxhash.xxh3_64_hexdigest(piece) == shard.blocks[off // BLOCK]) if shard.blocks else \
                    shard_matches(shard, piece, checks=bool(shard.check))
                if not ok:
                    c.metrics.failed(src.tier.name, "verify")
                    c.events.record("HashMismatch", f"{key}: shard {shard.name!r} failed its hash on {src.tier.name}",
                                    key, tier=src.tier.name)
                    still.append(off)
            pending = still
            if not pending:
                return
        raise IntegrityError(f"{key}: shard {shard.name!r} matches its hash on no tier")
