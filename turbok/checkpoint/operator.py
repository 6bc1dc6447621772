"""The cluster side: each CheckpointConfiguration becomes node agents, their RBAC, and a status.

``Reconciler.reconcile(config)`` is level-triggered and returns its intent
(done, or retry after a delay); ``run()`` reconciles every configuration each
``interval`` seconds. It talks to any Kubernetes API server through
turbok.client (the REST client every turbok part uses), with server-side
apply (field manager ``turbok-checkpoint``), so it runs the same against a
real cluster (as an operator Deployment: ``turbok checkpoint operator``) as
against the embedded control plane.

For a configuration NAME it applies, in ``namespace`` (default
``turbok-checkpoint``), each owned by the configuration (garbage-collected
with it):

- ServiceAccount ``checkpoint-agent-NAME``;
- ClusterRole/ClusterRoleBinding ``turbok-checkpoint-agent-NAME``: get and
  watch this configuration;
- Role/RoleBinding ``checkpoint-agent-NAME``: list and watch pods (peer
  discovery, discovery.py) and patch them (each agent publishes its tiers in
  an annotation of its own Pod);
- DaemonSet ``checkpoint-agent-NAME``: one agent per node matching
  ``spec.nodeSelector``, with ``spec.tolerations``; host paths for the memory
  tier (tmpfs, shared with the training pods of the node) and the disk tier;
  ``hostNetwork`` (default true: training pods reach their node's agent at
  ``$(HOST_IP):port``); the image from ``spec.image``, else the operator's
  (turbok's own image, ``scripts/build_image.py``; it runs as root in the container to write
  the hostPath directories).

Status (one write per cycle): ``Ready`` (every scheduled agent ready, at
least one node), ``desiredAgents``/``readyAgents``, and ``nodes``: each
agent's node, address and tiers (memory capacity and use, disk use and
quota), read from the annotation the agent publishes.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from turbok import __version__
from turbok.api import status as st
from turbok.checkpoint.config import GROUP, KIND, PLURAL, parse_quantity
from turbok.client.rest import ApiResource, RestClient

__all__ = ["DEFAULT_IMAGE", "Intent", "Reconciler", "TIERS_ANNOTATION", "desired_objects"]

log = logging.getLogger(__name__)

#: turbok's own image (scripts/build_image.py, the chart's ``image.repository``): it runs the agent too
DEFAULT_IMAGE = f"turbok:{__version__}"
TIERS_ANNOTATION = f"{GROUP}/tiers"
CONFIG_LABEL = f"{GROUP}/configuration"
APP_LABEL = "app.kubernetes.io/name"
APP = "turbok-checkpoint-agent"
MANAGER = "turbok-checkpoint"
DEFAULT_PORT = 7480

CONFIGS = ApiResource(GROUP, "v1", PLURAL, KIND, False)
_RESOURCES = {
    "Namespace": ApiResource("", "v1", "namespaces", "Namespace", False),
    "ServiceAccount": ApiResource("", "v1", "serviceaccounts", "ServiceAccount", True),
    "ClusterRole": ApiResource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    "ClusterRoleBinding": ApiResource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    "Role": ApiResource("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    "RoleBinding": ApiResource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    "DaemonSet": ApiResource("apps", "v1", "daemonsets", "DaemonSet", True),
}
PODS = ApiResource("", "v1", "pods", "Pod", True)


@dataclass(frozen=True)
class Intent:
    """What a reconcile asks of the loop: nothing (``done``), or to come back after ``retry_after``."""

    done: bool
    retry_after: float = 0.0
    reason: str = ""


def agent_name(config: str) -> str:
    return f"checkpoint-agent-{config}"


def desired_objects(config: dict[str, Any], *, namespace: str, image: str) -> list[dict[str, Any]]:
    """The objects one CheckpointConfiguration needs (pure: no API calls)."""
    meta, spec = config["metadata"], config.get("spec") or {}
    name = str(meta["name"])
    owner = {"apiVersion": f"{GROUP}/v1", "kind": KIND, "name": name, "uid": meta.get("uid", ""),
             "controller": True, "blockOwnerDeletion": True}
    labels = {APP_LABEL: APP, CONFIG_LABEL: name, "app.kubernetes.io/managed-by": MANAGER}
    sa = agent_name(name)
    port = int(spec.get("port") or DEFAULT_PORT)
    host_network = bool(spec.get("hostNetwork", True))
    memory_path = str(spec.get("inMemoryPath") or f"/dev/shm/turbok-checkpoint/{name}")
    disk_path = str(spec.get("localDiskPath") or f"/var/lib/turbok-checkpoint/{name}")

    def md(obj_name: str, *, namespaced: bool = True) -> dict[str, Any]:
        m: dict[str, Any] = {"name": obj_name, "labels": labels, "ownerReferences": [owner] if owner["uid"] else []}
        if namespaced:
            m["namespace"] = namespace
        return m

    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    secret = spec.get("tokenSecretRef") or {}
    if secret.get("name"):
        env.append({"name": "TURBOK_CHECKPOINT_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": secret["name"], "key": secret.get("key") or "token"}}})
    container = {
        "name": "agent",
        "image": str(spec.get("image") or image),
        "command": ["turbok"],
        "args": ["checkpoint", "agent", "--from-cluster", name, "--discover", name,
                 "--discover-namespace", namespace, "--listen", f"0.0.0.0:{port}",
                 "--advertise", f"$(POD_IP):{port}", "--pod-name", "$(POD_NAME)", "--node-name", "$(NODE_NAME)",
                 "--memory-dir", "/checkpoint/memory", "--disk-dir", "/checkpoint/disk"],
        "env": env,
        "ports": [{"name": "checkpoint", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 5},
        "volumeMounts": [{"name": "memory", "mountPath": "/checkpoint/memory"},
                         {"name": "disk", "mountPath": "/checkpoint/disk"}],
        # the image's user (65532) cannot write the hostPath directories the kubelet creates
        # (root's, 0755): root in the container, owner of what it writes, without capabilities
        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if spec.get("inMemoryVolumeSize"):
        # tmpfs pages are charged to the cgroup that touches them: the agent's share of the tier.
        parse_quantity(spec["inMemoryVolumeSize"], what="inMemoryVolumeSize")
    pod_spec: dict[str, Any] = {
        "serviceAccountName": sa,
        "hostNetwork": host_network,
        "containers": [container],
        "terminationGracePeriodSeconds": 30,
        "volumes": [
            {"name": "memory", "hostPath": {"path": memory_path, "type": "DirectoryOrCreate"}},
            {"name": "disk", "hostPath": {"path": disk_path, "type": "DirectoryOrCreate"}},
        ],
    }
    if host_network:
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if spec.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("tolerations"):
        pod_spec["tolerations"] = list(spec["tolerations"])
    selector = {APP_LABEL: APP, CONFIG_LABEL: name}
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {"app.kubernetes.io/managed-by": MANAGER}}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": md(sa)},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole", "metadata": md(f"turbok-{sa}", namespaced=False),
         "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "resourceNames": [name], "verbs": ["get", "watch"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding", "metadata": md(f"turbok-{sa}", namespaced=False),
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": f"turbok-{sa}"},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]},
        {"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": md(sa),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding", "metadata": md(sa),
         "roleRef": {"apiGroup": rbac, "kind": "Role", "name": sa},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": md(sa),
         "spec": {"selector": {"matchLabels": selector},
                  "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                  "template": {"metadata": {"labels": labels}, "spec": pod_spec}}},
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    """Reconciles CheckpointConfigurations through ``client``."""

    def __init__(self, client: RestClient, *, namespace: str = "turbok-checkpoint", image: str = DEFAULT_IMAGE,
                 interval: float = 10.0) -> None:
        self.client, self.namespace, self.image, self.interval = client, namespace, image, interval
        self._stop = threading.Event()

    def _apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        res = _RESOURCES[obj["kind"]]
        meta = obj["metadata"]
        return self.client.patch(res, meta["name"], obj, meta.get("namespace"), patch_type="application/apply-patch+yaml",
                                 fieldManager=MANAGER, force="true")

    def reconcile(self, config: dict[str, Any]) -> Intent:
        name = config["metadata"]["name"]
        generation = int(config["metadata"].get("generation") or 0)
        try:
            objects = desired_objects(config, namespace=self.namespace, image=self.image)
        except Exception as e:  # a spec the schema let through but the agents cannot use
            self._status(config, {"observedGeneration": generation, "conditions": [self._condition(
                config, "False", "InvalidSpec", str(e), generation)]})
            return Intent(done=True, reason=f"invalid spec: {e}")
        try:
            for obj in objects:
                if obj["kind"] == "Namespace":
                    try:
                        self.client.get(_RESOURCES["Namespace"], self.namespace)
                        continue
                    except st.NotFound:
                        pass
                applied = self._apply(obj)
                if obj["kind"] == "DaemonSet":
                    daemonset = applied
        except st.ApiError as e:
            log.warning("checkpoint operator: %s: applying the agents failed: %s", name, e)
            self._status(config, {"observedGeneration": generation, "conditions": [self._condition(
                config, "False", "ApplyFailed", str(e), generation)]})
            return Intent(done=False, retry_after=5.0, reason=str(e))
        ds_status = daemonset.get("status") or {}
        desired = int(ds_status.get("desiredNumberScheduled") or 0)
        ready = int(ds_status.get("numberReady") or 0)
        nodes = self._nodes(name)
        if desired == 0:
            cond = ("False", "NoNodes", "no node matches nodeSelector (and tolerations)")
        elif ready < desired:
            cond = ("False", "AgentsNotReady", f"{ready} of {desired} agents ready")
        else:
            cond = ("True", "AgentsReady", f"{ready} of {desired} agents ready")
        self._status(config, {
            "observedGeneration": generation,
            "desiredAgents": desired,
            "readyAgents": ready,
            "nodes": nodes,
            "conditions": [self._condition(config, *cond, generation)],
        })
        return Intent(done=cond[0] == "True", retry_after=0.0 if cond[0] == "True" else 5.0, reason=cond[2])

    def _nodes(self, name: str) -> list[dict[str, Any]]:
        pods = self.client.list(PODS, self.namespace, label_selector=f"{CONFIG_LABEL}={name}").get("items") or []
        out = []
        for pod in pods:
            status = pod.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            entry: dict[str, Any] = {"name": (pod.get("spec") or {}).get("nodeName", ""), "pod": pod["metadata"]["name"],
                                     "ready": ready}
            raw = (pod["metadata"].get("annotations") or {}).get(TIERS_ANNOTATION)
            if raw:
                try:
                    tiers = json.loads(raw)
                    entry.update({k: tiers[k] for k in ("address", "memory", "disk", "updated") if k in tiers})
                except (ValueError, TypeError):
                    entry["tiersError"] = "unreadable annotation"
            out.append(entry)
        return sorted(out, key=lambda e: str(e["name"]))

    def _condition(self, config: dict[str, Any], status: str, reason: str, message: str, generation: int) -> dict[str, Any]:
        old = next((c for c in (config.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else _now()
        return {"type": "Ready", "status": status, "reason": reason, "message": message,
                "observedGeneration": generation, "lastTransitionTime": since}

    def _status(self, config: dict[str, Any], status: dict[str, Any]) -> None:
        if (config.get("status") or {}) == status:
            return
        try:
            self.client.patch(CONFIGS, config["metadata"]["name"], {"status": status}, sub="status",
                              patch_type="application/merge-patch+json")
        except st.ApiError as e:
            log.warning("checkpoint operator: status of %s: %s", config["metadata"]["name"], e)

    def reconcile_all(self) -> dict[str, Intent]:
        configs = self.client.list(CONFIGS).get("items") or []
        return {c["metadata"]["name"]: self.reconcile(c) for c in configs}

    def run(self) -> None:
        """Reconcile every configuration until ``stop()``; failures come back sooner."""
        while not self._stop.is_set():
            wait = self.interval
            try:
                for intent in self.reconcile_all().values():
                    if not intent.done and intent.retry_after:
                        wait = min(wait, intent.retry_after)
            except (st.ApiError, OSError) as e:
                log.warning("checkpoint operator: listing configurations failed: %s", e)
                wait = min(wait, 5.0)
            except Exception as e:  # the client's ConnectionFailed and bugs alike: log, keep going
                log.warning("checkpoint operator: %s", e)
                wait = min(wait, 5.0)
            self._stop.wait(wait)

    def stop(self) -> None:
        self._stop.set()
