"""The checks' view of a cluster: discovery, CRUD, logs, service proxy, over ``turbok.client.api.Api``.

Every request goes through the project's one REST client (``turbok.client.api``: transport, rate limit,
429 handling, the ``Status`` error mapping); this module adds discovery of what the cluster serves and
turns the client's errors into the conformance error tree (``errors.api_error_for``). Why not the
``kubernetes`` package: the checks need unstructured objects of
CRDs that may or may not exist (Kueue, Gateway API, KubeRay...), server-side
discovery to decide what to check, and raw text endpoints (pod logs, the
service proxy for Prometheus and metrics exporters). A thin client over the
REST paths does all of that in one place, with one error mapping
(``errors.api_error_for``) and no generated models.

Objects are plain dicts (``apiVersion``, ``kind``, ``metadata``...). Kinds are
resolved to REST paths through discovery, cached per client. Callers: the
runner, the checks (through ``checks.base.CheckContext``) and cleanup.
Contract: every method either returns or raises a ``ClusterError`` (or the
``turbok.client`` ``KubeconfigError`` when the credentials cannot be produced,
such as a failing exec plugin); none retries except ``list`` following
``continue`` tokens and the credential refresh after a 401 from an exec plugin's
cached token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from turbok.api import status as st
from turbok.client.api import Api, status_code, status_reason
from turbok.client.errors import ConnectionFailed
from turbok.client.kubeconfig import ClusterConfig
from turbok.conformance.errors import (
    ClusterError,
    ClusterUnreachableError,
    NotFoundError,
    api_error_for,
)

__all__ = ["ApiResource", "Discovery", "KubeClient", "split_api_version"]

_USER_AGENT = "turbok-conformance/0.1 (+https://github.com/cncf/k8s-ai-conformance)"


def split_api_version(api_version: str) -> tuple[str, str]:
    """``apps/v1`` -> (``apps``, ``v1``); ``v1`` -> (``""``, ``v1``)."""
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return group, version
    return "", api_version


@dataclass(frozen=True)
class ApiResource:
    """One served resource (not a subresource) of one group version."""

    group: str
    version: str
    name: str
    kind: str
    namespaced: bool
    verbs: frozenset[str]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.name}"
        if name:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base


class Discovery:
    """What the server serves: API groups, their versions, their resources (fetched lazily)."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self._groups: dict[str, list[str]] | None = None
        self._resources: dict[tuple[str, str], list[ApiResource]] = {}

    @property
    def groups(self) -> dict[str, list[str]]:
        """Group name (``""`` for core) -> versions, preferred first."""
        if self._groups is None:
            groups: dict[str, list[str]] = {"": list(self._client.get_json("/api").get("versions") or ["v1"])}
            for g in self._client.get_json("/apis").get("groups") or []:
                versions = [v["version"] for v in g.get("versions") or []]
                preferred = (g.get("preferredVersion") or {}).get("version")
                if preferred in versions:
                    versions.remove(preferred)
                    versions.insert(0, preferred)
                groups[g["name"]] = versions
            self._groups = groups
        return self._groups

    def has_group(self, group: str, version: str | None = None) -> bool:
        versions = self.groups.get(group)
        return versions is not None and (version is None or version in versions)

    def preferred_version(self, group: str, among: tuple[str, ...] | None = None) -> str | None:
        """The server's preferred version of ``group``, or the first of ``among`` it serves."""
        versions = self.groups.get(group) or []
        if among is None:
            return versions[0] if versions else None
        for v in versions:
            if v in among:
                return v
        return None

    def resources(self, group: str, version: str) -> list[ApiResource]:
        key = (group, version)
        if key not in self._resources:
            path = f"/apis/{group}/{version}" if group else f"/api/{version}"
            try:
                doc = self._client.get_json(path)
            except NotFoundError:
                doc = {}
            self._resources[key] = [
                ApiResource(
                    group=group,
                    version=version,
                    name=r["name"],
                    kind=r.get("kind", ""),
                    namespaced=bool(r.get("namespaced", False)),
                    verbs=frozenset(r.get("verbs") or []),
                )
                for r in doc.get("resources") or []
                if "/" not in r.get("name", "")
            ]
        return self._resources[key]

    def subresources(self, group: str, version: str) -> set[str]:
        """``pods/log``-style names served in a group version."""
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            doc = self._client.get_json(path)
        except NotFoundError:
            return set()
        return {r["name"] for r in doc.get("resources") or [] if "/" in r.get("name", "")}

    def find(self, api_version: str, kind: str) -> ApiResource | None:
        group, version = split_api_version(api_version)
        if not self.has_group(group, version):
            return None
        for r in self.resources(group, version):
            if r.kind == kind:
                return r
        return None

    def has_resource(self, group: str, name: str, version: str | None = None) -> bool:
        versions = [version] if version else self.groups.get(group) or []
        return any(r.name == name for v in versions for r in self.resources(group, v))

    def all_resources(self) -> list[ApiResource]:
        """Every resource of every served group version (preferred versions only)."""
        found: list[ApiResource] = []
        for group, versions in self.groups.items():
            if versions:
                found.extend(self.resources(group, versions[0]))
        return found


class KubeClient:
    """Synchronous client for one cluster; close it (or use ``with``)."""

    def __init__(self, config: ClusterConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        # TLS, credentials (fresh per request), proxy-url and tls-server-name come from the kubeconfig;
        # may raise KubeconfigError (unusable certificates, a failing exec plugin). The environment's
        # proxies are ignored: only the kubeconfig says how to reach the cluster.
        self.api = Api(config, timeout=timeout, user_agent=_USER_AGENT, trust_env=False)
        self.discovery = Discovery(self)

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.api.close()

    # -- raw HTTP ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: float | None = None,
    ) -> httpx.Response:
        """One API call; a failure status becomes the matching ``ApiError``."""
        try:
            return self.api.send(method, path, params=params, body=body, content_type=content_type, accept=accept,
                                 timeout=timeout)
        except ConnectionFailed as e:
            raise ClusterUnreachableError(str(e)) from e
        except st.ApiError as e:
            raise api_error_for(code=status_code(e), reason=status_reason(e) or e.reason, message=e.message[:500],
                                method=method, path=path) from e

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self.request("GET", path, params=params)
        try:
            data = resp.json()
        except ValueError as e:
            raise ClusterError(f"GET {path}: the server answered with something that is not JSON") from e
        return data if isinstance(data, dict) else {}

    def get_text(self, path: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> str:
        return self.request("GET", path, params=params, accept="*/*", timeout=timeout).text

    # -- typed helpers ----------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        return self.get_json("/version")

    def resource(self, api_version: str, kind: str) -> ApiResource:
        found = self.discovery.find(api_version, kind)
        if found is None:
            raise NotFoundError(
                code=404, reason="NotFound", message=f"the server does not serve {kind} in {api_version}",
                method="GET", path=f"discovery {api_version}",
            )
        return found

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.get_json(self.resource(api_version, kind).path(namespace, name))

    def get_or_none(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return self.get(api_version, kind, name, namespace)
        except NotFoundError:
            return None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """All items (every namespace when ``namespace`` is None), following ``continue``."""
        res = self.resource(api_version, kind)
        params: dict[str, Any] = {"limit": 500}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        items: list[dict[str, Any]] = []
        while True:
            page = self.get_json(res.path(namespace), params)
            for item in page.get("items") or []:
                # list items often omit apiVersion/kind; put them back for callers.
                item.setdefault("apiVersion", res.api_version)
                item.setdefault("kind", res.kind)
                items.append(item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params["continue"] = token

    def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        res = self.resource(obj["apiVersion"], obj["kind"])
        ns = (obj.get("metadata") or {}).get("namespace") if res.namespaced else None
        params = {"dryRun": "All"} if dry_run else None
        return self.request("POST", res.path(ns), params=params, body=obj).json()  # type: ignore[no-any-return]

    def replace(self, obj: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        res = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata") or {}
        path = res.path(meta.get("namespace") if res.namespaced else None, meta["name"], subresource)
        return self.request("PUT", path, body=obj).json()  # type: ignore[no-any-return]

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        patch: dict[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386)."""
        res = self.resource(api_version, kind)
        path = res.path(namespace, name, subresource)
        return self.request("PATCH", path, body=patch, content_type="application/merge-patch+json").json()  # type: ignore[no-any-return]

    def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, *, propagation: str = "Background"
    ) -> bool:
        """Delete one object; False when it was already gone."""
        res = self.resource(api_version, kind)
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            self.request("DELETE", res.path(namespace, name), body=body)
        except NotFoundError:
            return False
        return True

    def pod_logs(self, namespace: str, name: str, container: str | None = None) -> str:
        params = {"container": container} if container else None
        return self.get_text(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}/log", params)

    def service_proxy(
        self, namespace: str, service: str, port: int | str, path: str, params: dict[str, Any] | None = None, *, scheme: str = ""
    ) -> str:
        """GET through the API server's service proxy (``[scheme:]name:port``), as the cluster sees the service."""
        target = f"{scheme}:{service}:{port}" if scheme else f"{service}:{port}"
        full = f"/api/v1/namespaces/{quote(namespace, safe='')}/services/{quote(target, safe=':')}/proxy/{path.lstrip('/')}"
        return self.get_text(full, params, timeout=60.0)
