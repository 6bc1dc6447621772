"""The node agent: takes over a step once it is in memory, and carries it down the tiers.

One agent runs per machine (``turbok checkpoint agent``), in a process of its
own: its hashing and I/O never take the training process's GIL. It serves the
wire protocol (wire.py) on ``settings.listen`` to the training processes of
its node and to peer agents, and Prometheus metrics on
``settings.metrics_listen``.

The life of a part saved on this node (pipeline.py does steps 3-7):

1. ``acquire``: the library asks for room; the memory tier hands out a data
   file, reusing a pooled buffer (memory.py). Busy buffers are never handed
   out: when the tier is full of steps not yet durable on disk, acquire waits
   up to ``staging_timeout_s`` and then raises StagingBusyError; a part larger
   than the whole tier fails at once with CapacityError, evicting nothing.
2. ``staged``: the library has copied the state and sends the layout; the
   agent answers at once and owns the step from here (a crash of the training
   process loses nothing).
3. memory commit: shards hashed (BLAKE3 and the XXH3 checks, manifest.py)
   while the disk tier writes the blob with O_DIRECT from the same mapping;
   manifest and marker in tmpfs.
4. disk commit: once the write's fsync and the hashes are done: manifest,
   marker, directory fsync.
5. replication to ``replication_factor`` peers chosen by placement.py, one
   ``replicate`` round trip each: the peer (replica.py) receives into a pooled memory
   buffer, checks each chunk as it lands, and commits only if every shard
   matches.
6. backup to object storage every ``backup_every_steps`` steps or
   ``backup_interval_s`` seconds, by a worker that retries with backoff and
   never holds up the steps behind it.
7. retention (retention.py) on every tier this agent owns.

Restore (``restore`` op): the agent picks the step (restore.py's Catalog),
hands out a committed memory copy as it is, or fetches the part into the
memory tier from the fastest other tier, checking every chunk as it lands.
With ``stream`` set, a fetch answers at once and then sends ``{"upto": n}``
frames as bytes land and a final ``{"done": true, "repaired": [...]}``, so
the library copies shards out while the rest is read.

On start the agent deletes every uncommitted part it holds (an interrupted
step is never offered) and resumes draining steps committed in memory but not
yet on disk. Fault injection for tests: ``settings.fault_delays`` maps a stage
(``memory.before_commit``, ``disk.before_commit``, ``replicate.before_commit``
on the receiver) to seconds slept there.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from turbok.checkpoint.config import Settings
from turbok.checkpoint.errors import CheckpointError, ManifestError, StagingBusyError, StepNotFoundError
from turbok.checkpoint.manifest import Manifest, PartKey, Shard, verify_shards
from turbok.checkpoint.metrics import Metrics
from turbok.checkpoint.pipeline import Pipeline
from turbok.checkpoint.replica import Replicas
from turbok.checkpoint.restore import Catalog, fetch
from turbok.checkpoint.tiers.base import PartState, Tier
from turbok.checkpoint.tiers.disk import DiskTier
from turbok.checkpoint.tiers.memory import MemoryTier
from turbok.checkpoint.tiers.object import ObjectTier
from turbok.checkpoint.tiers.peer import PeerTier, state_to_wire
from turbok.checkpoint.wire import parse_address, recv_header, send_frame, sendfile

__all__ = ["Agent"]

log = logging.getLogger(__name__)
_PIN_SECONDS = 600.0


class Agent:
    """A node agent; ``start()`` it, ``stop()`` it, or use it as a context manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.memory = MemoryTier(settings.memory_dir, capacity=settings.memory_size)
        self.disk = DiskTier(settings.disk_dir)
        self.object: ObjectTier | None = None
        if settings.storage_url:
            self.object = ObjectTier(
                settings.storage_url,
                options=settings.storage_options,
                retry_timeout=settings.object_retry_timeout_s,
                max_retries=settings.object_max_retries,
            )
        self.metrics = Metrics()
        self.cond = threading.Condition(threading.RLock())
        self.pinned: dict[PartKey, float] = {}  # memory parts that must not move: deadline
        self.filling: set[PartKey] = set()
        self.receiving: dict[PartKey, str] = {}
        self._peers: dict[str, PeerTier] = {}
        self.pipeline = Pipeline(self)
        self.replicas = Replicas(self)
        self._server: socketserver.ThreadingTCPServer | None = None
        self.address = ""
        self.metrics_port = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        self.recover()
        host, port = parse_address(self.settings.listen)
        agent = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                agent._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer((host, port), Handler, bind_and_activate=True)
        server.daemon_threads = True
        self._server = server
        self.address = f"{host}:{server.server_address[1]}"
        if self.settings.self_address.endswith(":0"):
            self.settings.advertise = self.address
        threading.Thread(target=server.serve_forever, name="checkpoint-agent", daemon=True).start()
        if self.settings.metrics_listen:
            self.metrics_port = self.metrics.serve(self.settings.metrics_listen)
        self.pipeline.start()
        log.info("checkpoint agent listening on %s (memory %s, disk %s)", self.address, self.memory.root, self.disk.root)
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.pipeline.stop()
        for peer in self._peers.values():
            peer.close()
        self.memory.close()

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def recover(self) -> None:
        """Delete interrupted parts; resume draining parts committed only in memory."""
        for tier in (self.memory, self.disk):
            for s in tier.list():
                if not s.committed:
                    log.warning("checkpoint agent: deleting interrupted %s from %s", s.key, tier.name)
                    tier.delete(s.key)
        for s in self.memory.list():
            if s.committed and s.manifest is not None and not self.disk.exists(s.key):
                self.pipeline.submit(s.manifest, hashed=True)

    # -- helpers used by the pipeline -----------------------------------------------------------
    def fault(self, stage: str) -> None:
        delay = self.settings.fault_delays.get(stage)
        if delay:
            log.warning("checkpoint agent: fault injection: sleeping %.1fs at %s", delay, stage)
            time.sleep(delay)

    def peer(self, address: str) -> PeerTier:
        with self.cond:
            if address not in self._peers:
                self._peers[address] = PeerTier(address, token=self.settings.token)
            return self._peers[address]

    def remote_tiers(self) -> list[Tier]:
        tiers: list[Tier] = [self.peer(p) for p in self.settings.peers if p != self.settings.self_address]
        if self.object is not None:
            tiers.append(self.object)
        return tiers

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def evictable(self) -> list[PartKey]:
        """Memory parts that may be dropped for room: durable on disk, not in use; oldest first."""
        now = time.monotonic()
        with self.cond:
            busy = {k for k, t in self.pinned.items() if t > now} | self.filling | set(self.receiving)
        keys = [s.key for s in self.memory.list() if s.committed and s.key not in busy and self.disk.exists(s.key)]
        return sorted(keys, key=lambda k: (k.step, k.job, k.rank))

    def reserve(self, key: PartKey, size: int, timeout: float) -> Path:
        """Room in the memory tier for ``key``, waiting for drains up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                try:
                    path = self.memory.reserve(key, size, self.evictable())
                    self.pinned[key] = time.monotonic() + _PIN_SECONDS
                    self.metrics.memory_used.set(self.memory.used())
                    return path
                except StagingBusyError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StagingBusyError(
                            f"memory tier: no room for {key} after {timeout:.0f}s: the tier "
                            f"({self.memory.capacity} bytes) is full of steps still being drained; "
                            "save less often, raise inMemoryVolumeSize, or speed up the disk"
                        ) from None
                    self.cond.wait(min(left, 0.2))

    def unpin(self, key: PartKey) -> None:
        with self.cond:
            self.pinned.pop(key, None)
            self.cond.notify_all()

    # -- restore --------------------------------------------------------------------------------
    def restore(
        self,
        job: str,
        rank: int,
        step: int | None,
        *,
        verify: bool = True,
        on_fetch: Callable[[Manifest, Path], None] | None = None,
        progress: Callable[[int], None] | None = None,
        repaired: list[Shard] | None = None,
    ) -> tuple[Manifest, Path, bool]:
        """Bring ``rank``'s part of the chosen step into the memory tier and pin it.

        Returns the manifest, the memory-tier file and whether its bytes were verified here.
        ``verify=False`` hands out a committed memory copy without hashing it (the library then
        hashes it itself while it copies, or trusts it); copies from other tiers are always
        verified as they are fetched.
        """
        self.pipeline.settle(job, self.settings.staging_timeout_s)  # a step saved just now counts
        catalog = Catalog(job, [self.memory, self.disk, *self.remote_tiers()])
        chosen = catalog.choose(step)
        key = PartKey(job, chosen, rank)
        sources = [s for s in catalog.sources(key) if s.tier is not self.memory]
        try:
            have = self.memory.committed_manifest(key)
        except ManifestError as e:
            log.warning("checkpoint agent: %s; using the other tiers", e)
            self.memory.uncommit(key)
            have = None
        if have is None and not sources:
            raise StepNotFoundError(f"job {job!r}: step {chosen} has no committed copy of rank {rank}")
        observe = self._observer("restore")
        if have is not None:
            with self.cond:
                self.pinned[key] = time.monotonic() + _PIN_SECONDS
            view = self.memory.view(key, have.data_size)
            if not verify:
                return have, self.memory.data_path(key), False
            t0 = time.perf_counter()
            bad = verify_shards(view, have)
            self.metrics.moved("memory", "verify", have.data_size, time.perf_counter() - t0)
            if not bad:
                return have, self.memory.data_path(key), True
            log.warning("checkpoint agent: %d shard(s) of %s corrupt in memory; repairing from other tiers", len(bad), key)
            self.metrics.failed("memory", "verify")
            self.memory.uncommit(key)
            manifest = fetch(key, sources, view, have=have, observe=observe)
        else:
            manifest = sources[0].manifest
            self.reserve(key, manifest.data_size, self.settings.staging_timeout_s)
            view = self.memory.view(key, manifest.data_size)
            try:
                if on_fetch is not None:
                    on_fetch(manifest, self.memory.data_path(key))
                manifest = fetch(key, sources, view, observe=observe, progress=progress, repaired=repaired)
            except BaseException:
                self.memory.delete(key)
                self.unpin(key)
                raise
        self.memory.commit(manifest)
        self.metrics.committed("memory", job, chosen)
        if not self.disk.exists(key):
            self.pipeline.submit(manifest, hashed=True, replicate=False, backup=False)
        return manifest, self.memory.data_path(key), True

    def _observer(self, op: str) -> Any:
        def observe(tier: str, nbytes: int, seconds: float) -> None:
            self.metrics.moved(tier, op, nbytes, seconds)

        return observe

    # -- wire protocol --------------------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                header = recv_header(sock)
            except (OSError, ValueError):
                return
            if header is None:
                return
            try:
                if self.settings.token and header.get("token") != self.settings.token:
                    raise CheckpointError("checkpoint agent: missing or wrong token")
                op = str(header.get("op"))
                handler = getattr(self, f"_op_{op}", None)
                if handler is None:
                    raise CheckpointError(f"checkpoint agent: unknown operation {op!r}")
                handler(sock, header)
            except CheckpointError as e:
                try:
                    send_frame(sock, {"ok": False, "error": type(e).__name__, "message": str(e)})
                except OSError:
                    return
            except (OSError, ConnectionError) as e:
                log.warning("checkpoint agent: connection dropped during %s: %s", header.get("op"), e)
                return
            except Exception as e:  # a bug: answer, log, keep serving others
                log.exception("checkpoint agent: %s failed", header.get("op"))
                try:
                    send_frame(sock, {"ok": False, "error": "CheckpointError", "message": f"agent error: {e!r}"})
                except OSError:
                    return

    @staticmethod
    def _key(h: dict[str, Any]) -> PartKey:
        return PartKey(str(h["job"]), int(h["step"]), int(h["rank"]))

    def _op_ping(self, sock: socket.socket, h: dict[str, Any]) -> None:
        send_frame(sock, {"ok": True, "address": self.settings.self_address})

    def _op_acquire(self, sock: socket.socket, h: dict[str, Any]) -> None:
        key = self._key(h)
        with self.cond:
            if key in self.filling:
                raise CheckpointError(f"{key} is already being saved")
        path = self.reserve(key, int(h["size"]), float(h.get("wait_s", self.settings.staging_timeout_s)))
        with self.cond:
            self.filling.add(key)
        send_frame(sock, {"ok": True, "path": str(path)})

    def _op_staged(self, sock: socket.socket, h: dict[str, Any]) -> None:
        manifest = Manifest.from_dict(h["manifest"], where="staged manifest")
        with self.cond:
            if manifest.key not in self.filling:
                raise CheckpointError(f"{manifest.key} was not acquired on this agent")
            self.filling.discard(manifest.key)
        self.pipeline.submit(replace(manifest, origin=self.settings.self_address), hashed=False)
        send_frame(sock, {"ok": True})

    def _op_abort(self, sock: socket.socket, h: dict[str, Any]) -> None:
        key = self._key(h)
        with self.cond:
            self.filling.discard(key)
        self.memory.delete(key)
        self.unpin(key)
        send_frame(sock, {"ok": True})

    def _op_wait(self, sock: socket.socket, h: dict[str, Any]) -> None:
        key, tier = self._key(h), str(h.get("tier", "disk"))
        state = self.pipeline.wait(key, tier, float(h.get("wait_s", 300)))
        send_frame(sock, {"ok": True, **state})

    def _op_restore(self, sock: socket.socket, h: dict[str, Any]) -> None:
        step = h.get("step")
        streamed = False
        repaired: list[Shard] = []

        def start(manifest: Manifest, path: Path) -> None:
            # "stream": the library copies shards out while the rest is still being read.
            nonlocal streamed
            send_frame(sock, {"ok": True, "stream": True, "path": str(path), "manifest": manifest.to_dict(), "verified": True})
            streamed = True

        manifest, path, verified = self.restore(
            str(h["job"]), int(h["rank"]), int(step) if step is not None else None, verify=bool(h.get("verify", True)),
            on_fetch=start if h.get("stream") else None,
            progress=(lambda n: send_frame(sock, {"ok": True, "upto": n})) if h.get("stream") else None,
            repaired=repaired,
        )
        if streamed:
            index = {s.name: i for i, s in enumerate(manifest.shards)}
            send_frame(sock, {"ok": True, "done": True, "repaired": [index[s.name] for s in repaired]})
        else:
            send_frame(sock, {"ok": True, "path": str(path), "manifest": manifest.to_dict(), "verified": verified})

    def _op_release(self, sock: socket.socket, h: dict[str, Any]) -> None:
        self.unpin(self._key(h))
        send_frame(sock, {"ok": True})

    def _local_states(self, job: str | None) -> list[PartState]:
        merged: dict[PartKey, PartState] = {}
        for tier in (self.memory, self.disk):  # fastest first: the first committed copy wins
            for s in tier.list(job):
                if s.key not in merged or (s.committed and not merged[s.key].committed):
                    merged[s.key] = s
        return list(merged.values())

    def _op_list(self, sock: socket.socket, h: dict[str, Any]) -> None:
        job = h.get("job")
        if h.get("scope") == "tiers":
            states = self.memory.list(job) + self.disk.list(job)
        else:
            states = self._local_states(job)
        send_frame(sock, {"ok": True, "parts": [state_to_wire(s) for s in states]})

    def _op_describe(self, sock: socket.socket, h: dict[str, Any]) -> None:
        s = self.settings
        send_frame(
            sock,
            {
                "ok": True,
                "address": s.self_address,
                "peers": s.peers,
                "storage_url": s.storage_url,
                "storage_options": s.storage_options,
                "memory": {"capacity": self.memory.capacity, "used": self.memory.used()},
                "errors": self.pipeline.errors(),
            },
        )

    def _op_metrics(self, sock: socket.socket, h: dict[str, Any]) -> None:
        send_frame(sock, {"ok": True}, self.metrics.text())

    def _op_get(self, sock: socket.socket, h: dict[str, Any]) -> None:
        key = self._key(h)
        offset = int(h.get("offset") or 0)
        with self.cond:
            self.pinned[key] = time.monotonic() + _PIN_SECONDS
        try:
            # "tier": ask for one local copy ("memory" or "disk"), e.g. to verify each copy on its own.
            wanted = h.get("tier")
            manifest = self.memory.committed_manifest(key) if wanted in (None, "memory") else None
            length = h.get("length")
            if manifest is not None or wanted == "memory":
                if manifest is None:
                    raise StepNotFoundError(f"{self.settings.self_address}: {key} is not committed in memory")
                n = int(length) if length is not None else manifest.data_size - offset
                send_frame(sock, {"ok": True, "tier": "memory"}, self.memory.get(key, offset, n))
                return
            manifest = self.disk.committed_manifest(key)
            if manifest is None:
                raise StepNotFoundError(f"{self.settings.self_address}: {key} is not committed here")
            n = int(length) if length is not None else manifest.data_size - offset
            sendfile(sock, {"ok": True, "tier": "disk"}, str(self.disk.data_path(key)), offset, n)
        finally:
            self.unpin(key)

    def _op_put(self, sock: socket.socket, h: dict[str, Any]) -> None:
        """The Tier contract's ``put``: receive a blob uncommitted; ``commit`` verifies it later."""
        target = self.replicas.put(sock, self._key(h), int(h["size"]))
        send_frame(sock, {"ok": True, "tier": target})

    def _op_commit(self, sock: socket.socket, h: dict[str, Any]) -> None:
        self.replicas.commit(Manifest.from_dict(h["manifest"], where="replica manifest"))
        send_frame(sock, {"ok": True})

    def _op_replicate(self, sock: socket.socket, h: dict[str, Any]) -> None:
        self.replicas.replicate(sock, h)
        send_frame(sock, {"ok": True})

    def _op_delete(self, sock: socket.socket, h: dict[str, Any]) -> None:
        key = self._key(h)
        self.memory.delete(key)
        self.disk.delete(key)
        send_frame(sock, {"ok": True})
