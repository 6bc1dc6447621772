"""Storage of the embedded control plane: objects, resourceVersions, watches.

Owns: ``sqlite`` (durable rows in SQLite, WAL, one global revision like
etcd's, an in-memory index so reads never touch disk, start-up checks,
checkpoints and space given back, a full disk as 507), ``watch`` (fan-out of
changes to watchers, the history window bounded in events and bytes, 410
Gone), ``registry`` (Kubernetes object semantics over both: validation,
defaulting, generation, status and scale subresources, finalizers, optimistic
concurrency, preconditions, Event TTL, large writes on worker threads),
``admission`` (what the registry runs before a write: LimitRange defaults and
bounds, pod template validation, ResourceQuota), ``limits`` (every bound above
and its environment variable) and ``repair``
(``turbok store check|repair``: a damaged store read around its damage, good
objects kept, bad rows quarantined).

The apiserver and the embedded controllers both write through
``registry.ObjectRegistry``, so an object is valid however it was written.
Nothing here speaks HTTP.
"""
