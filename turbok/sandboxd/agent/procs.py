"""Processes the agent runs: started in the root directory (or a confined cwd), each in its own session.

``start`` runs a ``ProcessConfig`` (command, env added to the agent's own
environment, which is the container's, and cwd confined to the root) with pipes,
or with a pseudo-terminal as its controlling terminal, and registers it under a
small id (the ``process_id`` of the gRPC API, as upstream's registry numbers
them). ``Managed.signal`` reaches its whole process group, so a shell's children
end with it. Starting costs one ``vfork`` + ``exec`` (``subprocess`` on Linux),
not a ``fork`` of the agent: under gVisor's ptrace platform about 7 ms against
12 ms.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .paths import Escapes, confine

__all__ = ["CommandError", "Managed", "Registry", "exit_status", "pump", "start"]

#: Largest read from a pipe or terminal, and so the largest output event.
CHUNK = 64 * 1024
#: Seconds output is still read after the command ended (a child it left may hold its pipes open).
DRAIN_GRACE = 2.0
#: How often ``drive`` checks whether the command ended while its pipes stay open.
POLL = 0.25


class CommandError(Exception):
    """A command that cannot start; ``code`` is the gRPC code name (``NOT_FOUND``, ``PERMISSION_DENIED``...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Managed:
    """A running process: its pipes or terminal, and what its exit was."""

    def __init__(self, popen: subprocess.Popen[bytes], master: int | None) -> None:
        self.popen = popen
        self.master = master
        self.id = 0
        self._stdin_lock = threading.Lock()
        self.stdin_closed = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        """``sig`` to the process group (the process alone if the group is gone)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
        except PermissionError:
            self.popen.send_signal(sig)

    def write_stdin(self, data: bytes) -> None:
        with self._stdin_lock:
            if self.master is not None:
                _write_all(self.master, data)
                return
            if self.popen.stdin is None or self.stdin_closed:
                raise CommandError("FAILED_PRECONDITION", f"process {self.id} has no stdin open")
            _write_all(self.popen.stdin.fileno(), data)

    def close_stdin(self) -> None:
        with self._stdin_lock:
            if self.master is not None:
                with contextlib.suppress(OSError):
                    os.write(self.master, b"\x04")  # a terminal's end of input
                return
            if self.popen.stdin is not None and not self.stdin_closed:
                self.stdin_closed = True
                with contextlib.suppress(OSError):
                    self.popen.stdin.close()

    def resize(self, cols: int, rows: int) -> None:
        if self.master is None:
            raise CommandError("FAILED_PRECONDITION", f"process {self.id} has no terminal")
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        """Release its descriptors (after it ended and its output was read)."""
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            raise CommandError("FAILED_PRECONDITION", "the process closed its stdin") from None


class Registry:
    """Running processes by id (ids count up from 1, never reused while the agent runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._procs: dict[int, Managed] = {}

    def add(self, proc: Managed) -> int:
        with self._lock:
            self._next += 1
            proc.id = self._next
            self._procs[proc.id] = proc
            return proc.id

    def get(self, id: int) -> Managed:
        with self._lock:
            found = self._procs.get(id)
        if found is None:
            raise CommandError("NOT_FOUND", f"process {id} not found")
        return found

    def remove(self, id: int) -> None:
        with self._lock:
            self._procs.pop(id, None)

    def all(self) -> list[Managed]:
        with self._lock:
            return list(self._procs.values())


def _cwd(root: str, cwd: str | None) -> str:
    if not cwd:
        return root
    try:
        return confine(root, cwd)
    except Escapes as e:
        raise CommandError("PERMISSION_DENIED", f"cwd: {e}") from None


def _controlling_terminal() -> None:  # runs in the child, before exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def start(root: str, command: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
          pty: tuple[int, int] | None = None, stdin: bool = True, confine_cwd: bool = True) -> Managed:
    """Start ``command``; ``CommandError`` if it cannot (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...).

    ``cwd`` is confined to the root (upstream's rule) unless ``confine_cwd`` is False: turbok's spawn
    takes any absolute directory of the container, as ``kubectl exec`` does."""
    if not command:
        raise CommandError("INVALID_ARGUMENT", "command is required")
    if any("\0" in a for a in command) or any("\0" in k or "\0" in v or "=" in k or not k
                                              for k, v in (env or {}).items()):
        raise CommandError("INVALID_ARGUMENT", "command and env may not hold NUL bytes, and env names no '='")
    where = _cwd(root, cwd) if confine_cwd or not cwd else cwd
    environ = None
    if env:
        environ = dict(os.environ)
        environ.update(env)
    master = None
    kw: dict[str, Any] = {}
    try:
        if pty is not None:
            master, replica = os.openpty()
            os.set_inheritable(master, False)
            cols, rows = pty
            if cols and rows:
                fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            kw = {"stdin": replica, "stdout": replica, "stderr": replica, "preexec_fn": _controlling_terminal}
        else:
            kw = {"stdin": subprocess.PIPE if stdin else subprocess.DEVNULL, "stdout": subprocess.PIPE,
                  "stderr": subprocess.PIPE}
        try:
            popen = subprocess.Popen(list(command), cwd=where, env=environ, start_new_session=True,
                                     close_fds=False, bufsize=0, **kw)
        finally:
            if pty is not None:
                os.close(kw["stdin"])
    except FileNotFoundError as e:
        _close(master)
        raise CommandError("NOT_FOUND", f"command or path not found: {e.strerror}: {e.filename}") from None
    except PermissionError as e:
        _close(master)
        raise CommandError("PERMISSION_DENIED", f"permission denied: {e.filename}") from None
    except OSError as e:
        _close(master)
        code = "RESOURCE_EXHAUSTED" if e.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE) \
            else "INTERNAL"
        raise CommandError(code, f"failed to start command: {e.strerror}") from None
    return Managed(popen, master)


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def exit_status(returncode: int, *, signalled: int = -1) -> int:
    """A ``Popen.returncode`` as an exit code: its own, or ``signalled`` for a signal (upstream's -1;
    the router's convention is ``128 + signal``: pass ``signalled=None``... see ``shell_status``)."""
    return returncode if returncode >= 0 else signalled


def shell_status(returncode: int) -> int:
    """A ``Popen.returncode`` as a shell reports it: 128 + the signal for a killed process."""
    return returncode if returncode >= 0 else 128 - returncode


def pump(fd: int, on_data: Callable[[bytes], bool]) -> threading.Thread:
    """A thread reading ``fd`` until its end, handing each chunk to ``on_data`` (False: stop reading)."""
    def run() -> None:
        while True:
            try:
                data = os.read(fd, CHUNK)
            except OSError:  # EIO: a terminal's other side closed
                data = b""
            if not data or not on_data(data):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Gone(Exception):
    """The client the output goes to left (``drive`` killed the command)."""


def drive(proc: Managed, on_output: Callable[[str, bytes], bool], *, watch: socket.socket | None = None,
          stdin: bytes | None = None, deadline: float | None = None) -> int | None:
    """Run ``proc``'s I/O in this thread until it ends: its output to ``on_output(stream, data)`` (False: stop
    reading that stream; what it writes later is dropped), ``stdin`` written and closed, and ``watch`` (a client's
    socket that sends nothing more) watched: its end kills the command and raises ``Gone``. At ``deadline``
    (``time.monotonic()``) the command is killed and None returned; else its ``Popen.returncode``.

    One thread and a selector, where a thread per pipe would cost a ``clone`` each (about 1 ms under gVisor).
    """
    sel = selectors.PollSelector()
    names: dict[int, str] = {}
    if proc.master is not None:
        names[proc.master] = "stdout"
    else:
        assert proc.popen.stdout is not None and proc.popen.stderr is not None
        names[proc.popen.stdout.fileno()] = "stdout"
        names[proc.popen.stderr.fileno()] = "stderr"
    for fd in names:
        sel.register(fd, selectors.EVENT_READ)
    if watch is not None:
        sel.register(watch, selectors.EVENT_READ)
    pending = memoryview(stdin or b"")
    in_fd = -1
    if stdin is not None and proc.popen.stdin is not None:
        in_fd = proc.popen.stdin.fileno()
        os.set_blocking(in_fd, False)
        sel.register(in_fd, selectors.EVENT_WRITE)
    dropping: set[int] = set()
    open_out = set(names)
    timed_out = False
    try:
        drain_until: float | None = None
        while open_out:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                timed_out = True
                break
            if drain_until is None and proc.popen.poll() is not None:
                drain_until = now + DRAIN_GRACE  # it ended; a child it left may hold the pipes: not for long
            if drain_until is not None and now >= drain_until:
                break
            wait = min(POLL, (deadline - now) if deadline is not None else POLL,
                       (drain_until - now) if drain_until is not None else POLL)
            for key, _ in sel.select(wait):
                fd = key.fd
                if key.fileobj is watch:
                    try:
                        alive = watch.recv(1, socket.MSG_PEEK) if watch is not None else b""
                    except BlockingIOError:
                        continue
                    except OSError:
                        alive = b""
                    if not alive:
                        proc.kill()
                        raise Gone
                    sel.unregister(watch)  # it sent more: not ours to read; stop watching
                    watch = None
                elif fd == in_fd:
                    try:
                        n = os.write(fd, pending[:CHUNK]) if pending else 0
                        pending = pending[n:]
                    except BlockingIOError:
                        continue
                    except OSError:
                        pending = memoryview(b"")
                    if not pending:
                        sel.unregister(fd)
                        proc.close_stdin()
                        in_fd = -1
                else:
                    try:
                        data = os.read(fd, CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:  # EIO: a terminal whose other side closed
                        data = b""
                    if not data:
                        sel.unregister(fd)
                        open_out.discard(fd)
                    elif fd not in dropping and not on_output(names[fd], data):
                        dropping.add(fd)
    finally:
        sel.close()
        if in_fd >= 0:
            proc.close_stdin()
    if timed_out:
        proc.kill()
        proc.popen.wait()
        return None
    return proc.popen.wait()


