"""``pods/exec`` and ``pods/attach`` over the ``channel.k8s.io`` WebSocket protocols.

Called by ``turbok.apiserver.streaming`` once the Pod, the container and the
node are known and the request is a WebSocket upgrade. One session, in order:

1. negotiate the subprotocol with the client's preferences
   (``streaming_channels.negotiate``; none in common: 400 before the upgrade);
2. upgrade, and send an empty message on the lowest channel that will carry
   output (stdout, else stderr, else error), as the kubelet does;
3. check the options the kubelet checks (a command, at least one stream) and
   start the process through ``PodStreams.exec``/``attach``; a failure ends
   the session with ``Internal error occurred: unable to upgrade connection:
   <the node's message>`` on the error channel;
4. copy: stdout/stderr to channels 1/2 (a stream the client did not ask for
   is read and dropped, so the process never blocks on it), channel 0 to
   stdin, channel 4 to the terminal size, v5's close signal to stdin EOF;
5. when stdout and stderr have ended, the exit code: ``Success`` or
   ``NonZeroExitCode`` on the error channel (v4, v5), then a normal close.
   If the client goes away first, the process is killed (exec) or left
   running (attach: detach).

kubectl's ``-t`` without ``-i``, and a tty with stderr, are as the kubelet
treats them: with a tty stderr is folded into stdout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from turbok.api.status import ApiError, BadRequest
from turbok.apiserver.streaming import PodStreams, ProcessStream, query_bool
from turbok.apiserver.streaming_channels import (
    CLOSE_SIGNAL,
    ERROR,
    EXEC_PROTOCOLS,
    RESIZE,
    STDERR,
    STDIN,
    STDOUT,
    ChannelConnection,
    ChannelProtocolError,
    exit_status,
    internal_error_status,
    negotiate,
    offered_protocols,
    parse_resize,
    success_status,
)
from turbok.printable import printable

__all__ = ["ExecOptions", "parse_options", "serve"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
#: Bytes read from the process per message.
CHUNK = 64 * 1024
#: Largest message a client may send (kubectl sends stdin in 32 KiB pieces; the Python client's
#: ``write_stdin`` sends what it is given in one).
MAX_MESSAGE = 8 * 1024 * 1024


@dataclass(frozen=True)
class ExecOptions:
    command: tuple[str, ...] | None  # None: attach
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def parse_options(request: web.Request, *, attach: bool) -> ExecOptions:
    q = request.query
    tty = query_bool(request, "tty")
    return ExecOptions(command=None if attach else tuple(q.getall("command", [])),
                       stdin=query_bool(request, "stdin"), stdout=query_bool(request, "stdout"),
                       # The kubelet drops stderr with a tty: the terminal carries both.
                       stderr=query_bool(request, "stderr") and not tty, tty=tty)


def _problem(options: ExecOptions) -> str | None:
    """What the kubelet refuses before it starts anything."""
    if options.command is not None and not options.command:
        return "you must specify at least one command for the container"
    if not (options.stdin or options.stdout or options.stderr):
        return "you must specify at least 1 of stdin, stdout, stderr"
    return None


def _exit_code(code: int) -> int:
    """An exit code as a shell reports it (a signal N is 128+N), in the 0-255 the protocol carries."""
    return 128 - code if code < 0 else code & 0xFF


async def serve(request: web.Request, pod: Obj, container: str, options: ExecOptions,
                streams: PodStreams) -> web.StreamResponse:
    offered = offered_protocols(request)
    protocol = negotiate(offered, EXEC_PROTOCOLS)
    if protocol is None:
        supported = ", ".join(p for p in EXEC_PROTOCOLS if p)
        raise BadRequest(f"unable to upgrade: the WebSocket subprotocols offered ({', '.join(offered)}) are not "
                         f"supported; this server speaks {supported}")
    ws = web.WebSocketResponse(protocols=(protocol.name,) if protocol.name else (), max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    conn = ChannelConnection(ws, protocol)
    what = "attach" if options.command is None else "exec"
    try:
        await conn.send(STDOUT if options.stdout else STDERR if options.stderr else ERROR, b"")
        problem = _problem(options)
        if problem is not None:
            await conn.send_status(internal_error_status(f"unable to upgrade connection: {problem}"))
            return ws
        try:
            if options.command is None:
                proc = await streams.attach(pod, container, stdin=options.stdin, stdout=options.stdout,
                                            stderr=options.stderr, tty=options.tty)
            else:
                proc = await streams.exec(pod, container, options.command, stdin=options.stdin,
                                          stdout=options.stdout, stderr=options.stderr, tty=options.tty)
        except ApiError as e:
            await conn.send_status(internal_error_status(f"unable to upgrade connection: {e.message}"))
            return ws
        except Exception:  # the node failed in a way it did not word: the log has it, the client a Status
            log.exception("%s in pod %s failed to start", what, printable(pod["metadata"]["name"]))
            await conn.send_status(internal_error_status("an internal error occurred; see the turbok log"))
            return ws
        await _Session(conn, proc, options, what=what, pod=pod["metadata"]["name"]).run()
    except ConnectionResetError:
        pass  # the client is gone; nothing left to tell it
    finally:
        await ws.close()
    return ws


class _Session:
    def __init__(self, conn: ChannelConnection, proc: ProcessStream, options: ExecOptions, *,
                 what: str, pod: str) -> None:
        self.conn = conn
        self.proc = proc
        self.options = options
        self.what = what
        self.pod = pod

    async def run(self) -> None:
        outputs = asyncio.ensure_future(asyncio.gather(
            self._pump(self.proc.stdout, STDOUT, self.options.stdout),
            self._pump(self.proc.stderr, STDERR, self.options.stderr)))
        inputs = asyncio.ensure_future(self._inputs())
        both: set[asyncio.Future[Any]] = {outputs, inputs}
        ended = False
        try:
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if outputs.done() and outputs.exception() is None:
                code = _exit_code(await self.proc.wait())
                ended = True
                await self.conn.send_status(exit_status(code) if code and self.what == "exec" else success_status())
            elif inputs.done() and not inputs.cancelled() and isinstance(inputs.exception(), ChannelProtocolError):
                await self.conn.send_status(internal_error_status(str(inputs.exception())))
        finally:
            for task in (outputs, inputs):
                task.cancel()
            await asyncio.gather(outputs, inputs, return_exceptions=True)
            if not ended:
                try:
                    await self.proc.close()  # kills an exec'd process, detaches an attach
                except Exception:
                    log.warning("%s in pod %s: could not end the process", self.what, printable(self.pod),
                                exc_info=True)

    async def _pump(self, reader: asyncio.StreamReader | None, channel: int, wanted: bool) -> None:
        if reader is None:
            return
        while data := await reader.read(CHUNK):
            if wanted:
                await self.conn.send(channel, data)

    async def _inputs(self) -> None:
        """Until the client closes the WebSocket; a protocol error ends the session."""
        while (message := await self.conn.receive()) is not None:
            channel, data = message
            if channel == CLOSE_SIGNAL:
                if data == bytes((STDIN,)) and self.options.stdin:
                    await _quietly(self.proc.close_stdin())
            elif channel == STDIN:
                if self.options.stdin:
                    await _quietly(self.proc.write(data))  # a process that stopped reading drops it
            elif channel == RESIZE:
                columns, rows = parse_resize(data)
                if self.options.tty:
                    await _quietly(self.proc.resize(columns, rows))
            else:
                log.debug("%s in pod %s: data on channel %d ignored", self.what, printable(self.pod), channel)


async def _quietly(call: Awaitable[None]) -> None:
    # stdin written after the process closed it, a resize after it ended: nothing the client needs to hear.
    try:
        await call
    except Exception as e:
        log.debug("exec input dropped: %s", e)
