"""A container's stdin and terminal, kept where a restarted control plane finds them; exec/attach streams.

A container started with ``stdin: true`` reads a FIFO (``containers/NAME/stdin``),
with ``tty: true`` a pseudo-terminal whose master runsc hands over a console socket
(``receive_console``). Either must outlive the control plane, or a restart would
close the container's stdin (EOF) or hang its terminal up, so a **holder** keeps
them: a detached ``sleep infinity`` that was given the FIFO's write end and the
terminal's master as descriptors and does nothing else (about 1 MiB of memory).
Its pid and start time are in ``io.json``; ``take_fd`` copies one of its
descriptors back with ``pidfd_getfd(2)`` (Linux 5.6) after a restart. With
``stdin_once`` the holder is killed when the first attach ends: the FIFO's last
writer goes, and the container reads EOF, as the kubelet's ``StdinOnce`` says.

``PodStream`` is the ``cri.Stream`` of exec and attach: a ``Process`` whose
stdout/stderr are asyncio readers, ``write``/``close_stdin`` to its input and
``resize`` of its terminal.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import termios
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from turbok.runtime.cri import Stream
from turbok.runtime.errors import RuntimeError_
from turbok.runtime.process import Process

__all__ = [
    "AttachProcess",
    "close_with_reset",
    "Holder",
    "PodStream",
    "receive_console",
    "set_window",
    "start_time",
    "take_fd",
]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_SYS_PIDFD_GETFD = 438  # the same number on x86_64 and aarch64 (new syscalls share one table)


def close_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close a TCP connection into a pod with a reset: no TIME_WAIT on either side (one inside a gVisor sandbox
    stops runsc from checkpointing it for 60 s)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort() if sock is None else writer.close()


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a pid from a reused one. None where no such process runs, a zombie
    included (it ended; its parent, this process where it is the subreaper (``orphans``), reaps it later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def take_fd(pid: int, fd: int) -> int:
    """A copy of descriptor ``fd`` of process ``pid`` (``pidfd_getfd``; root)."""
    pidfd = os.pidfd_open(pid)
    try:
        got = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
        os.set_inheritable(got, False)
        return int(got)
    finally:
        os.close(pidfd)


class Holder:
    """The process keeping a container's stdin writer and terminal master open (see the module docstring)."""

    def __init__(self, record: Path) -> None:
        self.record = record

    def info(self) -> dict[str, Any] | None:
        """``{"pid", "start", "fds": {name: fd}}`` of the live holder, else None."""
        try:
            info = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
            return None
        return info if start_time(info["pid"]) == info.get("start") else None

    def spawn(self, fds: dict[str, int]) -> None:
        """Start a holder of ``fds`` (name -> our descriptor); they keep their numbers in it."""
        sleep = shutil.which("sleep") or "/bin/sleep"
        proc = _spawn_detached([sleep, "infinity"], list(fds.values()))
        self.record.write_text(json.dumps({"pid": proc, "start": start_time(proc), "fds": fds}))

    def fd(self, name: str) -> int | None:
        """Our own copy of the holder's descriptor ``name`` (None without a holder or that descriptor)."""
        info = self.info()
        if info is None or name not in info.get("fds", {}):
            return None
        try:
            return take_fd(info["pid"], int(info["fds"][name]))
        except OSError:
            return None

    def kill(self) -> None:
        info = self.info()
        if info is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info["pid"], signal.SIGKILL)
        self.record.unlink(missing_ok=True)


def _spawn_detached(argv: list[str], keep: list[int]) -> int:
    """Start ``argv`` in a session of its own keeping the descriptors ``keep``; its pid. Reaped by a
    thread while we live (it outlives us otherwise, adopted by init)."""
    import subprocess

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            pass_fds=keep, start_new_session=True, close_fds=True)
    threading.Thread(target=proc.wait, name="turbok-holder-reaper", daemon=True).start()
    return proc.pid


class receive_console:
    """A console socket at ``path``: runsc connects and sends the terminal's master; ``master()`` waits for it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind(str(path))
        os.chmod(path, 0o600)
        self._sock.listen(1)
        self._sock.setblocking(False)

    async def master(self, timeout: float = 30.0) -> int:
        loop = asyncio.get_running_loop()
        conn, _ = await asyncio.wait_for(loop.sock_accept(self._sock), timeout)
        with conn:
            conn.setblocking(True)
            fds = array.array("i")
            _, anc, _, _ = await asyncio.to_thread(conn.recvmsg, 1024, socket.CMSG_LEN(fds.itemsize))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if not fds:
            raise RuntimeError_("runsc sent no terminal over the console socket")
        for extra in fds[1:]:
            os.close(extra)
        os.set_inheritable(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def set_window(fd: int, columns: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


class AttachProcess(Process):
    """The ``Process`` of an attach: the container's output as it comes, its exit as ``wait``."""

    def __init__(self, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader,
                 wait: Callable[[], Awaitable[int]], detach: Callable[[], None]) -> None:
        self._stdout, self._stderr, self._wait, self._detach = stdout, stderr, wait, detach

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        return self._stderr

    async def wait(self) -> int:
        return await self._wait()

    async def kill(self) -> None:
        """Detach: an attach never kills the container (``stop_container`` does)."""
        self._detach()


class PodStream(Stream):
    """exec or attach: a process, its input (a pipe, a FIFO or a terminal master) and its terminal size."""

    def __init__(self, process: Process, *, write_fd: int | None = None,
                 writer: asyncio.StreamWriter | None = None, tty_fd: int | None = None,
                 on_resize: Callable[[], Awaitable[None]] | None = None,
                 on_close_stdin: Callable[[], None] | None = None,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self._process = process
        self._write_fd = write_fd
        self._writer = writer
        self._tty_fd = tty_fd
        self._on_resize = on_resize
        self._on_close_stdin = on_close_stdin
        self._on_close = on_close
        self._closed = False

    @property
    def process(self) -> Process:
        return self._process

    async def write(self, data: bytes) -> None:
        if self._writer is not None:
            self._writer.write(data)
            await self._writer.drain()
            return
        fd = self._write_fd if self._write_fd is not None else self._tty_fd
        if fd is None:
            raise RuntimeError_("this stream has no stdin (start the container or exec with stdin)")
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            view = view[n:]

    async def close_stdin(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            self._writer = None
        elif self._write_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
            self._write_fd = None
        elif self._tty_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._tty_fd, b"\x04")  # a terminal's EOF is ^D
        if self._on_close_stdin is not None:
            cb, self._on_close_stdin = self._on_close_stdin, None
            cb()

    async def resize(self, columns: int, rows: int) -> None:
        if self._tty_fd is None:
            return
        with contextlib.suppress(OSError):
            set_window(self._tty_fd, columns, rows)
        if self._on_resize is not None:
            await self._on_resize()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._write_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
            self._write_fd = None
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
        if self._on_close is not None:
            await self._on_close()
