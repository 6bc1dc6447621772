"""The agent's process: listen, detach, serve; see the package docstring.

``main(argv)``: ``--root DIR`` (made if missing), ``--port N`` (repeatable: every
port to listen on; one that is taken is skipped with a line on stderr, except the
first, the private one, which must bind), ``--host`` (default 0.0.0.0),
``--foreground`` (serve in this process; for tests). Without it, the process
binds, forks a child that serves, prints ``READY`` and exits 0: whoever started
it (``runsc exec``, through the pod runtime) returns once the agent listens.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import threading

from . import AGENT_PORT, READY, pool, procs
from .http1 import abort, serve_http
from .rest import Api

__all__ = ["main"]

_PREFACE = b"PRI"


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def _handle(conn: socket.socket, api: Api, registry: procs.Registry, root: str) -> None:
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = b""
        while len(first) < 3:
            data = conn.recv(65536)
            if not data:
                abort(conn)
                return
            first += data
        if first.startswith(_PREFACE):
            from .grpcserver import serve_grpc  # on the first gRPC connection: a start costs less without it

            serve_grpc(conn, first, registry, root)
        else:
            serve_http(conn, first, api)
    except Exception:  # one connection's failure never takes the agent down
        abort(conn)


def serve(listeners: list[socket.socket], root: str) -> None:
    # poll(2), not epoll: runsc 20221219 cannot checkpoint (hibernate) a sandbox with a listening socket in an
    # epoll set ("endpoint still has waiters upon save"); poll registers only while it waits, and a
    # checkpoint interrupts the wait.
    registry = procs.Registry()
    api = Api(root, registry)
    selector = selectors.PollSelector()
    for sock in listeners:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            listener = key.fileobj
            assert isinstance(listener, socket.socket)
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # out of descriptors: let the backlog wait a moment
                threading.Event().wait(0.05)
                continue
            conn.setblocking(True)
            pool.run(_handle, conn, api, registry, root)


class _Args:
    root = "/app"
    host = "0.0.0.0"
    port: list[int]
    foreground = False

    def __init__(self) -> None:
        self.port = []


def _parse(argv: list[str]) -> _Args:
    """The command line (see the module docstring); argparse costs a sandbox's start tens of ms to import."""
    args = _Args()
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name == "--foreground" and not eq:
            args.foreground = True
            continue
        if name not in ("--root", "--host", "--port"):
            sys.exit(f"sandboxd-agent: unknown argument {arg!r} (--root DIR, --host ADDR, --port N..., --foreground)")
        if not eq:
            value = next(it, "")
        if not value:
            sys.exit(f"sandboxd-agent: {name} needs a value")
        if name == "--port":
            if not value.isdigit() or not 0 <= int(value) <= 65535:
                sys.exit(f"sandboxd-agent: --port {value!r} is not a port number")
            args.port.append(int(value))
        else:
            setattr(args, name[2:], value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    ports = args.port or [AGENT_PORT]
    os.makedirs(args.root, mode=0o755, exist_ok=True)
    root = os.path.realpath(args.root)
    listeners = [_listen(args.host, ports[0])]
    for port in ports[1:]:
        try:
            listeners.append(_listen(args.host, port))
        except OSError as e:
            print(f"sandboxd agent: port {port} not served: {e.strerror}", file=sys.stderr)
    if args.foreground:
        print(READY, flush=True)
        serve(listeners, root)
        return
    pid = os.fork()
    if pid:
        print(READY, flush=True)
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        serve(listeners, root)


if __name__ == "__main__":
    main()
