"""Namespaces: what every active namespace holds, and how a deleted one empties before it goes.

- Active: a ``default`` ServiceAccount (kube-controller-manager's
  serviceaccount controller) and the ``kube-root-ca.crt`` ConfigMap holding
  the API server's CA bundle under ``ca.crt`` (its root-ca-cert-publisher),
  made again when deleted and put back when changed. Pods use them: a Pod's
  ``serviceAccountName`` defaults to ``default``; clients in a Pod verify the
  API server with the bundle.
- Terminating (``deletionTimestamp`` set, ``spec.finalizers`` holding
  ``kubernetes``): its contents are deleted with background propagation;
  when nothing namespaced remains, the controller drops the ``kubernetes``
  finalizer and the registry removes the namespace. Conditions say what still
  remains, as kube-controller-manager's namespace controller does.
"""

from __future__ import annotations

from collections.abc import Iterable

from turbok.api.kinds import CONFIG_MAP, NAMESPACE, SERVICE_ACCOUNT, Kind
from turbok.api.meta import set_condition
from turbok.api.status import AlreadyExists, Forbidden
from turbok.controllers.base import DONE, Key, Reconciler, Result, requeue
from turbok.controllers.client import Client, Obj

__all__ = ["ROOT_CA_CONFIGMAP", "NamespaceReconciler"]

FINALIZER = "kubernetes"
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
_ROOT_CA_DESCRIPTION = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as "
    "the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of "
    "Kubernetes clusters.")


class NamespaceReconciler(Reconciler):
    kind = NAMESPACE
    concurrency = 1

    def __init__(self, client: Client, root_ca: str | None = None) -> None:
        """``root_ca``: the API server's CA bundle (PEM) to publish; None publishes no ConfigMap."""
        super().__init__(client)
        self.root_ca = root_ca
        self._terminating: set[str] = set()

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> Iterable[Key]:
        md = obj.get("metadata", {})
        ns = md.get("namespace", "")
        terminating = kind.namespaced and ns in self._terminating
        ours = (kind is SERVICE_ACCOUNT and md.get("name") == "default") or (
            kind is CONFIG_MAP and md.get("name") == ROOT_CA_CONFIGMAP and self.root_ca is not None)
        if terminating or ours:
            yield ("", ns)

    async def reconcile(self, namespace: str, name: str) -> Result:
        ns = await self.client.try_get(NAMESPACE, "", name)
        if ns is None:
            self._terminating.discard(name)
            return DONE
        if not ns["metadata"].get("deletionTimestamp"):
            await self._populate(name)
            return DONE
        self._terminating.add(name)
        remaining: dict[str, int] = {}
        for kind in self.client.kinds:
            if not kind.namespaced:
                continue
            for obj in await self.client.list(kind, name):
                remaining[kind.qualified] = remaining.get(kind.qualified, 0) + 1
                if not obj["metadata"].get("deletionTimestamp"):
                    await self.client.delete(kind, name, obj["metadata"]["name"], propagation="Background")
        status = ns.setdefault("status", {})
        if remaining:
            listed = ", ".join(f"{k} has {n} resource instances" for k, n in sorted(remaining.items()))
            changed = set_condition(status, "NamespaceContentRemaining", True, "SomeResourcesRemain",
                                    f"Some resources are remaining: {listed}")
            if changed:
                await self.client.update_status(NAMESPACE, ns)
            return requeue(1.0)
        spec_finalizers = [f for f in (ns.get("spec") or {}).get("finalizers") or [] if f != FINALIZER]
        ns["spec"] = {"finalizers": spec_finalizers} if spec_finalizers else {}
        await self.client.update(NAMESPACE, ns)
        return DONE

    async def _populate(self, namespace: str) -> None:
        try:
            if await self.client.try_get(SERVICE_ACCOUNT, namespace, "default") is None:
                await self.client.create(SERVICE_ACCOUNT, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                           "metadata": {"name": "default", "namespace": namespace}})
            if self.root_ca is not None:
                await self._publish_root_ca(namespace, self.root_ca)
        except AlreadyExists:
            pass  # made meanwhile: the next change brings us back if it is wrong
        except Forbidden:
            pass  # the namespace started terminating: nothing goes into it any more

    async def _publish_root_ca(self, namespace: str, bundle: str) -> None:
        current = await self.client.try_get(CONFIG_MAP, namespace, ROOT_CA_CONFIGMAP)
        annotations = {"kubernetes.io/description": _ROOT_CA_DESCRIPTION}
        if current is None:
            await self.client.create(CONFIG_MAP, {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": namespace, "annotations": annotations},
                "data": {"ca.crt": bundle}})
            return
        md = current["metadata"]
        if current.get("data") != {"ca.crt": bundle} or (md.get("annotations") or {}).get(
                "kubernetes.io/description") != _ROOT_CA_DESCRIPTION:
            current["data"] = {"ca.crt": bundle}
            current.pop("binaryData", None)
            md.setdefault("annotations", {}).update(annotations)
            await self.client.update(CONFIG_MAP, current)
