"""The `turbok` command as a user runs it: up/status/down, apply/get/delete, sandbox exec/cp/ls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ControlPlaneProcess

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"


def turbok(*args: str, env: dict[str, str] | None = None, input: bytes | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turbok", *args], env=env, capture_output=True, text=input is None,
                          input=input, timeout=timeout)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    return lines[0]


def test_up_status_down_in_the_background(tmp_path: Path) -> None:
    env = {**os.environ, "TURBOK_HOME": str(tmp_path / "home")}
    up = turbok("up", env=env)
    assert up.returncode == 0, up.stderr
    try:
        status = json.loads(turbok("status", "-o", "json", env=env).stdout)
        assert status["running"] is True
        assert status["api"].startswith("https://127.0.0.1:")
        assert status["router"].startswith("http://127.0.0.1:")
        assert Path(status["kubeconfig"]).stat().st_mode & 0o077 == 0, "the kubeconfig holds the token"
        again = turbok("up", env=env)
        assert again.returncode == 0 and status["api"] in again.stdout, "a second up reports the running one"
    finally:
        down = turbok("down", "--stop-sandboxes", env=env)
    assert down.returncode == 0
    stopped = turbok("status", "-o", "json", env=env)
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["running"] is False


def test_apply_get_delete_and_bad_input(control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
    env = control_plane.env
    ns = "cli-objects"
    assert turbok("apply", "-f", "-", env=env, input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).encode()).returncode == 0
    applied = turbok("apply", "-n", ns, "-f", str(EXAMPLES / "python-template.yaml"),
                     env=env)
    # The example names namespace default: asking for another one is refused, nothing is created.
    assert "does not match" in applied.stdout + applied.stderr and applied.returncode == 1
    manifest = tmp_path / "pool.yaml"
    manifest.write_text(
        "apiVersion: extensions.agents.x-k8s.io/v1beta1\nkind: SandboxWarmPool\nmetadata:\n  name: p\n"
        "spec:\n  replicas: 0\n  sandboxTemplateRef: {name: t}\n")
    first = turbok("apply", "-n", ns, "-f", str(manifest), env=env)
    assert first.returncode == 0 and "created" in first.stdout
    assert "unchanged" in turbok("apply", "-n", ns, "-f", str(manifest), env=env).stdout
    manifest.write_text(manifest.read_text().replace("replicas: 0", "replicas: 0\n  updateStrategy: {type: Recreate}"))
    assert "configured" in turbok("apply", "-n", ns, "-f", str(manifest), env=env).stdout
    got = json.loads(turbok("get", "swp", "p", "-n", ns, "-o", "json", env=env).stdout)
    assert got["spec"]["updateStrategy"] == {"type": "Recreate"}
    table = turbok("get", "sandboxwarmpools", "-n", ns, env=env).stdout
    assert "DESIRED" in table and "p" in table

    bad = tmp_path / "bad.yaml"
    bad.write_text(manifest.read_text().replace("replicas: 0", "replicas: lots").replace("name: p", "name: q"))
    result = turbok("apply", "-n", ns, "-f", str(bad), env=env)
    assert result.returncode == 1 and "spec.replicas" in result.stdout + result.stderr
    assert turbok("get", "swp", "q", "-n", ns, env=env).returncode == 1, "nothing was stored"
    assert "not found" in _one_error_line(turbok("get", "swp", "q", "-n", ns, env=env))
    assert "no such file" in _one_error_line(turbok("apply", "-f", str(tmp_path / "missing.yaml"), env=env))
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    assert "not valid YAML" in _one_error_line(turbok("apply", "-f", str(tmp_path / "broken.yaml"), env=env))
    assert 'resource type "bogus"' in _one_error_line(turbok("get", "bogus", env=env))

    assert turbok("delete", "swp", "p", "-n", ns, env=env).returncode == 0
    assert turbok("get", "swp", "p", "-n", ns, env=env).returncode == 1
    assert turbok("delete", "namespace", ns, env=env).returncode == 0


@pytest.fixture(scope="module")
def claimed(control_plane: ControlPlaneProcess) -> str:
    env = control_plane.env
    ns = "cli-sandbox"
    turbok("apply", "-f", "-", env=env, input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).encode())
    for example in ("python-template.yaml", "python-pool.yaml", "my-claim.yaml"):
        text = (EXAMPLES / example).read_text().replace("namespace: default", f"namespace: {ns}")
        assert turbok("apply", "-f", "-", env=env, input=text.encode()).returncode == 0
    wait = subprocess.run(["kubectl", "wait", "sandboxclaim/my-claim", "-n", ns, "--for=condition=Ready",
                           "--timeout=60s"], env=env, capture_output=True, text=True)
    assert wait.returncode == 0, wait.stderr
    return ns


def test_sandbox_exec_streams_and_returns_the_exit_code(control_plane: ControlPlaneProcess, claimed: str) -> None:
    env = control_plane.env
    ok = turbok("sandbox", "exec", "my-claim", "-n", claimed, "--", "python3", "-c", "print(6*7)", env=env)
    assert ok.returncode == 0 and ok.stdout == "42\n"
    failed = turbok("sandbox", "exec", "my-claim", "-n", claimed, "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                    env=env)
    assert failed.returncode == 3 and failed.stdout == "out\n" and "err" in failed.stderr
    slow = turbok("sandbox", "exec", "my-claim", "-n", claimed, "--timeout", "1", "--", "sleep", "30", env=env)
    assert slow.returncode == 124
    piped = turbok("sandbox", "exec", "my-claim", "-n", claimed, "-i", "--", "wc", "-c", env=env, input=b"12345")
    assert piped.returncode == 0 and piped.stdout.strip() == b"5"
    assert "no SandboxClaim or Sandbox" in _one_error_line(
        turbok("sandbox", "exec", "nobody", "-n", claimed, "--", "true", env=env))


def test_sandbox_cp_both_ways_and_ls(control_plane: ControlPlaneProcess, claimed: str, tmp_path: Path) -> None:
    env = control_plane.env
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    assert turbok("sandbox", "cp", str(src), "my-claim:tree", "-n", claimed, env=env).returncode == 0
    listing = turbok("sandbox", "ls", "my-claim", "tree", "-n", claimed, env=env).stdout
    assert "a.txt" in listing and "sub/" in listing
    back = tmp_path / "back"
    assert turbok("sandbox", "cp", "my-claim:tree", str(back), "-n", claimed, env=env).returncode == 0
    assert (back / "a.txt").read_bytes() == b"alpha"
    assert (back / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 100
    assert "exactly one side" in _one_error_line(turbok("sandbox", "cp", "a", "b", env=env))
    assert "Access denied" in turbok("sandbox", "cp", "my-claim:../../etc/passwd", str(tmp_path / "x"), "-n",
                                     claimed, env=env).stderr


def test_sandbox_chosen_names_are_printed_literally(control_plane: ControlPlaneProcess, claimed: str,
                                                    tmp_path: Path) -> None:
    env = control_plane.env
    made = turbok("sandbox", "exec", "my-claim", "-n", claimed, "--", "sh", "-c",
                  'mkdir -p hostile && cd hostile && touch "$(printf "esc\\033[31mred\\033]0;title\\007")" '
                  '"[blink]X" "[bold]b" ":warning:" "$(printf "line\\nbreak")"', env=env)
    assert made.returncode == 0, made.stderr
    listing = turbok("sandbox", "ls", "my-claim", "hostile", "-n", claimed, env=env)
    assert listing.returncode == 0, listing.stderr
    out = listing.stdout
    assert "\x1b" not in out and "\x07" not in out, "no raw escape sequence reaches the terminal"
    for shown in ("esc\\x1b[31mred\\x1b]0;title\\x07", "[blink]X", "[bold]b", ":warning:", "line\\nbreak"):
        assert shown in out, (shown, out)
    assert len([line for line in out.splitlines() if line.strip()]) == 5, "one line per entry"
    back = tmp_path / "back"
    assert turbok("sandbox", "cp", "my-claim:hostile", str(back), "-n", claimed, env=env).returncode == 0
    assert (back / "[blink]X").exists() and (back / "line\nbreak").exists()


def test_a_newline_in_a_request_yields_one_log_line(control_plane: ControlPlaneProcess, claimed: str) -> None:
    import urllib.parse

    import httpx

    forged = "2024-01-01 00:00:00,000 WARNING turbok.forged: injected"
    name = urllib.parse.quote(f"/etc/x\n{forged}", safe="")
    body = (f"--b\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''{name}\r\n"
            "Content-Type: application/octet-stream\r\n\r\nx\r\n--b--\r\n").encode()
    sandbox = json.loads(turbok("get", "sandboxclaim", "my-claim", "-n", claimed, "-o", "json",
                                env=control_plane.env).stdout)["status"]["sandbox"]["name"]
    headers = {**control_plane.router_headers, "X-Sandbox-ID": sandbox, "X-Sandbox-Namespace": claimed,
               "Content-Type": "multipart/form-data; boundary=b"}
    r = httpx.post(f"{control_plane.router_url}/upload", content=body, headers=headers, timeout=30)
    assert r.status_code == 403, r.text  # an absolute path outside /app: refused, and logged as a warning
    log = control_plane.log()
    assert "injected" in log, "the refusal was logged"
    assert not any(line.startswith(forged) for line in log.splitlines()), "a forged line in turbok.log"
