"""The bounds of the store: object size, watch history, watcher queues, Event TTL, disk space, and
which writes are large enough to leave the event loop.

Each bound has a default that follows Kubernetes where Kubernetes has one
(etcd's 1.5 MiB request limit, kube-apiserver's one-hour ``--event-ttl``) and
an environment variable that overrides it, read when the control plane starts
(``StoreLimits.from_env``). docs/api.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from turbok import settings

__all__ = ["MiB", "StoreLimits"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class StoreLimits:
    #: Largest object stored, as its JSON (etcd's default --max-request-bytes): larger writes get 413.
    max_object_bytes: int = 3 * MiB // 2
    #: Watch history: at most this many events ...
    history_events: int = 20_000
    #: ... and at most this many bytes (each event counted as twice its object's JSON: the text and
    #: its encoded watch line). A watch from before the history gets 410 and re-lists.
    history_bytes: int = 64 * MiB
    #: A watcher this many events or bytes behind is ended; its client resumes from its last resourceVersion.
    watcher_queue_events: int = 50_000
    watcher_queue_bytes: int = 64 * MiB
    #: Events (core/v1) are deleted this long after their last write (kube-apiserver's --event-ttl).
    event_ttl_seconds: int = 3600
    #: The WAL is truncated back to this size after a checkpoint (SQLite's journal_size_limit).
    wal_bytes: int = 4 * MiB
    #: Free pages beyond this many bytes are given back to the file system (incremental vacuum).
    free_bytes: int = 4 * MiB
    #: Writes of objects (or request bodies) larger than this are decoded and validated on a worker
    #: thread, not the event loop (``ObjectRegistry.offload``).
    offload_bytes: int = 64 * 1024

    _ENV = {
        "max_object_bytes": "TURBOK_MAX_OBJECT_BYTES",
        "history_events": "TURBOK_WATCH_HISTORY_EVENTS",
        "history_bytes": "TURBOK_WATCH_HISTORY_BYTES",
        "watcher_queue_events": "TURBOK_WATCHER_QUEUE_EVENTS",
        "watcher_queue_bytes": "TURBOK_WATCHER_QUEUE_BYTES",
        "event_ttl_seconds": "TURBOK_EVENT_TTL_SECONDS",
        "wal_bytes": "TURBOK_STORE_WAL_BYTES",
        "free_bytes": "TURBOK_STORE_FREE_BYTES",
        "offload_bytes": "TURBOK_OFFLOAD_BYTES",
    }

    def __post_init__(self) -> None:
        settings.check_positive(self)

    @classmethod
    def from_env(cls) -> StoreLimits:
        return settings.from_env(cls, cls._ENV)
