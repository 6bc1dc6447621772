"""Prometheus metrics of the router, in a registry of their own.

``create_router_app`` makes a ``RouterMetrics`` (or takes one registry from the
control plane, to expose everything from one place) and serves it at
``/metrics`` behind the router's token. Labels are bounded: ``endpoint`` is one
of ``ENDPOINTS``, never a path or a sandbox name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ENDPOINTS", "RouterMetrics"]

#: Every value the ``endpoint`` label takes.
ENDPOINTS = (
    "health",
    "execute",
    "upload",
    "download",
    "list",
    "exists",
    "exec_stream",
    "metrics",
    "healthz",
    "unknown",
)

_EXEC_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "turbok_router_requests",
            "Requests answered by the sandbox router, by endpoint and HTTP status code.",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.exec_seconds = Histogram(
            "turbok_router_exec_duration_seconds",
            "Time from request to result of commands run through the router (execute, exec_stream).",
            ["endpoint"],
            buckets=_EXEC_BUCKETS,
            registry=self.registry,
        )
        self.execs_in_flight = Gauge(
            "turbok_router_execs_in_flight",
            "Commands started through the router that have not finished.",
            registry=self.registry,
        )
        self.execs_queued = Gauge(
            "turbok_router_execs_queued",
            "Commands waiting for one of their sandbox's command slots.",
            registry=self.registry,
        )
        self.execs_rejected = Counter(
            "turbok_router_execs_rejected",
            "Commands refused with 429 because their sandbox's slots and queue were full (queue_full) "
            "or no slot came in time (queue_timeout).",
            ["reason"],
            registry=self.registry,
        )
        self.exec_stopped = Counter(
            "turbok_router_exec_stopped",
            "Execute commands killed because their output passed the output limit.",
            registry=self.registry,
        )
        self.uploads_refused = Counter(
            "turbok_router_uploads_refused",
            "Uploads refused because the sandbox's uploaded files would pass the total upload limit.",
            registry=self.registry,
        )
        self.exec_timeouts = Counter(
            "turbok_router_exec_timeouts",
            "Commands killed at their timeout (exit code 124).",
            ["endpoint"],
            registry=self.registry,
        )
        self.exec_truncated = Counter(
            "turbok_router_exec_truncated",
            "Execute results whose output was cut at the output limit.",
            registry=self.registry,
        )
        self.file_bytes = Counter(
            "turbok_router_file_bytes",
            "Bytes moved by the files API, by direction (upload, download).",
            ["direction"],
            registry=self.registry,
        )
