"""Hostile programs against the router's bounds, on real gVisor sandboxes.

A burst of 100 commands at one sandbox, a ``yes`` flood through ``/execute`` and
through the exec stream, uploads past the per-sandbox total, a 2 MiB command, and
commands caught by a sandbox restart. Each is bounded so it never disturbs the
machine: small caps, short sleeps, floods that the router stops within seconds.

The router here is a second one over the conftest's runtime and token, with small
limits and a neighbour sandbox beside the conftest's. Commands reach the sandboxes
through their sandboxd agent (``turbok.sandboxd.agent``) where the pods have an
address, else through ``runsc exec``: the bounds hold either way.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.sandboxd.boxes import Boxes
from turbok.runtime.cri import PodSandboxConfig
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.sandboxd import StaticResolver, create_router_app
from turbok.sandboxd.testing import serve_in_thread
from turbok.sdk import OutputFrame, SandboxConnection
from turbok.sdk.wire import FrameDecoder, auth_headers

pytestmark = pytest.mark.integration

CAP, QUEUE = 4, 8
OUTPUT_LIMIT = 1024 * 1024
UPLOAD_TOTAL = 8 * 1024 * 1024
OUTPUT_RATE = 8 * 1024 * 1024
# What a command's error may never show: the runtime's internals.
INTERNALS = ("urpc", "containerManager", "runsc", "WaitPID", "waiting on pid")


@dataclass
class Bounded:
    url: str
    token: str
    runtime: GvisorPodRuntime
    boxes: Boxes
    resolver: StaticResolver
    box: str  # the conftest's sandbox, by name
    box_id: str
    neighbour_id: str

    def connect(self, name: str) -> SandboxConnection:
        return SandboxConnection(self.url, self.token, "default", name, timeout=60)

    def http(self, name: str, **kwargs: object) -> httpx.AsyncClient:
        headers = {**auth_headers(self.token), "X-Sandbox-ID": name}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bounded(live) -> Iterator[Bounded]:  # type: ignore[no-untyped-def]
    runtime: GvisorPodRuntime = live.runtime
    neighbour = live.boxes.start("neighbour")
    resolver = StaticResolver({("default", live.name): live.sandbox_id, ("default", "neighbour"): neighbour})

    def make():  # type: ignore[no-untyped-def]
        return create_router_app(
            runtime=runtime,
            resolver=resolver,
            token=live.token,
            output_limit=OUTPUT_LIMIT,
            exec_concurrency=CAP,
            exec_queue=QUEUE,
            upload_total_limit=UPLOAD_TOTAL,
            output_rate=OUTPUT_RATE,
        )

    try:
        with serve_in_thread(make) as url:
            yield Bounded(url, live.token, runtime, live.boxes, resolver, live.name, live.sandbox_id, neighbour)
    finally:
        asyncio.run(runtime.remove_pod_sandbox(neighbour))


def _exec_clients(sid: str) -> list[int]:
    """Host pids of the ``runsc exec`` clients running commands in sandbox ``sid`` (none through its agent)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"exec" in cmdline and any(a.startswith(b"--internal-pid-file") for a in cmdline) and any(
                sid[:10].encode() in a for a in cmdline):
            pids.append(int(entry))
    return pids


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Sampler(threading.Thread):
    """Counts a sandbox's exec clients and their RSS every 20 ms until stopped."""

    def __init__(self, sid: str) -> None:
        super().__init__(daemon=True)
        self.sid = sid
        self.most = 0
        self.most_rss = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _exec_clients(self.sid)
            self.most = max(self.most, len(pids))
            self.most_rss = max(self.most_rss, sum(_rss(p) for p in pids))
            time.sleep(0.02)


def test_a_burst_of_100_commands_runs_at_most_the_cap_and_spares_the_neighbour(bounded: Bounded) -> None:
    sampler = _Sampler(bounded.box_id)
    sampler.start()

    async def burst() -> tuple[list[httpx.Response], float]:
        limits = httpx.Limits(max_connections=110)
        async with bounded.http(bounded.box, limits=limits) as box, bounded.http("neighbour") as nbr:
            calls = [box.post("/execute", json={"command": "date +%s.%N; sleep 1; echo done"}) for _ in range(100)]
            pending = asyncio.gather(*calls)
            await asyncio.sleep(0.5)
            started = time.monotonic()
            r = await nbr.post("/execute", json={"command": "echo neighbour"})
            neighbour_took = time.monotonic() - started
            assert r.status_code == 200 and r.json()["stdout"] == "neighbour\n"
            return await pending, neighbour_took

    try:
        answers, neighbour_took = asyncio.run(burst())
    finally:
        sampler.done.set()
        sampler.join()
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 429}, codes
    ran = [r for r in answers if r.status_code == 200]
    assert all(r.json()["stdout"].endswith("\ndone\n") for r in ran)
    # At no moment did more than the cap run in the sandbox (each command ran 1 s from its start).
    starts = sorted(float(r.json()["stdout"].split()[0]) for r in ran)
    most = max(sum(1 for s in starts if s <= t < s + 1.0) for t in starts)
    assert most <= CAP, f"{most} commands ran at once"
    assert CAP + QUEUE <= len(ran) < 100 and codes.count(429) >= 100 - CAP - QUEUE - CAP
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["reason"] == "TooManyRequests" and refused.headers["Retry-After"]
    assert sampler.most <= CAP, f"{sampler.most} runsc exec clients at once"
    # Each runsc exec client is about 17 MiB; 100 of them were 1.7 GB.
    assert sampler.most_rss < CAP * 64 * 2**20, f"{sampler.most_rss / 2**20:.0f} MiB in exec clients"
    assert neighbour_took < 5


def test_a_yes_flood_is_stopped_promptly_at_little_cost(bounded: Bounded) -> None:
    with bounded.connect(bounded.box) as conn:
        started = time.monotonic()
        result = conn.commands.run("yes", timeout=20)
        wall = time.monotonic() - started
        assert result.truncated and len(result.stdout) == OUTPUT_LIMIT and result.stdout.startswith("y\ny\n")
        assert result.exit_code == 137 and not result.timed_out and "command stopped" in result.stderr
        # Stopped after its grace, not at its 20 s timeout (what it costs is bench/flood.py's).
        assert wall < 5, f"the flood took {wall:.1f} s to answer"
        assert "yes" not in conn.commands.run("ps -eo comm").stdout.split()


def test_an_exec_stream_flood_is_read_at_the_output_rate(bounded: Bounded) -> None:
    async def flood() -> tuple[int, float]:
        got, decoder = 0, FrameDecoder()
        async with bounded.http(bounded.box) as http:
            started = time.monotonic()
            body = {"argv": ["yes"], "timeout_seconds": 60}
            async with http.stream("POST", "/turbok/v1/exec", json=body) as r:
                assert r.status_code == 200
                async for chunk in r.aiter_raw():
                    got += sum(len(f.data) for f in decoder.feed(chunk) if isinstance(f, OutputFrame))
                    if time.monotonic() - started > 3:
                        break
            return got, time.monotonic() - started

    got, wall = asyncio.run(flood())
    # Paced at the output rate; what relaying it costs the router is measured by bench/flood.py.
    assert OUTPUT_RATE <= got <= OUTPUT_RATE * (wall + 1) + 2**20, f"{got / 2**20:.0f} MiB in {wall:.1f} s"
    with bounded.connect(bounded.box) as conn:
        deadline = time.monotonic() + 10
        while "yes" in conn.commands.run("ps -eo comm").stdout.split():
            assert time.monotonic() < deadline, "the streamed flood outlived its client"
            time.sleep(0.2)


def test_uploads_past_the_sandbox_total_are_413_and_earlier_files_stay(
    bounded: Bounded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("turbok.sandboxd.limits.RECHECK_INTERVAL", 0.0)
    first, second = os.urandom(5 * 2**20), os.urandom(2 * 2**20)
    with bounded.connect("neighbour") as conn:
        conn.files.write("up/a.bin", first)
        conn.files.write("up/b.bin", second)
        conn.files.write("up/a.bin", first)  # again: replaces, does not add
        with pytest.raises(Exception) as refused:
            conn.files.write("up/c.bin", os.urandom(2 * 2**20))
        assert getattr(refused.value, "status", None) == 413, refused.value
        assert "may hold at most 8388608 bytes of uploaded files" in str(refused.value)
        sums = conn.commands.run("md5sum /app/up/a.bin /app/up/b.bin; ls /app/up").stdout
        assert hashlib.md5(first).hexdigest() in sums and hashlib.md5(second).hexdigest() in sums
        assert "c.bin" not in sums
        # The sandbox removes a file it no longer needs: the room comes back.
        conn.commands.run("rm /app/up/b.bin")
        conn.files.write("up/c.bin", os.urandom(2 * 2**20))


def test_a_2_mib_command_is_413_and_a_long_one_runs(bounded: Bounded) -> None:
    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with bounded.http(bounded.box) as http:
            big = await http.post("/execute", json={"command": "echo " + "x" * (2 * 2**20)})
            long = await http.post("/execute", json={"command": "echo " + "y" * 100_000 + " | wc -c"})
            return big, long

    big, long = asyncio.run(run())
    assert big.status_code == 413 and big.json()["reason"] == "PayloadTooLarge"
    assert "E2BIG" not in big.text and "Errno" not in big.text
    assert long.status_code == 200 and long.json()["stdout"].strip() == "100001"


def test_commands_caught_by_a_restart_get_503_with_a_reason(bounded: Bounded) -> None:
    # A sandbox of its own (the others stay up), restarted under running and arriving commands.
    config = bounded.boxes.config("restarting")
    sid = config.id
    other = bounded.boxes.twin()  # this thread's own loop
    asyncio.run(bounded.boxes.boot(config, runtime=other))
    bounded.resolver.set("default", "restarting", sid)

    async def scenario() -> tuple[list[httpx.Response], list[object]]:
        async with bounded.http("restarting") as http:
            sleepers = [http.post("/execute", json={"command": "echo up; sleep 4"}) for _ in range(3)]
            running = asyncio.gather(*sleepers)
            frames: list[object] = []

            async def stream() -> None:
                decoder = FrameDecoder()
                body = {"argv": ["/bin/sh", "-c", "echo up; sleep 4"]}
                async with http.stream("POST", "/turbok/v1/exec", json=body) as r:
                    async for chunk in r.aiter_raw():
                        frames.extend(decoder.feed(chunk))

            streaming = asyncio.ensure_future(stream())
            # Restart only once all four commands run (a loaded machine may take seconds to start them): asked
            # through runsc exec, which takes none of the router's command slots.
            deadline = time.monotonic() + 30
            while await _count(other, sid, "sleep 4") < 4:
                assert time.monotonic() < deadline, "the commands did not start"
                await asyncio.sleep(0.2)
            restart = asyncio.ensure_future(_restart(bounded.boxes, other, config))
            arriving = []
            while not restart.done():
                arriving.append(await http.post("/execute", json={"command": "echo hi"}))
                await asyncio.sleep(0.1)
            await restart
            answers = [*await running, *arriving]
            await streaming
            return answers, frames

    try:
        answers, frames = asyncio.run(scenario())
    finally:
        bounded.resolver.remove("default", "restarting")
        asyncio.run(other.remove_pod_sandbox(sid))
    caught = answers[:3]
    assert all(r.status_code == 503 and r.json()["reason"] == "SandboxRestarting" for r in caught), [
        (r.status_code, r.text) for r in caught
    ]
    for r in answers:
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:
            # Arriving while it stops or boots: not running, or the exec could not start.
            assert r.headers["Retry-After"] and r.json()["reason"] in (
                "SandboxRestarting", "SandboxNotRunning", "ExecFailed"
            )
        assert not any(word in r.text for word in INTERNALS), r.text
        assert sid not in r.text
    final = frames[-1]
    assert type(final).__name__ == "ErrorFrame" and "restarted" in final.message  # type: ignore[attr-defined]
    assert not any(word in repr(frames) for word in INTERNALS), frames


async def _count(runtime: GvisorPodRuntime, sid: str, command: str) -> int:
    """How many processes in the sandbox run ``command`` (words separated by single spaces), from /proc."""
    script = (f"for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done "
              f"| grep -c -x '{command} ' || true")
    stream = await runtime.exec(sid, "main", ["sh", "-c", script])
    out = await stream.process.stdout.read()
    await stream.process.wait()
    await stream.close()
    return int(out.strip() or 0)


async def _restart(boxes: Boxes, runtime: GvisorPodRuntime, config: PodSandboxConfig) -> None:
    await runtime.stop_pod_sandbox(config.id)
    await boxes.boot(config, runtime=runtime)
