"""The router in front of a real gVisor sandbox: execute, files, exec stream, hostile input.

Uses the unchanged official client and turbok's SDK. Needs runsc and the base image
(built on first use when missing).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_agent_sandbox.exceptions import SandboxRequestError
from k8s_agent_sandbox.models import SandboxDirectConnectionConfig
from k8s_agent_sandbox.sandbox import Sandbox

from turbok.sdk import AccessDenied, OutputFrame, SandboxConnection
from turbok.sdk.wire import auth_headers

pytestmark = pytest.mark.integration

OUTPUT_LIMIT = 1024 * 1024  # as the conftest's router


class _NoKubernetes:
    injected_api_client = None

    def get_sandbox(self, name: str, namespace: str) -> dict[str, object]:
        return {"status": {}}


@pytest.fixture
def official(live) -> Iterator[Sandbox]:  # type: ignore[no-untyped-def]
    sb = Sandbox(
        claim_name="c",
        sandbox_id=live.name,
        namespace=live.namespace,
        connection_config=SandboxDirectConnectionConfig(api_url=live.url, extra_headers=auth_headers(live.token)),
        k8s_helper=_NoKubernetes(),  # type: ignore[arg-type]
    )
    yield sb
    sb.close_connection()


def test_execute_runs_sh_in_app_inside_gvisor(official: Sandbox) -> None:
    assert official.commands is not None
    result = official.commands.run("pwd; echo out; echo err >&2; dmesg | head -1; exit 3")
    lines = result.stdout.splitlines()
    assert lines[0] == "/app" and lines[1] == "out"
    assert "gVisor" in result.stdout  # the kernel answering is gVisor's, not the host's
    assert result.stderr == "err\n" and result.exit_code == 3 and result.timed_out is False


def test_timeout_kills_the_command_tree(conn: SandboxConnection) -> None:
    started = time.monotonic()
    result = conn.commands.run("sleep 1000 & sleep 1001; echo never", timeout=1.5)
    assert result.timed_out and result.exit_code == 124 and "never" not in result.stdout
    assert time.monotonic() - started < 10
    ps = conn.commands.run("ps -eo args").stdout
    assert "sleep 100" not in ps, ps
    assert "sleep infinity" in ps, ps  # the sandbox's own main process was left alone


def test_flood_is_capped_and_the_router_stays_responsive(conn: SandboxConnection) -> None:
    started = time.monotonic()
    result = conn.commands.run("head -c 50000000 /dev/zero; echo done >&2", timeout=60)
    assert result.truncated and len(result.stdout) == OUTPUT_LIMIT
    # Past the cap the router stops reading and then stops the command (see test_sandboxd_bounds.py).
    assert result.exit_code == 137 and "done" not in result.stderr and "command stopped" in result.stderr
    assert time.monotonic() - started < 30
    assert conn.commands.run("echo alive").stdout == "alive\n"


def test_files_cross_the_boundary(official: Sandbox, live, conn: SandboxConnection) -> None:  # type: ignore[no-untyped-def]
    files, commands = official.files, official.commands
    assert files is not None and commands is not None
    files.write("in/data.txt", b"from the host")
    assert commands.run("cat /app/in/data.txt").stdout == "from the host"
    commands.run("mkdir -p /app/out && printf 'from the sandbox' > /app/out/r.txt")
    assert files.read("out/r.txt") == b"from the sandbox"
    assert files.exists("out/r.txt") and not files.exists("out/nope")
    assert {e.name for e in files.list("")} >= {"in", "out"}
    big = os.urandom(5 * 1024 * 1024)
    conn.files.write("big.bin", io.BytesIO(big))
    assert commands.run("md5sum /app/big.bin").stdout.split()[0] == __import__("hashlib").md5(big).hexdigest()
    assert conn.files.read("big.bin") == big


def test_symlinks_made_inside_the_sandbox_do_not_reach_the_host(
    official: Sandbox, conn: SandboxConnection
) -> None:
    commands, files = official.commands, official.files
    assert commands is not None and files is not None
    made = commands.run(
        "ln -sfn /etc /app/etc && ln -sfn /root /app/rootdir && ln -sfn ../../../.. /app/up && echo ok"
    )
    assert made.stdout == "ok\n", made.stderr
    host_passwd = Path("/etc/passwd").read_bytes()
    for path in ("etc/passwd", "rootdir/.bashrc", "up/etc/passwd"):
        with pytest.raises(SandboxRequestError) as e:
            files.read(path)
        assert e.value.status_code == 403, path
    with pytest.raises(AccessDenied):
        conn.files.list("etc")
    with pytest.raises(AccessDenied):
        conn.files.write("etc/turbok-pwned", b"x")
    assert not os.path.exists("/etc/turbok-pwned")
    assert Path("/etc/passwd").read_bytes() == host_passwd


def test_exec_stream(conn: SandboxConnection) -> None:
    frames: list[OutputFrame] = []
    script = "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2; exit 5"
    started = time.monotonic()
    first_at = None
    with conn.commands.stream(["/bin/sh", "-c", script], env={"X": "1"}) as run:
        for frame in run:
            first_at = first_at or time.monotonic() - started
            frames.append(frame)
    out = b"".join(f.data for f in frames if f.stream == "stdout")
    err = b"".join(f.data for f in frames if f.stream == "stderr")
    assert (out, err, run.exit_code) == (b"line1\nline2\nline3\n", b"oops\n", 5)
    assert first_at is not None and first_at < time.monotonic() - started - 0.3  # output came as it was made


def test_exec_stream_stdin_env_cwd_and_timeout(conn: SandboxConnection) -> None:
    run = conn.commands.stream(
        ["/bin/sh", "-c", "cat; echo $GREETING; pwd"], env={"GREETING": "hi"}, cwd="/tmp", stdin=b"piped\n"
    )
    out = b"".join(f.data for f in run if f.stream == "stdout")
    assert out == b"piped\nhi\n/tmp\n" and run.exit_code == 0
    run = conn.commands.stream(["sleep", "100"], timeout=1)
    assert run.wait() == 124 and run.timed_out


def test_leaving_an_exec_stream_kills_its_command(conn: SandboxConnection) -> None:
    with conn.commands.stream(["/bin/sh", "-c", "echo started; sleep 1002"], timeout=600) as run:
        first = next(iter(run))
        assert first.data == b"started\n"
    # The connection is closed: the router notices and kills the command inside the sandbox.
    deadline = time.monotonic() + 10
    while "sleep 1002" in conn.commands.run("ps -eo args").stdout:
        assert time.monotonic() < deadline, "the command outlived its client"
        time.sleep(0.2)
