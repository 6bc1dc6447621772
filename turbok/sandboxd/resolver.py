"""How the router finds the sandbox a request names: the ``SandboxResolver`` contract.

The router calls ``resolve(namespace, name)`` once per request, with the
``X-Sandbox-Namespace`` (default ``"default"``) and ``X-Sandbox-ID`` headers,
on the router's event loop. Obligations of an implementation:

1. Return the pod sandbox id (``turbok.runtime.ids.sandbox_id``, what the
   ``PodRuntime`` knows the Sandbox's Pod by) of a sandbox that is Ready, i.e.
   a container of its Pod runs.
2. Raise ``SandboxNotFound`` if no such sandbox exists (answered 404), and
   ``SandboxNotReady`` with a message that says what to wait for if it exists
   but is not Ready (answered 503).
3. Be O(1) and never block: no store scans, no processes, no network. The
   control plane keeps a map updated from its watch; ``StaticResolver`` is the
   trivial one, for tests, benchmarks and embedding without a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from turbok.sandboxd.errors import SandboxNotFound, SandboxNotReady

__all__ = ["SandboxResolver", "StaticResolver"]


class SandboxResolver(Protocol):
    async def resolve(self, namespace: str, name: str) -> str:
        """The runtime id of the Ready sandbox ``namespace/name``; see the module docstring."""
        ...


class StaticResolver:
    """A resolver over a mapping ``(namespace, name) -> runtime id``, changed with ``set``/``remove``.

    ``not_ready`` names sandboxes that exist but are not Ready, with the message to answer.
    """

    def __init__(self, sandboxes: Mapping[tuple[str, str], str] | None = None) -> None:
        self._ready: dict[tuple[str, str], str] = dict(sandboxes or {})
        self._not_ready: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, name: str, runtime_id: str) -> None:
        self._not_ready.pop((namespace, name), None)
        self._ready[(namespace, name)] = runtime_id

    def set_not_ready(self, namespace: str, name: str, message: str) -> None:
        self._ready.pop((namespace, name), None)
        self._not_ready[(namespace, name)] = message

    def remove(self, namespace: str, name: str) -> None:
        self._ready.pop((namespace, name), None)
        self._not_ready.pop((namespace, name), None)

    async def resolve(self, namespace: str, name: str) -> str:
        try:
            return self._ready[(namespace, name)]
        except KeyError:
            pass
        if (namespace, name) in self._not_ready:
            raise SandboxNotReady(
                f"sandbox {namespace}/{name} is not ready: {self._not_ready[(namespace, name)]}"
            )
        raise SandboxNotFound(f"sandbox {namespace}/{name} not found")
