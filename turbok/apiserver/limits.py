"""The bounds of the API server's requests: body size, nesting, in-flight requests per client.

Defaults follow kube-apiserver where it has one (a 3 MiB request body); each
has an environment variable that overrides it when the control plane starts
(``ApiLimits.from_env``). The store's own bounds (object size, watch history,
Event TTL, which writes leave the event loop) are ``turbok.store.limits``.
docs/api.md lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from turbok import settings
from turbok.api.status import BadRequest
from turbok.store.limits import MiB

__all__ = ["LIMITS", "ApiLimits", "check_body_shape"]


@dataclass(frozen=True)
class ApiLimits:
    #: Largest request body read (kube-apiserver's MaxRequestBodyBytes): larger ones get 413.
    max_body_bytes: int = 3 * MiB
    #: Deepest nesting of objects and arrays in a body: deeper gets 400 (Python recurses on it).
    max_depth: int = 100
    #: Requests in flight per client (its User-Agent) before it gets 429 with Retry-After ...
    inflight_per_client: int = 16
    #: ... and in all; past it each client keeps at most one request in flight (so a client with
    #: none is still served), up to twice this number. Watches are not counted.
    inflight_total: int = 64
    #: Watches and pod streams (logs followed, exec, attach, port-forward) open per client before the
    #: next gets 429 with Retry-After; they take no in-flight seat.
    streams_per_client: int = 1000
    #: ... of which watches not pinned to one object (each hears every change of its kind): the next gets 429.
    broad_watches_per_client: int = 100
    #: Seconds a client told 429 should wait (the Retry-After header).
    retry_after_seconds: int = 1
    #: How often expired Events are looked for (their TTL is the store's ``event_ttl_seconds``).
    event_sweep_seconds: float = 60.0

    _ENV = {
        "max_body_bytes": "TURBOK_MAX_REQUEST_BYTES",
        "max_depth": "TURBOK_MAX_JSON_DEPTH",
        "inflight_per_client": "TURBOK_MAX_INFLIGHT_PER_CLIENT",
        "inflight_total": "TURBOK_MAX_INFLIGHT",
        "streams_per_client": "TURBOK_MAX_STREAMS_PER_CLIENT",
        "broad_watches_per_client": "TURBOK_MAX_WATCHES_PER_CLIENT",
    }

    def __post_init__(self) -> None:
        settings.check_positive(self)

    @classmethod
    def from_env(cls) -> ApiLimits:
        return settings.from_env(cls, cls._ENV)


def check_body_shape(body: Any, *, max_depth: int, max_values: int) -> None:
    """400 for a body nested deeper than ``max_depth`` or holding more than ``max_values`` values.

    Iterative, so it cannot itself run out of stack; the value count stops YAML aliases that expand a
    small body into an enormous object (each value of a JSON body takes at least two bytes, so no
    body within the size limit comes near it honestly).
    """
    stack: list[tuple[Any, int]] = [(body, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > max_values:
            raise BadRequest(f"the request body holds more than {max_values} values")
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            raise BadRequest(f"the request body is nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children)


#: Where the app keeps its limits, for the handlers.
LIMITS = web.AppKey("turbok_api_limits", ApiLimits)
