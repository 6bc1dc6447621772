"""Telling the idle suspender about use, and waking what it suspended: glue of the composition root.

The router (``turbok.sandboxd``) and the streams (``turbok.node.streams``) must
not import the controllers, nor the controllers them, so the control plane
wraps what it hands to each:

- ``WakingResolver`` wraps the router's ``SandboxResolver``: every request the
  router resolves is use of that Sandbox (``IdleSuspender.touch``), and a
  request for a Sandbox that is not Ready because idleness suspended it wakes it
  (``IdleSuspender.wake``: resumed, waited for until Ready) and is then
  resolved again, so the client only sees a slower answer. The router needs
  nothing else: it calls ``resolve`` once per request, as it always has.
- ``ActivityStreams`` wraps the node's ``PodStreams``: an exec, attach or
  port-forward into a Pod is use of the Sandbox of the same name.

Both take a ``Hooks`` (anything with ``touch`` and ``wake``, the
``IdleSuspender``) or None (idle suspension off: they pass straight through).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from turbok.sandboxd.errors import SandboxNotReady

__all__ = ["ActivityStreams", "Hooks", "WakingResolver"]


class Hooks(Protocol):
    def touch(self, namespace: str, name: str) -> None: ...

    def wake(self, namespace: str, name: str) -> Awaitable[bool]: ...


class WakingResolver:
    """A ``SandboxResolver`` that reports use and wakes idle-suspended Sandboxes (see the module docstring)."""

    def __init__(self, inner: Any, hooks: Hooks | None) -> None:
        self.inner = inner
        self.hooks = hooks

    async def resolve(self, namespace: str, name: str) -> Any:
        if self.hooks is None:
            return await self.inner.resolve(namespace, name)
        self.hooks.touch(namespace, name)
        try:
            return await self.inner.resolve(namespace, name)
        except SandboxNotReady:
            if not await self.hooks.wake(namespace, name):
                raise
        return await self.inner.resolve(namespace, name)

    def __getattr__(self, attr: str) -> Any:  # whatever else the router asks of its resolver
        return getattr(self.inner, attr)


class ActivityStreams:
    """``PodStreams`` that report an exec, attach or port-forward as use of the Pod's Sandbox."""

    def __init__(self, inner: Any, hooks: Hooks | None) -> None:
        self.inner = inner
        self.hooks = hooks

    def _touch(self, pod: Any) -> None:
        if self.hooks is not None and isinstance(pod, dict):
            md = pod.get("metadata") or {}
            self.hooks.touch(md.get("namespace", ""), md.get("name", ""))

    async def exec(self, pod: Any, *args: Any, **kw: Any) -> Any:
        self._touch(pod)
        return await self.inner.exec(pod, *args, **kw)

    async def attach(self, pod: Any, *args: Any, **kw: Any) -> Any:
        self._touch(pod)
        return await self.inner.attach(pod, *args, **kw)

    async def port_forward(self, pod: Any, *args: Any, **kw: Any) -> Any:
        self._touch(pod)
        return await self.inner.port_forward(pod, *args, **kw)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)
