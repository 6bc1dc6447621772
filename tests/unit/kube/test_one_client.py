"""One Kubernetes REST client for the whole project: ``turbok.client.api`` (docs/kube.md).

Every module of turbok that opens an HTTP client of its own is listed here with what it talks to; a
new one fails this test until it either goes through ``turbok.client.api`` (``Api``/``AsyncApi``) or is
added with a reason that it does not speak the Kubernetes API. ``KNOWN_EXCEPTIONS`` are Kubernetes
REST clients still to be folded in, each with its owner.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "turbok"
_OPENS_HTTP = re.compile(r"httpx\.(Client|AsyncClient|get|post|put|patch|delete|request|stream)\(|"
                         r"\.http_client(_async)?\(|aiohttp\.ClientSession\(|urllib\.request|http\.client")

#: Modules that speak HTTP, but not the Kubernetes API.
NOT_KUBERNETES = {
    "runtime/registry.py": "OCI registries (the distribution API)",
    "embedded/daemon.py": "the /readyz probe of the local control plane while it starts",
    "sandboxd/proxy.py": "proxies to sandboxes",
    "kube/router.py": "proxies to sandbox Pods",
    "sdk/client.py": "the sandbox runtime API",
    "sdk/aio.py": "the sandbox runtime API",
    "conformance/checks/sandboxing.py": "the sandbox router's /execute",
    "conformance/validator.py": "the web pages a conformance submission links to",
}
#: Kubernetes REST spoken without turbok.client.api, still to be folded in (none left: keep it so).
KNOWN_EXCEPTIONS: dict[str, str] = {}


def _openers() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("client/"):
            continue  # the client itself
        if _OPENS_HTTP.search(path.read_text()):
            found.add(rel)
    return found


def test_every_module_that_opens_http_is_the_client_or_says_why_not() -> None:
    unexplained = _openers() - set(NOT_KUBERNETES) - set(KNOWN_EXCEPTIONS)
    assert not unexplained, (f"{sorted(unexplained)} open HTTP clients of their own: speak to the Kubernetes API "
                             "through turbok.client.api, or list them in NOT_KUBERNETES with what they talk to")


def test_the_lists_hold_nothing_stale() -> None:
    stale = (set(NOT_KUBERNETES) | set(KNOWN_EXCEPTIONS)) - _openers()
    assert not stale, f"{sorted(stale)} no longer open HTTP clients: drop them from the lists"
