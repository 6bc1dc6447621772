"""The wire client: a silent agent times out (kernel-level socket timeouts), a large body arrives whole."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from turbok.checkpoint.errors import AgentUnavailableError
from turbok.checkpoint.wire import Client, recv_header, recv_into, send_frame


def test_a_silent_agent_times_out_instead_of_hanging() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()
    client = Client(f"127.0.0.1:{srv.getsockname()[1]}", timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(AgentUnavailableError):
        client.call("ping")
    assert time.monotonic() - t0 < 5
    client.close()
    srv.close()
    for c in held:
        c.close()


def test_a_body_larger_than_the_socket_buffers_arrives_whole() -> None:
    body = bytes(range(256)) * (64 << 10)  # 16 MiB
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        conn, _ = srv.accept()
        header = recv_header(conn)
        assert header is not None
        got = bytearray(int(header["size"]))
        seen: list[int] = []
        recv_into(conn, memoryview(got), on_chunk=lambda pos, view: seen.append(pos + view.nbytes))
        send_frame(conn, {"ok": True, "same": bytes(got) == body, "last": seen[-1]})
        conn.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    client = Client(f"127.0.0.1:{srv.getsockname()[1]}", timeout=5)
    reply = client.call("put", body)
    assert reply["same"] is True and reply["last"] == len(body)
    client.close()
    th.join(5)
    srv.close()
