"""The agent's wire server: one thread per connection, one method per operation.

Operations (frames of wire.py; every reply has ``ok``):

=============  ======================================================================
training process (the library, manager.py)
acquire        room for a part in the memory tier; takes a lease for this connection
staged         the part is copied: the agent persists its layout, owns it from here
abort          the library gave up on a part it acquired
wait, status   block until a tier holds a part / every tier's outcome so far
restore        bring a part into memory (pinned for this connection) and hand it out; with "lend",
               for the job to map privately as its own memory (never rewritten or pooled after)
release        the library is done with a restored part
read           byte ranges of shards (a local memory copy's path, else the bytes)
steps          every step of a job across all tiers (complete or not, metadata)
delete_step    delete a step everywhere (local tiers, peers, object store)
peers and tools
get, put, commit, replicate, list, delete, quarantine: the Tier contract (tiers/peer.py)
scrub          check (and repair) the committed copies here (healing.py)
describe, metrics, events, ping
=============  ======================================================================

A connection's leases and pins die with it (leases.py): a library killed
half-way through a copy frees its part at once; one that stops sending
without closing loses its lease after ``lease_timeout_s``.

Called by agent.py, which owns the roles this dispatches to.
"""

from __future__ import annotations

import itertools
import logging
import socket
import socketserver
import threading
from dataclasses import replace
from typing import Any

from turbok.checkpoint.context import AgentContext
from turbok.checkpoint.errors import CheckpointError, StepNotFoundError
from turbok.checkpoint.healing import scrub
from turbok.checkpoint.manifest import Manifest, PartKey, Shard
from turbok.checkpoint.pipeline import Pipeline
from turbok.checkpoint.replica import Replicas
from turbok.checkpoint.restoring import Restorer
from turbok.checkpoint.tiers.base import PartState
from turbok.checkpoint.tiers.peer import state_to_wire
from turbok.checkpoint.wire import parse_address, recv_header, send_frame, sendfile

__all__ = ["Server"]

log = logging.getLogger(__name__)


class Server:
    """Serves the wire protocol on ``settings.listen``."""

    def __init__(self, ctx: AgentContext, pipeline: Pipeline, replicas: Replicas, restorer: Restorer) -> None:
        self.ctx, self.pipeline, self.replicas, self.restorer = ctx, pipeline, replicas, restorer
        self._server: socketserver.ThreadingTCPServer | None = None
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self.address = ""

    def start(self) -> str:
        host, port = parse_address(self.ctx.settings.listen)
        server_ref = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server_ref.serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer((host, port), Handler, bind_and_activate=True)
        server.daemon_threads = True
        self._server = server
        self.address = f"{host}:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, name="checkpoint-agent", daemon=True).start()
        threading.Thread(target=self._expire_leases, name="checkpoint-leases", daemon=True).start()
        return self.address

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _expire_leases(self) -> None:
        while not self._stop.wait(1.0):
            for key in self.ctx.residency.expired():
                self.ctx.abandon(key, f"its lease timed out ({self.ctx.settings.lease_timeout_s:.0f}s without 'staged')")

    # -- one connection -------------------------------------------------------------------------
    def serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = next(self._ids)
        try:
            self._loop(sock, conn)
        finally:
            for key in self.ctx.residency.drop_owner(conn):
                self.ctx.abandon(key, "the client's connection closed before it staged the part")

    def _loop(self, sock: socket.socket, conn: int) -> None:
        token = self.ctx.settings.token
        while True:
            try:
                header = recv_header(sock)
            except (OSError, ValueError):
                return
            if header is None:
                return
            try:
                if token and header.get("token") != token:
                    raise CheckpointError("checkpoint agent: missing or wrong token")
                op = str(header.get("op"))
                handler = getattr(self, f"_op_{op}", None)
                if handler is None:
                    raise CheckpointError(f"checkpoint agent: unknown operation {op!r}")
                handler(sock, header, conn)
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

    # -- the training process -------------------------------------------------------------------
    def _op_ping(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        send_frame(sock, {"ok": True, "address": self.ctx.address})

    def _op_acquire(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        key, c = self._key(h), self.ctx
        c.residency.take_lease(key, conn, str(h.get("session", "")))
        try:
            path = c.reserve(key, int(h["size"]), float(h.get("wait_s", c.settings.staging_timeout_s)))
        except BaseException:
            c.residency.cancel_lease(key, conn)
            raise
        send_frame(sock, {"ok": True, "path": str(path)})

    def _op_staged(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        manifest = Manifest.from_dict(h["manifest"], where="staged manifest")
        manifest = replace(manifest, origin=self.ctx.address)
        if not self.ctx.residency.end_lease(manifest.key, conn, str(h.get("session", ""))):
            raise CheckpointError(f"{manifest.key} was not acquired on this connection, or its lease ended "
                                  "(timed out, or the agent restarted): save it again")
        # Persisted before the answer: an agent that dies right after acknowledging adopts the part
        # when it starts again (agent.py, recover) instead of losing it.
        self.ctx.memory.write_staged(manifest)
        self.pipeline.submit(manifest, hashed=False)
        send_frame(sock, {"ok": True})

    def _op_abort(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        key = self._key(h)
        if self.ctx.residency.cancel_lease(key, conn, str(h.get("session", ""))):
            self.ctx.memory.delete(key)
            self.ctx.notify()
        send_frame(sock, {"ok": True})

    def _op_wait(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        key, tier = self._key(h), str(h.get("tier", "disk"))
        state = self.pipeline.wait(key, tier, float(h.get("wait_s", 300)))
        send_frame(sock, {"ok": True, **state})

    def _op_status(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        send_frame(sock, {"ok": True, "tiers": self.pipeline.status(self._key(h))})

    def _op_restore(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        step = h.get("step")
        streamed = False
        repaired: list[Shard] = []

        def start(manifest: Manifest, path: Any) -> None:
            # "stream": the library copies shards out while the rest is still being read.
            nonlocal streamed
            send_frame(sock, {"ok": True, "stream": True, "path": str(path), "manifest": manifest.to_dict(), "verified": True})
            streamed = True

        manifest, path, verified, _pin = self.restorer.restore(
            str(h["job"]), int(h["rank"]), int(step) if step is not None else None, owner=conn,
            verify=bool(h.get("verify", True)),
            on_fetch=start if h.get("stream") else None,
            progress=(lambda n: send_frame(sock, {"ok": True, "upto": n})) if h.get("stream") else None,
            repaired=repaired,
        )
        if h.get("lend"):  # the job maps it privately as its own arrays: never rewritten from now on
            self.ctx.memory.lend(manifest.key)
        if streamed:
            index = {s.name: i for i, s in enumerate(manifest.shards)}
            send_frame(sock, {"ok": True, "done": True, "repaired": [index[s.name] for s in repaired]})
        else:
            send_frame(sock, {"ok": True, "path": str(path), "manifest": manifest.to_dict(), "verified": verified})

    def _op_release(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        self.ctx.residency.release_owned(self._key(h), conn)
        send_frame(sock, {"ok": True})

    def _op_read(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        ranges = [(str(r[0]), int(r[1]), int(r[2])) for r in h.get("ranges", [])]
        self.restorer.read_ranges(sock, self._key(h), ranges, owner=conn)

    def _op_steps(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        job = str(h["job"])
        self.pipeline.settle(job, self.ctx.settings.staging_timeout_s)
        catalog = self.restorer.catalog(job)
        steps = []
        for step, view in catalog.steps().items():
            ranks: dict[str, list[str]] = {}
            corrupt: list[int] = []
            meta: dict[str, Any] = {}
            created = 0.0
            for rank, copies in sorted(view.copies.items()):
                ranks[str(rank)] = [c.tier for c in copies if c.committed]
                if any(c.corrupt for c in copies) and not ranks[str(rank)]:
                    corrupt.append(rank)
                for c in copies:
                    if c.committed and c.manifest is not None:
                        created = max(created, c.manifest.created)
                        if rank == 0 and c.manifest.meta and not meta:
                            meta = c.manifest.meta
            steps.append({"step": step, "complete": view.complete, "worldSize": view.world_size, "ranks": ranks,
                          "corrupt": corrupt, "meta": meta, "created": created})
        send_frame(sock, {"ok": True, "steps": steps, "unreachable": catalog.unreachable})

    def _op_delete_step(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        """Delete every rank's copies of one step: here, and with ``everywhere`` on the peers and the object store."""
        job, step, c = str(h["job"]), int(h["step"]), self.ctx
        busy = c.residency.busy()
        for tier in (c.memory, c.disk):
            for s in tier.list(job):
                if s.key.step == step:
                    if s.key in busy:
                        raise CheckpointError(f"{s.key} is in use here (being saved, drained or restored); try again")
                    tier.delete(s.key)
        failures = []
        if h.get("everywhere"):
            for address in c.peer_addresses():
                try:
                    c.peer(address)._call("delete_step", job=job, step=step, everywhere=False)
                except CheckpointError as e:
                    failures.append(f"peer {address}: {e}")
            if c.object is not None:
                try:
                    for s in c.object.list(job):
                        if s.key.step == step:
                            c.object.delete(s.key)
                except CheckpointError as e:
                    failures.append(f"object store: {e}")
        c.events.record("StepDeleted", f"{job}/step {step} deleted" + (" everywhere" if h.get("everywhere") else " here"),
                        PartKey(job, step, 0), warning=False)
        c.metrics.memory_used.set(c.memory.used())
        if failures:
            raise CheckpointError(f"{job}/step {step}: not deleted on " + "; ".join(failures))
        send_frame(sock, {"ok": True})

    # -- peers and tools ------------------------------------------------------------------------
    def _op_list(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        job, c = h.get("job"), self.ctx
        if h.get("scope") == "tiers":
            states = c.memory.list(job) + c.disk.list(job)
        else:
            merged: dict[PartKey, PartState] = {}
            for tier in (c.memory, c.disk):  # fastest first: the first committed copy wins
                for s in tier.list(job):
                    if s.key not in merged or (s.committed and not merged[s.key].committed):
                        merged[s.key] = s
            states = list(merged.values())
        send_frame(sock, {"ok": True, "parts": [state_to_wire(s) for s in states]})

    def _op_describe(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        s, c = self.ctx.settings, self.ctx
        send_frame(sock, {
            "ok": True,
            "address": c.address,
            "node": s.node_name,
            "peers": c.peer_addresses(),
            "storage_url": s.storage_url,
            "storage_options": s.storage_options,
            "memory": {"capacity": c.memory.capacity, "used": c.memory.used(), "jobQuota": s.job_memory_quota},
            "disk": {"used": c.disk.used(), "quota": s.disk_quota},
            "errors": self.pipeline.errors(),
        })

    def _op_metrics(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        send_frame(sock, {"ok": True}, self.ctx.metrics.text())

    def _op_events(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        job = h.get("job")
        send_frame(sock, {"ok": True, "events": self.ctx.events.list(str(job) if job else None, since=float(h.get("since", 0)))})

    def _op_get(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        key, c = self._key(h), self.ctx
        offset = int(h.get("offset") or 0)
        with c.residency.pin(key):
            # "tier": ask for one local copy ("memory" or "disk"), e.g. to verify each copy on its own.
            wanted = h.get("tier")
            manifest = c.memory.committed_manifest(key) if wanted in (None, "memory") else None
            length = h.get("length")
            if manifest is not None or wanted == "memory":
                if manifest is None:
                    raise StepNotFoundError(f"{c.address}: {key} is not committed in memory")
                n = int(length) if length is not None else manifest.data_size - offset
                send_frame(sock, {"ok": True, "tier": "memory"}, c.memory.get(key, offset, n))
                return
            manifest = c.disk.committed_manifest(key)
            if manifest is None:
                raise StepNotFoundError(f"{c.address}: {key} is not committed here")
            n = int(length) if length is not None else manifest.data_size - offset
            sendfile(sock, {"ok": True, "tier": "disk"}, str(c.disk.data_path(key)), offset, n)

    def _op_put(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        """The Tier contract's ``put``: receive a blob uncommitted; ``commit`` verifies it later."""
        target = self.replicas.put(sock, self._key(h), int(h["size"]))
        send_frame(sock, {"ok": True, "tier": target})

    def _op_commit(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        self.replicas.commit(Manifest.from_dict(h["manifest"], where="replica manifest"))
        send_frame(sock, {"ok": True})

    def _op_replicate(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        self.replicas.replicate(sock, h)
        send_frame(sock, {"ok": True})

    def _op_delete(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        key = self._key(h)
        self.pipeline.quiesce(key, self.ctx.settings.staging_timeout_s)
        self.ctx.memory.delete(key)
        self.ctx.disk.delete(key)
        send_frame(sock, {"ok": True})

    def _op_quarantine(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        key, reason = self._key(h), str(h.get("reason", "failed its hashes"))
        for tier in (self.ctx.memory, self.ctx.disk):
            tier.quarantine(key, reason)
        self.ctx.events.record("Quarantined", f"{key}: {reason}", key)
        send_frame(sock, {"ok": True})

    def _op_scrub(self, sock: socket.socket, h: dict[str, Any], conn: int) -> None:
        job = h.get("job")
        step = h.get("step")
        report = scrub(self.ctx, str(job) if job else None, step=int(step) if step is not None else None,
                       repair=bool(h.get("repair")), include_object=bool(h.get("object")))
        send_frame(sock, {"ok": True, "address": self.ctx.address, **report})
