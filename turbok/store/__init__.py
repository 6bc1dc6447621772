"""Storage of the embedded control plane: objects, resourceVersions, watches.

Owns: ``sqlite`` (durable rows in SQLite, WAL, one global revision like
etcd's, an in-memory index so reads never touch disk), ``watch`` (fan-out of
changes to watchers, the history window and its compaction, 410 Gone), and
``registry`` (Kubernetes object semantics over both: validation, defaulting,
generation, status and scale subresources, finalizers, optimistic
concurrency, preconditions).

The apiserver and the embedded controllers both write through
``registry.ObjectRegistry``, so an object is valid however it was written.
Nothing here speaks HTTP.
"""
