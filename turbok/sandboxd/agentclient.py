"""The router's side of the sandboxd agent: HTTP/1.1 over the pod network, pooled, reset when done.

``AgentPool`` keeps idle keep-alive connections to agents (``podIP:AGENT_PORT``)
for ``IDLE`` seconds. A connection that is dropped (idle too long, its pod about
to hibernate: ``drop``, or its request failed or was cancelled) is closed with a
reset (``SO_LINGER`` 0): neither side keeps a TIME_WAIT, which would stop runsc
from checkpointing the sandbox for 60 s. ``AgentBackend`` runs commands through
``POST /turbok/v1/spawn`` (``turbok.sandboxd.agent.rest``): their output comes
back as frames, into the two readers of an ``AgentProcess``, which stops reading
the connection while a reader holds ``HIGH_WATER`` bytes nobody read, so a slow
consumer holds the command (its pipe fills in the sandbox), not the router's
memory; killing it resets the connection, and the agent kills the command's
process group at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from turbok.runtime.errors import RuntimeError_, SandboxNotRunning
from turbok.runtime.podio import close_with_reset
from turbok.runtime.process import Process
from turbok.sandboxd.agent import AGENT_PORT
from turbok.sandboxd.backend import Backend, Target

__all__ = ["AgentBackend", "AgentError", "AgentPool", "AgentProcess", "AgentResponse"]

#: Seconds an idle connection to an agent is kept for the next request.
IDLE = 30.0
#: Idle connections kept per agent.
MAX_IDLE = 8
#: Unread output an ``AgentProcess`` holds per stream before it stops reading the connection.
HIGH_WATER = 1024 * 1024
CONNECT_TIMEOUT = 3.0
#: How long the answer of ``listens`` is reused, and how long its connection attempt may take.
PROBE_TTL = 2.0
PROBE_TIMEOUT = 0.5
_HEAD_LIMIT = 64 * 1024


class AgentError(RuntimeError_):
    """The agent could not be reached or broke the protocol (the pod stopped, restarted, or its agent died)."""


@dataclass
class _Conn:
    ip: str
    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def reset(self) -> None:
        close_with_reset(self.writer)


@dataclass
class AgentResponse:
    """A response's status and headers; its body through ``read``/``iter``/``json``, then ``release``."""

    status: int
    headers: dict[str, str]
    conn: _Conn
    pool: AgentPool
    _left: int | None = None
    _chunked: bool = False
    _chunk_left: int = 0
    done: bool = False
    _released: bool = field(default=False, repr=False)

    async def read(self, n: int = 256 * 1024) -> bytes:
        """Up to ``n`` bytes of the body; b"" at its end."""
        if self.done:
            return b""
        r = self.conn.reader
        try:
            if not self._chunked:
                if self._left is None:
                    raise AgentError("agent answered without a length")
                data = await r.read(min(n, self._left))
                if not data:
                    raise AgentError("the agent's answer ended early")
                self._left -= len(data)
                self.done = self._left == 0
                return data
            if self._chunk_left == 0:
                line = await r.readline()
                size = int(line.split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    while (await r.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    self.done = True
                    return b""
                self._chunk_left = size
            data = await r.read(min(n, self._chunk_left))
            if not data:
                raise AgentError("the agent's answer ended early")
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                await r.readexactly(2)
            return data
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            raise AgentError(f"the agent's answer broke off: {e}") from e

    async def iter(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    async def body(self, limit: int = 64 * 1024 * 1024) -> bytes:
        out = bytearray()
        async for chunk in self.iter():
            out += chunk
            if len(out) > limit:
                raise AgentError(f"the agent's answer is larger than {limit} bytes")
        return bytes(out)

    async def json(self) -> Any:
        try:
            return json.loads(await self.body())
        except ValueError as e:
            raise AgentError(f"the agent answered no JSON: {e}") from e

    def release(self) -> None:
        """Give the connection back (kept if the body was read to its end), or reset it."""
        if self._released:
            return
        self._released = True
        self.pool.put(self.conn, reusable=self.done)


class AgentPool:
    def __init__(self, *, idle: float = IDLE) -> None:
        self.idle = idle
        self._idle: dict[tuple[str, int], deque[_Conn]] = {}
        self._probes: dict[tuple[str, int], tuple[float, bool]] = {}

    async def _connect(self, ip: str, port: int, *, timeout: float = CONNECT_TIMEOUT) -> _Conn:
        now = time.monotonic()
        queue = self._idle.get((ip, port))
        while queue:
            conn = queue.pop()
            if now - conn.idle_since < self.idle and not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.reset()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port, limit=_HEAD_LIMIT), timeout)
        except ConnectionRefusedError:
            raise SandboxNotRunning(f"no sandboxd agent listens at {ip}:{port}") from None
        except (TimeoutError, OSError) as e:
            raise AgentError(f"the sandboxd agent at {ip}:{port} cannot be reached: {e}") from e
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(ip, port, reader, writer)

    def put(self, conn: _Conn, *, reusable: bool) -> None:
        queue = self._idle.setdefault((conn.ip, conn.port), deque())
        if not reusable or len(queue) >= MAX_IDLE or conn.reader.at_eof():
            conn.reset()
            return
        conn.idle_since = time.monotonic()
        queue.append(conn)
        self._sweep()

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in list(self._idle):
            queue = self._idle[key]
            while queue and now - queue[0].idle_since >= self.idle:
                queue.popleft().reset()
            if not queue:
                del self._idle[key]

    async def listens(self, ip: str, port: int) -> bool:
        """Whether something in the pod at ``ip`` listens on ``port`` (a connection tried at most every
        ``PROBE_TTL`` seconds; one to the agent is kept for the next request)."""
        now = time.monotonic()
        hit = self._probes.get((ip, port))
        if hit is not None and now < hit[0]:
            return hit[1]
        if port == AGENT_PORT and self._idle.get((ip, port)):
            return True
        try:
            conn = await self._connect(ip, port, timeout=PROBE_TIMEOUT)
        except RuntimeError_:
            found = False
        else:
            found = True
            self.put(conn, reusable=port == AGENT_PORT)
        if len(self._probes) > 4096:
            self._probes.clear()
        self._probes[(ip, port)] = (now + PROBE_TTL, found)
        return found

    async def available(self, ip: str) -> bool:
        """Whether the pod at ``ip`` has a sandboxd agent listening."""
        return await self.listens(ip, AGENT_PORT)

    def forget(self, ip: str) -> int:
        """Ask again next time (the pod's agent or servers may have gone or come); reset its idle connections.
        How many were reset."""
        for key in [k for k in self._probes if k[0] == ip]:
            del self._probes[key]
        return self.drop(ip)

    def drop(self, ip: str) -> int:
        """Reset every idle connection to the agent at ``ip`` (its pod is about to hibernate or go); how many."""
        count = 0
        for key in [k for k in self._idle if k[0] == ip]:
            for conn in self._idle.pop(key):
                conn.reset()
                count += 1
        return count

    def close(self) -> None:
        for queue in self._idle.values():
            for conn in queue:
                conn.reset()
        self._idle.clear()

    async def request(self, ip: str, method: str, path: str, *, port: int = AGENT_PORT,
                      headers: Mapping[str, str] | None = None, body: bytes | AsyncIterator[bytes] | None = None,
                      ) -> AgentResponse:
        """Send a request; the response's head (``release`` it when done with its body)."""
        for attempt in (0, 1):
            conn = await self._connect(ip, port)
            fresh = conn.idle_since == 0.0
            try:
                return await self._exchange(conn, method, path, headers or {}, body)
            except _Stale:
                conn.reset()
                if fresh or attempt:
                    raise AgentError(f"the sandboxd agent at {ip}:{port} closed the connection") from None
            except BaseException:
                conn.reset()
                raise
        raise AssertionError("unreachable")

    async def _exchange(self, conn: _Conn, method: str, path: str, headers: Mapping[str, str],
                        body: bytes | AsyncIterator[bytes] | None) -> AgentResponse:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {conn.ip}:{conn.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        streaming = body is not None and not isinstance(body, bytes)
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}")
        elif streaming:
            lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        w = conn.writer
        try:
            w.write(head + body if isinstance(body, bytes) else head)
            await w.drain()
        except (ConnectionError, OSError):
            raise _Stale from None
        if streaming:
            assert body is not None and not isinstance(body, bytes)
            try:
                async for chunk in body:
                    if chunk:
                        w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        await w.drain()
                w.write(b"0\r\n\r\n")
                await w.drain()
            except (ConnectionError, OSError) as e:
                raise AgentError(f"the sandboxd agent went away during the upload: {e}") from e
        try:
            status_line = await conn.reader.readline()
        except (ConnectionError, OSError, ValueError):
            raise _Stale from None
        if not status_line:
            raise _Stale
        try:
            status = int(status_line.split()[1])
            found: dict[str, str] = {}
            while (line := await conn.reader.readline()) not in (b"\r\n", b"\n"):
                if not line:
                    raise AgentError("the agent's answer ended in its head")
                name, _, value = line.decode("latin-1").partition(":")
                found[name.strip().lower()] = value.strip()
        except (IndexError, ValueError, ConnectionError) as e:
            raise AgentError(f"the agent answered something that is not HTTP: {e}") from e
        resp = AgentResponse(status, found, conn, self)
        if "chunked" in found.get("transfer-encoding", "").lower():
            resp._chunked = True
        elif "content-length" in found:
            resp._left = int(found["content-length"])
            resp.done = resp._left == 0 or method == "HEAD"
        else:
            resp.done = status in (204, 304) or method == "HEAD"
        return resp


class _Stale(Exception):
    """A kept connection the agent had closed (retried once on a fresh one)."""


class _Output(asyncio.StreamReader):
    """A stream's output, fed from frames; ``read`` tells the feeder when it may go on."""

    def __init__(self) -> None:
        super().__init__(limit=2**31)
        self.drained = asyncio.Event()
        self.drained.set()
        self.held = 0

    def put(self, data: bytes) -> None:
        self.held += len(data)
        if self.held > HIGH_WATER:
            self.drained.clear()
        self.feed_data(data)

    async def read(self, n: int = -1) -> bytes:
        data = await super().read(n)
        self.held -= len(data)
        if self.held <= HIGH_WATER:
            self.drained.set()
        return data


class AgentProcess(Process):
    """A command run by the agent (see the module docstring)."""

    def __init__(self, resp: AgentResponse) -> None:
        self._resp = resp
        self._out = _Output()
        self._err = _Output()
        self._code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        #: The signal that ended the command, if one did (its exit code is then 128 + it).
        self.signal: int | None = None
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        buf = bytearray()
        code: int | None = None
        try:
            while code is None:
                chunk = await self._resp.read()
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 5:
                    size = int.from_bytes(buf[1:5], "big")
                    if len(buf) < 5 + size:
                        break
                    kind, data = buf[0:1], bytes(buf[5:5 + size])
                    del buf[:5 + size]
                    if kind == b"o":
                        await self._out.drained.wait()
                        self._out.put(data)
                    elif kind == b"e":
                        await self._err.drained.wait()
                        self._err.put(data)
                    elif kind == b"s":
                        self.signal = int(data)
                    elif kind == b"x":
                        code = int(data)
            if code is not None and not self._resp.done:
                await self._resp.read()  # the chunked body's end
        except (AgentError, ValueError) as e:
            self._fail(e)
            return
        except asyncio.CancelledError:
            self._resp.conn.reset()
            self._finish_streams()
            if not self._code.done():
                self._code.set_result(137)
            raise
        self._finish_streams()
        if code is None:
            self._fail(AgentError("the agent's stream ended without an exit code (the sandbox stopped?)"))
            return
        self._resp.release()
        if not self._code.done():
            self._code.set_result(code)

    def _fail(self, err: Exception) -> None:
        self._resp.conn.reset()
        self._resp._released = True
        self._finish_streams()
        if not self._code.done():
            self._code.set_exception(err if isinstance(err, RuntimeError_) else AgentError(str(err)))

    def _finish_streams(self) -> None:
        for s in (self._out, self._err):
            if not s.at_eof():
                s.feed_eof()
            s.drained.set()

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._out

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._err

    async def wait(self) -> int:
        return await asyncio.shield(self._code)

    async def kill(self) -> None:
        """Reset the connection: the agent kills the command's process group."""
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class AgentBackend(Backend):
    """Commands and files through the sandboxd agent in the container (see the module docstring)."""

    #: The agent's root: an image without ``/app`` (its own working directory) runs commands there.
    home = None

    def __init__(self, runtime: Any, target: Target, pool: AgentPool) -> None:
        super().__init__(runtime, target)
        self.pool = pool

    async def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                    stdin: bytes | None = None, confine_cwd: bool = False) -> Process:
        import base64

        body: dict[str, Any] = {"argv": list(argv)}
        if confine_cwd:
            body["confine_cwd"] = True
        if env:
            body["env"] = dict(env)
        if cwd:
            body["cwd"] = cwd
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        resp = await self.pool.request(self.target.ip, "POST", "/turbok/v1/spawn",
                                       headers={"Content-Type": "application/json"},
                                       body=json.dumps(body).encode())
        if resp.status != 200:
            try:
                answer = await resp.json()
            finally:
                resp.release()
            raise _spawn_error(resp.status, answer)
        return AgentProcess(resp)


def _spawn_error(status: int, answer: Any) -> RuntimeError_:
    from turbok.runtime.errors import InvalidSandboxSpec

    message = answer.get("message", "") if isinstance(answer, dict) else ""
    if status in (400, 403, 404):
        # The command itself cannot start (no such program, a cwd outside): the caller's mistake.
        return InvalidSandboxSpec(message or f"the agent refused the command ({status})")
    return AgentError(message or f"the agent failed to start the command ({status})")
