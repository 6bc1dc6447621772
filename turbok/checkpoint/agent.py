"""The node agent: takes over a step once it is in memory, and carries it down the tiers.

One agent runs per machine (``turbok checkpoint agent``, a DaemonSet on a
cluster), in a process of its own: its hashing and I/O never take the
training process's GIL. This module owns its lifecycle only; the roles live
in modules of their own and share one ``AgentContext`` (context.py):

- server.py     the wire protocol, one thread per connection;
- leases.py     leases (acquire -> staged, dying with their connection) and pins;
- pipeline.py   a staged part's way down: hash, memory and disk commits,
                replicas, backup, retention (steps 3-7 below);
- replica.py    receiving a peer's replica;
- restoring.py  restores, healing, byte ranges;
- healing.py    scrub and repair;
- discovery.py  peers found through the Kubernetes API (optional).

The life of a part saved on this node:

1. ``acquire``: the library asks for room; the memory tier hands out a data
   file, reusing a pooled buffer (memory.py), under a lease of the library's
   connection. Busy buffers are never handed out: when the tier is full of
   steps not yet durable on disk, acquire waits up to ``staging_timeout_s``
   and then raises StagingBusyError; a part larger than the whole tier (or
   the job's quota) fails at once with CapacityError, evicting nothing.
2. ``staged``: the library has copied the state and sends the layout; the
   agent writes it next to the data (``.staged.json``), answers, and owns the
   step from here (a crash of the training process loses nothing; a crash of
   the agent neither: it adopts the part when it starts again).
3. memory commit: shards hashed while the disk tier writes the blob with
   O_DIRECT from the same mapping; manifest and marker in tmpfs.
4. disk commit: once the write's fsync and the hashes are done.
5. replication to ``replication_factor`` peers chosen by placement.py.
6. backup to object storage every ``backup_every_steps`` steps or
   ``backup_interval_s`` seconds, retried with backoff.
7. retention on every tier this agent owns.

On start the agent adopts every staged-but-uncommitted part of its memory
tier (its layout was persisted before ``staged`` was answered), deletes every
other uncommitted part (an interrupted step is never offered), and resumes
draining steps committed in memory but not yet on disk. Fault injection for
tests: ``settings.fault_delays`` maps a stage (``memory.before_commit``,
``disk.before_commit``, ``object.before_commit``, ``replicate.before_commit``
on the receiver, ``recover.before_disk_cleanup`` at start) to seconds slept there.
"""

from __future__ import annotations

import logging
from typing import Any

from turbok.checkpoint.config import Settings
from turbok.checkpoint.context import AgentContext
from turbok.checkpoint.manifest import Manifest
from turbok.checkpoint.metrics import Metrics
from turbok.checkpoint.pipeline import Pipeline
from turbok.checkpoint.replica import Replicas
from turbok.checkpoint.restoring import Restorer
from turbok.checkpoint.server import Server
from turbok.checkpoint.tiers.disk import DiskTier
from turbok.checkpoint.tiers.memory import MemoryTier
from turbok.checkpoint.tiers.object import ObjectTier

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    """A node agent; ``start()`` it, ``stop()`` it, or use it as a context manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = AgentContext(settings)
        self.pipeline = Pipeline(self.ctx)
        self.replicas = Replicas(self.ctx, self.pipeline)
        self.restorer = Restorer(self.ctx, self.pipeline)
        self.server = Server(self.ctx, self.pipeline, self.replicas, self.restorer)
        self.discovery: object | None = None
        self.address = ""
        self.metrics_port = 0

    @property
    def memory(self) -> MemoryTier:
        return self.ctx.memory

    @property
    def disk(self) -> DiskTier:
        return self.ctx.disk

    @property
    def object(self) -> ObjectTier | None:
        return self.ctx.object

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        self.recover()
        self.address = self.server.start()
        if self.settings.self_address.endswith(":0"):
            self.settings.advertise = self.address
        if self.settings.metrics_listen:
            self.metrics_port = self.ctx.metrics.serve(self.settings.metrics_listen)
        self.pipeline.start()
        if self.settings.discover:
            from turbok.checkpoint.discovery import Discovery

            discovery = Discovery(self.ctx)
            discovery.start()
            self.discovery = discovery
        log.info("checkpoint agent listening on %s (memory %s, disk %s)", self.address, self.memory.root, self.disk.root)
        return self.address

    def stop(self) -> None:
        if self.discovery is not None:
            self.discovery.stop()  # type: ignore[attr-defined]
        self.server.stop()
        self.pipeline.stop()
        self.ctx.close()

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def recover(self) -> None:
        """Delete interrupted disk parts, adopt staged parts, delete other interrupted ones, resume draining
        memory-only parts. Nothing is submitted before the disk is cleaned: a submitted drain starts writing
        to disk at once, and the cleanup would take an adopted part's new disk copy for an interrupted one."""
        c = self.ctx
        c.fault("recover.before_disk_cleanup")
        for s in c.disk.list():
            if not s.committed and not s.corrupt:
                log.warning("checkpoint agent: deleting interrupted %s from disk", s.key)
                c.disk.delete(s.key)
        adopted: list[Manifest] = []
        for s in c.memory.list():
            if s.committed:
                continue
            layout = c.memory.staged_manifest(s.key)
            if layout is not None and layout.key == s.key and s.size >= layout.data_size:
                c.events.record("Adopted", f"{s.key}: staged before the agent stopped; committing it now", s.key,
                                warning=False, tier="memory")
                adopted.append(layout)
                continue
            if layout is not None:
                c.metrics.failed("memory", "lost")
                c.events.record("Lost", f"{s.key}: staged, but its data ({s.size} bytes) is shorter than its layout "
                                f"({layout.data_size}); the agent restarted before committing it", s.key, tier="memory")
            elif not s.corrupt:
                c.events.record("Interrupted", f"{s.key}: never staged (the trainer or the agent stopped mid-copy); "
                                "deleted", s.key, warning=False, tier="memory")
            if not s.corrupt:
                c.memory.delete(s.key)
        unsaved = [s.manifest for s in c.memory.list()
                   if s.committed and s.manifest is not None and not c.disk.exists(s.key)]
        for layout in adopted:
            self.pipeline.submit(layout, hashed=False)
        for manifest in unsaved:
            self.pipeline.submit(manifest, hashed=True)
