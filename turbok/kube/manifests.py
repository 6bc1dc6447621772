"""What a cluster install of turbok is, as objects: generated here, written to deploy/, checked in.

``python -m turbok.kube.manifests [DEST]`` (default ``deploy/``) writes:

- ``deploy/kustomize/``: ``kustomization.yaml`` and one file per part (CRDs, namespaces, RBAC, the
  operator, the router, the RuntimeClass, NetworkPolicies), namespace ``turbok-system`` for the operator;
- ``deploy/helm/turbok/``: the same objects as a Helm chart (``Chart.yaml``, ``values.yaml``,
  ``templates/``), the operator in the release's namespace, the image, replicas, runtime class and
  router authentication from values; the router's token Secret made once at install and kept on upgrades.

The router always lives in ``agent-sandbox-system`` as ``sandbox-router-svc`` (port 8080), labelled
``app: sandbox-router``, because that is where upstream's client and upstream's default NetworkPolicy
(``controllers.template.ROUTER_PEER``) look for it. CRDs are upstream's files unchanged (the Agent
Sandbox kinds) and turbok's own (``turbok/api/crds``).

RBAC is least privilege: ``OPERATOR_RULES`` grants exactly the verbs the operator's informers and
controllers use, each with its reason; tests/kube/test_rbac.py runs the operator under this
ServiceAccount and compares what the apiserver's audit log saw it do with these rules, both ways.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from turbok import __version__
from turbok.api.kinds import default_registry

__all__ = ["CHECKPOINT_NS_RULES", "CHECKPOINT_RULES", "OPERATOR_LEASE_RULES", "OPERATOR_RULES", "ROUTER_RULES", "Install",
           "install", "write"]

Obj = dict[str, Any]

OPERATOR_NS = "turbok-system"
CHECKPOINT_NS = "turbok-checkpoint"
CHECKPOINT_OPERATOR = "turbok-checkpoint-operator"
ROUTER_NS = "agent-sandbox-system"
ROUTER_NAME = "sandbox-router"
ROUTER_SERVICE = "sandbox-router-svc"
ROUTER_PORT = 8080
HEALTH_PORT = 8081
IMAGE = f"turbok:{__version__}"

# (apiGroup, resources, verbs, why)
OPERATOR_RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    ("agents.x-k8s.io", ("sandboxes",), ("list", "watch", "create", "update", "patch", "delete"),
     "informer; claims make, adopt and delete Sandboxes, pools make and trim them"),
    ("agents.x-k8s.io", ("sandboxes/status",), ("patch",), "Sandbox status from its Pod"),
    ("extensions.agents.x-k8s.io", ("sandboxclaims",), ("list", "watch", "delete"),
     "informer; a claim past its shutdownTime with shutdownPolicy Delete deletes itself"),
    ("extensions.agents.x-k8s.io", ("sandboxclaims/status",), ("update",), "claim status"),
    ("extensions.agents.x-k8s.io", ("sandboxtemplates",), ("list", "watch", "update"),
     "informer; the template's name-hash label"),
    ("extensions.agents.x-k8s.io", ("sandboxwarmpools",), ("list", "watch"), "informer"),
    ("extensions.agents.x-k8s.io", ("sandboxwarmpools/status",), ("update",), "pool status (replicas, ready)"),
    ("", ("pods",), ("list", "watch", "create", "patch", "delete"),
     "informer; a Sandbox's Pod, its labels when a claim adopts it, deleted on suspend"),
    ("", ("services",), ("list", "watch", "create", "update", "patch", "delete"),
     "informer; a Sandbox's headless Service"),
    ("", ("persistentvolumeclaims",), ("list", "watch", "create", "patch"),
     "informer; volumeClaimTemplates' claims"),
    ("networking.k8s.io", ("networkpolicies",), ("list", "watch", "create", "update", "delete"),
     "informer; each template's NetworkPolicy"),
    ("", ("events",), ("create",), "Events about Sandboxes and claims"),
]
#: In the operator's own namespace only: its leader-election Lease.
OPERATOR_LEASE_RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    ("coordination.k8s.io", ("leases",), ("get", "create", "update"), "leader election"),
]
#: The checkpoint operator (``turbok checkpoint operator``, turbok/checkpoint/operator.py), cluster-wide.
CHECKPOINT_RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    ("checkpointing.turbok.dev", ("checkpointconfigurations",), ("get", "list", "watch"),
     "list: every configuration each pass; get, watch: what the agents' ClusterRole grants (RBAC grants "
     "only what the granter holds)"),
    ("checkpointing.turbok.dev", ("checkpointconfigurations/status",), ("patch",), "agents ready, nodes, tiers"),
    ("rbac.authorization.k8s.io", ("clusterroles", "clusterrolebindings"), ("create", "patch"),
     "each configuration's agents may read it (server-side apply; create: the first apply)"),
    ("", ("namespaces",), ("get",), "the agents' namespace exists"),
]
#: In the agents' namespace (``turbok-checkpoint``) only.
CHECKPOINT_NS_RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    ("", ("serviceaccounts",), ("create", "patch"), "each configuration's agents' ServiceAccount"),
    ("rbac.authorization.k8s.io", ("roles", "rolebindings"), ("create", "patch"), "the agents' Role on Pods"),
    ("apps", ("daemonsets",), ("create", "patch"), "one agent per node"),
    ("", ("pods",), ("get", "list", "watch", "patch"),
     "list: the agents' published tiers for the status; get, watch, patch: what the agents' Role grants"),
]
ROUTER_RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    ("agents.x-k8s.io", ("sandboxes",), ("list", "watch"), "informer: a Sandbox's Ready and Pod IP"),
    ("authentication.k8s.io", ("tokenreviews",), ("create",), "callers' Kubernetes tokens (--token-review)"),
    ("authorization.k8s.io", ("subjectaccessreviews",), ("create",), "may that caller get the Sandbox"),
]


def _rules(rules: list[tuple[str, tuple[str, ...], tuple[str, ...], str]]) -> list[Obj]:
    return [{"apiGroups": [g], "resources": list(r), "verbs": list(v)} for g, r, v, _ in rules]


def _meta(name: str, namespace: str | None = None, **labels: str) -> Obj:
    md: Obj = {"name": name, "labels": {"app.kubernetes.io/part-of": "turbok", **labels}}
    if namespace:
        md["namespace"] = namespace
    return md


def _security() -> tuple[Obj, Obj]:
    pod = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    container = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    return pod, container


class Install:
    """The objects of one install, grouped by part (the files of deploy/kustomize)."""

    def __init__(self, *, operator_ns: str = OPERATOR_NS, image: str = IMAGE, replicas: int = 2,
                 router_replicas: int = 2, runtime_class: str = "gvisor", runtime_handler: str = "runsc",
                 pull_policy: str = "IfNotPresent") -> None:
        self.operator_ns = operator_ns
        self.image = image
        self.replicas = replicas
        self.router_replicas = router_replicas
        self.runtime_class = runtime_class
        self.runtime_handler = runtime_handler
        self.pull_policy = pull_policy

    def crds(self) -> list[Obj]:
        # Snapshots are the embedded node's (docs/sandboxes.md): podsnapshot.gke.io is GKE's own API on a
        # cluster, and no operator serves agents.turbok.dev's SandboxSnapshot there yet.
        return [copy.deepcopy(k.crd) for k in sorted(default_registry(), key=lambda k: k.qualified)
                if k.crd is not None and k.group not in ("podsnapshot.gke.io", "agents.turbok.dev")]

    def namespaces(self) -> list[Obj]:
        return [{"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(ns)}
                for ns in (self.operator_ns, ROUTER_NS)]

    def rbac(self) -> list[Obj]:
        ns = self.operator_ns
        return [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("turbok-operator", ns)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _meta("turbok-operator"),
             "rules": _rules(OPERATOR_RULES)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": _meta("turbok-operator"),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "turbok-operator"},
             "subjects": [{"kind": "ServiceAccount", "name": "turbok-operator", "namespace": ns}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta("turbok-operator-lease", ns),
             "rules": _lease_rules()},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": _meta("turbok-operator-lease", ns),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "turbok-operator-lease"},
             "subjects": [{"kind": "ServiceAccount", "name": "turbok-operator", "namespace": ns}]},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(ROUTER_NAME, ROUTER_NS)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _meta("turbok-router"),
             "rules": _rules(ROUTER_RULES)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": _meta("turbok-router"),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "turbok-router"},
             "subjects": [{"kind": "ServiceAccount", "name": ROUTER_NAME, "namespace": ROUTER_NS}]},
        ]

    def operator(self) -> list[Obj]:
        pod_sec, sec = _security()
        labels = {"app.kubernetes.io/name": "turbok-operator"}
        probe = {"httpGet": {"path": "/healthz", "port": HEALTH_PORT}, "periodSeconds": 10}
        return [{
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("turbok-operator", self.operator_ns, **labels),
            "spec": {
                "replicas": self.replicas, "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": {**labels, "app.kubernetes.io/part-of": "turbok"}}, "spec": {
                    "serviceAccountName": "turbok-operator", "securityContext": pod_sec,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "operator", "image": self.image, "imagePullPolicy": self.pull_policy,
                        "args": ["operator", f"--runtime-class={self.runtime_class}",
                                 f"--health-address=0.0.0.0:{HEALTH_PORT}"],
                        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                        "ports": [{"name": "health", "containerPort": HEALTH_PORT}],
                        "livenessProbe": probe,
                        "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": HEALTH_PORT}},
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                        "securityContext": sec,
                    }]}}}}]

    def router(self) -> list[Obj]:
        pod_sec, sec = _security()
        labels = {"app": ROUTER_NAME}
        return [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(ROUTER_NAME, ROUTER_NS, **labels),
             "spec": {
                 "replicas": self.router_replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": {**labels, "app.kubernetes.io/part-of": "turbok"}}, "spec": {
                     "serviceAccountName": ROUTER_NAME, "securityContext": pod_sec,
                     "containers": [{
                         "name": "router", "image": self.image, "imagePullPolicy": self.pull_policy,
                         "args": ["router", f"--address=0.0.0.0:{ROUTER_PORT}",
                                  "--token-file=/var/run/turbok/router/token", "--token-review"],
                         "ports": [{"name": "http", "containerPort": ROUTER_PORT}],
                         "readinessProbe": {"httpGet": {"path": "/healthz", "port": ROUTER_PORT}, "periodSeconds": 5},
                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                         "securityContext": sec,
                         "volumeMounts": [{"name": "token", "mountPath": "/var/run/turbok/router", "readOnly": True}],
                     }],
                     "volumes": [{"name": "token", "secret": {"secretName": "sandbox-router-token", "optional": True}}],
                 }}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": _meta(ROUTER_SERVICE, ROUTER_NS, **labels),
             "spec": {"selector": labels, "ports": [{"name": "http", "port": ROUTER_PORT, "targetPort": ROUTER_PORT}]}},
        ]

    def checkpoint(self) -> list[Obj]:
        """The checkpoint operator: CheckpointConfigurations become agent DaemonSets in ``turbok-checkpoint``.

        One replica (its reconciler is level-triggered server-side apply, not leader-elected); the agents run
        from the same image (``--image``). No ingress: it serves nothing.
        """
        pod_sec, sec = _security()
        ns, name = self.operator_ns, CHECKPOINT_OPERATOR
        labels = {"app.kubernetes.io/name": name}
        rbac = "rbac.authorization.k8s.io"
        subject = [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(CHECKPOINT_NS)},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, ns)},
            {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole", "metadata": _meta(name),
             "rules": _rules(CHECKPOINT_RULES)},
            {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding", "metadata": _meta(name),
             "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": name}, "subjects": subject},
            {"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": _meta(name, CHECKPOINT_NS),
             "rules": _rules(CHECKPOINT_NS_RULES)},
            {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding", "metadata": _meta(name, CHECKPOINT_NS),
             "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name}, "subjects": subject},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, ns, **labels),
             "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                      "template": {"metadata": {"labels": {**labels, "app.kubernetes.io/part-of": "turbok"}}, "spec": {
                          "serviceAccountName": name, "securityContext": pod_sec,
                          "containers": [{
                              "name": "operator", "image": self.image, "imagePullPolicy": self.pull_policy,
                              "args": ["checkpoint", "operator", f"--namespace={CHECKPOINT_NS}",
                                       f"--image={self.image}"],
                              "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}},
                              "securityContext": sec,
                          }]}}}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(name, ns),
             "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress"]}},
        ]

    def runtime_classes(self) -> list[Obj]:
        return [{"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": _meta(self.runtime_class),
                 "handler": self.runtime_handler}]

    def network_policies(self) -> list[Obj]:
        """Ingress to turbok's own Pods: the router's port from anywhere, the operator's health port only.

        Sandboxes' own policies are the templates' (``controllers.template``); egress of the operator and
        the router (to the API server, to sandbox Pods) is left open because the API server's address is
        the cluster's.
        """
        return [
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta("turbok-operator", self.operator_ns),
             "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "turbok-operator"}},
                      "policyTypes": ["Ingress"],
                      "ingress": [{"ports": [{"protocol": "TCP", "port": HEALTH_PORT}]}]}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(ROUTER_NAME, ROUTER_NS),
             "spec": {"podSelector": {"matchLabels": {"app": ROUTER_NAME}}, "policyTypes": ["Ingress"],
                      "ingress": [{"ports": [{"protocol": "TCP", "port": ROUTER_PORT}]}]}},
        ]

    def parts(self) -> dict[str, list[Obj]]:
        return {"crds": self.crds(), "namespaces": self.namespaces(), "rbac": self.rbac(), "operator": self.operator(),
                "router": self.router(), "checkpoint": self.checkpoint(), "runtimeclass": self.runtime_classes(),
                "networkpolicies": self.network_policies()}

    def objects(self) -> list[Obj]:
        return [o for objs in self.parts().values() for o in objs]


def _lease_rules() -> list[Obj]:
    # get/update only on the operator's own Lease; create cannot be limited by name (RBAC's rule)
    return [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"],
             "resourceNames": ["turbok-operator"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]


def install(**options: Any) -> Install:
    return Install(**options)


def _dump(objs: list[Obj]) -> str:
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False, width=120) for o in objs)


# ----------------------------------------------------------------------------- helm
_H_NS = "@@RELEASE_NAMESPACE@@"
_H_IMAGE = "@@IMAGE@@"
_H_REPLICAS = 3101
_H_ROUTER_REPLICAS = 3102
_H_RUNTIME = "@@RUNTIME_CLASS@@"
_H_HANDLER = "@@RUNTIME_HANDLER@@"
_H_PULL = "@@PULL_POLICY@@"

_HELM_SUBST = {
    _H_NS: "{{ .Release.Namespace }}",
    _H_IMAGE: '{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}',
    f"replicas: {_H_REPLICAS}": "replicas: {{ .Values.operator.replicas }}",
    f"replicas: {_H_ROUTER_REPLICAS}": "replicas: {{ .Values.router.replicas }}",
    _H_RUNTIME: "{{ .Values.runtimeClass.name }}",
    _H_HANDLER: "{{ .Values.runtimeClass.handler }}",
    _H_PULL: "{{ .Values.image.pullPolicy }}",
}

_CHART = {"apiVersion": "v2", "name": "turbok", "description": "turbok on Kubernetes: the Agent Sandbox operator, "
          "its router and the gVisor RuntimeClass", "type": "application", "version": __version__,
          "appVersion": __version__}
_VALUES = """\
# Values of the turbok chart (docs/kube.md). Generated by `python -m turbok.kube.manifests`.
image:
  repository: turbok
  tag: ""            # default: the chart's appVersion
  pullPolicy: IfNotPresent
operator:
  replicas: 2        # leader election: one acts, the others wait with warm caches
router:
  replicas: 2
  # The router's own token (what the official client sends as 'Authorization: Bearer'): made once at install
  # and kept across upgrades in the Secret agent-sandbox-system/sandbox-router-token. Kubernetes tokens
  # allowed to get a Sandbox are accepted too (TokenReview + SubjectAccessReview).
checkpoint:
  # the checkpoint operator: each CheckpointConfiguration becomes node agents (a DaemonSet in turbok-checkpoint)
  enabled: true
runtimeClass:
  create: true
  name: gvisor
  handler: runsc
networkPolicies:
  create: true
"""
_ROUTER_SECRET = """\
{{- $existing := lookup "v1" "Secret" "agent-sandbox-system" "sandbox-router-token" }}
apiVersion: v1
kind: Secret
metadata:
  name: sandbox-router-token
  namespace: agent-sandbox-system
  labels:
    app.kubernetes.io/part-of: turbok
type: Opaque
data:
  {{- if $existing }}
  token: {{ index $existing.data "token" }}
  {{- else }}
  token: {{ randAlphaNum 48 | b64enc }}
  {{- end }}
"""


def _helm_text(objs: list[Obj]) -> str:
    text = _dump(objs)
    for placeholder, expr in _HELM_SUBST.items():
        text = text.replace(f"'{placeholder}'", expr).replace(placeholder, expr)
    return text


def helm_chart() -> dict[str, str]:
    """File name (under ``deploy/helm/turbok``) -> text."""
    parts = Install(operator_ns=_H_NS, image=_H_IMAGE, replicas=_H_REPLICAS, router_replicas=_H_ROUTER_REPLICAS,
                    runtime_class=_H_RUNTIME, runtime_handler=_H_HANDLER, pull_policy=_H_PULL).parts()
    router_ns = [o for o in parts["namespaces"] if o["metadata"]["name"] == ROUTER_NS]
    files = {
        "Chart.yaml": yaml.safe_dump(_CHART, sort_keys=False),
        "values.yaml": _VALUES,
        "templates/crds.yaml": _helm_text(parts["crds"]),
        "templates/namespace.yaml": _helm_text(router_ns),
        "templates/rbac.yaml": _helm_text(parts["rbac"]),
        "templates/operator.yaml": _helm_text(parts["operator"]),
        "templates/router.yaml": _helm_text(parts["router"]),
        "templates/router-token.yaml": _ROUTER_SECRET,
        "templates/checkpoint.yaml": "{{- if .Values.checkpoint.enabled }}\n"
                                     + _helm_text(parts["checkpoint"]) + "{{- end }}\n",
        "templates/runtimeclass.yaml": "{{- if .Values.runtimeClass.create }}\n"
                                       + _helm_text(parts["runtimeclass"]) + "{{- end }}\n",
        "templates/networkpolicies.yaml": "{{- if .Values.networkPolicies.create }}\n"
                                          + _helm_text(parts["networkpolicies"]) + "{{- end }}\n",
    }
    return files


def kustomize() -> dict[str, str]:
    parts = Install().parts()
    files = {f"{name}.yaml": _dump(objs) for name, objs in parts.items()}
    files["kustomization.yaml"] = yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{name}.yaml" for name in parts],
        "images": [{"name": "turbok", "newTag": __version__}],
    }, sort_keys=False)
    return files


HEADER = "# Generated by `python -m turbok.kube.manifests` from turbok's models: do not edit.\n"


def rendered() -> dict[str, str]:
    """Every file of deploy/ (relative path -> text)."""
    out = {f"kustomize/{name}": (HEADER + text if name.endswith(".yaml") and name != "kustomization.yaml" else text)
           for name, text in kustomize().items()}
    out.update({f"helm/turbok/{name}": text for name, text in helm_chart().items()})
    return out


def write(dest: Path) -> list[Path]:
    written = []
    for rel, text in rendered().items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy")):
        print(p)
