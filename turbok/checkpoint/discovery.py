"""Peers through the Kubernetes API instead of a static ``peers:`` list; tiers published back.

An agent started with ``--discover NAME`` (the DaemonSet of operator.py does)
lists, every ``discover_interval_s`` seconds, the Pods labelled
``checkpointing.turbok.dev/configuration=NAME`` in ``discover_namespace`` and
takes every running one with an IP as a peer, at ``podIP:port`` (the port its
container calls ``checkpoint``). A node that joins is a peer within one
interval; one that leaves stops being one (its replicas stay where they are,
and restore asks every reachable agent anyway). Placement (placement.py) then
spreads replicas over the current peers.

With ``pod_name`` set the agent also publishes its tiers on its own Pod, as
the JSON annotation ``checkpointing.turbok.dev/tiers`` (address, node, memory
capacity and use, disk use and quota, time): the operator folds them into the
configuration's status. The agent needs RBAC to list and patch Pods in its
namespace (operator.py grants it).

Credentials: ``kubeconfig`` if set, else ``$KUBECONFIG``/``~/.kube/config``,
else the Pod's service account (turbok.client.kubeconfig).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from turbok.checkpoint.context import AgentContext
from turbok.client.rest import ApiResource, RestClient

__all__ = ["Discovery", "peers_from_pods"]

log = logging.getLogger(__name__)

PODS = ApiResource("", "v1", "pods", "Pod", True)
CONFIG_LABEL = "checkpointing.turbok.dev/configuration"
TIERS_ANNOTATION = "checkpointing.turbok.dev/tiers"


def peers_from_pods(pods: list[dict[str, Any]], default_port: int) -> list[str]:
    """``podIP:port`` of every running, not deleting Pod with an IP."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if not ip or status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
            continue
        port = default_port
        for c in (pod.get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == "checkpoint":
                    port = int(p["containerPort"])
        out.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return sorted(set(out))


class Discovery:
    """The agent's discovery thread."""

    def __init__(self, ctx: AgentContext) -> None:
        from turbok.client.kubeconfig import load_kubeconfig

        s = ctx.settings
        self.ctx = ctx
        self.client = RestClient(load_kubeconfig(s.kubeconfig or None), timeout=10.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="checkpoint-discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.ctx.settings.discover_interval_s):
            self.refresh()

    def refresh(self) -> None:
        s = self.ctx.settings
        try:
            pods = self.client.list(PODS, s.discover_namespace, label_selector=f"{CONFIG_LABEL}={s.discover}")
            port = int(s.listen.rsplit(":", 1)[1] or 7480)
            self.ctx.set_peers(peers_from_pods(pods.get("items") or [], port))
            if s.pod_name:
                self._publish()
        except Exception as e:  # the API may be briefly away: keep the last peers
            log.warning("checkpoint agent: discovery through the API failed: %s", e)

    def _publish(self) -> None:
        s, c = self.ctx.settings, self.ctx
        tiers = {
            "address": c.address,
            "node": s.node_name,
            "memory": {"capacity": c.memory.capacity, "used": c.memory.used(), "jobQuota": s.job_memory_quota},
            "disk": {"used": c.disk.used(), "quota": s.disk_quota},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        patch = {"metadata": {"annotations": {TIERS_ANNOTATION: json.dumps(tiers, separators=(",", ":"))}}}
        self.client.patch(PODS, s.pod_name, patch, s.discover_namespace, patch_type="application/merge-patch+json")
