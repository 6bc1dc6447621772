"""The peer tier: another node's agent, seen through the wire protocol.

A ``PeerTier`` is a client. What it stores lands in the remote agent's local
tiers (memory first when it has room, else disk; then drained to its disk),
and what it lists or serves comes from them. So a rank's replica on a peer is
an ordinary part in that peer's directories, and a fresh agent that lost its
own tiers restores the rank by reading it back from here.

``put`` streams the blob into the remote agent, which writes it uncommitted;
``commit`` sends the manifest; the remote agent verifies every shard hash
against the bytes it received before it writes the marker (a replica is never
committed unverified). ``replicate(manifest, data)`` does both in one round
trip, which is what the agent's replication uses: knowing the layout up
front, the receiver hashes each chunk while the next one arrives.
Connection failures become TierUnavailableError.

Called by agent.py (replication, restore) and the CLI.
"""

from __future__ import annotations

from typing import Any

from turbok.checkpoint.errors import AgentUnavailableError, TierUnavailableError
from turbok.checkpoint.manifest import Manifest, PartKey
from turbok.checkpoint.tiers.base import OnChunk, PartState, Tier
from turbok.checkpoint.wire import Client, recv_body, recv_into

__all__ = ["PeerTier", "state_from_wire", "state_to_wire"]


def state_to_wire(s: PartState) -> dict[str, Any]:
    return {
        "job": s.key.job,
        "step": s.key.step,
        "rank": s.key.rank,
        "tier": s.tier,
        "committed": s.committed,
        "size": s.size,
        "manifest": s.manifest.to_dict() if s.manifest is not None else None,
        **({"corrupt": True} if s.corrupt else {}),
    }


def state_from_wire(d: dict[str, Any], tier: str | None = None) -> PartState:
    manifest = Manifest.from_dict(d["manifest"], where=f"manifest from {tier}") if d.get("manifest") else None
    return PartState(
        PartKey(d["job"], d["step"], d["rank"]), tier or d["tier"], bool(d["committed"]), manifest, int(d.get("size", 0)),
        bool(d.get("corrupt", False)),
    )


class PeerTier(Tier):
    """A remote agent's local tiers; thread-safe (one connection, calls serialized)."""

    speed = 20

    def __init__(self, address: str, *, token: str = "", timeout: float = 60.0) -> None:
        self.address = address
        self.name = f"peer {address}"
        self.client = Client(address, timeout=timeout, token=token)

    def _call(self, op: str, body: memoryview | bytes | None = None, **fields: Any) -> dict[str, Any]:
        try:
            return self.client.call(op, body, **fields)
        except AgentUnavailableError as e:
            raise TierUnavailableError(f"{self.name}: {e}") from e

    @staticmethod
    def _key(key: PartKey) -> dict[str, Any]:
        return {"job": key.job, "step": key.step, "rank": key.rank}

    def put(self, key: PartKey, data: memoryview | bytes) -> None:
        self._call("put", memoryview(data).cast("B"), **self._key(key))

    def commit(self, manifest: Manifest) -> None:
        self._call("commit", manifest=manifest.to_dict())

    def replicate(self, manifest: Manifest, data: memoryview | bytes) -> None:
        """``put`` and ``commit`` in one round trip: the remote agent hashes the shards
        while the bytes arrive, so the commit does not wait for a second pass over them."""
        self._call("replicate", memoryview(data).cast("B"), manifest=manifest.to_dict())

    def get(self, key: PartKey, offset: int = 0, length: int | None = None) -> memoryview | bytes:
        with self.client.lock:
            reply = self._request("get", key, offset, length)
            try:
                return recv_body(self.client.sock, int(reply["size"]))
            except OSError as e:
                self.client.close()
                raise TierUnavailableError(f"{self.name}: {e}") from e

    def get_copy(self, key: PartKey, tier: str) -> bytes:
        """The whole part from one of the remote agent's tiers ("memory" or "disk")."""
        with self.client.lock:
            try:
                reply = self.client.request("get", offset=0, length=None, tier=tier, **self._key(key))
                return recv_body(self.client.sock, int(reply["size"]))
            except AgentUnavailableError as e:
                raise TierUnavailableError(f"{self.name}: {e}") from e
            except OSError as e:
                self.client.close()
                raise TierUnavailableError(f"{self.name}: {e}") from e

    def read_into(self, key: PartKey, offset: int, dest: memoryview, on_chunk: OnChunk | None = None) -> None:
        with self.client.lock:
            reply = self._request("get", key, offset, dest.nbytes)
            if int(reply["size"]) != dest.nbytes:
                self.client.close()
                raise TierUnavailableError(f"{self.name}: sent {reply['size']} bytes of {key}, wanted {dest.nbytes}")
            try:
                recv_into(self.client.sock, dest, on_chunk=(lambda pos, view: on_chunk(offset + pos, view)) if on_chunk else None)
            except OSError as e:
                self.client.close()
                raise TierUnavailableError(f"{self.name}: {e}") from e

    def _request(self, op: str, key: PartKey, offset: int, length: int | None) -> dict[str, Any]:
        try:
            return self.client.request(op, offset=offset, length=length, **self._key(key))
        except AgentUnavailableError as e:
            raise TierUnavailableError(f"{self.name}: {e}") from e

    def exists(self, key: PartKey) -> bool:
        return any(s.key == key and s.committed for s in self.list(key.job))

    def list(self, job: str | None = None) -> list[PartState]:
        reply = self._call("list", job=job)
        return [state_from_wire(d, self.name) for d in reply["parts"]]

    def delete(self, key: PartKey) -> None:
        self._call("delete", **self._key(key))

    def quarantine(self, key: PartKey, reason: str) -> None:
        self._call("quarantine", reason=reason, **self._key(key))

    def close(self) -> None:
        self.client.close()
