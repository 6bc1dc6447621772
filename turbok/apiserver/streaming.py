"""Pod streams: ``pods/log``, ``pods/exec``, ``pods/attach`` and ``pods/portforward``, as kube-apiserver serves them.

kube-apiserver checks the request (options, the Pod, its container, its
node), then hands the stream to the Pod's kubelet. Here the kubelet's part is
a ``PodStreams``, which the composition root (``turbok.embedded.controlplane``)
wires to the node (``turbok.node.streams``); this module never imports the
node or the runtime. ``stream_handler(streams)`` is what ``create_app`` takes
as ``stream_handler``; ``turbok.apiserver.resources`` calls it for those four
subresources of a named Pod.

Per request, in kube-apiserver's order and with its messages:

1. method: GET for log; GET or POST for the others (405 otherwise);
2. options from the query (``PodLogOptions``: 400 for a value that does not
   parse, 422 ``Invalid`` for one that breaks a rule; ``ports`` of a
   port-forward);
3. the Pod (404) and its container: named, or the only one (400 ``a container
   name must be specified for pod P, choose one of: [...]``, ``container C is
   not valid for pod P``). kubectl itself reads the
   ``kubectl.kubernetes.io/default-container`` annotation and names the
   container; the server does not, as kube-apiserver does not;
4. the node: a log of a Pod not yet scheduled is empty (204); exec, attach and
   port-forward answer 400 ``pod P does not have a host assigned``;
5. the protocol: a WebSocket (``streaming_exec``, ``streaming_portforward``);
   a request that offers only SPDY (kubectl before 1.30, or with
   ``KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false``) gets one 400 ``Status`` saying
   WebSockets are needed; one with no upgrade at all gets kube's 400 ``Upgrade
   request required``;
6. the node's answer. Logs: ``PodStreams.logs`` raises ``ApiError`` with the
   kubelet's message (``container "c" in pod "p" is waiting to start:
   ContainerCreating``: 400) before the first byte, or yields the bytes.
   Exec/attach/port-forward: after the upgrade, as kube-apiserver's stream
   translator does, a failure is a ``Status`` on the error channel
   (``Internal error occurred: unable to upgrade connection: container not
   found ("c")``).

Logs are streamed as ``text/plain``, chunked, each chunk written as the node
yields it (``-f`` sees lines as they come).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from turbok.api.kinds import POD
from turbok.api.status import BadRequest, Cause, Invalid, MethodNotAllowed, NotFound
from turbok.apiserver.resources import StreamHandler, Target
from turbok.store.registry import ObjectRegistry

__all__ = ["LogOptions", "PodStreams", "ProcessStream", "parse_log_options", "stream_handler"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class ProcessStream(Protocol):
    """A process reached by exec or attach, as the node hands it over (structural: ``turbok.node.streams``).

    ``stdout``/``stderr`` end (EOF) when the process closes them; with a tty
    everything comes on ``stdout``. ``close`` ends the session early (the client
    went away): an exec'd process is killed, an attach only detaches.
    """

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    @property
    def stderr(self) -> asyncio.StreamReader | None: ...

    async def write(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, columns: int, rows: int) -> None: ...

    async def wait(self) -> int:
        """The exit code (attach: when the attached streams end)."""

    async def close(self) -> None: ...


class PodStreams(Protocol):
    """The node's side of the Pod streams: a kubelet's ``/containerLogs``, ``/exec``, ``/attach``, ``/portForward``.

    Each method gets the Pod as stored and a container the API already checked
    exists in its spec. Errors are ``turbok.api.status.ApiError`` carrying the
    kubelet's message (a ``BadRequest`` for a container that has not started,
    say); anything else is a 500.
    """

    async def logs(self, pod: Obj, container: str, *, follow: bool = False, previous: bool = False,
                   since: float | None = None, timestamps: bool = False, tail_lines: int | None = None,
                   limit_bytes: int | None = None) -> AsyncIterator[bytes]:
        """Check, then return the log's bytes as an iterator (``since``: Unix seconds).

        While following, the iterator yields ``b""`` when there has been nothing
        new for a while (every few seconds at most), so the server notices a
        client that went away."""

    async def exec(self, pod: Obj, container: str, command: Sequence[str], *, stdin: bool, stdout: bool,
                   stderr: bool, tty: bool) -> ProcessStream: ...

    async def attach(self, pod: Obj, container: str, *, stdin: bool, stdout: bool, stderr: bool,
                     tty: bool) -> ProcessStream: ...

    async def port_forward(self, pod: Obj, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``port`` of the Pod (its network namespace), one per forwarded connection."""


# ------------------------------------------------------------------ options


@dataclass(frozen=True)
class LogOptions:
    """``PodLogOptions`` as the query gave them (``since`` resolved to Unix seconds)."""

    container: str = ""
    follow: bool = False
    previous: bool = False
    since: float | None = None
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_GO_RFC3339 = "2006-01-02T15:04:05Z07:00"
_INT64 = 2 ** 63


def query_bool(request: web.Request, name: str) -> bool:
    """A boolean query parameter as Kubernetes decodes one: absent is false, "0"/"false" are false, all else true."""
    value = request.query.get(name)
    return value is not None and value != "0" and value.lower() != "false"


def _query_int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    if not re.fullmatch(r"[+-]?\d+", value):
        raise BadRequest(f'strconv.ParseInt: parsing "{value}": invalid syntax')
    number = int(value)
    if not -_INT64 <= number < _INT64:
        raise BadRequest(f'strconv.ParseInt: parsing "{value}": value out of range')
    return number


def parse_rfc3339(value: str) -> float:
    """Unix seconds of an RFC 3339 time, as Go's ``time.Parse(time.RFC3339, ...)`` reads one; else 400."""
    match = _RFC3339.fullmatch(value)
    try:
        if match is None:
            raise ValueError
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        zone = match.group(8)
        offset = dt.timedelta(0) if zone in "Zz" else (
            (1 if zone[0] == "+" else -1) * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        when = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone(offset))
    except ValueError:
        raise BadRequest(f'parsing time "{value}" as "{_GO_RFC3339}": cannot parse "{value}" as "2006"') from None
    return when.timestamp() + float(match.group(7) or 0)


def parse_log_options(request: web.Request, pod_name: str, *, now: float | None = None) -> LogOptions:
    """``PodLogOptions`` from the query: 400 for what does not parse, 422 for what kube's validation refuses."""
    tail_lines = _query_int(request, "tailLines")
    limit_bytes = _query_int(request, "limitBytes")
    since_seconds = _query_int(request, "sinceSeconds")
    since_time = request.query.get("sinceTime")
    since = parse_rfc3339(since_time) if since_time is not None else None
    causes = []
    if tail_lines is not None and tail_lines < 0:
        causes.append(Cause("tailLines", f"Invalid value: {tail_lines}: must be greater than or equal to 0"))
    if limit_bytes is not None and limit_bytes < 1:
        causes.append(Cause("limitBytes", f"Invalid value: {limit_bytes}: must be greater than 0"))
    if since_seconds is not None and since_time is not None:
        causes.append(Cause("[]", "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified",
                            "FieldValueForbidden"))
    elif since_seconds is not None and since_seconds < 1:
        causes.append(Cause("sinceSeconds", f"Invalid value: {since_seconds}: must be greater than 0"))
    if "stream" in request.query:
        # The PodLogsQuerySplitStreams feature gate is off in kube-apiserver 1.37 by default.
        causes.append(Cause("stream", "Forbidden: may not be specified", "FieldValueForbidden"))
    if causes:
        raise Invalid.of(kind="PodLogOptions", group="", name=pod_name, causes=causes)
    if since_seconds is not None:
        since = (time.time() if now is None else now) - since_seconds
    return LogOptions(container=request.query.get("container", ""), follow=query_bool(request, "follow"),
                      previous=query_bool(request, "previous"), since=since,
                      timestamps=query_bool(request, "timestamps"), tail_lines=tail_lines,
                      limit_bytes=limit_bytes)


# ------------------------------------------------------------------ the Pod


def container_names(pod: Obj) -> tuple[list[str], list[str], list[str]]:
    spec = pod.get("spec") or {}
    return ([c.get("name", "") for c in spec.get("initContainers") or []],
            [c.get("name", "") for c in spec.get("containers") or []],
            [c.get("name", "") for c in spec.get("ephemeralContainers") or []])


def resolve_container(pod: Obj, container: str) -> str:
    """The container a request means, as kube-apiserver's ``validateContainer`` decides (400 otherwise)."""
    name = pod["metadata"]["name"]
    inits, apps, ephemeral = container_names(pod)
    if not container:
        if len(apps) == 1:
            return apps[0]
        if not apps:
            raise BadRequest(f"a container name must be specified for pod {name}")
        listed = " ".join(inits + apps + ephemeral)
        raise BadRequest(f"a container name must be specified for pod {name}, choose one of: [{listed}]")
    if container not in (*inits, *apps, *ephemeral):
        raise BadRequest(f"container {container} is not valid for pod {name}")
    return container


def _get_pod(registry: ObjectRegistry, target: Target) -> Obj:
    assert target.name is not None
    pod: Obj = registry.get(POD, target.namespace or "", target.name)
    return pod


def check_bound(pod: Obj) -> None:
    if not (pod.get("spec") or {}).get("nodeName"):
        raise BadRequest(f"pod {pod['metadata']['name']} does not have a host assigned")


def check_upgrade(request: web.Request, subresource: str) -> None:
    """Pass a WebSocket upgrade; refuse SPDY with what to do instead, and anything else as kube does."""
    upgrade = request.headers.get("Upgrade", "").lower()
    if "websocket" in upgrade:
        return
    if "spdy/" in upgrade:
        if subresource == "portforward":
            hint = ("use kubectl 1.31 or newer (kubectl 1.30: set KUBECTL_PORT_FORWARD_WEBSOCKETS=true), "
                    "or a client that speaks v4.channel.k8s.io")
        else:
            hint = ("use kubectl 1.30 or newer (kubectl 1.29: set KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true), "
                    "or a client that speaks v5.channel.k8s.io or v4.channel.k8s.io")
        raise BadRequest(f"pods/{subresource} needs a WebSocket connection: this server (turbok) does not speak "
                         f"SPDY/3.1, which this client offered; {hint}")
    raise BadRequest("Upgrade request required")


# ------------------------------------------------------------------ handlers


def stream_handler(streams: PodStreams | Callable[[], PodStreams | None]) -> StreamHandler:
    """The ``create_app(stream_handler=...)`` that serves a Pod's streams through ``streams``.

    ``streams`` may be a function returning them, for a node started after the
    API server; while it returns None, these subresources answer 404.
    """
    from turbok.apiserver import streaming_exec, streaming_portforward

    async def handle(request: web.Request, registry: ObjectRegistry, target: Target) -> web.StreamResponse:
        sub = target.subresource or ""
        found: PodStreams | None = (
            streams() if callable(streams) and not hasattr(streams, "logs") else streams)  # type: ignore[assignment]
        if found is None:
            raise NotFound(f"pods/{sub} is not served: this control plane runs no node to stream from")
        return await _serve(request, registry, target, sub, found)

    async def _serve(request: web.Request, registry: ObjectRegistry, target: Target, sub: str,
                     streams: PodStreams) -> web.StreamResponse:
        if sub == "log":
            return await serve_log(request, registry, target, streams)
        if request.method not in ("GET", "POST"):
            raise MethodNotAllowed("the server does not allow this method on the requested resource")
        if sub == "portforward":
            ports = streaming_portforward.parse_ports(request)
            pod = _get_pod(registry, target)
            check_bound(pod)
            check_upgrade(request, sub)
            return await streaming_portforward.serve(request, pod, ports, streams)
        options = streaming_exec.parse_options(request, attach=sub == "attach")
        pod = _get_pod(registry, target)
        container = resolve_container(pod, request.query.get("container", ""))
        check_bound(pod)
        check_upgrade(request, sub)
        return await streaming_exec.serve(request, pod, container, options, streams)

    return handle


async def serve_log(request: web.Request, registry: ObjectRegistry, target: Target,
                    streams: PodStreams) -> web.StreamResponse:
    if request.method != "GET":
        raise MethodNotAllowed("the server does not allow this method on the requested resource")
    assert target.name is not None
    opts = parse_log_options(request, target.name)
    pod = _get_pod(registry, target)
    container = resolve_container(pod, opts.container)
    if not (pod.get("spec") or {}).get("nodeName"):
        return web.Response(status=204)  # as kube-apiserver: no node, no location, nothing to read
    chunks = await streams.logs(pod, container, follow=opts.follow, previous=opts.previous, since=opts.since,
                                timestamps=opts.timestamps, tail_lines=opts.tail_lines,
                                limit_bytes=opts.limit_bytes)
    response = web.StreamResponse(headers={"Content-Type": "text/plain", "Cache-Control": "no-cache"})
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        async for chunk in chunks:
            if chunk:
                await response.write(chunk)
            elif request.transport is None or request.transport.is_closing():
                break  # the client went away while a follow waited for more
        else:
            await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away (kubectl logs -f interrupted): stop reading the file
    except OSError as e:  # the file went away under us (the Pod was removed): end what was sent
        log.warning("reading the log of pod %s/%s failed: %s", target.namespace, target.name, e)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return response
