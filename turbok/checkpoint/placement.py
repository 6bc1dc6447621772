"""Which peers hold the replicas of a rank: rendezvous (highest-random-weight) hashing.

For a part (job, rank) every agent scores each candidate peer with
``blake3(job, rank, peer)`` and takes the ``k`` best, skipping itself. Why
rendezvous hashing rather than a ring: it needs no shared state or ring
positions, every agent computes the same answer from the same peer list, and
when a peer joins or leaves only the ranks that scored it among their best k
move; the replicas of one node's ranks spread over many peers, so losing a
node does not make one neighbour serve all of its restores.

Placement only decides where replicas are pushed. Restore does not depend on
it: it asks every reachable agent what it holds.
"""

from __future__ import annotations

import blake3

__all__ = ["choose_peers"]


def _score(job: str, rank: int, peer: str) -> bytes:
    return blake3.blake3(f"{job}\0{rank}\0{peer}".encode()).digest()


def choose_peers(job: str, rank: int, peers: list[str], k: int, *, self_address: str = "") -> list[str]:
    """The ``k`` peers (fewer if there are not enough) that should hold replicas of ``rank``."""
    candidates = sorted({p for p in peers if p and p != self_address})
    candidates.sort(key=lambda p: _score(job, rank, p), reverse=True)
    return candidates[: max(k, 0)]
