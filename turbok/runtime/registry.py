"""Talking to an OCI registry (the distribution API): manifests, blobs, and the registry's own auth.

``RegistryClient(ref, credentials)`` speaks ``/v2/`` over httpx: HTTPS, or plain
HTTP for loopback registries and those named in ``$TURBOK_INSECURE_REGISTRIES``
(comma-separated ``host[:port]``). Authentication follows the registry's
``WWW-Authenticate`` challenge: anonymous first; ``Basic`` with the credentials;
``Bearer``: a token from the challenge's realm for ``repository:<repo>:pull``,
fetched anonymously or with the credentials (basic auth, or an ``identitytoken``
as an OAuth2 refresh token), cached for the client's life. Credentials travel
only in ``Authorization`` headers (never in a URL, never logged, never to a
plain-HTTP host that is not loopback); httpx drops the header on a redirect to
another origin (blob storage).

Credentials come from ``.dockerconfigjson`` documents (``imagePullSecrets`` of
type ``kubernetes.io/dockerconfigjson``, or an ``--authfile``):
``credentials_for(ref, documents)`` returns those matching the registry, most
specific first, as the kubelet's keyring does; the puller tries each and then
reports the last refusal. Every failure is an ``ImagePullFailed`` carrying the
registry's own message (its ``errors[].message``) and HTTP status.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from turbok.runtime.errors import ImagePullFailed
from turbok.runtime.reference import DOCKER_HUB, Reference, is_loopback

__all__ = [
    "MANIFEST_TYPES",
    "Credential",
    "RegistryClient",
    "credentials_for",
    "parse_dockerconfig",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
#: Manifests and configs are small: a registry sending more is refused.
MAX_MANIFEST_BYTES = 4 << 20
_USER_AGENT = "turbok (image pull)"
_CHALLENGE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))')


@dataclass(frozen=True)
class Credential:
    """A registry login; ``repr`` never shows the secret."""

    registry: str
    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:
        return f"Credential(registry={self.registry!r}, username={self.username!r}, secret=***)"


def _host_of(key: str) -> str:
    """The host[:port] a ``.dockerconfigjson`` key names (keys may be URLs or have paths)."""
    if "://" in key:
        key = urlsplit(key).netloc
    host = key.split("/", 1)[0].lower()
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io", "docker.io") else host


def parse_dockerconfig(document: bytes | str | Mapping[str, Any], *, source: str = "pull secret") -> list[Credential]:
    """The logins of one ``.dockerconfigjson`` (``{"auths": {...}}``) or legacy ``.dockercfg`` document."""
    data: Any = document
    if isinstance(document, bytes | str):
        try:
            data = json.loads(document)
        except ValueError:
            raise ValueError(f"{source} is not JSON") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{source} is not a JSON object")
    auths = data.get("auths", data)  # .dockercfg is the bare mapping
    if not isinstance(auths, Mapping):
        raise ValueError(f"{source}: 'auths' is not an object")
    out = []
    for key, entry in auths.items():
        if not isinstance(entry, Mapping):
            continue
        user, password = str(entry.get("username") or ""), str(entry.get("password") or "")
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"{source}: the 'auth' of {key!r} is not base64 of user:password") from None
        out.append(Credential(_host_of(str(key)), user, password, str(entry.get("identitytoken") or "")))
    return out


def _matches(pattern: str, host: str) -> bool:
    """The kubelet's keyring match: exact host, or a ``*.`` glob over one label per star."""
    if pattern == host:
        return True
    p_host, _, p_port = pattern.partition(":")
    h_host, _, h_port = host.partition(":")
    if p_port != h_port or "*" not in p_host:
        return False
    p_labels, h_labels = p_host.split("."), h_host.split(".")
    return len(p_labels) == len(h_labels) and all(
        re.fullmatch(re.escape(p).replace(r"\*", "[^.]*"), h) for p, h in zip(p_labels, h_labels, strict=True))


def credentials_for(ref: Reference, documents: Sequence[bytes | str | Mapping[str, Any]]) -> list[Credential]:
    """The logins in ``documents`` for ``ref``'s registry, exact matches before globs."""
    exact, globbed = [], []
    for i, doc in enumerate(documents):
        for cred in parse_dockerconfig(doc, source=f"pull secret {i}"):
            if cred.registry == ref.registry:
                exact.append(cred)
            elif _matches(cred.registry, ref.registry):
                globbed.append(cred)
    return exact + globbed


def _insecure() -> set[str]:
    return {h.strip().lower() for h in os.environ.get("TURBOK_INSECURE_REGISTRIES", "").split(",") if h.strip()}


def _registry_message(response: httpx.Response) -> str:
    """The registry's own words: ``CODE: message`` of its errors, else a short body."""
    try:
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors
                             if isinstance(e, dict))
    except (ValueError, httpx.ResponseNotRead):
        pass
    try:
        text = response.text.strip()
    except httpx.ResponseNotRead:
        text = ""
    return (text[:200] or response.reason_phrase or "no message").replace("\n", " ")


class RegistryClient:
    """One repository of one registry, with one login (or none). Not thread-safe for ``_token``
    updates only in the benign sense: two threads may each fetch a token once."""

    def __init__(self, ref: Reference, credential: Credential | None = None, *, timeout: float = 30.0) -> None:
        self.ref = ref
        self.credential = credential
        host = ref.api_host
        self.plain_http = is_loopback(host) or host.lower() in _insecure()
        self.base = f"{'http' if self.plain_http else 'https'}://{host}"
        self._auth: str | None = None  # the Authorization header that works
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=True,
                                    headers={"User-Agent": _USER_AGENT},
                                    limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- auth

    def _fail(self, what: str, response: httpx.Response | None = None, detail: str = "") -> ImagePullFailed:
        if response is not None:
            detail = f"{self.ref.registry} answered {response.status_code}: {_registry_message(response)}"
        return ImagePullFailed(f'failed to pull image "{self.ref}": {what}: {detail}', reference=str(self.ref),
                               status=None if response is None else response.status_code)

    def _basic(self) -> str:
        assert self.credential is not None
        pair = f"{self.credential.username}:{self.credential.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params_text = challenge.strip().partition(" ")
        params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
                  for m in _CHALLENGE.finditer(params_text)}
        if scheme.lower() == "basic":
            if self.credential is None:
                raise ImagePullFailed(
                    f'failed to pull image "{self.ref}": {self.ref.registry} asks for a login (basic auth) and no '
                    "pull secret has one for it", reference=str(self.ref), status=401)
            self._auth = self._basic()
            return
        if scheme.lower() != "bearer" or not params.get("realm"):
            raise self._fail("authenticating", detail=f"unsupported challenge {scheme!r}")
        realm = params["realm"]
        realm_host = urlsplit(realm).netloc
        if urlsplit(realm).scheme != "https" and not is_loopback(realm_host) and realm_host.lower() not in _insecure():
            raise self._fail("authenticating", detail=f"refusing a token realm over plain HTTP ({realm_host})")
        query = {"service": params.get("service", "")}
        scope = params.get("scope") or f"repository:{self.ref.repository}:pull"
        cred = self.credential
        try:
            if cred is not None and cred.identity_token:
                r = self._client.post(realm, data={"grant_type": "refresh_token", "refresh_token": cred.identity_token,
                                                   "service": query["service"], "scope": scope,
                                                   "client_id": "turbok"})
            else:
                headers = {"Authorization": self._basic()} if cred is not None else {}
                r = self._client.get(realm, params={**query, "scope": scope}, headers=headers)
        except httpx.HTTPError as e:
            raise self._fail("getting a token", detail=f"{realm_host}: {type(e).__name__}: {e}") from None
        if r.status_code != 200:
            raise self._fail("getting a token", detail=f"{realm_host} answered {r.status_code}: "
                             f"{_registry_message(r)}")
        try:
            body = r.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise self._fail("getting a token", detail=f"{realm_host} sent no token")
        self._auth = f"Bearer {token}"

    def _send(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
              stream: bool = False) -> httpx.Response:
        """One request, authenticating once on a 401 challenge; the caller closes streamed responses."""
        url = f"{self.base}/v2/{self.ref.repository}/{path}"
        for attempt in range(2):
            hdrs = dict(headers or {})
            if self._auth:
                hdrs["Authorization"] = self._auth
            try:
                request = self._client.build_request(method, url, headers=hdrs)
                response = self._client.send(request, stream=stream)
            except httpx.HTTPError as e:
                raise self._fail(f"{method} {path.split('/', 1)[0]}",
                                 detail=f"{self.ref.registry}: {type(e).__name__}: {e}") from None
            if response.status_code != 401 or attempt == 1:
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            response.read()
            response.close()
            if not challenge:
                return response
            self._authenticate(challenge)
        raise AssertionError("unreachable")

    # ---- manifests and blobs

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """The manifest (or index) named by a tag or digest: ``(bytes, media type, digest header)``."""
        r = self._send("GET", f"manifests/{reference}", headers={"Accept": ", ".join(MANIFEST_TYPES)}, stream=True)
        try:
            if r.status_code != 200:
                r.read()
                raise self._fail("resolving the reference", r)
            data = bytearray()
            for chunk in r.iter_raw():
                data += chunk
                if len(data) > MAX_MANIFEST_BYTES:
                    raise self._fail("resolving the reference", detail="manifest larger than 4 MiB")
        except httpx.HTTPError as e:
            raise self._fail("reading the manifest", detail=f"{type(e).__name__}: {e}") from None
        finally:
            r.close()
        media = r.headers.get("Content-Type", "").split(";")[0].strip()
        if not media or media not in MANIFEST_TYPES:
            with contextlib.suppress(ValueError, AttributeError):
                media = str(json.loads(bytes(data)).get("mediaType") or media)
        return bytes(data), media, r.headers.get("Docker-Content-Digest", "")

    def head_manifest(self, reference: str) -> str:
        """The digest a tag points at now (``HEAD``; one round trip, no body)."""
        r = self._send("HEAD", f"manifests/{reference}", headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if r.status_code != 200:
            raise self._fail("resolving the reference", r)
        return str(r.headers.get("Docker-Content-Digest", ""))

    def small_blob(self, digest: str) -> bytes:
        """A config blob (bounded like a manifest); the caller verifies its digest."""
        r = self._send("GET", f"blobs/{digest}", stream=True)
        try:
            if r.status_code != 200:
                r.read()
                raise self._fail(f"fetching {digest}", r)
            data = bytearray()
            for chunk in r.iter_raw():
                data += chunk
                if len(data) > MAX_MANIFEST_BYTES:
                    raise self._fail(f"fetching {digest}", detail="config larger than 4 MiB")
            return bytes(data)
        except httpx.HTTPError as e:
            raise self._fail(f"fetching {digest}", detail=f"{type(e).__name__}: {e}") from None
        finally:
            r.close()

    def blob(self, digest: str, *, offset: int = 0) -> tuple[Iterator[bytes], int, httpx.Response]:
        """Stream a blob from ``offset`` (``Range``): ``(chunks, the offset the bytes start at, response)``.

        A registry that ignores ``Range`` answers 200 from byte 0, which the returned offset says.
        The caller closes the response."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        r = self._send("GET", f"blobs/{digest}", headers=headers, stream=True)
        if r.status_code == 416 and offset:
            r.close()
            return self.blob(digest)
        if r.status_code not in (200, 206):
            r.read()
            r.close()
            raise self._fail(f"fetching layer {digest}", r)
        start = offset if r.status_code == 206 else 0

        def chunks() -> Iterator[bytes]:
            try:
                yield from r.iter_raw(1 << 20)
            except httpx.HTTPError as e:
                raise self._fail(f"fetching layer {digest}",
                                 detail=f"connection lost: {type(e).__name__}: {e}") from None

        return chunks(), start, r
