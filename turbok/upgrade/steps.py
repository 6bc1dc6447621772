"""The words of a plan: the actions and rollback instructions of each kind of step.

Kept apart from the planner so the planner reads as the algorithm and this as
the runbook. Each method returns the ordered instructions for one step; they
name exact versions and flags, and the order within a step is the order the
version skew policy requires (apiservers before controllers on the way up,
nodes and controllers before apiservers on the way down). Called by the planner only.
"""

from __future__ import annotations

from typing import Literal

from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.plan import ClusterState
from turbok.upgrade.versions import Version

__all__ = ["VENDORS", "Phase", "StepText"]

#: Which components a step changes, in the order it changes them.
Phase = Literal["etcd", "apiserver", "controllers", "ccm", "nodes"]

#: Managed services that offer a control-plane binary minor downgrade (see ``sources``).
VENDORS = ("GKE", "EKS")

_ONE_AT_A_TIME = "one instance at a time, waiting for /readyz before the next"


def _flag(cp: ControlPlaneVersion) -> str:
    return f" with --emulated-version={cp.emulated}" if cp.emulating else " without --emulated-version"


def _check_emulation(binary: Version, emulated: Version) -> str:
    """How to see that the apiservers emulate ``emulated``: /version reports it from 1.33 only."""
    if binary.minor >= 33:
        return (f"Check that `kubectl version` reports emulationMinor {emulated.minor} (and `kubectl get --raw /version` "
                "minCompatibilityMinor) and that the cluster works before going on")
    return (f"A {binary.mm} kube-apiserver does not report its emulated version (/version has emulationMinor from "
            f"1.33 on): check --emulated-version={emulated} on each kube-apiserver's command line (its static Pod "
            "manifest, or ps) and that the cluster works before going on")


class StepText:
    """Instruction text for every kind of step (stateless)."""

    def preflight(self, state: ClusterState, target: Version, *, upgrade: bool, newest_patch: Version) -> list[str]:
        cp = state.apiserver
        out = [
            "Take an etcd snapshot (etcdctl snapshot save) and keep it until the plan is done: it is the last "
            "resort for any step whose rollback is not safe",
            f"Run `turbok upgrade check --to {target.mm}` against your manifests, Helm output and the cluster; "
            "fix every removed API and skew violation it reports",
        ]
        if upgrade and cp.binary.patch is not None and cp.binary < newest_patch and not cp.emulating:
            out.append(f"Optionally move to the newest {cp.binary.mm} patch ({newest_patch}) first: the project "
                       "recommends upgrading from the latest patch of your minor")
        if upgrade:
            out.append("Make sure admission webhooks handle the new API versions (matchPolicy: Equivalent)")
        else:
            out.append(f"Stop writing objects that only {state.effective} serves; the rollback makes them unavailable")
        return out

    # --- kube-apiserver ---

    def apiserver(self, old: ClusterState, cp: ControlPlaneVersion, skipped: list[Version]) -> list[str]:
        out = [f"Replace kube-apiserver {old.apiserver.binary} by {cp.binary}{_flag(cp)}, {_ONE_AT_A_TIME}"]
        if skipped:
            names = ", ".join(str(v) for v in skipped)
            which = f"Binaries {names} are" if len(skipped) > 1 else f"Binary {names} is"
            out.append(f"{which} skipped: the {cp.binary.mm} binary emulates {cp.emulated} "
                       "(KEP-4330 skip-level binary upgrade)")
        if cp.emulating:
            out.append(_check_emulation(cp.binary, cp.emulated))
        return out

    def apiserver_back(self, old: ClusterState) -> list[str]:
        return [f"Reinstall kube-apiserver {old.apiserver.binary}{_flag(old.apiserver)}, {_ONE_AT_A_TIME}"]

    def classic_back(self, old: ClusterState, cp: ControlPlaneVersion) -> list[str]:
        prev = old.apiserver
        if cp.binary.minor >= 32:
            return [f"Restart each kube-apiserver {cp.binary} with --emulated-version={prev.emulated}, "
                    f"{_ONE_AT_A_TIME} (it stays compatible with {prev.emulated}: the rollback upstream documents)",
                    f"Optionally reinstall kube-apiserver {prev.binary} afterwards: a binary minor downgrade, offered "
                    "only by vendors (GKE while the cluster emulates the previous minor, EKS to the previous minor)"]
        return [f"Not reversible in place: a {cp.binary.mm} kube-apiserver cannot emulate {prev.emulated} "
                "(emulation starts with 1.32 binaries)",
                f"Stop the control plane, restore the etcd snapshot from preflight (writes since are lost) and "
                f"reinstall kube-apiserver {prev.binary}"]

    # --- kube-controller-manager and kube-scheduler ---

    def controllers(self, cp: ControlPlaneVersion) -> list[str]:
        return [f"Replace kube-controller-manager and kube-scheduler by {cp.binary}{_flag(cp)} "
                "(either order, or together)"]

    def controllers_back(self, old: ControlPlaneVersion) -> list[str]:
        return [f"Reinstall kube-controller-manager and kube-scheduler {old.binary}{_flag(old)}"]

    # --- emulated version ---

    def raise_emulation(self, old: ClusterState, n: Version) -> list[str]:
        flag = f"--emulated-version={n}" if not n.same_minor(old.apiserver.binary) else "no --emulated-version (it defaults to the binary)"
        check = (f"Check `kubectl version` (emulationMinor {n.minor}) and the cluster's health"
                 if old.apiserver.binary.minor >= 33 else
                 f"Check --emulated-version on each kube-apiserver's command line ({old.apiserver.binary.mm} does not "
                 "report it in /version) and the cluster's health")
        return [f"Restart each kube-apiserver {old.apiserver.binary} with {flag}, {_ONE_AT_A_TIME}",
                f"Then restart kube-controller-manager and kube-scheduler with {flag}",
                f"{check}: {n} APIs and features are now on"]

    def raise_emulation_back(self, old: ClusterState) -> list[str]:
        e = old.effective
        return [f"Restart kube-controller-manager and kube-scheduler with --emulated-version={e}",
                f"Then restart each kube-apiserver with --emulated-version={e}, {_ONE_AT_A_TIME} "
                f"(safe: the control plane stayed compatible with {e})"]

    def lower_emulation(self, old: ClusterState, m: Version) -> list[str]:
        return [f"Restart kube-controller-manager and kube-scheduler with --emulated-version={m}",
                f"Then restart each kube-apiserver {old.apiserver.binary} with --emulated-version={m}, {_ONE_AT_A_TIME}",
                f"APIs and features introduced after {m} are off again; check workloads that used them"]

    def lower_emulation_back(self, old: ClusterState) -> list[str]:
        flag = (f"--emulated-version={old.effective}" if old.apiserver.emulating
                else "no --emulated-version")
        return [f"Restart each kube-apiserver with {flag}, {_ONE_AT_A_TIME}",
                f"Then restart kube-controller-manager and kube-scheduler with {flag}"]

    # --- etcd ---

    def etcd(self, old: Version, minor: Version, binary: Version) -> list[str]:
        return [f"Move etcd {old} to the newest {old.mm} patch first (etcd upgrades from the newest patch of a minor)",
                f"Then replace etcd member by member with the newest {minor} patch, checking `etcdctl endpoint health` "
                f"after each: kubeadm installs etcd {minor} with Kubernetes {binary.mm}, and etcd supports one minor "
                "per upgrade"]

    def etcd_back(self, old: Version) -> list[str]:
        return [f"Stop the control plane, restore the etcd snapshot taken in preflight with etcd {old} "
                "(writes since are lost), start it again"]

    # --- cloud-controller-manager ---

    def ccm(self, old: Version, new: Version) -> list[str]:
        return [f"Replace cloud-controller-manager {old} by {new}: it has no --emulated-version, so it follows "
                "kube-apiserver's emulated version (never newer than it, at most one minor older)"]

    def ccm_back(self, old: Version) -> list[str]:
        return [f"Reinstall cloud-controller-manager {old}"]

    # --- nodes ---

    def nodes(self, old: ClusterState, version: Version) -> list[str]:
        return [f"For each node: drain it, replace kubelet {old.kubelet} and kube-proxy {old.kube_proxy} by {version}, "
                "uncordon it (in-place minor kubelet changes are not supported)"]

    def nodes_back(self, old: ClusterState) -> list[str]:
        return [f"For each node: drain it, reinstall kubelet {old.kubelet} and kube-proxy {old.kube_proxy}, uncordon it"]
