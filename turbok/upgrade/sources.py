"""What upstream Kubernetes and named vendors say about upgrades and rollbacks, quoted word for word.

Plans quote these where they rely on them or go against them, so a reader can
check the claim at its source. Each ``Quote`` is the exact text (ellipses mark
cuts), where it was read and when. Nothing here decides anything; the planner
and the report use the quotes. Update a quote only by reading its source again.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EKS_ROLLBACK",
    "ETCD_UPGRADE_POLICY",
    "GKE_DOWNGRADABLE",
    "KEP_4330_ALPHA",
    "KEP_4330_KUBELET_SKEW",
    "KEP_4330_KUBECTL_SKEW",
    "KEP_4330_NON_GOALS",
    "KEP_4330_ROLLBACK",
    "KUBEADM_NO_SKIP",
    "SKEW_POLICY_NO_SKIP",
    "Quote",
]


@dataclass(frozen=True)
class Quote:
    """Exact words from a source."""

    text: str
    source: str
    url: str

    def __str__(self) -> str:
        return f"{self.source}: \u201c{self.text}\u201d ({self.url})"


SKEW_POLICY_NO_SKIP = Quote(
    "Project policies for API deprecation and API change guidelines require kube-apiserver to not skip minor "
    "versions when upgrading, even in single-instance clusters.",
    "Kubernetes version skew policy, \u201cSupported component upgrade order\u201d",
    "https://kubernetes.io/releases/version-skew-policy/#supported-component-upgrade-order",
)
KUBEADM_NO_SKIP = Quote(
    "Skipping MINOR versions when upgrading is unsupported.",
    "kubeadm, \u201cUpgrading kubeadm clusters\u201d",
    "https://kubernetes.io/docs/tasks/administer-cluster/kubeadm/kubeadm-upgrade/",
)
KEP_4330_ALPHA = Quote(
    "stage: alpha",
    "KEP-4330 kep.yaml (Compatibility Versions)",
    "https://github.com/kubernetes/enhancements/blob/master/keps/sig-architecture/4330-compatibility-versions/kep.yaml",
)
KEP_4330_NON_GOALS = Quote(
    "Changes to Cluster API/kubeadm/KIND/minikube to absorb the compatibility versions will be addressed separate "
    "from this KEP",
    "KEP-4330, \u201cNon-Goals\u201d",
    "https://github.com/kubernetes/enhancements/tree/master/keps/sig-architecture/4330-compatibility-versions#non-goals",
)
KEP_4330_ROLLBACK = Quote(
    "An emulation version rollback can be performed without changing binary version.",
    "KEP-4330, \u201cMotivation\u201d",
    "https://github.com/kubernetes/enhancements/tree/master/keps/sig-architecture/4330-compatibility-versions#motivation",
)
KEP_4330_KUBELET_SKEW = Quote(
    "kube-proxy, kubelet: Previously: 1.{binaryMinorVersion-3}..{binaryVersion} With this enhancement: "
    "{minCompatibilityVersion-2}..{emulationVersion}",
    "KEP-4330, \u201cSkew\u201d",
    "https://github.com/kubernetes/enhancements/tree/master/keps/sig-architecture/4330-compatibility-versions#skew",
)
KEP_4330_KUBECTL_SKEW = Quote(
    "kubectl: Previously: 1.{binaryMinorVersion-1}..{binaryVersion+1} With this enhancement: "
    "{minCompatibilityVersion}..{emulationVersion+1}",
    "KEP-4330, \u201cSkew\u201d",
    "https://github.com/kubernetes/enhancements/tree/master/keps/sig-architecture/4330-compatibility-versions#skew",
)
GKE_DOWNGRADABLE = Quote(
    "The GKE version that the cluster can be safely downgraded to if the cluster is emulating the previous minor "
    "version. It is usually the cluster's previous version before a minor version upgrade.",
    "GKE API (container v1beta1), CompatibilityStatus.downgradable_version",
    "https://docs.cloud.google.com/ruby/docs/reference/google-cloud-container-v1beta1/latest/Google-Cloud-Container-V1beta1-CompatibilityStatus",
)
EKS_ROLLBACK = Quote(
    "With Amazon EKS version rollback, you can revert your cluster\u2019s Kubernetes control plane to the previous "
    "minor version after performing an in-place upgrade.",
    "Amazon EKS, \u201cRollback cluster to previous Kubernetes version\u201d",
    "https://docs.aws.amazon.com/eks/latest/userguide/rollback-cluster.html",
)
ETCD_UPGRADE_POLICY = Quote(
    "Minor upgrade: Upgrading one minor version at a time (e.g. 3.5 - 3.6). Upgrades that skip a minor version are "
    "not supported and will likely fail. Update to the most recent patch version before upgrading to the next minor "
    "version.",
    "etcd, \u201cUpgrading etcd clusters and applications\u201d",
    "https://etcd.io/docs/v3.6/upgrades/upgrading-etcd/",
)
