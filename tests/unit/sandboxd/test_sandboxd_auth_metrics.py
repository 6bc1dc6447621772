"""Auth (bearer header or /t/<token>/ prefix), metrics, and logs that never carry the token."""

from __future__ import annotations

import logging
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


async def test_the_token_works_as_header_or_path_prefix(env: Env) -> None:
    env.runtime.script("true", Script())
    async with httpx.AsyncClient(base_url=env.url, headers={"X-Sandbox-ID": env.name}) as anon:
        r1 = await anon.post(
            "/execute", json={"command": "true"}, headers={"Authorization": f"bearer {env.token}"}
        )
        r2 = await anon.post(f"/t/{env.token}/execute", json={"command": "true"})
        r3 = await anon.get(f"/t/{env.token}")
        r4 = await anon.get(f"/t/{env.token}/healthz")
    assert r1.json()["exit_code"] == 0 and r2.json()["exit_code"] == 0
    assert r3.json()["status"] == "ok" and r4.json() == {"status": "ok"}


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
        base_url=f"{env.url}/t/{env.token}", headers={"X-Sandbox-ID": env.name}
    ) as c:
        await c.get("/download/..%2F..%2Fetc%2Fpasswd")
        await c.get("/exists/x")
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
