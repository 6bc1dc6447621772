"""What the ``turbok checkpoint`` commands see: tiers of a cluster, steps against tiers,
verification of every copy, and restoring a step into a directory.

Tiers come either from a running agent (``--agent HOST:PORT``: that agent's
memory and disk, its peers' memory and disk, its object store) or from a
settings file (``--config FILE``: the local directories it names, its peers,
its object store), so the commands work with or without a local agent.

A directory written by ``restore_to`` has the disk tier's layout and can be
read with ``load(directory, job, step, rank)`` or served by an agent whose
``disk_dir`` points at it.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turbok.checkpoint.config import Settings
from turbok.checkpoint.errors import CheckpointError, IntegrityError, StepNotFoundError
from turbok.checkpoint.manifest import Manifest, PartKey, verify_shards
from turbok.checkpoint.packing import unpack
from turbok.checkpoint.restore import Catalog, fetch
from turbok.checkpoint.tiers.base import PartState, Tier
from turbok.checkpoint.tiers.disk import DiskTier
from turbok.checkpoint.tiers.memory import MemoryTier
from turbok.checkpoint.tiers.object import ObjectTier
from turbok.checkpoint.tiers.peer import PeerTier, state_from_wire

__all__ = ["BadCopy", "StepRow", "Tiers", "load", "restore_to", "scrub_cluster"]


class _AgentTiers(PeerTier):
    """An agent's memory and disk, listed separately (``memory@ADDR``, ``disk@ADDR``)."""

    def list(self, job: str | None = None) -> list[PartState]:
        reply = self._call("list", job=job, scope="tiers")
        return [state_from_wire(d, f"{d['tier']}@{self.address}") for d in reply["parts"]]


@dataclass
class StepRow:
    step: int
    world_size: int
    complete: bool
    copies: dict[int, list[tuple[str, bool, bool]]] = field(default_factory=dict)  # rank -> (tier, committed, corrupt)


@dataclass(frozen=True)
class BadCopy:
    key: PartKey
    tier: str
    problem: str


class Tiers:
    """The tiers the CLI looks at; close() when done."""

    def __init__(self, *, agent: str | None = None, config: Path | None = None, token: str = "") -> None:
        self.tiers: list[Tier] = []
        if config is not None:
            s = Settings.from_file(config)
            token = token or s.token
            self.tiers += [MemoryTier(s.memory_dir, capacity=s.memory_size), DiskTier(s.disk_dir)]
            peers, url, options = s.peers, s.storage_url, s.storage_options
            me = s.self_address
        elif agent is not None:
            first = _AgentTiers(agent, token=token)
            info = first._call("describe")
            self.tiers.append(first)
            peers, url, options, me = info["peers"], info["storage_url"], info["storage_options"], info["address"]
        else:
            raise CheckpointError("say where the checkpoints are: --agent HOST:PORT or --config FILE")
        self.tiers += [_AgentTiers(p, token=token) for p in peers if p != me]
        if url:
            self.tiers.append(ObjectTier(url, options=options, retry_timeout=10, max_retries=2))

    def catalog(self, job: str) -> Catalog:
        return Catalog(job, self.tiers)

    def rows(self, job: str) -> tuple[list[StepRow], dict[str, str]]:
        catalog = self.catalog(job)
        rows = []
        for step, view in catalog.steps().items():
            row = StepRow(step, view.world_size, view.complete)
            for rank, copies in sorted(view.copies.items()):
                row.copies[rank] = [(c.tier, c.committed, c.corrupt) for c in copies]
            rows.append(row)
        return rows, catalog.unreachable

    def verify(self, job: str, step: int | None = None) -> tuple[int, list[BadCopy]]:
        """Check every committed copy (of ``step``, or of every step); returns (copies checked, bad ones)."""
        catalog = self.catalog(job)
        checked, bad = 0, []
        for tier, state in catalog.states:
            if not state.committed or state.manifest is None or (step is not None and state.key.step != step):
                continue
            checked += 1
            try:
                if isinstance(tier, _AgentTiers):
                    data: bytes | memoryview = tier.get_copy(state.key, state.tier.split("@")[0])
                else:
                    data = tier.get(state.key)
                wrong = verify_shards(memoryview(data), state.manifest)
            except (CheckpointError, OSError) as e:
                bad.append(BadCopy(state.key, state.tier, f"unreadable: {e}"))
                continue
            if wrong:
                bad.append(BadCopy(state.key, state.tier, f"hash mismatch in {', '.join(s.name for s in wrong[:5])}"))
        if checked == 0:
            catalog.choose(step)  # raises JobNotFoundError / StepNotFoundError with a clear message
            raise StepNotFoundError(f"job {job!r}: no committed copy to verify")
        return checked, bad

    def close(self) -> None:
        for t in self.tiers:
            t.close()

    def __enter__(self) -> Tiers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def restore_to(tiers: Tiers, job: str, step: int | None, directory: Path, *, progress: Any = None) -> tuple[int, list[Manifest]]:
    """Fetch every rank of ``step`` (default: newest complete) into ``directory``, verified."""
    catalog = tiers.catalog(job)
    chosen = catalog.choose(step)
    world = catalog.steps()[chosen].world_size
    out = DiskTier(directory)
    manifests = []
    for rank in range(world):
        key = PartKey(job, chosen, rank)
        sources = catalog.sources(key)
        manifest = sources[0].manifest
        path = out._prepare(key)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, manifest.data_size)
            with mmap.mmap(fd, manifest.data_size) as mm:
                view = memoryview(mm)
                manifest = fetch(key, sources, view)
                view.release()
                mm.flush()
            os.fsync(fd)
        finally:
            os.close(fd)
        out.commit(manifest)
        manifests.append(manifest)
        if progress is not None:
            progress(manifest)
    return chosen, manifests


def load(directory: Path | str, job: str, step: int, rank: int = 0, *, into: Any = None) -> Any:
    """The state of one rank from a directory with the disk tier's layout, verified."""
    tier = DiskTier(directory, name=str(directory))
    key = PartKey(job, step, rank)
    manifest = tier.committed_manifest(key)
    if manifest is None:
        raise StepNotFoundError(f"{directory}: {key} is not there (or not committed)")
    data = memoryview(tier.get(key))
    wrong = verify_shards(data, manifest)
    if wrong:
        raise IntegrityError(f"{directory}: {key}: shards {[s.name for s in wrong[:5]]} do not match their hashes")
    return unpack(data, manifest, into)


def scrub_cluster(agent: str, *, job: str | None = None, step: int | None = None, repair: bool = False,
                  token: str = "") -> list[dict[str, Any]]:
    """Ask ``agent`` and each of its peers to scrub (and repair) their own copies; the first also
    scrubs the object store. Returns each agent's report (healing.py)."""
    first = PeerTier(agent, token=token, timeout=3600)
    try:
        info = first._call("describe")
        reports = [first._call("scrub", job=job, step=step, repair=repair, object=True)]
    finally:
        first.close()
    for address in info["peers"]:
        peer = PeerTier(address, token=token, timeout=3600)
        try:
            reports.append(peer._call("scrub", job=job, step=step, repair=repair, object=False))
        except CheckpointError as e:
            reports.append({"address": address, "checked": 0, "findings": [], "error": str(e)})
        finally:
            peer.close()
    return reports
