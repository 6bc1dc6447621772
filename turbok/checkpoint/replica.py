"""The receiving side of replication: a peer's part arrives, is checked, and is committed.

Two ways in, both served by the agent's wire protocol: ``replicate`` (one
round trip: manifest and body, shards hashed while the bytes land, committed
only if every shard matches) and the Tier contract's ``put`` then ``commit``
(``PeerTier`` used as a plain tier: the body first, verified at commit).

A body lands in a pooled buffer of the memory tier when one is free, else on
the disk tier; a replica committed in memory then goes down to disk through
the agent's pipeline like a local step, without being replicated again.
Fault injection: ``replicate.before_commit``. Called by the agent's wire server (server.py).
"""

from __future__ import annotations

import mmap
import socket
import time
from typing import Any

from turbok.checkpoint.context import AgentContext
from turbok.checkpoint.copying import ShardHasher
from turbok.checkpoint.errors import CheckpointError, StagingBusyError
from turbok.checkpoint.leases import Pin
from turbok.checkpoint.manifest import Manifest, PartKey, verify_shards
from turbok.checkpoint.pipeline import Pipeline
from turbok.checkpoint.tiers.disk import DiskTier
from turbok.checkpoint.tiers.memory import MemoryTier
from turbok.checkpoint.wire import recv_into

__all__ = ["Replicas"]

_CHUNK = 16 << 20


class Replicas:
    def __init__(self, ctx: AgentContext, pipeline: Pipeline) -> None:
        self.ctx = ctx
        self.pipeline = pipeline
        self._pins: dict[PartKey, Pin] = {}

    def put(self, sock: socket.socket, key: PartKey, size: int) -> str:
        """Receive a body uncommitted; the tier it landed in ("memory" or "disk")."""
        target, _ = self._receive(sock, key, size, None)
        return target

    def commit(self, manifest: Manifest) -> None:
        self._commit(manifest, None)

    def replicate(self, sock: socket.socket, header: dict[str, Any]) -> None:
        """A peer's replica in one round trip: blob and manifest, hashed while it arrives, then committed."""
        try:
            manifest = Manifest.from_dict(header["manifest"], where="replica manifest")
            if int(header.get("size", -1)) != manifest.data_size:
                raise CheckpointError(
                    f"{manifest.key}: body of {header.get('size')} bytes for a part of {manifest.data_size}")
        except (CheckpointError, KeyError, ValueError, TypeError):
            discard(sock, int(header.get("size") or 0))
            raise
        _, hasher = self._receive(sock, manifest.key, manifest.data_size, manifest)
        self._commit(manifest, hasher)

    def _receive(self, sock: socket.socket, key: PartKey, size: int,
                 layout: Manifest | None) -> tuple[str, ShardHasher | None]:
        """Receive a body into a pooled memory buffer (else the disk tier), uncommitted.

        With ``layout``, the shards are hashed while the bytes arrive; the hasher is returned.
        """
        ctx = self.ctx
        try:
            ctx.residency.begin_receiving(key, "memory")
        except CheckpointError:
            discard(sock, size)
            raise CheckpointError(f"{key} is already being written on {ctx.address}") from None
        ctx.disk.delete(key)  # an overwrite uncommits every local copy first
        try:
            ctx.reserve(key, size, timeout=0.0)
            target = "memory"
        except (StagingBusyError, CheckpointError):
            target = "disk"
        ctx.residency.retarget(key, target)
        with ctx.cond:
            self._pins[key] = ctx.residency.pin(key)
        # In memory the bytes stay put: hash them on a worker while the next ones arrive. On the
        # disk path the receive buffer is reused at once, so hash each chunk before writing it.
        hasher = None
        if layout is not None:
            hasher = ShardHasher(layout.shards, checks=layout.checked,
                                 background=target == "memory" and not layout.checked)
        try:
            t0 = time.perf_counter()
            if target == "memory":
                recv_into(sock, ctx.memory.view(key, size), on_chunk=hasher.feed if hasher else None)
            else:
                self._receive_to_disk(sock, key, size, hasher)
            ctx.metrics.moved(target, "receive", size, time.perf_counter() - t0)
        except BaseException:
            if hasher is not None:
                hasher.close()
            (ctx.memory if target == "memory" else ctx.disk).delete(key)
            self._done(key)
            raise
        return target, hasher

    def _receive_to_disk(self, sock: socket.socket, key: PartKey, size: int, sync: ShardHasher | None) -> None:
        buf = mmap.mmap(-1, _CHUNK)
        try:
            view = memoryview(buf)
            with self.ctx.disk.writer(key, size) as w:
                for off in range(0, size, _CHUNK):
                    n = min(_CHUNK, size - off)
                    recv_into(sock, view[:n])
                    if sync is not None:
                        sync.feed(off, view[:n])  # before the buffer is reused
                    w.write(view[:n])
            view.release()
        finally:
            buf.close()

    def _commit(self, manifest: Manifest, hasher: ShardHasher | None) -> None:
        """Verify a received replica (hashes computed while receiving, or a pass now) and commit it."""
        ctx, key = self.ctx, manifest.key
        target = ctx.residency.receiving(key)
        if target is None:
            raise CheckpointError(f"{key}: commit without a put on {ctx.address}")
        try:
            ctx.fault("replicate.before_commit", key)
            tier: MemoryTier | DiskTier = ctx.memory if target == "memory" else ctx.disk
            if hasher is not None:
                bad = hasher.bad()
            else:
                view = (ctx.memory.view(key, manifest.data_size) if target == "memory"
                        else memoryview(ctx.disk.read_uncommitted(key)))
                bad = verify_shards(view, manifest)
            if bad:
                tier.delete(key)
                ctx.metrics.failed(target, "verify")
                ctx.events.record("ReplicaRejected", f"{key}: replica shards {[s.name for s in bad][:5]} do not match "
                                  "their hashes; not committed", key, tier=target)
                raise CheckpointError(
                    f"{key}: replica shards {[s.name for s in bad][:5]} do not match their hashes; not committed")
            tier.commit(manifest)
            ctx.metrics.committed(tier.name, key.job, key.step)
            if target == "memory":
                self.pipeline.submit(manifest, hashed=True, replicate=False, backup=False)
        except BaseException:
            if hasher is not None:
                hasher.close()
            raise
        finally:
            self._done(key)

    def _done(self, key: PartKey) -> None:
        self.ctx.residency.end_receiving(key)
        with self.ctx.cond:
            pin = self._pins.pop(key, None)
        if pin is not None:
            pin.release()


def discard(sock: socket.socket, size: int) -> None:
    """Read and drop a request body that will not be used, so the connection stays in step."""
    if size <= 0:
        return
    buf = mmap.mmap(-1, min(size, _CHUNK))
    try:
        view = memoryview(buf)
        left = size
        while left:
            n = min(left, len(buf))
            recv_into(sock, view[:n])
            left -= n
        view.release()
    finally:
        buf.close()
