"""The library in the training process: ``CheckpointManager.save`` / ``restore``.

``save(step, state)`` is the only checkpoint work training waits for:

1. lay the state out (packing.py) and ask the node agent for room (``acquire``);
2. copy every leaf into the memory tier's file through a mapping this process
   keeps open across saves (so the pages are already touched and mapped);
3. hand the layout to the agent (``staged``) and return.

From then on the agent owns the step: hashing, commits, disk, peers, object
store. If the training process dies right after ``save`` returns, the step is
still committed. ``wait(step, tier)`` blocks until a tier holds it.

Buffer reuse and double buffering: the agent hands out pooled buffers, and
never one that holds a step still being drained. With a memory tier of at
least two parts, save N+1 copies into a second buffer while N drains; with
room for one part, save N+1 waits (up to ``staging_timeout`` seconds, then
StagingBusyError) until N is durable on disk. A save larger than the whole
tier fails at once with CapacityError and the previous checkpoints stay.

``restore(step=None, into=None, verify=True)`` asks the agent for the newest
step complete for every rank (or ``step``); the agent brings this rank's part
into memory from the fastest copy (verified as it lands when it comes from
another tier); the library copies it out (into ``into``'s tensors and arrays
in place when given, the fast path), checking a memory copy in the same
pass as the copy.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from turbok.checkpoint.errors import AgentUnavailableError, CheckpointError, error_from_wire
from turbok.checkpoint.manifest import Manifest, PartKey
from turbok.checkpoint.packing import Unpacker, plan, unpack, unpack_checked
from turbok.checkpoint.tiers.memory import MappingCache
from turbok.checkpoint.wire import Client, recv_body, recv_header

__all__ = ["DEFAULT_AGENT", "CheckpointManager", "Restored", "SaveResult"]

DEFAULT_AGENT = "127.0.0.1:7480"


@dataclass(frozen=True)
class SaveResult:
    step: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Restored:
    step: int
    state: Any
    manifest: Manifest


class CheckpointManager:
    """Save and restore one rank's state through the node agent at ``agent``."""

    def __init__(
        self,
        job: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        agent: str | None = None,
        token: str = "",
        staging_timeout: float = 120.0,
    ) -> None:
        PartKey(job, 0, rank)  # validates the job name
        if not 0 <= rank < world_size:
            raise CheckpointError(f"rank {rank} is outside world size {world_size}")
        self.job, self.rank, self.world_size = job, rank, world_size
        self.agent = agent or os.environ.get("TURBOK_CHECKPOINT_AGENT") or DEFAULT_AGENT
        self.client = Client(self.agent, token=token, timeout=max(staging_timeout + 30, 60))
        self.staging_timeout = staging_timeout
        # Two buffers in use at a time (double buffering) plus slack for buffers the agent recycles.
        self._maps = MappingCache(max_entries=4)

    def _key(self, step: int) -> PartKey:
        return PartKey(self.job, step, self.rank)

    def save(self, step: int, state: Any) -> SaveResult:
        """Copy ``state`` into the memory tier and return; the agent does the rest."""
        t0 = time.perf_counter()
        key = self._key(step)
        packing = plan(state)
        fields: dict[str, Any] = {"job": key.job, "step": key.step, "rank": key.rank}
        reply = self.client.call("acquire", size=packing.data_size, wait_s=self.staging_timeout, **fields)
        try:
            view = self._maps.view(reply["path"], packing.data_size)
            packing.copy_into(view)
            view.release()
        except BaseException:
            self.client.call("abort", **fields)
            raise
        self.client.call("staged", manifest=packing.manifest(key, self.world_size).to_dict())
        return SaveResult(step, packing.data_size, time.perf_counter() - t0)

    def wait(self, step: int, tier: str = "disk", timeout: float = 600.0) -> str:
        """Block until ``tier`` ("memory", "disk", "peers", "object") holds ``step``; returns the outcome."""
        key = self._key(step)
        reply = self.client.call("wait", job=key.job, step=key.step, rank=key.rank, tier=tier, wait_s=timeout, timeout=timeout + 30)
        return str(reply.get("outcome", "done"))

    def restore(self, step: int | None = None, *, into: Any = None, rank: int | None = None, verify: bool = True) -> Restored:
        """Restore the newest step complete for every rank (or ``step``).

        ``rank``: another rank's part (DCP resharding reads them); default this rank.
        ``verify``: check every shard (the default). When the agent's memory tier holds the
        step, this process checks each shard's XXH3 in the same pass as its copy, and on a
        mismatch asks the agent to verify the copy with BLAKE3 and repair it from another
        tier, then copies again. ``verify=False`` trusts a committed memory copy: the
        restore is then one memcpy. Copies fetched from disk, peers or the object store are
        verified by the agent as they land, whatever ``verify`` says.
        """
        rank = self.rank if rank is None else rank
        # A memory copy is not verified by the agent for us: we check it while copying (below).
        # A part the agent must fetch (disk, peer, object) streams: see _streamed.
        with self.client.lock:
            reply = self.client.request("restore", job=self.job, rank=rank, step=step, verify=False, stream=True)
            if reply.get("stream"):
                try:
                    restored = self._streamed(reply, into)
                except BaseException:
                    self.client.close()  # frames may be left unread: start afresh
                    raise
                finally:
                    self._release(int(reply["manifest"]["step"]), rank)
                return restored
            if reply.get("size"):
                recv_body(self.client.sock, int(reply["size"]))
        try:
            manifest = Manifest.from_dict(reply["manifest"], where="restored manifest")
            if verify and not reply.get("verified") and not manifest.checked:
                # No XXH3 checks to copy against: let the agent verify (BLAKE3) and repair first.
                reply = self.client.call("restore", job=self.job, rank=rank, step=manifest.key.step, verify=True)
                manifest = Manifest.from_dict(reply["manifest"], where="restored manifest")
            view = self._maps.view(reply["path"], manifest.data_size)
            state, bad = unpack_checked(view, manifest, into, check=verify and not reply.get("verified"))
            if bad:
                # A corrupt memory copy: the agent verifies it, repairs it from another tier, and we copy again.
                view.release()
                reply = self.client.call("restore", job=self.job, rank=rank, step=manifest.key.step, verify=True)
                manifest = Manifest.from_dict(reply["manifest"], where="restored manifest")
                view = self._maps.view(reply["path"], manifest.data_size)
                state = unpack(view, manifest, into)
            view.release()
        finally:
            self._release(int(reply["manifest"]["step"]), rank)
        return Restored(manifest.key.step, state, manifest)

    def _release(self, step: int, rank: int) -> None:
        self.client.call("release", job=self.job, step=step, rank=rank)

    def _streamed(self, reply: dict[str, Any], into: Any) -> Restored:
        """Copy shards out while the agent still reads the part: it reports how many bytes are in
        (``upto``), checks every shard as it lands, and ends with the shards it had to repair,
        which are copied again. Called with the client's lock held."""
        manifest = Manifest.from_dict(reply["manifest"], where="restored manifest")
        view = self._maps.view(reply["path"], manifest.data_size)
        unpacker = Unpacker(view, manifest, into)
        pending = sorted(range(len(manifest.shards)), key=lambda i: manifest.shards[i].offset + manifest.shards[i].size)
        while True:
            frame = recv_header(self.client.sock)
            if frame is None:
                raise AgentUnavailableError(f"checkpoint agent at {self.agent} closed the connection during a restore")
            if not frame.get("ok"):
                raise error_from_wire(str(frame.get("error", "")), str(frame.get("message", "agent error")))
            upto = manifest.data_size if frame.get("done") else int(frame.get("upto", 0))
            ready = 0
            while ready < len(pending) and manifest.shards[pending[ready]].offset + manifest.shards[pending[ready]].size <= upto:
                ready += 1
            if ready:
                unpacker.copy(pending[:ready])
                pending = pending[ready:]
            if frame.get("done"):
                unpacker.copy([int(i) for i in frame.get("repaired", [])])
                break
        state = unpacker.state()
        view.release()
        return Restored(manifest.key.step, state, manifest)

    def latest_step(self) -> int | None:
        """The newest step complete for every rank that this rank's agent can see."""
        from turbok.checkpoint.restore import Catalog
        from turbok.checkpoint.tiers.peer import PeerTier

        tiers: list[Any] = [PeerTier(self.agent)]
        info = self.client.call("describe")
        tiers += [PeerTier(p) for p in info.get("peers", []) if p != info.get("address")]
        try:
            return Catalog(self.job, tiers).newest_complete()
        finally:
            for t in tiers:
                t.close()

    def metrics(self) -> str:
        with self.client.lock:
            reply = self.client.request("metrics")
            return recv_body(self.client.sock, int(reply.get("size", 0))).decode()

    def close(self) -> None:
        self.client.close()
        self._maps.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
