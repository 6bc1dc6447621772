"""A ``PodStreams`` double: what the API server's stream handlers talk to, answered by local processes.

``turbok.apiserver.streaming`` reaches the node through ``PodStreams``; until
(and besides) a real node, these tests give it this double:

- ``logs``: the bytes in ``logs[(namespace, pod, container)]`` (``previous``:
  ``previous_logs[...]``), cut into ``chunk`` sized pieces; ``follow`` then
  yields what ``append_log`` adds until ``end_follow``; every call's options
  are kept in ``log_calls``. ``log_error`` raises instead.
- ``exec``: runs the command as a local process (``/bin/sh`` and friends on
  the test host, never anything a test did not write), with a pseudo-terminal
  when ``tty``; ``exec_error`` raises instead.
- ``attach``: the process ``attach_command`` started on first attach, kept
  running across attaches.
- ``port_forward``: a TCP connection to ``ports[port]`` on 127.0.0.1; a port
  not in the map is refused as a kubelet reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from turbok.api.status import ApiError

Obj = dict[str, Any]


class LocalProcess:
    """A local process as a ``ProcessStream``; with ``tty``, on a pseudo-terminal as the kubelet gives one."""

    def __init__(self, proc: asyncio.subprocess.Process, *, master: int | None = None,
                 out: asyncio.StreamReader | None = None, detach_only: bool = False) -> None:
        self.proc = proc
        self.master = master
        self._out = out
        self.detach_only = detach_only
        self.resizes: list[tuple[int, int]] = []
        self.closed = False

    @classmethod
    async def start(cls, argv: Sequence[str], *, tty: bool) -> LocalProcess:
        if not tty:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            return cls(proc)
        master, slave = os.openpty()

        def controlling_tty() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        proc = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave,
                                                    start_new_session=True, preexec_fn=controlling_tty)
        os.close(slave)
        os.set_blocking(master, False)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                return
            except OSError as e:  # EIO: the terminal's last holder is gone
                if e.errno != errno.EIO:
                    raise
                data = b""
            if data:
                reader.feed_data(data)
            else:
                loop.remove_reader(master)
                reader.feed_eof()

        loop.add_reader(master, readable)
        return cls(proc, master=master, out=reader)

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        return self._out if self.master is not None else self.proc.stdout

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        return None if self.master is not None else self.proc.stderr

    async def write(self, data: bytes) -> None:
        if self.master is not None:
            os.write(self.master, data)
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self.master is not None:
            os.write(self.master, b"\x04")  # ^D, as a terminal ends input
        elif self.proc.stdin is not None:
            self.proc.stdin.close()

    async def resize(self, columns: int, rows: int) -> None:
        self.resizes.append((columns, rows))
        if self.master is not None:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    async def wait(self) -> int:
        code = await self.proc.wait()
        if self.master is not None:
            with contextlib.suppress(OSError):
                asyncio.get_running_loop().remove_reader(self.master)
                os.close(self.master)
            self.master = -1
        return code

    async def close(self) -> None:
        self.closed = True
        if not self.detach_only and self.proc.returncode is None:
            self.proc.kill()
            await self.wait()


@dataclass
class FakePodStreams:
    logs_by_container: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    previous_logs: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    chunk: int = 1 << 20
    log_error: ApiError | None = None
    exec_error: ApiError | None = None
    attach_command: Sequence[str] = ("cat",)
    ports: dict[int, int] = field(default_factory=dict)
    log_calls: list[dict[str, Any]] = field(default_factory=list)
    execs: list[tuple[str, tuple[str, ...], LocalProcess]] = field(default_factory=list)
    attached: dict[str, LocalProcess] = field(default_factory=dict)
    forwards: list[int] = field(default_factory=list)
    #: Log iterators that were closed before they ended (a client that went away mid-follow).
    abandoned: int = 0
    _follow: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)

    def append_log(self, data: bytes) -> None:
        self._follow.put_nowait(data)

    def end_follow(self) -> None:
        self._follow.put_nowait(None)

    async def logs(self, pod: Obj, container: str, *, follow: bool = False, previous: bool = False,
                   since: float | None = None, timestamps: bool = False, tail_lines: int | None = None,
                   limit_bytes: int | None = None) -> AsyncIterator[bytes]:
        md = pod["metadata"]
        self.log_calls.append({"pod": md["name"], "container": container, "follow": follow, "previous": previous,
                               "since": since, "timestamps": timestamps, "tail_lines": tail_lines,
                               "limit_bytes": limit_bytes})
        if self.log_error is not None:
            raise self.log_error
        source = self.previous_logs if previous else self.logs_by_container
        data = source.get((md.get("namespace", ""), md["name"], container), b"")

        async def chunks() -> AsyncIterator[bytes]:
            finished = False
            try:
                for start in range(0, len(data), self.chunk):
                    yield data[start:start + self.chunk]
                while follow:
                    try:
                        more = await asyncio.wait_for(self._follow.get(), 0.1)
                    except TimeoutError:
                        yield b""  # nothing new: the server checks whether the client is still there
                        continue
                    if more is None:
                        break
                    yield more
                finished = True
            finally:
                if not finished:
                    self.abandoned += 1

        return chunks()

    async def exec(self, pod: Obj, container: str, command: Sequence[str], *, stdin: bool, stdout: bool,
                   stderr: bool, tty: bool) -> LocalProcess:
        if self.exec_error is not None:
            raise self.exec_error
        proc = await LocalProcess.start(command, tty=tty)
        self.execs.append((container, tuple(command), proc))
        return proc

    async def attach(self, pod: Obj, container: str, *, stdin: bool, stdout: bool, stderr: bool,
                     tty: bool) -> LocalProcess:
        if self.exec_error is not None:
            raise self.exec_error
        key = f"{pod['metadata']['name']}/{container}"
        proc = self.attached.get(key)
        if proc is None or proc.proc.returncode is not None:
            proc = self.attached[key] = await LocalProcess.start(self.attach_command, tty=tty)
        proc.detach_only = True
        return proc

    async def port_forward(self, pod: Obj, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.forwards.append(port)
        local = self.ports.get(port)
        if local is None:
            raise ApiError(f"dial tcp4 127.0.0.1:{port}: connect: connection refused")
        return await asyncio.open_connection("127.0.0.1", local)

    async def aclose(self) -> None:
        for _, _, proc in self.execs:
            await proc.close()
        for proc in self.attached.values():
            proc.detach_only = False
            await proc.close()
