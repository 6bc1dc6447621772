"""Discovery-driven resources over ``api.Api``, for the CLI and tools.

Discovery maps what users type (``sandboxclaim``, ``swp``, ``sandboxes.agents.x-k8s.io``)
to resources; the verbs go through ``turbok.client.api.Api`` (the one REST client: its
error mapping turns a 422 into ``Invalid`` with its causes, a 429 is waited out). Works
against the embedded control plane and against any Kubernetes API server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from turbok.api import status as st
from turbok.client.api import Api
from turbok.client.errors import ConnectionFailed
from turbok.client.kubeconfig import ClusterConfig

__all__ = ["ApiResource", "ConnectionFailed", "RestClient"]

Obj = dict[str, Any]

@dataclass(frozen=True)
class ApiResource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{root}/namespaces/{namespace}/{self.plural}" if self.namespaced and namespace else \
            f"{root}/{self.plural}"
        if name:
            path += f"/{name}"
        if sub:
            path += f"/{sub}"
        return path


class RestClient:
    """Synchronous client for the cluster of ``config``; close it (or use ``with``).

    Raises ``KubeconfigError`` when the credentials cannot be produced (here, or
    on a request when a token file or exec plugin fails later).
    """

    def __init__(self, config: ClusterConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self.api = Api(config, timeout=timeout, trust_env=True)
        self._resources: list[ApiResource] | None = None

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
                content_type: str = "application/json", headers: dict[str, str] | None = None) -> Any:
        accept = (headers or {}).get("Accept", "application/json")
        rest = {k: v for k, v in (headers or {}).items() if k != "Accept"}
        response = self.api.send(method, path, body=body, params=params, content_type=content_type, accept=accept,
                                 headers=rest)
        return response.json() if response.content else None

    # ------------------------------------------------------------ discovery

    def resources(self) -> list[ApiResource]:
        if self._resources is None:
            found: list[ApiResource] = []
            versions = [("", v) for v in self.request("GET", "/api").get("versions", [])]
            for group in self.request("GET", "/apis").get("groups", []):
                preferred = (group.get("preferredVersion") or group["versions"][0])["version"]
                versions.append((group["name"], preferred))
            for group, version in versions:
                path = f"/apis/{group}/{version}" if group else f"/api/{version}"
                for r in self.request("GET", path).get("resources", []):
                    if "/" in r["name"]:
                        continue
                    found.append(ApiResource(group, version, r["name"], r["kind"], r["namespaced"],
                                             r.get("singularName", ""), tuple(r.get("shortNames") or ())))
            self._resources = found
        return self._resources

    def resource(self, name: str) -> ApiResource:
        wanted, _, group = name.lower().partition(".")
        for r in self.resources():
            if group and r.group != group:
                continue
            if wanted in (r.plural, r.singular, r.kind.lower(), *r.short_names):
                return r
        raise st.NotFound(f'the server doesn\'t have a resource type "{name}"')

    def resource_for(self, api_version: str, kind: str) -> ApiResource:
        for r in self.resources():
            if r.api_version == api_version and r.kind == kind:
                return r
        raise st.NotFound(f'no matches for kind "{kind}" in version "{api_version}"')

    # ------------------------------------------------------------ verbs

    def get(self, res: ApiResource, name: str, namespace: str | None = None, *,
            table: bool = False) -> Obj:
        headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"} if table else None
        out: Obj = self.request("GET", res.path(namespace, name), headers=headers)
        return out

    def list(self, res: ApiResource, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None, table: bool = False) -> Obj:
        params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"} if table else None
        out: Obj = self.request("GET", res.path(namespace), params=params, headers=headers)
        return out

    def create(self, res: ApiResource, obj: Obj, namespace: str | None = None, **params: str) -> Obj:
        out: Obj = self.request("POST", res.path(namespace), body=obj, params=params or None)
        return out

    def patch(self, res: ApiResource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "application/merge-patch+json", sub: str | None = None, **params: str) -> Obj:
        out: Obj = self.request("PATCH", res.path(namespace, name, sub), body=patch, content_type=patch_type,
                                params=params or None)
        return out

    def delete(self, res: ApiResource, name: str, namespace: str | None = None, *,
               propagation: str | None = None) -> Obj:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation} if propagation \
            else None
        out: Obj = self.request("DELETE", res.path(namespace, name), body=body)
        return out

    def watch(self, res: ApiResource, namespace: str | None = None, *, field_selector: str | None = None,
              resource_version: str | None = None, timeout: float = 300.0) -> Iterator[Obj]:
        params: dict[str, Any] = {}
        if field_selector:
            params["fieldSelector"] = field_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        for event in self.api.watch(res.path(namespace), params=params, timeout_seconds=int(timeout)):
            yield {"type": event.type, "object": event.object}
