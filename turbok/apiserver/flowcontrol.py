"""Per-client concurrency limits: one client cannot starve the others (a small API Priority and Fairness).

kube-apiserver's APF puts each request in a flow (by user, or user and
namespace) and gives every flow a fair share of the server's seats, answering
429 with ``Retry-After`` when a flow's queue is full. turbok has one user (the
token's holder), so a flow is a client as it names itself: its ``User-Agent``
(kubectl, the Agent Sandbox client, the SDK and the Kubernetes Python client
each send their own).

- A client with ``inflight_per_client`` requests in flight gets 429 for the next.
- Past ``inflight_total`` in all, each client keeps at most one request in
  flight, so a client with none is still served, up to twice the total.
- Long-running requests (watches, pod logs, exec, attach, port-forward) and
  health checks are not counted, as in APF.

On one event loop a request is "in flight" while it waits: for its body (a slow
upload holds up to the body limit in memory) or for work done off the loop.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from turbok.api.status import TooManyRequests

__all__ = ["FlowControl"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_EXEMPT_PATHS = frozenset({"/healthz", "/livez", "/readyz"})


#: Pod subresources kube-apiserver counts as long-running (its LongRunningRequestCheck): never limited.
_STREAMS = re.compile(r"/pods/[^/]+/(?:log|exec|attach|portforward)$")


def _long_running(request: web.Request) -> bool:
    return (request.query.get("watch") in ("1", "true", "True") or request.query.get("follow") in ("1", "true")
            or _STREAMS.search(request.path) is not None)


class FlowControl:
    def __init__(self, *, per_client: int, total: int, retry_after: int = 1) -> None:
        self.per_client = per_client
        self.total = total
        self.retry_after = retry_after
        self.inflight: dict[str, int] = {}
        self.count = 0

    def flow(self, request: web.Request) -> str:
        return request.headers.get("User-Agent", "")[:256]

    def _admit(self, flow: str) -> str | None:
        """Why this flow's next request must wait, or None."""
        mine = self.inflight.get(flow, 0)
        if mine >= self.per_client:
            return f"this client has {mine} requests in flight; the limit per client is {self.per_client}"
        if self.count >= self.total and (mine >= 1 or self.count >= 2 * self.total):
            return f"the server has {self.count} requests in flight; past {self.total} each client gets one"
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _EXEMPT_PATHS or _long_running(request):
            return await handler(request)
        flow = self.flow(request)
        refusal = self._admit(flow)
        if refusal is not None:
            raise TooManyRequests(f"Too many requests, please try again later: {refusal}",
                                  retry_after=self.retry_after)
        self.inflight[flow] = self.inflight.get(flow, 0) + 1
        self.count += 1
        try:
            return await handler(request)
        finally:
            self.count -= 1
            left = self.inflight[flow] - 1
            if left:
                self.inflight[flow] = left
            else:
                del self.inflight[flow]
