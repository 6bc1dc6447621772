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
- Long-running requests (watches, followed pod logs, exec, attach,
  port-forward) do not take those seats, as in APF, but each holds a
  connection and memory: a client with ``streams_per_client`` of them open
  gets 429 for the next. A watch that is not pinned to one object
  (``fieldSelector=metadata.name=...``) also hears every change of its kind
  in its namespace, so every write costs one delivery more per such watch: a
  client may hold ``broad_watches_per_client`` of those (a client with 1,000
  of them made a burst of claims 4 x slower for everyone; one watch per object,
  as the Agent Sandbox client waits on its claims, costs other writes
  nothing). Health checks are never limited.

A flow is a ``User-Agent``: separate programs that send the same one (two
scripts on the Kubernetes Python client's default) share its limits.

On one event loop a request is "in flight" while it waits: for its body (a slow
upload holds up to the body limit in memory) or for work done off the loop.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

from turbok.api.status import TooManyRequests

__all__ = ["FlowControl"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_EXEMPT_PATHS = frozenset({"/healthz", "/livez", "/readyz"})


#: Pod subresources kube-apiserver counts as long-running (its LongRunningRequestCheck): never limited.
_STREAMS = re.compile(r"/pods/[^/]+/(?:log|exec|attach|portforward)$")


def _is_watch(request: web.Request) -> bool:
    return request.query.get("watch") in ("1", "true", "True")


def _long_running(request: web.Request) -> bool:
    return (_is_watch(request) or request.query.get("follow") in ("1", "true")
            or _STREAMS.search(request.path) is not None)


def _broad_watch(request: web.Request) -> bool:
    """A watch that hears more than one object: not pinned by ``metadata.name=`` (or ``==``) in its selector."""
    if not _is_watch(request):
        return False
    # Parsed here by hand: the kind's own field labels are not known before the route (a term on one of
    # them does not make the watch broad).
    terms = request.query.get("fieldSelector", "").replace(" ", "").split(",")
    return not any(t.startswith(("metadata.name=", "metadata.name==")) for t in terms)


class FlowControl:
    def __init__(self, *, per_client: int, total: int, streams_per_client: int, broad_watches_per_client: int,
                 retry_after: int = 1) -> None:
        self.per_client = per_client
        self.total = total
        self.streams_per_client = streams_per_client
        self.broad_watches_per_client = broad_watches_per_client
        self.retry_after = retry_after
        self.inflight: dict[str, int] = {}
        self.count = 0
        self.streams: dict[str, int] = {}
        self.broad: dict[str, int] = {}

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

    def _refuse(self, why: str) -> TooManyRequests:
        return TooManyRequests(f"Too many requests, please try again later: {why}", retry_after=self.retry_after)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _EXEMPT_PATHS:
            return await handler(request)
        flow = self.flow(request)
        if _long_running(request):
            open_ = self.streams.get(flow, 0)
            if open_ >= self.streams_per_client:
                raise self._refuse(f"this client has {open_} watches and streams open; the limit per client "
                                   f"is {self.streams_per_client}")
            if not _broad_watch(request):
                with _counted(self.streams, flow):
                    return await handler(request)
            broad = self.broad.get(flow, 0)
            if broad >= self.broad_watches_per_client:
                raise self._refuse(f"this client has {broad} watches open that are not of one object; the limit "
                                   f"per client is {self.broad_watches_per_client} (watch one object with "
                                   f"fieldSelector=metadata.name=NAME, or share a watch)")
            with _counted(self.streams, flow), _counted(self.broad, flow):
                return await handler(request)
        refusal = self._admit(flow)
        if refusal is not None:
            raise self._refuse(refusal)
        self.count += 1
        try:
            with _counted(self.inflight, flow):
                return await handler(request)
        finally:
            self.count -= 1


@contextlib.contextmanager
def _counted(counts: dict[str, int], flow: str) -> Iterator[None]:
    """One more for ``flow`` while the block runs; a flow with none left is forgotten (flows are unbounded)."""
    counts[flow] = counts.get(flow, 0) + 1
    try:
        yield
    finally:
        left = counts[flow] - 1
        if left:
            counts[flow] = left
        else:
            del counts[flow]
