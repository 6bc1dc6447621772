"""The unchanged official client (k8s-agent-sandbox) against the router, over a fake runtime.

Its ``Sandbox`` is built directly with ``SandboxDirectConnectionConfig(api_url=<router URL>,
extra_headers={"Authorization": "Bearer <router token>"})`` and a stand-in for its Kubernetes helper (the only Kubernetes call it makes on this path is
looking up a pod IP, which a router does not need).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_agent_sandbox.exceptions import SandboxRequestError
from k8s_agent_sandbox.models import ExecutionResult, SandboxDirectConnectionConfig
from k8s_agent_sandbox.sandbox import Sandbox

from turbok.sandboxd.testing import FakeRouter, Script, fake_router

pytestmark = pytest.mark.compat


class _NoKubernetes:
    """What ``Sandbox`` asks of its K8sHelper on the direct path: the Sandbox object (for a pod IP)."""

    injected_api_client = None

    def get_sandbox(self, name: str, namespace: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {}}

    def delete_sandbox_claim(self, name: str, namespace: str) -> None:
        raise AssertionError("not used")


@pytest.fixture
def router(tmp_path: Path) -> Iterator[FakeRouter]:
    with fake_router(tmp_path / "sandboxes", token="tok-123") as r:
        yield r


@pytest.fixture
def sandbox(router: FakeRouter) -> Iterator[Sandbox]:
    sb = Sandbox(
        claim_name="claim",
        sandbox_id=router.name,
        namespace=router.namespace,
        connection_config=SandboxDirectConnectionConfig(api_url=router.url, extra_headers=router.auth_headers),
        k8s_helper=_NoKubernetes(),  # type: ignore[arg-type]
    )
    yield sb
    sb.close_connection()


def test_commands_run(sandbox: Sandbox, router: FakeRouter) -> None:
    router.runtime.script(
        "echo hello && echo warn >&2", Script(stdout=b"hello\n", stderr=b"warn\n", exit_code=0)
    )
    assert sandbox.commands is not None
    result = sandbox.commands.run("echo hello && echo warn >&2")
    assert isinstance(result, ExecutionResult)
    assert (result.stdout, result.stderr, result.exit_code, result.timed_out) == (
        "hello\n",
        "warn\n",
        0,
        False,
    )
    assert router.runtime.spawns[0].argv == ("/bin/sh", "-c", "echo hello && echo warn >&2")


def test_commands_run_with_command_timeout(sandbox: Sandbox, router: FakeRouter) -> None:
    router.runtime.script("sleep 60", Script(duration=None))
    assert sandbox.commands is not None
    result = sandbox.commands.run("sleep 60", command_timeout=0.3)
    assert result.timed_out is True and result.exit_code == 124
    assert "timed out" in result.stderr


def test_files_round_trip(sandbox: Sandbox, router: FakeRouter) -> None:
    files = sandbox.files
    assert files is not None
    files.write("data/in.txt", b"hello")
    files.write("data/stream.bin", io.BytesIO(b"s" * 300_000))  # streamed multipart, no retries
    files.write("data/text.txt", "ünïcode")
    assert (router.workdir / "data" / "in.txt").read_bytes() == b"hello"
    assert files.read("data/in.txt") == b"hello"
    assert files.read("data/text.txt").decode() == "ünïcode"
    sink = io.BytesIO()
    assert files.read_to("data/stream.bin", sink, max_bytes=400_000) == 300_000
    assert sink.getvalue() == b"s" * 300_000

    entries = {e.name: e for e in files.list("data")}
    assert set(entries) == {"in.txt", "stream.bin", "text.txt"}
    assert entries["stream.bin"].size == 300_000 and entries["stream.bin"].type == "file"
    assert [e.type for e in files.list("")] == ["directory"]
    assert files.exists("data/in.txt") is True
    assert files.exists("data/nope") is False


@pytest.mark.parametrize("name", ['we"ird; name.txt', "back\\slash.txt", "spa ce/ünï côdé.txt", "%41.txt"])
def test_odd_filenames_survive_the_round_trip(sandbox: Sandbox, router: FakeRouter, name: str) -> None:
    assert sandbox.files is not None
    sandbox.files.write(name, b"odd")
    assert (router.workdir / name).read_bytes() == b"odd"
    assert sandbox.files.read(name) == b"odd"
    assert sandbox.files.exists(name) is True


def test_errors_reach_the_client_as_status_codes(sandbox: Sandbox, router: FakeRouter) -> None:
    files = sandbox.files
    assert files is not None
    with pytest.raises(SandboxRequestError) as e:
        files.read("../../etc/passwd", allow_unsafe_paths=True)
    assert e.value.status_code == 403
    with pytest.raises(SandboxRequestError) as e:
        files.list("/etc")
    assert e.value.status_code == 403
    with pytest.raises(SandboxRequestError) as e:
        files.read("missing.txt")
    assert e.value.status_code == 404
    with pytest.raises(SandboxRequestError) as e:
        files.write("../up.txt", b"x", allow_unsafe_paths=True)
    assert e.value.status_code == 403
    assert not (router.workdir.parent / "up.txt").exists()


def test_unknown_or_unready_sandbox(router: FakeRouter) -> None:
    other = Sandbox(
        claim_name="c",
        sandbox_id="other",
        namespace="default",
        connection_config=SandboxDirectConnectionConfig(api_url=router.url, extra_headers=router.auth_headers),
        k8s_helper=_NoKubernetes(),  # type: ignore[arg-type]
    )
    assert other.commands is not None
    with pytest.raises(SandboxRequestError) as e:
        other.commands.run("true")
    assert e.value.status_code == 404
    router.resolver.set_not_ready("default", "other", "waiting for its pod")
    with pytest.raises(SandboxRequestError) as e:
        other.commands.run("true")  # POST: not retried by the client
    assert e.value.status_code == 503
    other.close_connection()


@pytest.mark.parametrize("how", ["wrong header", "no header", "token in the URL"])
def test_wrong_or_misplaced_token_is_401_and_no_exception_shows_a_token(router: FakeRouter, how: str) -> None:
    config = {
        "wrong header": SandboxDirectConnectionConfig(api_url=router.url,
                                                      extra_headers={"Authorization": "Bearer not-the-token"}),
        "no header": SandboxDirectConnectionConfig(api_url=router.url),
        "token in the URL": SandboxDirectConnectionConfig(api_url=f"{router.url}/t/{router.token}"),
    }[how]
    sb = Sandbox(
        claim_name="c",
        sandbox_id=router.name,
        connection_config=config,
        k8s_helper=_NoKubernetes(),  # type: ignore[arg-type]
    )
    assert sb.commands is not None
    with pytest.raises(SandboxRequestError) as e:
        sb.commands.run("true")
    assert e.value.status_code == 401
    if how != "token in the URL":  # there the caller itself put it in the URL
        assert router.token not in str(e.value) and router.token not in repr(e.value)
    sb.close_connection()


def test_a_failing_call_with_the_header_never_shows_the_token(router: FakeRouter) -> None:
    sb = Sandbox(
        claim_name="c",
        sandbox_id="no-such-sandbox",
        connection_config=SandboxDirectConnectionConfig(api_url=router.url, extra_headers=router.auth_headers),
        k8s_helper=_NoKubernetes(),  # type: ignore[arg-type]
    )
    assert sb.commands is not None
    with pytest.raises(SandboxRequestError) as e:
        sb.commands.run("true")
    assert e.value.status_code == 404
    text = "".join([str(e.value), repr(e.value), str(e.value.__cause__), repr(sb), repr(sb.connection_config)])
    assert router.token not in text
    sb.close_connection()


def test_bearer_token_via_extra_headers(router: FakeRouter) -> None:
    router.runtime.script("true", Script())
    sb = Sandbox(
        claim_name="c",
        sandbox_id=router.name,
        connection_config=SandboxDirectConnectionConfig(
            api_url=router.url, extra_headers={"Authorization": f"Bearer {router.token}"}
        ),
        k8s_helper=_NoKubernetes(),  # type: ignore[arg-type]
    )
    assert sb.commands is not None
    assert sb.commands.run("true").exit_code == 0
    sb.close_connection()
