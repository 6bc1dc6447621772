"""``apiextensions.k8s.io/v1`` CustomResourceDefinitions, served read-only.

The kinds turbok serves are built in (``turbok.api.kinds``), yet clients ask
for their CRDs: kubectl's validation lists CRDs to tell a custom kind from an
unknown one (without them, a typo in ``kind:`` fails with "failed to list
CRDs" instead of "no matches for kind"), and users run ``kubectl get crd`` or
``kubectl wait --for=condition=Established crd/...``. Each CRD is the packaged
one as it would read on a cluster that established it: only the storage
version served, ``Established`` and ``NamesAccepted`` true. Nothing is
stored; writes get 405.

Called by ``turbok.apiserver.app`` (routes) and ``discovery`` (the group).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import uuid
from typing import Any

from aiohttp import web

from turbok.api import meta as m
from turbok.api.kinds import Kind, KindRegistry
from turbok.api.status import MethodNotAllowed, NotFound
from turbok.apiserver.table import to_table, wants_table

__all__ = ["CRD_KIND", "crd_objects", "handle_crds"]

GROUP, VERSION = "apiextensions.k8s.io", "v1"

CRD_KIND = Kind(
    group=GROUP,
    version=VERSION,
    kind="CustomResourceDefinition",
    plural="customresourcedefinitions",
    singular="customresourcedefinition",
    namespaced=False,
    short_names=("crd", "crds"),
    categories=("api-extensions",),
    schema={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    # kube-apiserver prints a CRD's creation time as a timestamp, not an age.
    printer_columns=({"name": "Created At", "type": "string", "format": "date-time",
                      "jsonPath": ".metadata.creationTimestamp"},),
)

#: When this process started serving: the CRDs' creation time (they exist as long as the server does).
_STARTED = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _crd(kind: Kind) -> dict[str, Any]:
    assert kind.crd is not None
    crd = copy.deepcopy(kind.crd)
    name = f"{kind.plural}.{kind.group}"
    md = crd.setdefault("metadata", {})
    md.update(name=name, uid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"turbok:crd:{name}")), resourceVersion="1",
              generation=1, creationTimestamp=_STARTED)
    for version in crd["spec"]["versions"]:
        # Only the storage version is served: the others would need the upstream conversion webhook.
        version["served"] = version["name"] == kind.version
        version["storage"] = version["name"] == kind.version
    condition = {"status": "True", "lastTransitionTime": _STARTED}
    crd["status"] = {
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": [kind.version],
        "conditions": [
            {"type": "NamesAccepted", "reason": "NoConflicts", "message": "no conflicts found", **condition},
            {"type": "Established", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", **condition},
        ],
    }
    return crd


def crd_objects(kinds: KindRegistry) -> list[dict[str, Any]]:
    """The CRD of every served custom kind, in name order."""
    return sorted((_crd(k) for k in kinds if k.crd is not None), key=lambda c: c["metadata"]["name"])


def _json(data: Any) -> web.Response:
    return web.Response(body=json.dumps(data, separators=(",", ":")).encode(), content_type="application/json")


async def handle_crds(request: web.Request, kinds: KindRegistry) -> web.StreamResponse:
    """GET (one, list, watch) on ``/apis/apiextensions.k8s.io/v1/customresourcedefinitions[/name]``."""
    name = request.match_info.get("name")
    if request.method != "GET":
        raise MethodNotAllowed(f"{request.method} is not allowed: turbok serves its CustomResourceDefinitions "
                               "read-only (its kinds are built in)", kind=CRD_KIND.plural, group=GROUP)
    table = wants_table(request.headers.get("Accept", ""))
    include = request.query.get("includeObject", "Metadata")
    items = crd_objects(kinds)
    if name is not None:
        found = next((c for c in items if c["metadata"]["name"] == name), None)
        if found is None:
            raise NotFound(f'{CRD_KIND.qualified} "{name}" not found', kind=CRD_KIND.plural, group=GROUP,
                           name=name)
        return _json(to_table(CRD_KIND, [found], "1", include) if table else found)
    labels = m.LabelSelector.parse(request.query.get("labelSelector"))
    fields = m.FieldSelector.parse(request.query.get("fieldSelector"))
    items = [c for c in items if labels.matches(c["metadata"].get("labels")) and fields.matches(c)]
    if request.query.get("watch") not in ("1", "true", "True"):
        if table:
            return _json(to_table(CRD_KIND, items, "1", include))
        return _json({"apiVersion": CRD_KIND.api_version, "kind": CRD_KIND.list_kind,
                      "metadata": {"resourceVersion": "1"}, "items": items})
    return await _watch(request, items, table)


async def _watch(request: web.Request, items: list[dict[str, Any]], table: bool) -> web.StreamResponse:
    """A watch: every CRD once as ADDED (none from a resourceVersion), then nothing changes until the timeout."""
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
    await response.prepare(request)
    if request.query.get("resourceVersion") in (None, "", "0"):
        for crd in items:
            obj = to_table(CRD_KIND, [crd], "1") if table else crd
            await response.write(json.dumps({"type": "ADDED", "object": obj}, separators=(",", ":")).encode()
                                 + b"\n")
    try:
        timeout = min(float(request.query.get("timeoutSeconds") or 1800), 1800.0)
    except ValueError:
        timeout = 1800.0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        await asyncio.sleep(min(1.0, max(deadline - loop.time(), 0.0)))
    return response
