"""gRPC (HTTP/2 without TLS) through the router: the sandboxd ``ProcessService``, or any HTTP/2 server of a Pod.

The router's listeners (TCP and the Unix socket) look at each connection's
first bytes (``SniffingSite``): HTTP/2's preface goes here, anything else to the
HTTP/1.1 router (aiohttp). Each HTTP/2 stream is authenticated and routed on
its own, from its headers (gRPC metadata): ``authorization: Bearer <router
token>`` (not needed through the Unix socket, as for HTTP/1.1), ``x-sandbox-id``,
``x-sandbox-namespace`` (default ``default``) and ``x-sandbox-port`` (default
9090, sandboxd's gRPC port). It is relayed to ``podIP:port`` over one HTTP/2
connection per Pod port and client connection, its headers less
``authorization`` (the token never reaches a sandbox); answers, trailers and
resets come back as they are. Both directions honour HTTP/2 flow control: data
read from one side is acknowledged only once the other side took it, so a slow
reader holds the writer.

Bounds, as for ``/execute``: a ``ProcessService`` ``Start`` or ``Execute`` holds
one of the sandbox's command slots while it runs (``RESOURCE_EXHAUSTED`` when
they and the queue are full) and its answer is read at the sandbox's output
rate. A refused stream ends with gRPC's status in trailers (``UNAUTHENTICATED``,
``NOT_FOUND``, ``UNAVAILABLE``, ``INVALID_ARGUMENT``), never the router's token
or a host path. Connections to Pods are closed with a reset (see
``turbok.sandboxd.agentclient``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import struct
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_runner import BaseRunner, BaseSite

from turbok.printable import printable
from turbok.runtime.errors import RuntimeError_
from turbok.sandboxd.agent import GRPC_PORT
from turbok.sandboxd.agentclient import AgentBackend
from turbok.sandboxd.errors import SandboxdError, TooManyRequests

__all__ = ["PREFACE", "SniffingSite", "StreamRouter"]

log = logging.getLogger("turbok.sandboxd")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_COMMANDS = ("/process.v1.ProcessService/Start", "/process.v1.ProcessService/Execute")
#: Hop-by-hop and router-consumed headers, never relayed.
_DROP = {b"authorization", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
         b"te-ignored"}
_GRPC = {"CANCELLED": 1, "INVALID_ARGUMENT": 3, "NOT_FOUND": 5, "RESOURCE_EXHAUSTED": 8, "UNAUTHENTICATED": 16,
         "UNAVAILABLE": 14, "INTERNAL": 13}


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


#: (headers, trusted) -> (sandbox id, pod ip, port, slot context or None, local Execute or None); raises ``Refused``.
StreamRouter = Callable[[dict[str, str], bool], Awaitable[tuple[str, str, int, Any, Any]]]
#: A ``ProcessService/Execute`` answered by the router itself: (request message, deadline, slot) ->
#: (gRPC status name, response message or None, status message).
LocalExecute = Callable[[bytes, float | None, Any], Awaitable[tuple[str, bytes | None, str]]]


class _Side:
    """One HTTP/2 connection (client- or server-side) on asyncio streams, with its flow-control waits."""

    def __init__(self, conn: Any, writer: asyncio.StreamWriter) -> None:
        self.conn = conn
        self.writer = writer
        self.windows = asyncio.Event()
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    async def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        view = memoryview(data)
        while view:
            while True:
                if self.closed:
                    raise ConnectionError("connection closed")
                try:
                    window = self.conn.local_flow_control_window(stream_id)
                except Exception:
                    raise ConnectionError("stream closed") from None
                if window > 0:
                    break
                self.windows.clear()
                await self.windows.wait()
            n = min(window, self.conn.max_outbound_frame_size, len(view))
            self.conn.send_data(stream_id, bytes(view[:n]))
            self.flush()
            view = view[n:]
            await self.writer.drain()
        if end:
            self.conn.end_stream(stream_id)
            self.flush()


class _Session:
    """One client HTTP/2 connection to the router."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, route: StreamRouter,
                 trusted: bool) -> None:
        import h2.config
        import h2.connection

        self.reader = reader
        self.client = _Side(h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False)), writer)
        self.route = route
        self.trusted = trusted
        self.upstreams: dict[tuple[str, int], _Upstream] = {}
        self.streams: dict[int, _Relay] = {}

    async def run(self) -> None:
        import h2.events
        import h2.exceptions

        c = self.client
        c.conn.initiate_connection()
        c.flush()
        try:
            while data := await self.reader.read(256 * 1024):
                try:
                    events = c.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    c.flush()
                    break
                for ev in events:
                    relay: _Relay | None
                    if isinstance(ev, h2.events.RequestReceived):
                        relay = _Relay(self, ev.stream_id, ev.headers)
                        self.streams[ev.stream_id] = relay
                        relay.task = asyncio.ensure_future(relay.start(ev.stream_ended is not None))
                    elif isinstance(ev, h2.events.DataReceived):
                        relay = self.streams.get(ev.stream_id)
                        if relay is None:
                            c.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        else:
                            relay.inbound.put_nowait((ev.data, ev.flow_controlled_length, False))
                    elif isinstance(ev, h2.events.StreamEnded):
                        relay = self.streams.get(ev.stream_id)
                        if relay is not None:
                            relay.inbound.put_nowait((b"", 0, True))
                    elif isinstance(ev, h2.events.StreamReset):
                        relay = self.streams.pop(ev.stream_id, None)
                        if relay is not None:
                            relay.cancel()
                    elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                        c.windows.set()
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        break
                c.flush()
                await c.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            c.closed = True
            c.windows.set()
            for relay in list(self.streams.values()):
                relay.cancel()
            for up in self.upstreams.values():
                up.close()
            with contextlib.suppress(Exception):
                c.writer.close()


class _Upstream:
    """An HTTP/2 connection from the router to one Pod port, for one client connection."""

    def __init__(self, ip: str, port: int) -> None:
        self.ip, self.port = ip, port
        self.side: _Side | None = None
        self.relays: dict[int, _Relay] = {}
        self.ready: asyncio.Future[None] | None = None
        self.task: asyncio.Future[None] | None = None

    async def open(self) -> _Side:
        if self.ready is None:
            self.ready = asyncio.get_running_loop().create_future()
            self.task = asyncio.ensure_future(self._run())
        await asyncio.shield(self.ready)
        assert self.side is not None
        return self.side

    async def _run(self) -> None:
        import h2.config
        import h2.connection
        import h2.events

        assert self.ready is not None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.ip, self.port), 5.0)
        except (OSError, TimeoutError) as e:
            self.ready.set_exception(ConnectionError(f"{type(e).__name__}"))
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        side = self.side = _Side(h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False)), writer)
        side.conn.initiate_connection()
        side.flush()
        self.ready.set_result(None)
        try:
            while data := await reader.read(256 * 1024):
                for ev in side.conn.receive_data(data):
                    relay = self.relays.get(getattr(ev, "stream_id", 0) or 0)
                    if isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                        side.windows.set()
                    elif relay is None:
                        if isinstance(ev, h2.events.DataReceived):
                            side.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.ResponseReceived):
                        relay.outbound.put_nowait(("headers", ev.headers, 0))
                    elif isinstance(ev, h2.events.DataReceived):
                        relay.outbound.put_nowait(("data", ev.data, ev.flow_controlled_length))
                    elif isinstance(ev, h2.events.TrailersReceived):
                        relay.outbound.put_nowait(("trailers", ev.headers, 0))
                    elif isinstance(ev, h2.events.StreamEnded):
                        relay.outbound.put_nowait(("end", None, 0))
                    elif isinstance(ev, h2.events.StreamReset):
                        relay.outbound.put_nowait(("reset", ev.error_code, 0))
                side.flush()
                await writer.drain()
        except Exception:  # the Pod went away or broke the protocol: its streams end
            pass
        finally:
            side.closed = True
            side.windows.set()
            for relay in list(self.relays.values()):
                relay.outbound.put_nowait(("reset", 2, 0))
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        if self.side is not None:
            self.side.closed = True
            with contextlib.suppress(Exception):
                self.side.writer.close()
        if self.task is not None:
            self.task.cancel()


class _Relay:
    """One client stream relayed to one upstream stream."""

    def __init__(self, session: _Session, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.session = session
        self.stream_id = stream_id
        self.headers = headers
        self.inbound: asyncio.Queue[tuple[bytes, int, bool]] = asyncio.Queue()
        self.outbound: asyncio.Queue[tuple[str, Any, int]] = asyncio.Queue()
        self.task: asyncio.Future[None] | None = None
        self.answered = False

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _refuse(self, code: str, message: str) -> None:
        c = self.session.client
        with contextlib.suppress(Exception):
            trailers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                        (b"grpc-status", str(_GRPC[code]).encode()),
                        (b"grpc-message", urllib.parse.quote(message, safe=" /:,()'").encode())]
            c.conn.send_headers(self.stream_id, trailers, end_stream=True)
            c.flush()

    async def start(self, ended: bool) -> None:
        names = {k.decode("latin-1").lower(): v.decode("latin-1", "replace") for k, v in self.headers}
        c = self.session.client
        try:
            try:
                sandbox_id, ip, port, slot, local = await self.session.route(names, self.session.trusted)
            except Refused as e:
                self._refuse(e.code, e.message)
                return
            try:
                async with slot if slot is not None else contextlib.nullcontext() as held:
                    if local is not None:
                        await self._local(local, held, ended, _deadline(names.get("grpc-timeout")))
                    else:
                        await self._relay(ip, port, held, ended)
            except TooManyRequests as e:
                self._refuse("RESOURCE_EXHAUSTED", e.message)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                c.conn.reset_stream(self.stream_id, 8)
                c.flush()
            raise
        finally:
            self.session.streams.pop(self.stream_id, None)

    async def _local(self, execute: LocalExecute, slot: Any, ended: bool, deadline: float | None) -> None:
        """Answer an ``Execute`` here: the command goes to the agent's spawn (HTTP/1.1, pooled connections),
        which costs less than relaying HTTP/2 to the agent's gRPC server and back."""
        c = self.session.client
        body = bytearray()
        while not ended:
            data, size, end = await self.inbound.get()
            body += data
            if size:
                c.conn.acknowledge_received_data(size, self.stream_id)
                c.flush()
            if len(body) > 16 * 1024 * 1024:
                self._refuse("INVALID_ARGUMENT", "request larger than 16 MiB")
                return
            ended = end
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._refuse("INVALID_ARGUMENT", "expected one uncompressed request message")
            return
        code, message, text = await execute(bytes(body[5:]), deadline, slot)
        if message is None:
            self._refuse(code, text)
            return
        c.conn.send_headers(self.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        c.flush()
        await c.send(self.stream_id, b"\x00" + len(message).to_bytes(4, "big") + message)
        c.conn.send_headers(self.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        c.flush()

    async def _relay(self, ip: str, port: int, slot: Any, ended: bool) -> None:
        c = self.session.client
        key = (ip, port)
        up = self.session.upstreams.get(key)
        if up is None or (up.side is not None and up.side.closed):
            up = self.session.upstreams[key] = _Upstream(ip, port)
        try:
            side = await up.open()
        except ConnectionError:
            self._refuse("UNAVAILABLE", f"nothing answers on port {port} of the sandbox")
            return
        sid = side.conn.get_next_available_stream_id()
        up.relays[sid] = self
        headers = [(k, v) for k, v in self.headers if k.lower() not in _DROP and not k.startswith(b":authority")]
        headers = [(b":authority", f"{ip}:{port}".encode()) if k == b":authority" else (k, v) for k, v in headers]
        if not any(k == b":authority" for k, _ in headers):
            headers.insert(3, (b":authority", f"{ip}:{port}".encode()))
        side.conn.send_headers(sid, headers, end_stream=ended)
        side.flush()

        async def upward() -> None:
            if ended:
                return
            while True:
                data, size, end = await self.inbound.get()
                if end:
                    side.conn.end_stream(sid)
                    side.flush()
                    return
                await side.send(sid, data)
                c.conn.acknowledge_received_data(size, self.stream_id)
                c.flush()

        pump = asyncio.ensure_future(upward())
        try:
            while True:
                kind, value, size = await self.outbound.get()
                if kind == "headers":
                    c.conn.send_headers(self.stream_id, value)
                    c.flush()
                elif kind == "data":
                    if slot is not None:
                        await slot.pace(len(value))
                    await c.send(self.stream_id, value)
                    side.conn.acknowledge_received_data(size, sid)
                    side.flush()
                elif kind == "trailers":
                    c.conn.send_headers(self.stream_id, value, end_stream=True)
                    c.flush()
                    return
                elif kind == "end":
                    with contextlib.suppress(Exception):
                        c.conn.end_stream(self.stream_id)
                        c.flush()
                    return
                else:
                    with contextlib.suppress(Exception):
                        c.conn.reset_stream(self.stream_id, int(value))
                        c.flush()
                    return
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                side.conn.reset_stream(sid, 8)
                side.flush()
            raise
        finally:
            pump.cancel()
            up.relays.pop(sid, None)


def _deadline(value: str | None) -> float | None:
    units = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    if not value or len(value) < 2 or value[-1] not in units:
        return None
    try:
        return asyncio.get_running_loop().time() + int(value[:-1]) * units[value[-1]]
    except ValueError:
        return None


def _local_execute(router: Any, backend: AgentBackend) -> LocalExecute:
    """``ProcessService/Execute`` through the agent's spawn, as the agent's own gRPC server answers it: the
    command's exit code (-1 for a signal), its output, ``DEADLINE_EXCEEDED`` at the deadline; at most
    ``EXECUTE_LIMIT`` bytes of output (then it is stopped and a note ends its stderr)."""
    from turbok.runtime.process import collect
    from turbok.sandboxd.agent import proto
    from turbok.sandboxd.agent.grpcserver import EXECUTE_LIMIT
    from turbok.sandboxd.agentclient import AgentProcess

    async def execute(message: bytes, deadline: float | None, slot: Any) -> tuple[str, bytes | None, str]:
        try:
            cfg = proto.decode_execute_request(message)["config"]
        except proto.ProtoError as e:
            return "INVALID_ARGUMENT", None, str(e)
        if not cfg["command"]:
            return "INVALID_ARGUMENT", None, "command is required"
        loop = asyncio.get_running_loop()
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            proc = await backend.spawn(cfg["command"], env=cfg["env"] or None, cwd=cfg["cwd"], confine_cwd=True)
        except RuntimeError_ as e:
            text = str(e)
            code = "NOT_FOUND" if "not found" in text else "PERMISSION_DENIED" if "outside" in text or \
                "denied" in text else "UNAVAILABLE"
            return code, None, text
        result = await collect(proc, timeout=timeout, output_limit=EXECUTE_LIMIT // 2, flood_grace=0.5,
                               pace=slot.pace if slot is not None else None)
        if result.timed_out:
            return "DEADLINE_EXCEEDED", None, "deadline exceeded"
        signal = proc.signal if isinstance(proc, AgentProcess) else None
        stderr = result.stderr
        if result.stopped:
            stderr += (f"\n[sandboxd] command stopped: its output passed {EXECUTE_LIMIT // 2} bytes (stdout or "
                       "stderr), the most one answer holds; write large output to a file, or use Start\n").encode()
        exit_code = -1 if signal is not None or result.stopped else result.exit_code
        return "OK", proto.execute_response(exit_code, result.stdout, stderr), ""

    return execute


def stream_router(router: Any) -> StreamRouter:
    """How the router (``turbok.sandboxd.router._Router``) routes one HTTP/2 stream."""
    from turbok.sandboxd.context import runtime_failure
    from turbok.sdk.wire import DEFAULT_NAMESPACE

    async def route(headers: dict[str, str], trusted: bool) -> tuple[str, str, int, Any, Any]:
        if not trusted:
            scheme, _, offered = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    offered.strip().encode("utf-8", "surrogateescape"), router._token):
                raise Refused("UNAUTHENTICATED", "missing or wrong router token: send it as the 'authorization: "
                              "Bearer <token>' metadata")
        name = headers.get("x-sandbox-id", "").strip()
        if not name:
            raise Refused("INVALID_ARGUMENT", "missing x-sandbox-id metadata: it names the sandbox to talk to")
        namespace = headers.get("x-sandbox-namespace", "").strip() or DEFAULT_NAMESPACE
        raw = headers.get("x-sandbox-port", "").strip()
        try:
            port = int(raw) if raw else GRPC_PORT
            if not 1 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise Refused("INVALID_ARGUMENT", "x-sandbox-port must be a port number (1-65535)") from None
        try:
            sandbox_id = await router.resolver.resolve(namespace, name)
            target = await router.targets.find(sandbox_id)
        except SandboxdError as e:
            raise Refused("NOT_FOUND" if e.status == 404 else "UNAVAILABLE", e.message) from None
        except RuntimeError_ as e:
            raise Refused("UNAVAILABLE", runtime_failure(e, f"{namespace}/{name}").message) from None
        if not target.ip:
            raise Refused("UNAVAILABLE", f"sandbox {namespace}/{name} has no address on the pod network")
        slot = None
        path = headers.get(":path", "")
        if path in _COMMANDS:
            slot = router.slots.slot(sandbox_id, f"{namespace}/{name}")
        await router.agent_for(sandbox_id, target.ip, port)
        local = None
        if path == _COMMANDS[1] and port == GRPC_PORT and await router.agents.available(target.ip):
            local = _local_execute(router, AgentBackend(router.runtime, target, router.agents))
        log.debug("grpc %s -> sandbox %s/%s port %d", printable(path), printable(namespace), printable(name), port)
        return sandbox_id, target.ip, port, slot, local

    return route


class _Sniffer(asyncio.Protocol):
    """Reads a connection's first bytes, then hands it to aiohttp (HTTP/1.1) or to ``_Session`` (HTTP/2)."""

    def __init__(self, http1: Callable[[], asyncio.Protocol], route: StreamRouter,
                 sessions: set[asyncio.Future[None]]) -> None:
        self._http1 = http1
        self._route = route
        self._sessions = sessions
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._reader: asyncio.StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._reader is not None:
            self._reader.feed_data(data)
            return
        self._buffer += data
        if len(self._buffer) < len(PREFACE) and PREFACE.startswith(self._buffer):
            return  # could still be HTTP/2's preface
        transport = self._transport
        assert transport is not None
        if self._buffer.startswith(PREFACE):
            loop = asyncio.get_running_loop()
            self._reader = asyncio.StreamReader(limit=2**20)
            protocol = asyncio.StreamReaderProtocol(self._reader)
            protocol.connection_made(transport)
            transport.set_protocol(_Feeding(self._reader, protocol))
            writer = asyncio.StreamWriter(transport, protocol, self._reader, loop)
            sock = transport.get_extra_info("socket")
            trusted = sock is not None and sock.family == socket.AF_UNIX
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._reader.feed_data(self._buffer)
            task = asyncio.ensure_future(_Session(self._reader, writer, self._route, trusted).run())
            self._sessions.add(task)
            task.add_done_callback(self._sessions.discard)
        else:
            handler = self._http1()
            transport.set_protocol(handler)
            handler.connection_made(transport)
            handler.data_received(self._buffer)
        self._buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._reader is not None:
            self._reader.feed_eof()


class _Feeding(asyncio.Protocol):
    """The HTTP/2 connection's protocol once sniffed: feeds its reader, flow-controls its writer."""

    def __init__(self, reader: asyncio.StreamReader, inner: asyncio.StreamReaderProtocol) -> None:
        self._reader = reader
        self._inner = inner

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)

    def eof_received(self) -> bool | None:
        self._reader.feed_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class SniffingSite(BaseSite):
    """An aiohttp site on a TCP port or a listening socket whose HTTP/2 connections go to the gRPC relay."""

    def __init__(self, runner: BaseRunner, route: StreamRouter, *, host: str | None = None, port: int = 0,
                 sock: socket.socket | None = None, reuse_address: bool = True) -> None:
        super().__init__(runner)
        self._route = route
        self._host, self._port, self._sock, self._reuse = host, port, sock, reuse_address
        self._sessions: set[asyncio.Future[None]] = set()

    @property
    def name(self) -> str:
        return f"sniffing:{self._host}:{self._port}" if self._sock is None else "sniffing:socket"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def factory() -> asyncio.Protocol:
            return _Sniffer(server, self._route, self._sessions)

        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock)
        else:
            self._server = await loop.create_server(factory, self._host, self._port,
                                                    reuse_address=self._reuse)


    async def stop(self) -> None:
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await super().stop()


def port_of(site: SniffingSite) -> int:
    server = site._server
    assert isinstance(server, asyncio.Server)
    return int(server.sockets[0].getsockname()[1])


async def serve(app: web.Application, route: StreamRouter, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = SniffingSite(runner, route, host=host, port=port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, port_of(site)
