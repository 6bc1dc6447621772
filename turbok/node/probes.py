"""Startup, liveness and readiness probes, as kubelet's prober workers run them.

``ContainerProber``: one per running container that has probes, made by the
pod worker after ``start_container`` and stopped when the container ends (a
restarted container gets a new one). One task per probe, each kubelet's
``worker.run``: a tick every ``periodSeconds`` from the container's start
(readiness is also run at once when the container starts and when its
startup probe passes, as kubelet's manual trigger does), skipping ticks
within ``initialDelaySeconds``; liveness and readiness wait until the startup
probe has passed; a result counts once it repeats ``successThreshold`` or
``failureThreshold`` times in a row. Defaults as the API's: period 10 s,
timeout 1 s, thresholds 1 and 3.

- ``started``: no startup probe, or it passed. ``ready``: started, and no
  readiness probe or it passes.
- ``failed``: ``("Liveness"|"Startup", message)`` once that probe failed
  ``failureThreshold`` times: the container must be killed and restarted;
  the prober stops probing it (kubelet's on-hold).
- Every failed attempt calls ``on_unhealthy(probe, message)`` (the Warning
  ``Unhealthy`` Event ``Liveness probe failed: <message>``); every change of
  ``started``/``ready``/``failed`` calls ``on_change()``.
- ``pod_terminating()``: liveness and startup stop, as kubelet stops them once
  a Pod is being deleted; readiness goes on.

Handlers (kubelet's messages):

- ``exec``: ``PodRuntime.exec`` in the container; exit 0 passes; the output
  (at most 10 KiB) is the message; past ``timeoutSeconds`` the command is
  killed: ``command "sh -c ..." timed out``.
- ``httpGet``: ``scheme``, ``host`` (default: the pod's IP), ``port`` (a
  number or a container port's name), ``path``, ``httpHeaders``; User-Agent
  ``kube-probe/1.37``; 200-399 passes; redirects are followed on the same host
  (10 at most), one elsewhere passes with a warning; else ``HTTP probe failed
  with statuscode: 500``, or the connection error (``Get "http://...": dial tcp
  ...: connect: connection refused``). HTTPS is not verified, as kubelet's.
- ``tcpSocket``: a connection to ``host``:``port`` opens (``dial tcp ...:
  connect: connection refused``, ``dial tcp ...: i/o timeout``).
- ``grpc``: not supported here: an ``Unhealthy`` Event once, and the probe
  keeps its initial result (readiness not ready, liveness passing, startup
  not started): never silently passed.

A handler that cannot run at all (the container is gone, a port name that
does not exist) is kubelet's "probe errored": its result is thrown away.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from turbok.api.podtemplate import as_dict
from turbok.node.client import Obj
from turbok.node.clock import Clock
from turbok.runtime.cri import PodRuntime
from turbok.runtime.errors import RuntimeError_

__all__ = ["PROBE_TYPES", "USER_AGENT", "ContainerProber", "ProbeResult", "ProbeSpec", "run_probe"]

log = logging.getLogger("turbok.node.probes")

PROBE_TYPES = ("Startup", "Liveness", "Readiness")
USER_AGENT = "kube-probe/1.37"
#: What kubelet reads of an exec probe's output and an HTTP probe's body.
MAX_OUTPUT = 10 * 1024
_MAX_REDIRECTS = 10


@dataclass(frozen=True)
class ProbeSpec:
    """A probe with the API's defaults filled in."""

    handler: Obj
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def parse(cls, probe: Obj) -> ProbeSpec:
        def num(key: str, default: int, low: int) -> int:
            value = probe.get(key)
            return max(value, low) if isinstance(value, int) and not isinstance(value, bool) else default

        return cls(handler=probe, initial_delay=num("initialDelaySeconds", 0, 0), period=num("periodSeconds", 10, 1),
                   timeout=num("timeoutSeconds", 1, 1), success_threshold=num("successThreshold", 1, 1),
                   failure_threshold=num("failureThreshold", 3, 1))


@dataclass(frozen=True)
class ProbeResult:
    """``result``: ``success``, ``warning`` (counts as success), ``failure`` or ``error`` (thrown away)."""

    result: str
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.result in ("success", "warning")


def _port(container: Obj, port: object) -> int:
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if as_dict(p).get("name") == port:
            return int(as_dict(p).get("containerPort", 0))
    raise LookupError(f"couldn't find port {port} in {container.get('name', '')}")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dial_error(address: str, e: OSError) -> str:
    """A connection error as Go's net package writes it."""
    if isinstance(e, TimeoutError):
        return f"dial tcp {address}: i/o timeout"
    why = os.strerror(e.errno) if e.errno else (e.strerror or str(e) or type(e).__name__)
    why = why[:1].lower() + why[1:]
    op = "connect: " if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET) \
        else ""
    return f"dial tcp {address}: {op}{why}"


_SSL: ssl.SSLContext | None = None


def _insecure_ssl() -> ssl.SSLContext:
    global _SSL
    if _SSL is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # kubelet's probes skip verification too
        _SSL = ctx
    return _SSL


async def _exec(runtime: PodRuntime, sandbox_id: str, name: str, argv: list[str], timeout: float) -> ProbeResult:
    try:
        stream = await runtime.exec(sandbox_id, name, argv)
    except RuntimeError_ as e:
        return ProbeResult("error", str(e))
    process = stream.process
    output = bytearray()

    async def drain(reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(4096):
            if len(output) < MAX_OUTPUT:
                output.extend(chunk[:MAX_OUTPUT - len(output)])

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(drain(process.stdout), drain(process.stderr))
            code = await process.wait()
    except TimeoutError:
        with contextlib.suppress(Exception):
            await stream.close()
        with contextlib.suppress(Exception):
            await process.kill()
        return ProbeResult("failure", f"command \"{' '.join(argv)}\" timed out")
    text = output.decode("utf-8", "replace")
    return ProbeResult("success" if code == 0 else "failure", text)


async def _http_once(scheme: str, host: str, port: int, target: str, headers: dict[str, str],
                     timeout: float) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=_insecure_ssl() if scheme == "https" else None,
                                server_hostname=host if scheme == "https" else None), timeout)
    try:
        lines = [f"GET {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()] + ["Connection: close"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
        await writer.drain()
        status = (await reader.readline()).decode("latin-1").split()
        if len(status) < 2 or not status[1].isdigit():
            raise ConnectionError("malformed HTTP response")
        got: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            got[key.strip().lower()] = value.strip()
        body = b""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            body = await reader.read(MAX_OUTPUT)
        return int(status[1]), got, body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _http(container: Obj, get: Obj, pod_ip: str, timeout: float) -> ProbeResult:
    try:
        port = _port(container, get.get("port"))
    except LookupError as e:
        return ProbeResult("error", str(e))
    scheme = str(get.get("scheme") or "HTTP").lower()
    host = str(get.get("host") or pod_ip)
    path = str(get.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    host_header = None
    for h in get.get("httpHeaders") or []:
        h = as_dict(h)
        key = str(h.get("name", ""))
        if key.lower() == "host":
            host_header = str(h.get("value", ""))
            continue
        for existing in [k for k in headers if k.lower() == key.lower()]:
            del headers[existing]
        headers[key] = str(h.get("value", ""))
    url = f"{scheme}://{_host_port(host, port)}{path}"
    deadline = time.monotonic() + timeout
    target = path
    for _ in range(_MAX_REDIRECTS + 1):
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            code, got, body = await asyncio.wait_for(
                _http_once(scheme, host, port, target, {"Host": host_header or _host_port(host, port), **headers},
                           left), left)
        except TimeoutError:
            return ProbeResult("failure", f"Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while "
                                          "awaiting headers)")
        except OSError as e:
            return ProbeResult("failure", f"Get \"{url}\": {_dial_error(_host_port(host, port), e)}")
        text = body.decode("utf-8", "replace")
        if 300 <= code < 400 and got.get("location"):
            where = urlsplit(got["location"])
            if where.netloc and (where.hostname != host or (where.port or port) != port):
                return ProbeResult("warning", f"Probe terminated redirects, Response body: {text}")
            target = (where.path or "/") + (f"?{where.query}" if where.query else "")
            url = f"{scheme}://{_host_port(host, port)}{target}"
            continue
        if 200 <= code < 400:
            return ProbeResult("success", text)
        return ProbeResult("failure", f"HTTP probe failed with statuscode: {code}")
    return ProbeResult("failure", f"Get \"{url}\": stopped after {_MAX_REDIRECTS} redirects")


async def _tcp(container: Obj, sock: Obj, pod_ip: str, timeout: float) -> ProbeResult:
    try:
        port = _port(container, sock.get("port"))
    except LookupError as e:
        return ProbeResult("error", str(e))
    host = str(sock.get("host") or pod_ip)
    address = _host_port(host, port)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as e:
        return ProbeResult("failure", _dial_error(address, e))
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return ProbeResult("success")


async def run_probe(runtime: PodRuntime, sandbox_id: str, container: Obj, spec: ProbeSpec, *,
                    pod_ip: str) -> ProbeResult:
    """One attempt of a probe (its handler, within ``spec.timeout``)."""
    handler = spec.handler
    if handler.get("exec") is not None:
        argv = [str(a) for a in as_dict(handler["exec"]).get("command") or []]
        return await _exec(runtime, sandbox_id, str(container.get("name", "")), argv, spec.timeout)
    for key in ("httpGet", "tcpSocket"):
        target = handler.get(key)
        if target is not None and not as_dict(target).get("host") and not pod_ip:
            # Never the host's own loopback: a pod without an address has nothing to connect to.
            return ProbeResult("error", f"{key} probe: the pod has no IP on the pod network")
    if handler.get("httpGet") is not None:
        return await _http(container, as_dict(handler["httpGet"]), pod_ip, spec.timeout)
    if handler.get("tcpSocket") is not None:
        return await _tcp(container, as_dict(handler["tcpSocket"]), pod_ip, spec.timeout)
    if handler.get("grpc") is not None:
        return ProbeResult("error", "gRPC probes are not supported by the embedded node")
    return ProbeResult("error", "the probe names no handler (exec, httpGet, tcpSocket)")


class ContainerProber:
    """The probes of one running container (see the module docstring)."""

    def __init__(self, *, runtime: PodRuntime, sandbox_id: str, pod: Obj, container: Obj, pod_ip: str,
                 clock: Clock, on_change: Callable[[], None],
                 on_unhealthy: Callable[[str, str], None]) -> None:
        """``on_unhealthy(probe_type, message)``: probe_type is ``Startup``, ``Liveness`` or ``Readiness``."""
        self.runtime = runtime
        self.sandbox_id = sandbox_id
        self.pod = pod
        self.container = container
        self.pod_ip = pod_ip
        self.clock = clock
        self.on_change = on_change
        self.on_unhealthy = on_unhealthy
        self.specs = {t: ProbeSpec.parse(as_dict(container[f"{t.lower()}Probe"])) for t in PROBE_TYPES
                      if isinstance(container.get(f"{t.lower()}Probe"), dict)}
        self.started = "Startup" not in self.specs
        self.ready = "Readiness" not in self.specs and self.started
        #: Set when the liveness or startup probe failed ``failureThreshold`` times: the container must be
        #: killed (``"Liveness"`` or ``"Startup"``, and the last failure's message).
        self.failed: tuple[str, str] | None = None
        self._readiness_passes = False
        self._since = clock.now()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._trigger = asyncio.Event()
        self._told_errors: set[str] = set()

    def start(self) -> None:
        """Begin probing (tasks on the running loop)."""
        loop = asyncio.get_running_loop()
        for probe in self.specs:
            if probe not in self._tasks:
                self._tasks[probe] = loop.create_task(self._worker(probe),
                                                      name=f"probe-{probe.lower()}-{self.container.get('name')}")
        self._trigger.set()  # readiness right away, as kubelet's status sync triggers it

    async def stop(self) -> None:
        """Stop every probe of this container (it ended, or is being killed)."""
        await self._cancel(list(self._tasks))

    async def _cancel(self, probes: list[str]) -> None:
        tasks = [self._tasks.pop(p) for p in probes if p in self._tasks]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def pod_terminating(self) -> None:
        """The Pod is being deleted: liveness and startup stop (readiness goes on)."""
        for probe in ("Liveness", "Startup"):
            task = self._tasks.pop(probe, None)
            if task is not None:
                task.cancel()

    def _set(self, *, started: bool | None = None, ready: bool | None = None,
             failed: tuple[str, str] | None = None) -> None:
        before = (self.started, self.ready, self.failed)
        if started is not None:
            self.started = started
        if ready is not None:
            self._readiness_passes = ready
        self.ready = self.started and ("Readiness" not in self.specs or self._readiness_passes)
        if failed is not None:
            self.failed = failed
        if (self.started, self.ready, self.failed) != before:
            self.on_change()

    async def _wait_tick(self, probe: str, next_tick: float) -> None:
        delay = next_tick - self.clock.now()
        if probe != "Readiness":
            if delay > 0:
                await self.clock.sleep(delay)
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(max(delay, 0.0)))
        trigger = asyncio.ensure_future(self._trigger.wait())
        try:
            await asyncio.wait({sleeper, trigger}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            trigger.cancel()
        self._trigger.clear()

    async def _worker(self, probe: str) -> None:
        spec = self.specs[probe]
        last: bool | None = None
        run = 0
        next_tick = self._since
        while True:
            await self._wait_tick(probe, next_tick)
            now = self.clock.now()
            while next_tick <= now:
                next_tick += spec.period
            if now - self._since < spec.initial_delay:
                continue
            if probe == "Startup" and self.started:
                return  # kubelet keeps it for a restarted container; ours is a new prober then
            if probe != "Startup" and not self.started:
                continue
            result = await run_probe(self.runtime, self.sandbox_id, self.container, spec, pod_ip=self.pod_ip)
            if result.result == "error":
                if result.message not in self._told_errors:
                    self._told_errors.add(result.message)
                    self.on_unhealthy(probe, result.message)
                log.debug("%s probe of %s errored: %s", probe, self.container.get("name"), result.message)
                continue
            if not result.passed:
                self.on_unhealthy(probe, result.message)
            passed = result.passed
            run = run + 1 if passed == last else 1
            last = passed
            if run < (spec.success_threshold if passed else spec.failure_threshold):
                continue
            if probe == "Readiness":
                self._set(ready=passed)
            elif probe == "Startup":
                if passed:
                    self._set(started=True)
                    self._trigger.set()  # readiness at once now that the container has started
                    return
                self._set(failed=("Startup", result.message))
                return  # on hold: the container is killed and gets a new prober
            elif not passed:
                self._set(failed=("Liveness", result.message))
                return
