"""The version skew policy, in terms of emulated versions, as checks over a snapshot.

Rules (https://kubernetes.io/releases/version-skew-policy/, extended to
emulation by KEP-4330's "Skew" section: skew is measured against the
apiserver's *emulated* version, ``E``, and its min compatibility version ``C``):

* kube-apiserver: in HA, the newest and oldest (emulated) versions are within one minor.
* kube-controller-manager, kube-scheduler, cloud-controller-manager: never
  newer than any apiserver; their (emulated) version lies in ``[C, E]`` of every
  apiserver they may talk to (without emulation, ``C = E-1``: "may be up to one
  minor version older"). Their *binary* must not be newer than the apiservers'
  binaries either (KEP-4330, "API availability in forward-compatible mode":
  apiservers are upgraded before other components).
* kubelet, kube-proxy: not newer than the oldest apiserver's emulated version,
  not older than ``C - 2`` of every apiserver (KEP-4330: "{minCompatibilityVersion-2}..{emulationVersion}";
  without emulation ``C = E-1``, which is the policy's "three minors older").
  kubelet/kube-proxy older than 1.25 may lag two minors only: ``C - 1``.
* kube-proxy: within three minors of the kubelet on its node (two if < 1.25).
* kubectl: ``C..E+1`` of every apiserver (KEP-4330; without emulation, the
  policy's one minor older or newer).

Apiserver *binaries* more than one minor apart (1.32.4 beside 1.35.7 emulating
1.32) pass these rules, but neither the policy nor KEP-4330 covers them:
``mixed_binaries`` says so, for plans and live clusters to report.

``check_skew`` returns every violation; it never raises for a violation.
Called by the planner (to prove each step) and by the checker (live clusters).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.versions import Version

__all__ = [
    "SKEW_POLICY_URL",
    "ClusterVersions",
    "Component",
    "Instance",
    "SkewViolation",
    "check_skew",
    "mixed_binaries",
    "node_floor",
    "node_lag_limit",
]

SKEW_POLICY_URL = "https://kubernetes.io/releases/version-skew-policy/"
KEP_4330_URL = "https://github.com/kubernetes/enhancements/tree/master/keps/sig-architecture/4330-compatibility-versions#skew"


class Component(StrEnum):
    APISERVER = "kube-apiserver"
    CONTROLLER_MANAGER = "kube-controller-manager"
    SCHEDULER = "kube-scheduler"
    CLOUD_CONTROLLER_MANAGER = "cloud-controller-manager"
    KUBELET = "kubelet"
    KUBE_PROXY = "kube-proxy"
    KUBECTL = "kubectl"


CONTROLLERS = (Component.CONTROLLER_MANAGER, Component.SCHEDULER, Component.CLOUD_CONTROLLER_MANAGER)
NODE_COMPONENTS = (Component.KUBELET, Component.KUBE_PROXY)


@dataclass(frozen=True)
class Instance:
    """One running component: ``name`` is a node, a pod, or ``local`` for kubectl.

    Control-plane components carry a ``ControlPlaneVersion`` (binary,
    emulated, min compatibility); the others only a binary version.
    """

    component: Component
    name: str
    version: Version
    control: ControlPlaneVersion | None = None

    @property
    def effective(self) -> Version:
        """The minor this instance behaves as: its emulated version, else its binary minor."""
        return self.control.emulated if self.control is not None else self.version.mm

    def describe(self) -> str:
        return str(self.control) if self.control is not None else str(self.version)


@dataclass(frozen=True)
class ClusterVersions:
    """A snapshot of every component's version (from a cluster, or a planned state)."""

    instances: tuple[Instance, ...]

    def of(self, component: Component) -> list[Instance]:
        return [i for i in self.instances if i.component is component]


@dataclass(frozen=True)
class SkewViolation:
    """One component instance outside the supported skew."""

    component: Component
    instance: str
    version: str
    allowed: str
    rule: str
    source: str = SKEW_POLICY_URL

    def message(self) -> str:
        return f"{self.component} {self.instance} at {self.version}: {self.rule} (supported: {self.allowed})"


def node_lag_limit(node_version: Version) -> int:
    """How many minors a kubelet or kube-proxy may lag the apiserver without emulation (3, or 2 before 1.25)."""
    return 3 if node_version.minor >= 25 else 2


def _compat(a: Instance) -> Version:
    """An apiserver's min compatibility version (emulated - 1 when it reports none)."""
    return a.control.min_compat if a.control is not None else a.effective.add_minor(-1)


def node_floor(apiserver: ControlPlaneVersion, node_version: Version) -> Version:
    """The oldest kubelet/kube-proxy minor ``apiserver`` supports: min compatibility - 2 (KEP-4330 "Skew").

    Without emulation that is the policy's "three minors older"; kubelets older
    than 1.25 keep their two-minor limit (min compatibility - 1).
    """
    return apiserver.min_compat.add_minor(-(node_lag_limit(node_version) - 1))


def _range(lo: Version, hi: Version) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def _emulating(apis: Sequence[Instance]) -> bool:
    return any(a.control is not None and a.control.emulating for a in apis)


def check_skew(versions: ClusterVersions) -> list[SkewViolation]:
    """Every violation of the skew policy in ``versions`` (empty when none or no apiserver)."""
    apis = versions.of(Component.APISERVER)
    if not apis:
        return []
    out: list[SkewViolation] = []
    newest = max(a.effective for a in apis)
    oldest = min(a.effective for a in apis)
    if newest.minors_since(oldest) > 1:
        for a in apis:
            if a.effective == oldest:
                out.append(SkewViolation(
                    Component.APISERVER, a.name, a.describe(), _range(newest.add_minor(-1), newest),
                    "kube-apiserver instances must be within one minor version of each other",
                ))
    out.extend(_check_controllers(versions, apis))
    out.extend(_check_nodes(versions, apis))
    source = KEP_4330_URL if _emulating(apis) else SKEW_POLICY_URL
    for k in versions.of(Component.KUBECTL):
        lo, hi = max(_compat(a) for a in apis), oldest.add_minor(1)
        if not lo <= k.version.mm <= hi:
            out.append(SkewViolation(Component.KUBECTL, k.name, str(k.version), _range(lo, hi),
                                     "kubectl must be within kube-apiserver's range: one minor older or newer "
                                     "(under --emulated-version: min compatibility version to emulated version + 1)",
                                     source=source))
    return out


def mixed_binaries(versions: ClusterVersions) -> str | None:
    """A note when apiserver binaries are more than one minor apart (uncovered by the policy and KEP-4330)."""
    apis = versions.of(Component.APISERVER)
    if not apis:
        return None
    lo = min(apis, key=lambda a: a.version)
    hi = max(apis, key=lambda a: a.version)
    if hi.version.minors_since(lo.version) <= 1:
        return None
    return (f"kube-apiserver {lo.describe()} and {hi.describe()} run side by side: binaries more than one minor "
            "apart are not covered by KEP-4330 (its skew rules speak of emulated versions and say nothing of mixed "
            "binaries in HA) nor by the version skew policy (one minor between apiservers)")


def _check_controllers(versions: ClusterVersions, apis: Sequence[Instance]) -> Iterable[SkewViolation]:
    lo = max(_compat(a) for a in apis)
    hi = min(a.effective for a in apis)
    oldest_binary = min(a.version for a in apis)
    for component in CONTROLLERS:
        for c in versions.of(component):
            if c.version.mm > oldest_binary.mm:
                yield SkewViolation(component, c.name, c.describe(), f"binary <= {oldest_binary.mm}",
                                    "must not run a newer binary than kube-apiserver (upgrade apiservers first)",
                                    source=KEP_4330_URL)
            if c.effective > hi:
                yield SkewViolation(component, c.name, c.describe(), _range(lo, hi),
                                    "must not be newer than kube-apiserver's (emulated) version")
            elif c.effective < lo:
                yield SkewViolation(component, c.name, c.describe(), _range(lo, hi),
                                    "may be at most one minor version older than kube-apiserver "
                                    "(older than its min compatibility version)")


def _check_nodes(versions: ClusterVersions, apis: Sequence[Instance]) -> Iterable[SkewViolation]:
    kubelets = {k.name: k for k in versions.of(Component.KUBELET)}
    hi = min(a.effective for a in apis)
    source = KEP_4330_URL if _emulating(apis) else SKEW_POLICY_URL
    for component in NODE_COMPONENTS:
        for n in versions.of(component):
            v = n.version.mm
            lag = node_lag_limit(v)
            lo = max(_compat(a).add_minor(-(lag - 1)) for a in apis)
            if v > hi:
                yield SkewViolation(component, n.name, str(n.version), _range(lo, hi),
                                    f"{component} must not be newer than kube-apiserver's (emulated) version",
                                    source=source)
            elif v < lo:
                yield SkewViolation(component, n.name, str(n.version), _range(lo, hi),
                                    f"{component} may be at most {lag} minor versions older than kube-apiserver "
                                    "(under --emulated-version: no older than its min compatibility version - 2)",
                                    source=source)
            if component is Component.KUBE_PROXY and n.name in kubelets:
                kv = kubelets[n.name].version.mm
                limit = node_lag_limit(v)
                if abs(v.minors_since(kv)) > limit:
                    yield SkewViolation(component, n.name, str(n.version), _range(kv.add_minor(-limit), kv.add_minor(limit)),
                                        f"kube-proxy must be within {limit} minor versions of the kubelet on its node ({kv})")
