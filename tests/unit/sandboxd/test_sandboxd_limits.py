"""The router's per-sandbox bounds on a fake runtime: command slots, output budget, uploaded bytes,
argument sizes, runtime failures mapped to clear answers, and the settings from the environment."""

from __future__ import annotations

import asyncio
import errno
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from turbok.sandboxd import RouterConfig
from turbok.sandboxd.testing import Script
from turbok.sdk.wire import FrameDecoder, OutputFrame

if TYPE_CHECKING:
    from conftest import Env

SLOTS = {"exec_concurrency": 2, "exec_queue": 1, "exec_queue_wait": 30}


async def _wait_for(predicate: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _running(env: Env) -> int:
    return sum(1 for p in env.runtime.processes if not p.killed and p._code is None)


@pytest.mark.parametrize("env", [SLOTS], indirect=True)
async def test_commands_past_the_slots_wait_and_past_the_queue_get_429(env: Env) -> None:
    env.runtime.script("hang", Script(duration=0.5))
    env.runtime.script("true", Script())
    calls = [asyncio.ensure_future(env.http.post("/execute", json={"command": "hang"})) for _ in range(5)]
    await _wait_for(lambda: len(env.runtime.spawns) == 2)
    await asyncio.sleep(0.2)
    assert len(env.runtime.spawns) == 2  # the cap: two run, the third waits
    answers = await asyncio.gather(*calls)
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 200, 429, 429]
    refused = [r for r in answers if r.status_code == 429]
    assert all(r.json()["reason"] == "TooManyRequests" and r.headers["Retry-After"] == "1" for r in refused)
    assert "already runs 2 commands" in refused[0].json()["message"]
    assert len(env.runtime.spawns) == 3  # the queued one ran once a slot was free
    metrics = (await env.http.get("/metrics")).text
    assert 'turbok_router_execs_rejected_total{reason="queue_full"} 2.0' in metrics
    assert "turbok_router_execs_queued 0.0" in metrics


@pytest.mark.parametrize("env", [{**SLOTS, "exec_queue_wait": 0.3}], indirect=True)
async def test_a_queued_command_waits_at_most_the_queue_wait(env: Env) -> None:
    env.runtime.script("hang", Script(duration=None))
    running = [
        asyncio.ensure_future(env.http.post("/execute", json={"command": "hang", "timeout_seconds": 1}))
        for _ in range(2)
    ]
    await _wait_for(lambda: len(env.runtime.spawns) == 2)
    started = time.monotonic()
    r = await env.http.post("/turbok/v1/exec", json={"argv": ["hang"]})
    assert r.status_code == 429 and "within 0.3 seconds" in r.json()["message"]
    assert 0.25 < time.monotonic() - started < 2
    assert len(env.runtime.spawns) == 2
    await asyncio.gather(*running)


@pytest.mark.parametrize("env", [SLOTS], indirect=True)
async def test_slots_are_per_sandbox(env: Env) -> None:
    env.runtime.add("tk0000000000000000000002")
    env.resolver.set("default", "other", "tk0000000000000000000002")
    env.runtime.script("hang", Script(duration=None))
    env.runtime.script("true", Script())
    busy = [
        asyncio.ensure_future(env.http.post("/execute", json={"command": "hang", "timeout_seconds": 1}))
        for _ in range(2)
    ]
    await _wait_for(lambda: len(env.runtime.spawns) == 2)
    started = time.monotonic()
    r = await env.http.post("/execute", json={"command": "true"}, headers={"X-Sandbox-ID": "other"})
    assert r.status_code == 200 and time.monotonic() - started < 1
    await asyncio.gather(*busy)


@pytest.mark.parametrize("env", [{"output_rate": 1024 * 1024}], indirect=True)
async def test_the_exec_stream_reads_a_flood_no_faster_than_the_output_rate(env: Env) -> None:
    env.runtime.script("yes", Script(flood=-1))
    got = 0
    decoder = FrameDecoder()
    started = time.monotonic()
    async with env.http.stream("POST", "/turbok/v1/exec", json={"argv": ["yes"], "timeout_seconds": 60}) as r:
        async for chunk in r.aiter_raw():
            got += sum(len(f.data) for f in decoder.feed(chunk) if isinstance(f, OutputFrame))
            if time.monotonic() - started > 1.5:
                break
    elapsed = time.monotonic() - started
    # One second's worth may come at once, then 1 MiB/s.
    assert got <= 1024 * 1024 * (1 + elapsed) + 128 * 1024, f"{got / 2**20:.1f} MiB in {elapsed:.1f} s"
    assert got >= 1024 * 1024
    await _wait_for(lambda: env.runtime.processes[0].killed)


@pytest.mark.parametrize("env", [{"upload_total_limit": 1000}], indirect=True)
async def test_uploads_past_the_total_are_413_and_earlier_files_stay(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("turbok.sandboxd.limits.RECHECK_INTERVAL", 0.0)

    async def put(path: str, size: int) -> httpx.Response:
        return await env.http.post("/upload", files={"file": (path, b"x" * size)})

    assert (await put("a.bin", 600)).status_code == 200
    assert (await put("a.bin", 700)).status_code == 200  # a new version replaces the old charge
    r = await put("b.bin", 400)
    assert r.status_code == 413 and r.json()["reason"] == "PayloadTooLarge"
    assert "at most 1000 bytes of uploaded files" in r.json()["message"] and "700" in r.json()["message"]
    assert (env.workdir / "a.bin").read_bytes() == b"x" * 700
    assert not (env.workdir / "b.bin").exists()
    assert not [p for p in env.workdir.iterdir() if p.name.startswith(".tk-upload-")]
    assert (await put("b.bin", 300)).status_code == 200
    # The sandbox deletes a file: once the ledger looks at the disk, it no longer counts.
    (env.workdir / "a.bin").unlink()
    assert (await put("c.bin", 650)).status_code == 200
    metrics = (await env.http.get("/metrics")).text
    assert "turbok_router_uploads_refused_total 1.0" in metrics


async def test_a_full_disk_is_507_and_leaves_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("turbok.sandboxd.files._write_all", full)
    r = await env.http.post("/upload", files={"file": ("f.bin", b"x" * 10)})
    assert r.status_code == 507 and r.json()["reason"] == "InsufficientStorage"
    assert "No space" not in r.json()["message"] and list(env.workdir.iterdir()) == []


@pytest.mark.parametrize("size", [2 * 1024 * 1024, 128 * 1024])
async def test_a_command_too_long_for_the_kernel_is_413_and_runs_nothing(env: Env, size: int) -> None:
    r = await env.http.post("/execute", json={"command": "x" * size})
    assert r.status_code == 413 and r.json()["reason"] == "PayloadTooLarge"
    assert "upload a longer script" in r.json()["message"]
    r = await env.http.post("/turbok/v1/exec", json={"argv": ["echo", "y" * size]})
    assert r.status_code == 413
    r = await env.http.post("/turbok/v1/exec", json={"argv": ["echo"] + ["z" * 100_000] * 12})
    assert r.status_code == 413 and "fit" in r.json()["message"]
    assert env.runtime.spawns == []


async def test_a_command_just_under_the_kernel_limit_runs(env: Env) -> None:
    command = "x" * (128 * 1024 - 1)
    env.runtime.script(command, Script(stdout=b"ok"))
    r = await env.http.post("/execute", json={"command": command})
    assert r.status_code == 200 and r.json()["stdout"] == "ok"


async def test_a_lone_surrogate_is_400(env: Env) -> None:
    r = await env.http.post(
        "/execute", content=b'{"command": "echo \\ud800"}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "lone surrogate" in r.json()["message"]


_URPC = b'waiting on pid 3: waiting on PID 3 in sandbox "%s": urpc method "containerManager.WaitPID" failed: EOF\n'


async def test_a_sandbox_restarting_under_a_command_is_503_without_runtime_text(env: Env) -> None:
    env.runtime.script("work", Script(stdout=b"hi\n", stderr=_URPC % env.sandbox_id.encode(), exit_code=128,
                                      duration=0.3))
    call = asyncio.ensure_future(env.http.post("/execute", json={"command": "work"}))
    await _wait_for(lambda: env.runtime.spawns)
    await env.runtime.stop(env.sandbox_id)
    r = await call
    assert r.status_code == 503 and r.json()["reason"] == "SandboxRestarting"
    assert r.headers["Retry-After"] == "1"
    assert "urpc" not in r.text and env.sandbox_id not in r.text and "restarted" in r.json()["message"]


async def test_a_runtime_failure_while_running_is_503_exec_failed(env: Env) -> None:
    line = b'executing processes for container: cannot execute in container "%s": EAGAIN\n'
    env.runtime.script("work", Script(stderr=line % env.sandbox_id.encode(), exit_code=128))
    r = await env.http.post("/execute", json={"command": "work"})
    assert r.status_code == 503 and r.json()["reason"] == "ExecFailed" and "EAGAIN" not in r.text
    frames: list[Any] = []
    decoder = FrameDecoder()
    async with env.http.stream("POST", "/turbok/v1/exec", json={"argv": ["work"]}) as resp:
        async for chunk in resp.aiter_raw():
            frames += decoder.feed(chunk)
    assert "container" not in repr(frames) and "runtime could not run" in frames[-1].message


async def test_a_command_that_exits_128_by_itself_keeps_its_answer(env: Env) -> None:
    env.runtime.script("exit 128", Script(stderr=b"my own failure\n", exit_code=128))
    r = await env.http.post("/execute", json={"command": "exit 128"})
    assert r.status_code == 200 and r.json()["exit_code"] == 128 and r.json()["stderr"] == "my own failure\n"


async def test_an_unexpected_error_is_500_without_its_text(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("/var/lib/secret/path exploded")

    monkeypatch.setattr(env.runtime, "spawn", broken)
    r = await env.http.post("/execute", json={"command": "true"})
    assert r.status_code == 500 and r.json()["reason"] == "InternalError" and "/var/lib" not in r.text


def test_settings_come_from_the_environment_unless_given() -> None:
    env = {"TURBOK_ROUTER_EXEC_CONCURRENCY": "3", "TURBOK_ROUTER_UPLOAD_TOTAL_LIMIT": "2Gi",
           "TURBOK_ROUTER_EXEC_QUEUE_WAIT": "2.5", "TURBOK_ROUTER_OUTPUT_RATE": ""}
    config = RouterConfig.from_env(env, exec_concurrency=5)
    assert config.exec_concurrency == 5  # given beats the environment
    assert config.upload_total_limit == 2 * 2**30 and config.exec_queue_wait == 2.5
    assert config.output_rate == RouterConfig().output_rate
    with pytest.raises(ValueError, match="TURBOK_ROUTER_EXEC_QUEUE="):
        RouterConfig.from_env({"TURBOK_ROUTER_EXEC_QUEUE": "lots"})
    with pytest.raises(ValueError, match="exec_concurrency must be positive"):
        RouterConfig.from_env({"TURBOK_ROUTER_EXEC_CONCURRENCY": "0"})
    assert RouterConfig.from_env({"TURBOK_ROUTER_EXEC_QUEUE": "0"}).exec_queue == 0
