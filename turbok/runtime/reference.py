"""Image references as Docker and the kubelet read them: ``python:3.12``, ``ghcr.io/o/r@sha256:...``.

``parse(text)`` applies Docker's normalisation (the grammar of
``distribution/reference``): a first component with a ``.`` or ``:`` or equal to
``localhost`` is a registry, else the registry is ``docker.io`` (whose API host is
``registry-1.docker.io``) and a one-component name gets ``library/``; no tag and no
digest means ``:latest``, as the kubelet applies. Anything else raises
``InvalidImageName`` with the kubelet's wording. ``default_pull_policy`` is the
kubelet's default ``imagePullPolicy``: ``Always`` for ``:latest`` or no tag,
``IfNotPresent`` otherwise (a digest included).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from turbok.runtime.errors import InvalidImageName

__all__ = ["DOCKER_HUB", "PULL_POLICIES", "Reference", "default_pull_policy", "is_loopback", "parse"]

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*"
    r"[a-zA-Z0-9]))*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_NAME_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A normalised reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository`` (the kubelet's image name without tag or digest)."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host serving the registry API (Docker Hub's is not ``docker.io``)."""
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def by_digest(self) -> str:
        """``name@digest`` (only when the reference has a digest)."""
        return f"{self.name}@{self.digest}"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (with or without a port): registries spoken to over HTTP."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _invalid(text: str, why: str = "invalid reference format") -> InvalidImageName:
    return InvalidImageName(
        f'Failed to apply default image tag "{text}": couldn\'t parse image name "{text}": {why}', reference=text)


def parse(text: str) -> Reference:
    """``text`` normalised as Docker does; ``InvalidImageName`` when it is not a reference."""
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise _invalid(text)
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise _invalid(text, "invalid digest (turbok pulls sha256 digests)")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise _invalid(text)
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _DOMAIN.match(first):
            raise _invalid(text)
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH.match(path):
        why = "repository name must be lowercase" if _PATH.match(path.lower()) else "invalid reference format"
        raise _invalid(text, why)
    if len(registry) + 1 + len(path) > _NAME_MAX:
        raise _invalid(text, "repository name must not be more than 255 characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


def default_pull_policy(text: str) -> str:
    """The kubelet's default ``imagePullPolicy`` for ``text``."""
    rest = text.split("@", 1)[0]
    if "@" in text:
        return "IfNotPresent"
    slash, colon = rest.rfind("/"), rest.rfind(":")
    tag = rest[colon + 1:] if colon > slash else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"
