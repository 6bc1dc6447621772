"""One container of a Pod as its worker tracks it, and what the node's relist compares.

``ContainerRecord``: the container's status view (``status.ContainerView``,
what its ``containerStatuses`` entry says) and the worker's bookkeeping: its
crash-loop and image back-offs, how many times it was started, its prober,
what it was started from (``container_hash``: a change restarts it), whether
an init container completed. ``fingerprint``: what in a pod sandbox's status
a worker reacts to; the relist wakes a worker when it differs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from turbok.node.client import Obj
from turbok.node.probes import ContainerProber
from turbok.node.restarts import BackOff
from turbok.node.status import ContainerView
from turbok.runtime.cri import PodSandboxStatus

__all__ = ["ContainerRecord", "container_hash", "fingerprint"]


def fingerprint(status: PodSandboxStatus) -> tuple[Any, ...]:
    """What, in a sandbox's status, a worker reacts to (the relist compares these)."""
    return (status.state, status.reason,
            tuple(sorted((c.name, c.state, c.attempt, c.exit_code, c.finished_at) for c in status.containers)))


def container_hash(container: Obj) -> str:
    """What a running container was started from; a change (its image, say) restarts it."""
    return hashlib.sha256(json.dumps(container, sort_keys=True).encode()).hexdigest()[:16]


class ContainerRecord:
    """One container of the Pod: its status view and the node's bookkeeping."""

    def __init__(self, spec: Obj, *, init: bool) -> None:
        self.spec = spec
        sidecar = init and spec.get("restartPolicy") == "Always"
        self.view = ContainerView(name=spec["name"], image=spec.get("image", ""), init=init, sidecar=sidecar)
        self.view.state = {"waiting": {"reason": "PodInitializing" if not init else "ContainerCreating"}}
        self.backoff = BackOff()
        self.image_backoff = BackOff(base=10.0)
        self.attempts = 0
        self.prober: ContainerProber | None = None
        self.hash = ""
        self.counted: tuple[int, float | None] | None = None
        self.completed = False  # an init container that exited 0
        self.retry_at = 0.0  # when a start that failed on its inputs may be tried again
        self.waits_for_inputs = False  # its last start lacked a Secret or ConfigMap: their changes retry it at once
        self.running_since: float | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def field_path(self) -> str:
        return f"spec.{'initContainers' if self.view.init else 'containers'}{{{self.name}}}"

    def spec_now(self, pod: Obj) -> Obj:
        """This container's spec in ``pod`` as it is now (images may change)."""
        key = "initContainers" if self.view.init else "containers"
        for c in (pod.get("spec") or {}).get(key) or []:
            if c.get("name") == self.name:
                return dict(c)
        return self.spec
