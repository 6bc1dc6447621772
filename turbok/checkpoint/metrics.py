"""Prometheus metrics of a node agent: bytes and seconds per tier and operation, failures.

Each agent has its own registry (several agents share one process in tests).
Names:

- ``turbok_checkpoint_bytes_total{tier,op}``    bytes moved (op: write, read, replicate, backup, restore)
- ``turbok_checkpoint_seconds_total{tier,op}``  time spent moving them
- ``turbok_checkpoint_failures_total{tier,op}`` operations that failed
- ``turbok_checkpoint_commits_total{tier}``     parts committed
- ``turbok_checkpoint_latest_step{job,tier}``   newest committed step of a job per tier
- ``turbok_checkpoint_memory_used_bytes``       bytes held by the memory tier (parts and pooled buffers)
- ``turbok_checkpoint_evictions_total{job}``    memory parts of a job dropped for room (durable on disk)

Failures by op: ``write`` (disk), ``verify`` (a copy failed its hashes on that
tier: memory, disk, peer, object), ``quota``, ``replicate``, ``backup``,
``restore`` (a step no copy could restore), ``lost`` (a staged part an agent
restart could not recover).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

from turbok.checkpoint.wire import parse_address

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes = Counter("turbok_checkpoint_bytes", "Bytes moved per tier and operation", ["tier", "op"], registry=r)
        self.seconds = Counter("turbok_checkpoint_seconds", "Seconds spent per tier and operation", ["tier", "op"], registry=r)
        self.failures = Counter("turbok_checkpoint_failures", "Failed operations per tier", ["tier", "op"], registry=r)
        self.commits = Counter("turbok_checkpoint_commits", "Parts committed per tier", ["tier"], registry=r)
        self.latest = Gauge("turbok_checkpoint_latest_step", "Newest committed step per job and tier", ["job", "tier"], registry=r)
        self.evictions = Counter("turbok_checkpoint_evictions", "Memory parts evicted for room, per job", ["job"], registry=r)
        self.memory_used = Gauge("turbok_checkpoint_memory_used_bytes", "Bytes held by the memory tier", registry=r)

    def moved(self, tier: str, op: str, nbytes: int, seconds: float) -> None:
        tier = tier.split(" ")[0]  # "peer 127.0.0.1:7481" -> "peer": bounded label values
        self.bytes.labels(tier, op).inc(nbytes)
        self.seconds.labels(tier, op).inc(seconds)

    def failed(self, tier: str, op: str) -> None:
        self.failures.labels(tier.split(" ")[0], op).inc()

    def committed(self, tier: str, job: str, step: int) -> None:
        tier = tier.split(" ")[0]
        self.commits.labels(tier).inc()
        gauge = self.latest.labels(job, tier)
        if step > gauge._value.get():
            gauge.set(step)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, address: str) -> int:
        """Serve ``/metrics`` over HTTP; returns the bound port."""
        host, port = parse_address(address)
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
