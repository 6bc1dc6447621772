"""POST /execute: shape, shell and cwd, timeouts, output floods, bad bodies, sandbox resolution."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from typing import TYPE_CHECKING

import pytest

from turbok.sandboxd.testing import Script

if TYPE_CHECKING:
    from conftest import Env


async def test_execute_runs_the_command_through_sh_in_app(env: Env) -> None:
    env.runtime.script(
        "echo hi; echo oops >&2; exit 3", Script(stdout=b"hi\n", stderr=b"oops\n", exit_code=3)
    )
    r = await env.http.post("/execute", json={"command": "echo hi; echo oops >&2; exit 3"})
    assert r.status_code == 200
    assert r.json() == {
        "stdout": "hi\n",
        "stderr": "oops\n",
        "exit_code": 3,
        "timed_out": False,
        "truncated": False,
    }
    [spawn] = env.runtime.spawns
    assert spawn.id == env.sandbox_id
    assert spawn.argv == ("/bin/sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert spawn.cwd == "/app"


async def test_an_image_without_a_work_directory_runs_commands_in_its_own(env: Env, monkeypatch: pytest.MonkeyPatch
                                                                           ) -> None:
    # A container without the host-served /app (an OCI image that sets no SANDBOX_BASE_DIR): no cwd is forced
    # on it, so the runtime uses the image's working directory instead of failing on a missing /app.
    monkeypatch.setattr(env.runtime, "workdir", lambda id, name="main": None)
    env.runtime.script("pwd", Script(stdout=b"/\n"))
    r = await env.http.post("/execute", json={"command": "pwd"})
    assert r.status_code == 200 and r.json()["exit_code"] == 0
    [spawn] = env.runtime.spawns
    assert spawn.cwd is None


async def test_output_is_decoded_with_replacement(env: Env) -> None:
    env.runtime.script("bin", Script(stdout=b"ok \xff\xfe end"))
    r = await env.http.post("/execute", json={"command": "bin"})
    assert r.json()["stdout"] == "ok \ufffd\ufffd end"


async def test_timeout_kills_and_answers_124(env: Env) -> None:
    env.runtime.script("sleep 100", Script(stdout=b"before\n", duration=None))
    started = time.monotonic()
    r = await env.http.post("/execute", json={"command": "sleep 100", "timeout_seconds": 0.3})
    elapsed = time.monotonic() - started
    body = r.json()
    assert r.status_code == 200
    assert body["exit_code"] == 124 and body["timed_out"] is True
    assert body["stdout"] == "before\n"
    assert "timed out after 0.3 seconds" in body["stderr"]
    assert env.runtime.processes[0].killed
    assert 0.3 <= elapsed < 5


@pytest.mark.parametrize("env", [{"exec_timeout": 0.2, "max_exec_timeout": 10}], indirect=True)
async def test_default_timeout_applies_when_none_is_asked(env: Env) -> None:
    env.runtime.script("hang", Script(duration=None))
    r = await env.http.post("/execute", json={"command": "hang"})
    assert r.json()["timed_out"] is True and r.json()["exit_code"] == 124
    r = await env.http.post("/execute", json={"command": "hang", "timeout_seconds": 11})
    assert r.status_code == 400 and "maximum of 10" in r.json()["message"]


@pytest.mark.parametrize("env", [{"output_limit": 1024 * 1024}], indirect=True)
async def test_a_100_mib_flood_is_stopped_at_the_cap_promptly_in_bounded_memory(env: Env) -> None:
    env.runtime.script("yes", Script(flood=100 * 1024 * 1024, exit_code=0))
    tracemalloc.start()
    try:
        started = time.monotonic()
        r = await env.http.post("/execute", json={"command": "yes"})
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    body = r.json()
    assert r.status_code == 200
    assert len(body["stdout"]) == 1024 * 1024
    assert body["truncated"] is True and body["exit_code"] == 137 and body["timed_out"] is False
    assert "command stopped" in body["stderr"] and str(1024 * 1024) in body["stderr"]
    proc = env.runtime.processes[0]
    assert proc.killed
    # Nothing past the cap was read while the command ran (only what the kill left in the pipe).
    assert proc.produced[0] < 2 * 1024 * 1024, f"{proc.produced[0] / 2**20:.1f} MiB read for a 1 MiB cap"
    assert peak < 24 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while capping 100 MiB to 1 MiB"
    assert elapsed < 5


@pytest.mark.parametrize("env", [{"output_limit": 1024 * 1024}], indirect=True)
async def test_a_command_a_little_past_the_cap_ends_by_itself(env: Env) -> None:
    env.runtime.script("chatty", Script(flood=1024 * 1024 + 10, exit_code=3))
    body = (await env.http.post("/execute", json={"command": "chatty"})).json()
    assert body["truncated"] is True and body["exit_code"] == 3 and "output truncated" in body["stderr"]
    assert not env.runtime.processes[0].killed


async def test_an_endless_silent_command_ends_at_its_timeout(env: Env) -> None:
    env.runtime.script("hang forever", Script(duration=None))
    r = await env.http.post("/execute", json={"command": "hang forever", "timeout_seconds": 0.5})
    body = r.json()
    assert body["timed_out"] is True and body["truncated"] is False and body["exit_code"] == 124


async def test_router_answers_others_while_a_command_floods(env: Env) -> None:
    env.runtime.script("yes forever", Script(flood=-1))
    env.runtime.script("true", Script())
    flood = asyncio.ensure_future(
        env.http.post("/execute", json={"command": "yes forever", "timeout_seconds": 30})
    )
    await asyncio.sleep(0.2)
    started = time.monotonic()
    r = await env.http.post("/execute", json={"command": "true"})
    assert r.json()["exit_code"] == 0 and time.monotonic() - started < 1.0
    answer = (await flood).json()
    assert answer["truncated"] is True and answer["exit_code"] == 137 and answer["timed_out"] is False


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", '"command"'),
        (b'{"cmd": "true"}', '"command"'),
        (b'{"command": 5}', '"command"'),
        (b'{"command": "true", "timeout_seconds": -1}', "positive"),
        (b'{"command": "true", "timeout_seconds": "5"}', "number"),
        (b'{"command": "true", "timeout_seconds": true}', "number"),
        (b'{"command": "a\\u0000b"}', "NUL"),
    ],
)
async def test_bad_bodies_are_400_and_run_nothing(env: Env, body: bytes, needle: str) -> None:
    r = await env.http.post("/execute", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["message"] and r.json()["reason"] == "BadRequest"
    assert env.runtime.spawns == []


async def test_unknown_sandbox_is_404(env: Env) -> None:
    r = await env.http.post("/execute", json={"command": "true"}, headers={"X-Sandbox-ID": "other"})
    assert r.status_code == 404
    assert r.json() == {"message": "sandbox default/other not found", "reason": "SandboxNotFound"}
    r = await env.http.post(
        "/execute", json={"command": "true"}, headers={"X-Sandbox-Namespace": "team-a"}
    )  # the right name in another namespace
    assert r.status_code == 404 and "team-a/box" in r.json()["message"]
    assert env.runtime.spawns == []


async def test_not_ready_sandbox_is_503_with_the_reason(env: Env) -> None:
    env.resolver.set_not_ready("default", "box", "waiting for the runtime to start it")
    r = await env.http.post("/execute", json={"command": "true"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["reason"] == "SandboxNotReady"
    assert "waiting for the runtime" in r.json()["message"]


async def test_stopped_runtime_is_503_not_running(env: Env) -> None:
    await env.runtime.stop(env.sandbox_id)
    r = await env.http.post("/execute", json={"command": "true"})
    assert r.status_code == 503 and r.json()["reason"] == "SandboxNotRunning"


async def test_missing_sandbox_header_is_400(env: Env) -> None:
    r = await env.http.post("/execute", json={"command": "true"}, headers={"X-Sandbox-ID": ""})
    assert r.status_code == 400 and "X-Sandbox-ID" in r.json()["message"]


async def test_health_of_a_ready_sandbox(env: Env) -> None:
    r = await env.http.get("/")
    assert r.json() == {"status": "ok", "message": "Sandbox Runtime is active."}
    assert (await env.http.get("/", headers={"X-Sandbox-ID": "nope"})).status_code == 404


async def test_unknown_endpoint_and_wrong_method(env: Env) -> None:
    r = await env.http.get("/nope")
    assert r.status_code == 404 and r.json()["reason"] == "NotFound"
    r = await env.http.get("/execute")
    assert r.status_code == 405 and "POST" in r.json()["message"]
    r = await env.http.post("/execute/extra", json={"command": "true"})
    assert r.status_code == 404
