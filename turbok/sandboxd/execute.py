"""Running commands: ``POST /execute`` (buffered, the official client's) and the exec stream.

Both first take one of the sandbox's command slots (``Call.slots``: at most
``exec_concurrency`` run at once, ``exec_queue`` wait, the rest get 429), and
read output within the sandbox's output budget (``Slot.pace``: ``output_rate``
bytes a second, all its commands together; past it the pipes fill and the
commands wait).

``execute``: ``{"command", "timeout_seconds"?}`` runs ``/bin/sh -c command`` in
``/app`` through ``Runtime.spawn``; stdout and stderr are each capped at the
router's output limit. A stream past its cap is no longer read, so the command
blocks on its next write; one that has not ended ``FLOOD_GRACE`` seconds later
is killed: ``truncated``, exit code 137 and a note at the end of stderr say so.
A command past its timeout is killed and answered with exit code 124 and
``timed_out``. A command longer than the kernel takes in one argument is 413.

``exec_stream`` (``POST /turbok/v1/exec``, for ``turbok sandbox exec``): runs an
argv through ``Runtime.spawn`` and answers frames (``turbok.sdk.wire``) as the
output comes. Each chunk is written before the next is read, so a slow reader
slows the command (pipe backpressure) instead of filling the router's memory.
A client that goes away gets its command killed.

When the runtime itself fails under a command (runsc exits 128 with its own
message on the command's stderr: the sandbox stopped or restarted, or the exec
could not start), the answer is ``SandboxRestarting`` or ``ExecFailed`` (503,
``Retry-After``), never the runtime's text, which is logged at debug.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Mapping, Sequence

from aiohttp import web

from turbok.runtime.errors import RuntimeError_
from turbok.runtime.process import KILL_GRACE, TIMEOUT_EXIT_CODE, Process, collect, discard
from turbok.sandboxd.backend import RUNTIME_FAILED
from turbok.sandboxd.context import Call, runtime_failure
from turbok.sandboxd.errors import (
    BadRequest,
    ExecFailed,
    PayloadTooLarge,
    SandboxdError,
    SandboxRestarting,
)
from turbok.sandboxd.limits import Slot
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

__all__ = ["FLOOD_GRACE", "MAX_ARG_BYTES", "MAX_ARGS_TOTAL", "STREAM_CHUNK", "execute", "exec_stream"]

log = logging.getLogger("turbok.sandboxd")

#: Largest piece of output one stream frame carries.
STREAM_CHUNK = 64 * 1024
#: How often a silent stream checks whether its client is still there.
_CLIENT_POLL = 0.5
#: Seconds a command whose output passed the cap may take to end by itself (its pipe is full)
#: before it is killed.
FLOOD_GRACE = 0.5
#: Longest single argument (and ``NAME=value``) the kernel passes to a program, its NUL included
#: (Linux's MAX_ARG_STRLEN): an ``/execute`` command is one argument of ``/bin/sh -c``.
MAX_ARG_BYTES = 128 * 1024
#: Most bytes of argv and env of one command together; the kernel's ARG_MAX (2 MiB here) is
#: shared with the runsc command line and the host environment.
MAX_ARGS_TOTAL = 1024 * 1024
def _with_note(stderr: str, note: str) -> str:
    sep = "\n" if stderr and not stderr.endswith("\n") else ""
    return f"{stderr}{sep}[turbok] {note}\n"


def _check_args(argv: Sequence[str], env: Mapping[str, str], what: str) -> None:
    """Refuse what the kernel would refuse with E2BIG (413), or cannot encode (400), before spawning."""
    total = 0
    for arg in (*argv, *(f"{k}={v}" for k, v in env.items())):
        try:
            size = len(os.fsencode(arg)) + 1
        except UnicodeEncodeError:
            raise BadRequest(f"{what} is not valid text (it holds a lone surrogate character)") from None
        if size > MAX_ARG_BYTES:
            raise PayloadTooLarge(
                f"{what} has an argument of {size - 1} bytes; the kernel takes at most {MAX_ARG_BYTES - 1} "
                "in one: upload a longer script as a file (POST /upload) and run that"
            )
        total += size
    if total > MAX_ARGS_TOTAL:
        raise PayloadTooLarge(
            f"{what} has {total} bytes of arguments and environment; at most {MAX_ARGS_TOTAL} fit: "
            "pass large data as a file or on stdin"
        )


def _spawn_failure(err: OSError, call: Call) -> SandboxdError:
    """The host could not start the runtime's exec (fork, pipes, arguments)."""
    log.debug("starting a command in sandbox %s failed: %s", call.sandbox, err)
    if err.errno == errno.E2BIG:
        return PayloadTooLarge(f"the command's arguments are too long for the kernel (sandbox {call.sandbox})")
    return ExecFailed(f"the host could not start a command in sandbox {call.sandbox}; retry later")


async def _generation(call: Call) -> object | None:
    """What identifies the running container now: a different one after the command means it restarted
    (asked only where the runtime's own failures must be told from the command's: ``runsc exec``)."""
    if not call.backend.needs_generation:
        return None
    return await call.backend.generation()


async def _lost(call: Call, err: RuntimeError_, before: object | None) -> SandboxdError:
    """A command's runtime failed under it (after it started): a restart, or a failure of the runtime."""
    log.debug("command in sandbox %s lost: %s", call.sandbox, err)
    now = await call.backend.generation()
    if now is None or before is None or now != before:
        return SandboxRestarting(
            f"sandbox {call.sandbox} stopped or restarted while the command ran, and its result is lost; "
            "retry once it is Ready"
        )
    return runtime_failure(err, call)


async def _runtime_broke(call: Call, code: int, stderr: bytes, before: object | None) -> SandboxdError | None:
    """Whether the runtime, not the command, ended the command (see the module docstring)."""
    if code != RUNTIME_FAILED or not call.backend.needs_generation:
        return None
    line = call.backend.runtime_line(stderr)
    now = await _generation(call)
    restarted = now is None or (before is not None and now != before)
    if line is None and not restarted:
        return None  # the command's own exit code 128
    log.debug("command in sandbox %s ended by the runtime: %s", call.sandbox, (line or b"").decode(errors="replace"))
    if restarted:
        return SandboxRestarting(
            f"sandbox {call.sandbox} stopped or restarted while the command ran, and its result is lost; "
            "retry once it is Ready"
        )
    return ExecFailed(f"the runtime could not run the command in sandbox {call.sandbox}; retry later")


async def execute(call: Call) -> web.Response:
    body = await call.json_body()
    if not isinstance(body, dict) or not isinstance(body.get("command"), str):
        raise BadRequest('body must be a JSON object with a string "command"')
    command: str = body["command"]
    if "\0" in command:
        raise BadRequest("command must not contain NUL characters")
    argv = ["/bin/sh", "-c", command]
    _check_args(argv, {}, "command")
    timeout = call.timeout(body.get("timeout_seconds"))
    limit = call.config.output_limit

    async with call.slots.slot(call.sandbox_id, call.sandbox) as slot:
        pid_before = await _generation(call)
        started = time.perf_counter()
        call.metrics.execs_in_flight.inc()
        try:
            proc = await call.backend.spawn(argv, cwd=call.backend.home)
        except RuntimeError_ as e:
            call.metrics.execs_in_flight.dec()
            raise runtime_failure(e, call) from e
        except OSError as e:
            call.metrics.execs_in_flight.dec()
            raise _spawn_failure(e, call) from e
        try:
            result = await collect(proc, timeout=timeout, output_limit=limit, flood_grace=FLOOD_GRACE, pace=slot.pace)
        except RuntimeError_ as e:
            raise await _lost(call, e, pid_before) from e
        except OSError as e:
            raise _spawn_failure(e, call) from e
        finally:
            call.metrics.execs_in_flight.dec()
            call.metrics.exec_seconds.labels("execute").observe(time.perf_counter() - started)
        broken = await _runtime_broke(call, result.exit_code, result.stderr, pid_before)
    if broken is not None:
        raise broken

    stderr = result.stderr.decode("utf-8", "replace")
    if result.stopped:
        call.metrics.exec_stopped.inc()
        call.metrics.exec_truncated.inc()
        stderr = _with_note(
            stderr,
            f"command stopped: its output passed the cap of {limit} bytes (stdout and stderr each), "
            "and it was killed; write large output to a file and download it",
        )
    elif result.truncated:
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
    _check_args(req.argv, req.env, "argv")
    timeout = call.timeout(req.timeout_seconds)
    async with call.slots.slot(call.sandbox_id, call.sandbox) as slot:
        pid_before = await _generation(call)
        try:
            proc = await call.backend.spawn(
                req.argv,
                env=dict(req.env) or None,
                cwd=req.cwd or call.backend.home,
                stdin=req.stdin,
            )
        except RuntimeError_ as e:
            raise runtime_failure(e, call) from e
        except OSError as e:
            raise _spawn_failure(e, call) from e

        started = time.perf_counter()
        call.metrics.execs_in_flight.inc()
        try:
            return await _stream(call, proc, timeout, slot, pid_before)
        finally:
            call.metrics.execs_in_flight.dec()
            call.metrics.exec_seconds.labels("exec_stream").observe(time.perf_counter() - started)


async def _stream(call: Call, proc: Process, timeout: float, slot: Slot, pid_before: object | None) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    resp.enable_chunked_encoding()
    try:
        await resp.prepare(call.request)
    except (ConnectionError, RuntimeError):
        await _kill(proc)
        raise
    lock = asyncio.Lock()
    # A stderr chunk that may be the runtime's own failure message: sent only once the exit
    # code says it is the command's.
    held: list[bytes] = []

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
            await slot.pace(len(chunk))
            if name == "stderr":
                if held:
                    await send(OutputFrame(stream="stderr", data=held.pop()))
                if call.backend.runtime_line(chunk) is not None:
                    held.append(chunk)
                    continue
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
    timed_out = killed = False
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            code = task.result()  # _ClientGone from a write surfaces here
        elif watcher in done:
            raise _ClientGone
        else:
            timed_out = killed = True
            call.metrics.exec_timeouts.labels("exec_stream").inc()
            await proc.kill()
            # Output written before the kill still goes out; then the pipes close.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), KILL_GRACE)
            code = TIMEOUT_EXIT_CODE
        broken = await _runtime_broke(call, code, held[0] if held else b"", pid_before)
        if broken is not None:
            line = call.backend.runtime_line(held[0]) if held else None
            if line is not None and (before := held[0].rstrip(b"\n")[: -len(line)]):
                await send(OutputFrame(stream="stderr", data=before))  # the command's, before runsc's line
            await send(ErrorFrame(message=broken.message))
        else:
            if held:
                await send(OutputFrame(stream="stderr", data=held.pop()))
            await send(ExitFrame(exit_code=code, timed_out=timed_out))
    except _ClientGone:
        log.info("exec stream for sandbox %s: client went away; killing the command", call.sandbox)
        killed = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Read while killing: a command blocked on a full pipe dies only once the pipe moves.
        await asyncio.gather(_kill(proc), discard(proc))
        return resp
    except asyncio.CancelledError:  # the router is shutting down: take the command with it
        await asyncio.shield(_kill(proc))
        raise
    except Exception as e:  # the answer has begun: report in a final frame, not a status
        if isinstance(e, RuntimeError_):
            message = (await _lost(call, e, pid_before)).message
        else:
            log.warning("exec stream for sandbox %s failed", call.sandbox, exc_info=True)
            message = "internal router error; the control plane's log has the details"
        with contextlib.suppress(_ClientGone):
            await send(ErrorFrame(message=message))
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(task, watcher, return_exceptions=True)
        if killed:
            await discard(proc)  # what nobody read, so the pipes reach EOF and close
    with contextlib.suppress(ConnectionError, RuntimeError):
        await resp.write_eof()
    return resp


async def _kill(proc: Process) -> None:
    try:
        await proc.kill()
    except Exception:  # the process may be gone already; nothing to report to anyone
        log.debug("kill after client disconnect failed", exc_info=True)
