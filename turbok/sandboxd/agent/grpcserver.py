"""``process.v1.ProcessService`` over gRPC (HTTP/2 without TLS, prior knowledge), as upstream sandboxd serves it.

One thread reads the connection and feeds ``h2``; each call runs in a thread of
its own once its request message is complete. Writes go through one lock and
honour the peer's flow-control window, so a client that reads slowly holds a
``Start`` stream's output, the pump's next write, and so the command (its pipe
fills), never the agent's memory.

- ``Start``: ``InitEvent`` (the process id), then ``stdout``/``stderr`` events
  as the output comes (at most 64 KiB each), then ``ExitEvent``; with ``pty``
  the command gets a terminal (its output is all ``stdout``). A cancelled call
  (the client reset the stream or went away) kills the command's process group.
- ``Execute``: the command's output and exit code at its end. The client's
  deadline (``grpc-timeout``) kills the command: ``DEADLINE_EXCEEDED``. The
  answer holds at most ``EXECUTE_LIMIT`` bytes of output (what gRPC clients take
  in one message by default); past it the command is killed and its stderr ends
  with a note, as turbok's router does for ``/execute``.
- ``WriteStdin``, ``SendSignal`` (SIGINT, SIGTERM, SIGKILL to the process
  group), ``ResizeTTY`` on a process ``Start`` runs: ``NOT_FOUND`` once it ended.

Exit codes are upstream's: the command's own, or -1 when a signal ended it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from . import pool, procs, proto
from .http1 import abort

__all__ = ["EXECUTE_LIMIT", "serve_grpc"]

#: Output bytes one ``Execute`` answer carries, stdout and stderr together (gRPC's default largest message
#: a client receives is 4 MiB).
EXECUTE_LIMIT = 4 * 1024 * 1024 - 64 * 1024
_SERVICE = "/process.v1.ProcessService/"
_CODES = {"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
          "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "UNIMPLEMENTED": 12,
          "INTERNAL": 13, "UNAVAILABLE": 14}
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_SIGNALS = {2: 2, 9: 9, 15: 15}


class _Gone(Exception):
    """The call was cancelled or the connection lost."""


class _Call:
    def __init__(self, stream_id: int, path: str, deadline: float | None) -> None:
        self.stream_id = stream_id
        self.path = path
        self.deadline = deadline
        self.body = bytearray()
        self.cancelled = threading.Event()
        self.on_cancel: Callable[[], None] | None = None

    def cancel(self) -> None:
        self.cancelled.set()
        if self.on_cancel is not None:
            with contextlib.suppress(Exception):
                self.on_cancel()


class _Conn:
    def __init__(self, sock: socket.socket, registry: procs.Registry, root: str) -> None:
        import h2.config
        import h2.connection

        self.sock = sock
        self.registry = registry
        self.root = root
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.cond = threading.Condition()
        self.calls: dict[int, _Call] = {}
        self.closed = False

    def flush(self) -> None:  # under self.cond
        data = self.h2.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True
                self.cond.notify_all()

    # ------------------------------------------------------------------ reading

    def run(self, buffered: bytes) -> None:
        import h2.events
        import h2.exceptions

        with self.cond:
            self.h2.initiate_connection()
            self.flush()
        data = buffered
        try:
            while True:
                if not data:
                    try:
                        data = self.sock.recv(256 * 1024)
                    except TimeoutError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        break
                with self.cond:
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        self.flush()
                        break
                    data = b""
                    for event in events:
                        self._event(event, h2.events)
                    self.flush()
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.closed = True
                calls = list(self.calls.values())
                self.cond.notify_all()
            for call in calls:
                call.cancel()
            abort(self.sock)

    def _event(self, event: Any, ev: Any) -> None:  # under self.cond
        if isinstance(event, ev.RequestReceived):
            headers = {k.decode("latin-1") if isinstance(k, bytes) else k:
                       v.decode("latin-1") if isinstance(v, bytes) else v for k, v in event.headers}
            self.calls[event.stream_id] = _Call(event.stream_id, headers.get(":path", ""),
                                                _deadline(headers.get("grpc-timeout")))
        elif isinstance(event, ev.DataReceived):
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.body += event.data
                if len(call.body) > 64 * 1024 * 1024:
                    self._reset(event.stream_id)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, ev.StreamEnded):
            call = self.calls.get(event.stream_id)
            if call is not None:
                pool.run(self._dispatch, call)
        elif isinstance(event, ev.StreamReset):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                threading.Thread(target=call.cancel, daemon=True).start()

    def _reset(self, stream_id: int) -> None:
        with contextlib.suppress(Exception):
            self.h2.reset_stream(stream_id)
        call = self.calls.pop(stream_id, None)
        if call is not None:
            threading.Thread(target=call.cancel, daemon=True).start()

    # ------------------------------------------------------------------ writing

    def _check(self, call: _Call) -> None:
        if self.closed or call.cancelled.is_set():
            raise _Gone

    def headers(self, call: _Call) -> None:
        with self.cond:
            self._check(call)
            self.h2.send_headers(call.stream_id, [(":status", "200"), ("content-type", "application/grpc")])
            self.flush()

    def message(self, call: _Call, payload: bytes) -> None:
        data = memoryview(b"\x00" + len(payload).to_bytes(4, "big") + payload)
        while data:
            with self.cond:
                while True:
                    self._check(call)
                    try:
                        window = self.h2.local_flow_control_window(call.stream_id)
                    except Exception:
                        raise _Gone from None
                    if window > 0:
                        break
                    self.cond.wait(1.0)
                n = min(window, self.h2.max_outbound_frame_size, len(data))
                self.h2.send_data(call.stream_id, bytes(data[:n]))
                self.flush()
            data = data[n:]

    def finish(self, call: _Call, code: str = "OK", message: str = "", *, headers_sent: bool = True) -> None:
        with self.cond:
            self.calls.pop(call.stream_id, None)
            if self.closed or call.cancelled.is_set():
                return
            trailers = [("grpc-status", str(_CODES[code]))]
            if message:
                trailers.append(("grpc-message", urllib.parse.quote(message, safe=" !#$&'()*+,/:;=?@[]~")))
            if not headers_sent:
                trailers = [(":status", "200"), ("content-type", "application/grpc"), *trailers]
            with contextlib.suppress(Exception):
                self.h2.send_headers(call.stream_id, trailers, end_stream=True)
            self.flush()

    # ------------------------------------------------------------------ calls

    def _dispatch(self, call: _Call) -> None:
        name = call.path[len(_SERVICE):] if call.path.startswith(_SERVICE) else ""
        handler = {"Start": self._start, "Execute": self._execute, "WriteStdin": self._write_stdin,
                   "SendSignal": self._signal, "ResizeTTY": self._resize}.get(name)
        if handler is None:
            self.finish(call, "UNIMPLEMENTED", f"unknown method {call.path}", headers_sent=False)
            return
        body = bytes(call.body)
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self.finish(call, "INVALID_ARGUMENT" if body[:1] != b"\x01" else "UNIMPLEMENTED",
                        "expected one uncompressed request message", headers_sent=False)
            return
        try:
            handler(call, body[5:])
        except proto.ProtoError as e:
            self.finish(call, "INVALID_ARGUMENT", str(e), headers_sent=False)
        except procs.CommandError as e:
            self.finish(call, e.code if e.code in _CODES else "INTERNAL", e.message, headers_sent=False)
        except _Gone:
            with self.cond:
                self.calls.pop(call.stream_id, None)

    def _unary(self, call: _Call, payload: bytes) -> None:
        self.headers(call)
        self.message(call, payload)
        self.finish(call)

    def _start(self, call: _Call, body: bytes) -> None:
        req = proto.decode_start_request(body)
        cfg = req["config"]
        proc = procs.start(self.root, cfg["command"], env=cfg["env"], cwd=cfg["cwd"], pty=req["pty"])
        pid = self.registry.add(proc)
        call.on_cancel = proc.kill
        try:
            if call.cancelled.is_set():
                proc.kill()
                raise _Gone
            self.headers(call)
            self.message(call, proto.start_init(pid))

            def send(stream: str, data: bytes) -> bool:
                try:
                    self.message(call, proto.start_output(stream, data))
                except _Gone:
                    proc.kill()
                    raise procs.Gone from None
                return True

            try:
                code = procs.drive(proc, send)
            except procs.Gone:
                proc.popen.wait()
                raise _Gone from None
            assert code is not None
            self.message(call, proto.start_exit(procs.exit_status(code)))
            self.finish(call)
        finally:
            self.registry.remove(pid)
            proc.close()

    def _execute(self, call: _Call, body: bytes) -> None:
        cfg = proto.decode_execute_request(body)["config"]
        proc = procs.start(self.root, cfg["command"], env=cfg["env"], cwd=cfg["cwd"], stdin=False)
        call.on_cancel = proc.kill
        out = {"stdout": bytearray(), "stderr": bytearray()}
        over = False

        def keep(stream: str, data: bytes) -> bool:
            nonlocal over
            room = EXECUTE_LIMIT - len(out["stdout"]) - len(out["stderr"])
            if len(data) > room:
                out[stream] += data[:max(room, 0)]
                over = True
                proc.kill()
                return False
            out[stream] += data
            return True

        try:
            code = procs.drive(proc, keep, deadline=call.deadline)
            if code is None:
                self.finish(call, "DEADLINE_EXCEEDED", "deadline exceeded", headers_sent=False)
                return
            if call.cancelled.is_set():
                raise _Gone
            stderr = bytes(out["stderr"])
            if over:
                stderr += (f"\n[sandboxd] command stopped: its output passed {EXECUTE_LIMIT} bytes, the most one "
                           "answer holds; write large output to a file, or use Start to stream it\n").encode()
            self._unary(call, proto.execute_response(procs.exit_status(code), bytes(out["stdout"]), stderr))
        finally:
            proc.signal(9)  # whatever it left in its group
            proc.close()

    def _write_stdin(self, call: _Call, body: bytes) -> None:
        req = proto.decode_stdin_request(body)
        proc = self.registry.get(req["process_id"])
        if req["eof"]:
            proc.close_stdin()
        elif req["input"]:
            proc.write_stdin(req["input"])
        self._unary(call, proto.empty())

    def _signal(self, call: _Call, body: bytes) -> None:
        req = proto.decode_signal_request(body)
        proc = self.registry.get(req["process_id"])
        sig = _SIGNALS.get(req["signal"])
        if sig is None:
            raise procs.CommandError("INVALID_ARGUMENT", f"unsupported or unspecified signal: {req['signal']}")
        proc.signal(sig)
        self._unary(call, proto.empty())

    def _resize(self, call: _Call, body: bytes) -> None:
        req = proto.decode_resize_request(body)
        proc = self.registry.get(req["process_id"])
        proc.resize(req["cols"], req["rows"])
        self._unary(call, proto.empty())


def _deadline(value: str | None) -> float | None:
    if not value or len(value) < 2 or value[-1] not in _UNITS:
        return None
    try:
        return time.monotonic() + int(value[:-1]) * _UNITS[value[-1]]
    except ValueError:
        return None


def serve_grpc(sock: socket.socket, buffered: bytes, registry: procs.Registry, root: str) -> None:
    """Serve gRPC on ``sock`` (whose first bytes, the HTTP/2 preface, are in ``buffered``) until it closes."""
    _Conn(sock, registry, root).run(buffered)
