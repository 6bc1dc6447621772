"""SandboxTemplate: label each template with the hash of its name, as upstream does.

Sandboxes built from a template carry ``agents.x-k8s.io/sandbox-template-ref-hash``;
the template carries the same label so selectors can join them. Upstream also
manages a NetworkPolicy per template; on the embedded engine sandboxes have no
network at all unless asked, so there is no policy object to manage.
"""

from __future__ import annotations

from turbok.controllers import labels as lb
from turbok.controllers.base import DONE, Reconciler, Result
from turbok.controllers.client import Client

__all__ = ["TemplateReconciler"]


class TemplateReconciler(Reconciler):
    concurrency = 1

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.kind = client.kinds.by_kind(lb.EXTENSIONS_API, "SandboxTemplate")

    async def reconcile(self, namespace: str, name: str) -> Result:
        template = await self.client.try_get(self.kind, namespace, name)
        if template is None or template["metadata"].get("deletionTimestamp"):
            return DONE
        labels = template["metadata"].setdefault("labels", {})
        if labels.get(lb.TEMPLATE_REF_HASH) != lb.name_hash(name):
            labels[lb.TEMPLATE_REF_HASH] = lb.name_hash(name)
            await self.client.update(self.kind, template)
        return DONE
