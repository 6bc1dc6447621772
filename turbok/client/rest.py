"""A small synchronous Kubernetes REST client over httpx, for the CLI and tools.

Discovery maps what users type (``sandboxclaim``, ``swp``, ``sandboxes.agents.x-k8s.io``)
to resources; verbs map ``Status`` answers back to ``turbok.api.status``
errors, so a 422 arrives as ``Invalid`` with its causes. Works against the
embedded control plane and against any Kubernetes API server. The connection
(TLS, credentials kept fresh) comes from ``kubeconfig.ClusterConfig.http_client``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from turbok.api import status as st
from turbok.client.errors import ConnectionFailed
from turbok.client.kubeconfig import ClusterConfig

__all__ = ["ApiResource", "ConnectionFailed", "RestClient"]

Obj = dict[str, Any]

_BY_CODE: dict[int, type[st.ApiError]] = {
    400: st.BadRequest, 401: st.Unauthorized, 403: st.Forbidden, 404: st.NotFound, 405: st.MethodNotAllowed,
    410: st.Gone, 415: st.UnsupportedMediaType, 422: st.Invalid,
}


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


def _error(response: httpx.Response) -> st.ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    details = body.get("details") or {} if isinstance(body, dict) else {}
    causes = [st.Cause(c.get("field", ""), c.get("message", ""), c.get("reason", ""))
              for c in details.get("causes") or []]
    if response.status_code == 409:
        cls: type[st.ApiError] = st.AlreadyExists if body.get("reason") == "AlreadyExists" else st.Conflict
    else:
        cls = _BY_CODE.get(response.status_code, st.ApiError)
    return cls(message or f"HTTP {response.status_code}: {response.text[:200]}", name=details.get("name", ""),
               kind=details.get("kind", ""), group=details.get("group", ""), causes=causes)


class RestClient:
    """Synchronous client for the cluster of ``config``; close it (or use ``with``).

    Raises ``KubeconfigError`` when the credentials cannot be produced (here, or
    on a request when a token file or exec plugin fails later).
    """

    def __init__(self, config: ClusterConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self._http = config.http_client(timeout=timeout)
        self._resources: list[ApiResource] | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
                content_type: str = "application/json", headers: dict[str, str] | None = None) -> Any:
        content = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": content_type} if content is not None else {}
        hdrs.update(headers or {})
        try:
            response = self._http.request(method, path, content=content, params=params, headers=hdrs)
        except httpx.HTTPError as e:
            raise ConnectionFailed(f"cannot reach the API server at {self.config.server}: {e}") from e
        if response.status_code >= 400:
            raise _error(response)
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
        params: dict[str, Any] = {"watch": "true", "timeoutSeconds": int(timeout)}
        if field_selector:
            params["fieldSelector"] = field_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        try:
            with self._http.stream("GET", res.path(namespace), params=params, timeout=timeout + 5) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.HTTPError as e:
            raise ConnectionFailed(f"watch on {self.config.server} broke: {e}") from e
