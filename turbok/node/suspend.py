"""State kept for a Pod deleted to suspend it, and given back to the next Pod of the same identity.

The protocol (docs/architecture.md, "controllers and the node"):

1. A controller that suspends (a Sandbox with ``operatingMode: Suspended``)
   annotates its Pod ``turbok.dev/on-delete: hibernate`` (keep memory,
   processes and disk) or ``stop`` (keep the disk), then deletes it.
2. The node, terminating a Pod with that annotation, hibernates its pod
   sandbox (``PodRuntime.hibernate_pod_sandbox``; where the runtime cannot, or
   it fails, it stops it: a Warning ``HibernationFailed`` Event, and the next
   Pod's condition ``PodRestored`` False, reason ``HibernationFailed``) or stops it
   after the usual graceful kill, and records a ``Kept`` entry: runtime id,
   identity, namespace, the Pod's controller ownerReference, mode, and a hash
   of the pod spec.
3. A Pod with the same ``turbok.dev/sandbox-identity`` (so the same runtime id,
   ``runtime_id``) starts on the kept state: ``run_pod_sandbox`` restores the
   memory when the mode was ``hibernate`` and the spec hash is unchanged;
   otherwise the node first stops the sandbox (dropping its memory) and it
   boots on the kept disk. The entry is then forgotten.
4. Kept state whose owner (looked up by apiVersion/kind/name, uid compared) is
   gone and that no Pod names any more is removed (``remove_pod_sandbox``), at
   start, when such an owner is deleted, and every ``GC_SECONDS``.

Without the annotation, a deleted Pod's runtime state is removed. Entries are
files ``<state>/kept/<runtime id>.json`` (0600), so they survive restarts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from turbok.node.client import Obj
from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.ids import sandbox_id, validate_id

__all__ = ["IDENTITY", "MODES", "ON_DELETE", "PS_NAME", "Kept", "KeptStates", "identity", "on_delete", "runtime_id",
           "spec_hash"]

log = logging.getLogger(__name__)

IDENTITY = "turbok.dev/sandbox-identity"
ON_DELETE = "turbok.dev/on-delete"
#: On a Pod: the PodSnapshot it starts from (``turbok.node.snapshots``); kept so that the next Pod of the same
#: identity, still naming it, resumes its own state instead of starting from the snapshot again.
PS_NAME = "podsnapshot.gke.io/ps-name"
MODES = ("hibernate", "stop")
GC_SECONDS = 60.0


def identity(pod: Obj) -> str:
    """Whose runtime state the Pod runs on: its ``turbok.dev/sandbox-identity``, else its own uid."""
    annotations = pod["metadata"].get("annotations") or {}
    value = annotations.get(IDENTITY)
    return value if isinstance(value, str) and value else str(pod["metadata"]["uid"])


def runtime_id(pod: Obj) -> str:
    """The Pod's pod sandbox id: ``sandbox_id(identity)``; known before anything runs."""
    return sandbox_id(identity(pod))


def on_delete(pod: Obj) -> str | None:
    """``hibernate`` or ``stop`` when the Pod asks to keep its state when deleted, else None."""
    value = (pod["metadata"].get("annotations") or {}).get(ON_DELETE)
    return value if value in MODES else None


def spec_hash(pod: Obj) -> str:
    """A hash of what the sandbox's memory depends on: the pod spec, less what binding and the API add."""
    spec = {k: v for k, v in (pod.get("spec") or {}).items() if k not in ("nodeName", "tolerations")}
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Kept:
    id: str
    identity: str
    namespace: str
    pod: str
    mode: str
    spec_hash: str
    owner: dict[str, Any] | None = None
    #: the PodSnapshot the Pod had started from (its ``podsnapshot.gke.io/ps-name``), "" if none
    snapshot: str = ""
    #: why the memory was not kept when it was asked to hibernate ("" otherwise): the next Pod says so
    hibernation_failed: str = ""

    @classmethod
    def of(cls, pod: Obj, mode: str, *, hibernation_failed: str = "") -> Kept:
        md = pod["metadata"]
        owner = next((dict(r) for r in md.get("ownerReferences") or [] if r.get("controller")), None)
        return cls(id=runtime_id(pod), identity=identity(pod), namespace=md.get("namespace", ""), pod=md["name"],
                   mode=mode, spec_hash=spec_hash(pod), owner=owner,
                   snapshot=str((md.get("annotations") or {}).get(PS_NAME) or ""),
                   hibernation_failed=hibernation_failed)


class KeptStates:
    """The node's kept entries, one file each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._entries: dict[str, Kept] = {}

    def load(self) -> dict[str, Kept]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in self.root.glob("*.json"):
            try:
                data = json.loads(path.read_text())
                kept = Kept(**data)
                validate_id(kept.id)
            except (OSError, ValueError, TypeError, InvalidSandboxSpec) as e:
                log.warning("ignoring unreadable kept-state entry %s: %s", path, e)
                continue
            self._entries[kept.id] = kept
        return dict(self._entries)

    def get(self, id: str) -> Kept | None:
        return self._entries.get(id)

    def all(self) -> list[Kept]:
        return list(self._entries.values())

    def put(self, kept: Kept) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.root / f"{validate_id(kept.id)}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(kept), f)
        os.replace(tmp, path)
        self._entries[kept.id] = kept

    def remove(self, id: str) -> None:
        if self._entries.pop(id, None) is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.root / f"{id}.json").unlink()
