"""Running commands: ``POST /execute`` (buffered, the official client's) and the exec stream.

``execute``: ``{"command", "timeout_seconds"?}`` runs ``/bin/sh -c command`` in
``/app`` through ``Runtime.exec``; stdout and stderr are each capped at the
router's output limit (the rest is drained, so the command never blocks on a
full pipe and the router never holds more than the cap); a cut output sets
``truncated`` and ends stderr with a note; a command past its timeout is killed
and answered with exit code 124 and ``timed_out``.

``exec_stream`` (``POST /turbok/v1/exec``, for ``turbok sandbox exec``): runs an
argv through ``Runtime.spawn`` and answers frames (``turbok.sdk.wire``) as the
output comes. Each chunk is written before the next is read, so a slow reader
slows the command (pipe backpressure) instead of filling the router's memory.
A client that goes away gets its command killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web

from turbok.runtime.base import Process, RuntimeError_
from turbok.runtime.process import KILL_GRACE, TIMEOUT_EXIT_CODE
from turbok.sandboxd.confine import SANDBOX_WORKDIR
from turbok.sandboxd.context import Call, runtime_failure
from turbok.sandboxd.errors import BadRequest
from turbok.sdk.wire import (
    NDJSON,
    CommandResult,
    ErrorFrame,
    ExecRequest,
    ExitFrame,
    Frame,
    OutputFrame,
    encode_frame,
)

__all__ = ["STREAM_CHUNK", "execute", "exec_stream"]

log = logging.getLogger("turbok.sandboxd")

#: Largest piece of output one stream frame carries.
STREAM_CHUNK = 64 * 1024
#: How often a silent stream checks whether its client is still there.
_CLIENT_POLL = 0.5


def _with_note(stderr: str, note: str) -> str:
    sep = "\n" if stderr and not stderr.endswith("\n") else ""
    return f"{stderr}{sep}[turbok] {note}\n"


async def execute(call: Call) -> web.Response:
    body = await call.json_body()
    if not isinstance(body, dict) or not isinstance(body.get("command"), str):
        raise BadRequest('body must be a JSON object with a string "command"')
    command: str = body["command"]
    if "\0" in command:
        raise BadRequest("command must not contain NUL characters")
    timeout = call.timeout(body.get("timeout_seconds"))
    limit = call.config.output_limit

    started = time.perf_counter()
    call.metrics.execs_in_flight.inc()
    try:
        result = await call.runtime.exec(
            call.sandbox_id,
            ["/bin/sh", "-c", command],
            cwd=SANDBOX_WORKDIR,
            timeout=timeout,
            output_limit=limit,
        )
    except RuntimeError_ as e:
        raise runtime_failure(e, call) from e
    finally:
        call.metrics.execs_in_flight.dec()
        call.metrics.exec_seconds.labels("execute").observe(time.perf_counter() - started)

    stderr = result.stderr.decode("utf-8", "replace")
    if result.truncated:
        call.metrics.exec_truncated.inc()
        stderr = _with_note(stderr, f"output truncated: stdout and stderr are each capped at {limit} bytes")
    if result.timed_out:
        call.metrics.exec_timeouts.labels("execute").inc()
        stderr = _with_note(stderr, f"command timed out after {timeout:g} seconds and was killed")
    answer = CommandResult(
        stdout=result.stdout.decode("utf-8", "replace"),
        stderr=stderr,
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        truncated=result.truncated,
    )
    return web.json_response(answer.to_json())


class _ClientGone(Exception):
    pass


async def exec_stream(call: Call) -> web.StreamResponse:
    try:
        req = ExecRequest.from_json(await call.json_body())
    except ValueError as e:
        raise BadRequest(str(e)) from e
    timeout = call.timeout(req.timeout_seconds)
    try:
        proc = await call.runtime.spawn(
            call.sandbox_id,
            req.argv,
            env=dict(req.env) or None,
            cwd=req.cwd or SANDBOX_WORKDIR,
            stdin=req.stdin,
        )
    except RuntimeError_ as e:
        raise runtime_failure(e, call) from e

    started = time.perf_counter()
    call.metrics.execs_in_flight.inc()
    try:
        return await _stream(call, proc, timeout)
    finally:
        call.metrics.execs_in_flight.dec()
        call.metrics.exec_seconds.labels("exec_stream").observe(time.perf_counter() - started)


async def _stream(call: Call, proc: Process, timeout: float) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    resp.enable_chunked_encoding()
    try:
        await resp.prepare(call.request)
    except (ConnectionError, RuntimeError):
        await _kill(proc)
        raise
    lock = asyncio.Lock()

    async def send(frame: Frame) -> None:
        # One frame per write, under a lock, so stdout and stderr frames never interleave mid-line;
        # write() waits while the client's socket is full: that is the backpressure.
        async with lock:
            try:
                await resp.write(encode_frame(frame))
            except (ConnectionError, RuntimeError) as e:
                raise _ClientGone from e

    async def pump(reader: asyncio.StreamReader, name: str) -> None:
        while chunk := await reader.read(STREAM_CHUNK):
            await send(OutputFrame(stream="stdout" if name == "stdout" else "stderr", data=chunk))

    async def run() -> int:
        await asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
        return await proc.wait()

    async def watch_client() -> None:
        transport = call.request.transport
        while transport is not None and not transport.is_closing():
            await asyncio.sleep(_CLIENT_POLL)
        raise _ClientGone

    task = asyncio.ensure_future(run())
    watcher = asyncio.ensure_future(watch_client())
    timed_out = False
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            code = task.result()  # _ClientGone from a write surfaces here
        elif watcher in done:
            raise _ClientGone
        else:
            timed_out = True
            call.metrics.exec_timeouts.labels("exec_stream").inc()
            await proc.kill()
            # Output written before the kill still goes out; then the pipes close.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), KILL_GRACE)
            code = TIMEOUT_EXIT_CODE
        await send(ExitFrame(exit_code=code, timed_out=timed_out))
    except _ClientGone:
        log.info("exec stream for sandbox %s: client went away; killing the command", call.sandbox)
        await _kill(proc)
        return resp
    except asyncio.CancelledError:  # the router is shutting down: take the command with it
        await asyncio.shield(_kill(proc))
        raise
    except Exception as e:  # the answer has begun: report in a final frame, not a status
        log.warning(
            "exec stream for sandbox %s failed: %s",
            call.sandbox,
            e,
            exc_info=not isinstance(e, RuntimeError_),
        )
        message = str(runtime_failure(e, call)) if isinstance(e, RuntimeError_) else f"router error: {e}"
        with contextlib.suppress(_ClientGone):
            await send(ErrorFrame(message=message))
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(task, watcher, return_exceptions=True)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await resp.write_eof()
    return resp


async def _kill(proc: Process) -> None:
    try:
        await proc.kill()
    except Exception:  # the process may be gone already; nothing to report to anyone
        log.debug("kill after client disconnect failed", exc_info=True)
