"""Host commands (``runsc``) started and awaited without the event loop waiting on them.

asyncio's ``create_subprocess_exec`` forks on the loop's thread and stays there until
the child has exec'd. On a machine whose cores are busy booting sandboxes, a new child
waits its turn to run, and every request waits with it: while a warm pool refilled
under 20 claims/s, one such wait held the control plane's loop for 108 ms (a 177 ms
stall; sampled with the loop's stack). asyncio's child watcher also starts a thread
per child to wait for it. Here the fork happens on a worker thread, and the end is
awaited on the loop through a pidfd: no thread waits, the loop never blocks.

Output goes to a memory file rather than a pipe, so nothing has to read while the
command runs and a command that leaves a process behind (``runsc run --detach``
would, with a pipe) cannot hold anyone up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Sequence

__all__ = ["forked", "run", "start", "wait"]


async def start(argv: Sequence[str], *, stdin: int, stdout: int, stderr: int,
                pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """``argv`` started in a session of its own with these descriptors (forked on a worker thread).

    Cancelled, it still returns only once the fork is done, so that the caller may close the descriptors it
    handed over; the process goes on and is reaped when it ends."""
    def fork() -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True,
                                pass_fds=tuple(pass_fds))

    return await forked(fork)


async def forked(fork: Callable[[], subprocess.Popen[bytes]], *,
                 executor: concurrent.futures.Executor | None = None) -> subprocess.Popen[bytes]:
    """The process ``fork()`` starts, called on a thread of ``executor`` (None: the loop's default), with
    ``start``'s handling of a cancellation."""
    forking = asyncio.get_running_loop().run_in_executor(executor, fork)
    try:
        return await asyncio.shield(forking)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            _reap_later(await forking)
        raise


async def wait(proc: subprocess.Popen[bytes]) -> int:
    """``proc``'s exit status once it has ended (reaped here). Cancelled, the process goes on and is reaped
    when it ends."""
    try:
        await _ended(proc)
    except asyncio.CancelledError:
        _reap_later(proc)
        raise
    return proc.wait()  # it has ended: this reaps it at once


#: Reapers of processes nobody waits for any more (kept referenced until they are done).
_reaping: set[asyncio.Task[None]] = set()


def _reap_later(proc: subprocess.Popen[bytes]) -> None:
    """Reap ``proc`` when it ends, without anyone waiting for it (a cancelled ``runsc wait`` may go on for hours:
    no thread of a pool may be held for it)."""
    task = asyncio.get_running_loop().create_task(_ended(proc))
    _reaping.add(task)

    def reaped(task: asyncio.Task[None]) -> None:
        _reaping.discard(task)
        proc.poll()

    task.add_done_callback(reaped)


async def _ended(proc: subprocess.Popen[bytes]) -> None:
    """Return once ``proc`` has ended, without reaping it (through a pidfd: no thread waits)."""
    if proc.returncode is not None:
        return
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not ended.done():
            ended.set_result(None)

    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # a kernel without pidfds (before 5.3): a thread of its own waits, never one of a pool
        def waiting() -> None:
            proc.wait()
            loop.call_soon_threadsafe(done)

        threading.Thread(target=waiting, name=f"wait-{proc.pid}", daemon=True).start()
        await ended
        return
    loop.add_reader(pidfd, done)
    try:
        await ended
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def run(argv: Sequence[str], *, timeout: float) -> tuple[int, bytes]:
    """Run ``argv`` to its end: (exit status, its stdout and stderr together). Past ``timeout`` seconds it is
    killed and ``TimeoutError`` raised."""
    out = os.memfd_create("turbok-command-output", os.MFD_CLOEXEC)
    try:
        proc = await start(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            code = await asyncio.wait_for(wait(proc), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await wait(proc)
            raise
        os.lseek(out, 0, os.SEEK_SET)
        with os.fdopen(os.dup(out), "rb") as f:
            return code, f.read()
    finally:
        os.close(out)
