"""Auth (the router token as a bearer header, never in the URL), metrics, and logs that never carry
the token nor a forged line."""

from __future__ import annotations

import logging
import urllib.parse
from typing import TYPE_CHECKING

import httpx
import pytest

from turbok.sandboxd import StaticResolver, create_router_app
from turbok.sandboxd.testing import FakeRuntime, Script

if TYPE_CHECKING:
    from conftest import Env


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/execute", {}),
        ("/execute", {"Authorization": "Bearer wrong"}),
        ("/execute", {"Authorization": "Basic czNjcmV0"}),
        ("/execute", {"Authorization": "s3cret-token-for-tests"}),  # no scheme
        ("/t/wrong/execute", {}),
        ("/t//execute", {}),
        ("/t/s3cret-token-for-tests-and-more/execute", {}),
        ("/metrics", {}),
        ("/healthz", {}),
        ("/nope", {}),
    ],
)
async def test_requests_without_the_token_get_401(env: Env, path: str, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=env.url, headers={"X-Sandbox-ID": env.name}) as anon:
        r = await anon.post(path, json={"command": "true"}, headers=headers)
    assert r.status_code == 401
    assert r.json()["reason"] == "Unauthorized" and "token" in r.json()["message"]
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert env.runtime.spawns == []


async def test_the_token_works_as_a_bearer_header(env: Env) -> None:
    env.runtime.script("true", Script())
    async with httpx.AsyncClient(base_url=env.url, headers={"X-Sandbox-ID": env.name}) as anon:
        r1 = await anon.post(
            "/execute", json={"command": "true"}, headers={"Authorization": f"bearer {env.token}"}
        )
        r2 = await anon.get("/healthz", headers={"Authorization": f"Bearer {env.token}"})
    assert r1.json()["exit_code"] == 0 and r2.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/t/{token}/execute", "/t/{token}", "/t/{token}/healthz", "/t/{token}/"])
async def test_the_retired_capability_url_is_refused_even_with_the_right_token(env: Env, path: str) -> None:
    async with httpx.AsyncClient(base_url=env.url, headers={"X-Sandbox-ID": env.name}) as anon:
        bare = await anon.post(path.format(token=env.token), json={"command": "true"})
        # Even with the header: the URL itself must stop carrying a token, so it is refused outright.
        both = await anon.post(path.format(token=env.token), json={"command": "true"},
                               headers={"Authorization": f"Bearer {env.token}"})
    for r in (bare, both):
        assert r.status_code == 401 and r.json()["reason"] == "Unauthorized"
        assert "Authorization: Bearer" in r.json()["message"] and "no longer accepted" in r.json()["message"]
        assert env.token not in r.text
    assert env.runtime.spawns == []


async def test_metrics_count_requests_and_execs(env: Env) -> None:
    env.runtime.script("true", Script())
    env.runtime.script("hang", Script(duration=None))
    await env.http.post("/execute", json={"command": "true"})
    await env.http.post("/execute", json={"command": "hang", "timeout_seconds": 0.05})
    await env.http.get("/download/missing")
    await env.http.get("/download/..%2Fx")
    r = await env.http.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    assert 'turbok_router_requests_total{code="200",endpoint="execute"} 2.0' in text
    assert 'turbok_router_requests_total{code="404",endpoint="download"} 1.0' in text
    assert 'turbok_router_requests_total{code="403",endpoint="download"} 1.0' in text
    assert 'turbok_router_exec_duration_seconds_count{endpoint="execute"} 2.0' in text
    assert 'turbok_router_exec_timeouts_total{endpoint="execute"} 1.0' in text
    assert "turbok_router_execs_in_flight 0.0" in text


async def test_logs_name_the_sandbox_and_never_the_token(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="turbok.sandboxd")
    async with httpx.AsyncClient(
        base_url=env.url, headers={"X-Sandbox-ID": env.name, "Authorization": f"Bearer {env.token}"}
    ) as c:
        await c.get("/download/..%2F..%2Fetc%2Fpasswd")
        await c.get("/exists/x")
        await c.get(f"/t/{env.token}/exists/x")
    assert env.token not in caplog.text
    denied = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(denied) == 1 and "default/box" in denied[0].getMessage() and "403" in denied[0].getMessage()
    assert any("GET exists sandbox=default/box -> 200" in r.getMessage() for r in caplog.records)


def test_factory_refuses_an_empty_token_and_bad_limits(tmp_path: object) -> None:
    runtime = FakeRuntime(tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token"):
        create_router_app(runtime=runtime, resolver=StaticResolver(), token="")
    with pytest.raises(ValueError, match="limits"):
        create_router_app(
            runtime=runtime, resolver=StaticResolver(), token="t", exec_timeout=10, max_exec_timeout=5
        )


async def test_a_shared_registry_receives_the_metrics(tmp_path: object) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    create_router_app(runtime=FakeRuntime(tmp_path), resolver=StaticResolver(), token="t", registry=registry)  # type: ignore[arg-type]
    text = generate_latest(registry)
    assert b"# HELP turbok_router_requests_total" in text and b"turbok_router_execs_in_flight 0.0" in text


async def test_a_newline_in_a_path_or_sandbox_name_cannot_forge_a_log_line(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="turbok.sandboxd")
    # An absolute path outside /app is refused (403, a warning that quotes it); filename* may hold any byte.
    forged = urllib.parse.quote("/etc\n2024-01-01 00:00:00 WARNING turbok.sandboxd: forged\x1b[31m", safe="")
    body = (f"--b\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''{forged}\r\n"
            "Content-Type: application/octet-stream\r\n\r\nx\r\n--b--\r\n").encode()
    r = await env.http.post("/upload", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 403
    # aiohttp refuses control characters in headers, but a right-to-left override gets through.
    await env.http.get("/exists/x", headers={"X-Sandbox-ID": "box\u202egone".encode()})
    messages = [r.getMessage() for r in caplog.records]
    assert messages and all("\n" not in m and "\x1b" not in m and "\u202e" not in m for m in messages), messages
    assert any("/etc\\n2024-01-01" in m and "\\x1b[31m" in m for m in messages), messages
    assert any("box\\u202egone" in m for m in messages), messages


async def test_the_unix_socket_needs_no_token_and_the_tcp_port_still_does(env: Env, tmp_path: object) -> None:
    """A port-forward to the router's mirror Pod arrives on the 0600 socket, already authenticated by the API."""
    from pathlib import Path

    from aiohttp import web

    from turbok.sandboxd.router import bind_unix_socket

    env.runtime.script("true", Script())
    app = create_router_app(runtime=env.runtime, resolver=env.resolver, token=env.token)
    runner = web.AppRunner(app)
    await runner.setup()
    path = Path(str(tmp_path)) / "router.sock"
    sock = bind_unix_socket(path)
    await web.SockSite(runner, sock).start()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://router",
                                     headers={"X-Sandbox-ID": env.name}) as local:
            r = await local.post("/execute", json={"command": "true"})
            assert r.status_code == 200, r.text
        async with httpx.AsyncClient(base_url=env.url, headers={"X-Sandbox-ID": env.name}) as anon:
            assert (await anon.post("/execute", json={"command": "true"})).status_code == 401
    finally:
        await runner.cleanup()
