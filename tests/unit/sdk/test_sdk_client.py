"""SandboxConnection against a real router over a fake runtime: commands, streams, files, errors."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from turbok.sandboxd.testing import FakeRouter, Script
from turbok.sdk import (
    AccessDenied,
    BadRequest,
    CommandFailed,
    Conflict,
    ExitFrame,
    NotFound,
    OutputFrame,
    SandboxConnection,
    SandboxNotFound,
    SandboxNotReady,
    SdkError,
    TransportError,
    Unauthorized,
)


def test_run(conn: SandboxConnection, router: FakeRouter) -> None:
    router.runtime.script("ls", Script(stdout=b"a\nb\n"))
    result = conn.commands.run("ls", timeout=5)
    assert (result.stdout, result.exit_code, result.timed_out, result.truncated) == (
        "a\nb\n",
        0,
        False,
        False,
    )
    assert router.runtime.spawns[0].argv == ("/bin/sh", "-c", "ls")


def test_run_check_raises_with_the_result(conn: SandboxConnection, router: FakeRouter) -> None:
    router.runtime.script("false", Script(stderr=b"nope\n", exit_code=1))
    assert conn.commands.run("false").exit_code == 1
    with pytest.raises(CommandFailed) as e:
        conn.commands.run("false", check=True)
    assert e.value.result.exit_code == 1 and "nope" in str(e.value)


def test_run_timeout(conn: SandboxConnection, router: FakeRouter) -> None:
    router.runtime.script("hang", Script(duration=None))
    result = conn.commands.run("hang", timeout=0.2)
    assert result.timed_out and result.exit_code == 124


@pytest.mark.parametrize("router", [{"output_limit": 1000}], indirect=True)
def test_run_truncation_is_reported(conn: SandboxConnection, router: FakeRouter) -> None:
    router.runtime.script("yes", Script(flood=10_000))
    result = conn.commands.run("yes")
    assert result.truncated and len(result.stdout) == 1000


def test_stream(conn: SandboxConnection, router: FakeRouter) -> None:
    router.runtime.script("make all", Script(stdout=b"x" * 200_000, stderr=b"warning\n", exit_code=2))
    out, err = bytearray(), bytearray()
    with conn.commands.stream(["make", "all"], env={"J": "2"}, cwd="/app/src", timeout=10) as run:
        for frame in run:
            assert isinstance(frame, OutputFrame)
            (out if frame.stream == "stdout" else err).extend(frame.data)
    assert (bytes(out), bytes(err), run.exit_code, run.timed_out) == (b"x" * 200_000, b"warning\n", 2, False)
    spawn = router.runtime.spawns[0]
    assert (spawn.argv, spawn.env, spawn.cwd) == (("make", "all"), {"J": "2"}, "/app/src")


def test_stream_wait_and_timeout(conn: SandboxConnection, router: FakeRouter) -> None:
    router.runtime.script("sleep", Script(duration=None))
    run = conn.commands.stream(["sleep"], timeout=0.2)
    assert run.wait() == 124 and run.timed_out


def test_stream_validates_before_sending(conn: SandboxConnection, router: FakeRouter) -> None:
    with pytest.raises(ValueError):
        conn.commands.stream([])
    with pytest.raises(ValueError):
        conn.commands.stream(["ls"], env={"A=B": "x"})
    assert router.runtime.spawns == []


def test_files(conn: SandboxConnection, router: FakeRouter, tmp_path: Path) -> None:
    conn.files.write("d/a.txt", "text")
    conn.files.write("d/b.bin", io.BytesIO(os.urandom(10) + b"end"))
    big = os.urandom(3 * 1024 * 1024)
    src = tmp_path / "big"
    src.write_bytes(big)
    with src.open("rb") as f:
        conn.files.write("big", f)
    assert conn.files.read("d/a.txt") == b"text"
    sink = io.BytesIO()
    assert conn.files.read_to("big", sink) == len(big) and sink.getvalue() == big
    assert sorted((e.name, e.type) for e in conn.files.list()) == [("big", "file"), ("d", "directory")]
    assert {e.name: e.size for e in conn.files.list("d")}["a.txt"] == 4
    assert conn.files.exists("/app/d/b.bin") and not conn.files.exists("d/c")


def test_file_errors_are_typed(conn: SandboxConnection, router: FakeRouter) -> None:
    with pytest.raises(AccessDenied, match="Access denied"):
        conn.files.read("../../etc/passwd")
    with pytest.raises(AccessDenied):
        conn.files.write("/etc/cron.d/x", b"x")
    with pytest.raises(NotFound) as e:
        conn.files.read("missing")
    assert type(e.value) is NotFound and e.value.status == 404
    (router.workdir / "dir").mkdir()
    with pytest.raises(Conflict):
        conn.files.write("dir", b"x")
    with pytest.raises(BadRequest):
        conn.files.read("a\0b")


def test_sandbox_errors_are_typed(router: FakeRouter) -> None:
    with SandboxConnection(router.url, router.token, "default", "ghost") as ghost:
        with pytest.raises(SandboxNotFound, match="default/ghost"):
            ghost.commands.run("true")
        router.resolver.set_not_ready("default", "ghost", "pulling its image")
        with pytest.raises(SandboxNotReady, match="pulling its image"):
            ghost.files.list()
        with pytest.raises(SandboxNotReady):
            ghost.commands.stream(["true"])
    with (
        SandboxConnection(router.url, "wrong", router.namespace, router.name) as bad,
        pytest.raises(Unauthorized),
    ):
        bad.health()


def test_the_retired_capability_url_is_refused_with_what_to_do(router: FakeRouter) -> None:
    with SandboxConnection(f"{router.url}/t/{router.token}", "", router.namespace, router.name) as c:
        with pytest.raises(Unauthorized, match="Authorization: Bearer") as e:
            c.health()
        assert router.token not in repr(c) and router.token not in c.url and router.token not in str(e.value)


@pytest.mark.parametrize("token", ["wrong", "right"])
def test_no_exception_of_a_failing_call_shows_the_token(router: FakeRouter, token: str) -> None:
    secret = router.token if token == "right" else "wrong-but-still-secret"
    with SandboxConnection(router.url, secret, router.namespace, "ghost") as c:
        with pytest.raises(SdkError) as e:
            c.commands.run("true")
        texts = [str(e.value), repr(e.value), str(e.value.__cause__), repr(c)]
        assert not any(secret in t for t in texts), texts
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with SandboxConnection(f"http://127.0.0.1:{port}", secret, "default", "x", timeout=2) as c:
        with pytest.raises(TransportError) as e:
            c.commands.run("true")
        assert secret not in str(e.value) and secret not in repr(e.value)


def test_no_router_is_a_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    with SandboxConnection(f"http://127.0.0.1:{port}", "t", "default", "x", timeout=2) as c:
        with pytest.raises(TransportError, match="cannot talk to the sandbox router") as e:
            c.commands.run("true")
        assert isinstance(e.value, SdkError)


def test_repr_hides_the_token(conn: SandboxConnection) -> None:
    assert "sdk-token" not in repr(conn)


def test_exit_frame_is_not_yielded(conn: SandboxConnection, router: FakeRouter) -> None:
    router.runtime.script("true", Script())
    frames = list(conn.commands.stream(["true"]))
    assert frames == [] and not any(isinstance(f, ExitFrame) for f in frames)


def test_sdk_never_imports_the_server_side() -> None:
    code = (
        "import sys, turbok.sdk, turbok.sdk.client; "
        "bad = [m for m in sys.modules if m.split('.')[:2] in "
        "(['turbok','sandboxd'], ['turbok','runtime'], ['turbok','store'], ['turbok','apiserver'], "
        "['turbok','controllers'])]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stream_yields_output_as_it_comes(conn: SandboxConnection, router: FakeRouter) -> None:
    import time

    router.runtime.script("slow", Script(stdout=b"first\n", duration=None))
    started = time.monotonic()
    with conn.commands.stream(["slow"], timeout=3) as run:
        first = next(iter(run))
        assert first.data == b"first\n" and time.monotonic() - started < 1.5


def test_no_client_timeout_at_all(router: FakeRouter) -> None:
    router.runtime.script("true", Script())
    with SandboxConnection(router.url, router.token, router.namespace, router.name, timeout=None) as c:
        assert c.commands.run("true").exit_code == 0
        assert c.files.list() == []
