"""``turbok sandbox exec``/``cp``/``ls``: work inside a sandbox from the shell.

NAME is a SandboxClaim (its bound sandbox is used) or a Sandbox. The router
URL and the router's token come from the kubeconfig (the ``turbok.dev/router``
extension that ``turbok serve`` writes); ``exec`` streams output as it comes and
exits with the command's exit code (124 on timeout).

Names in a sandbox are chosen by the code running there: ``ls`` prints them
escaped (no markup, no control characters), and ``cp`` from a sandbox refuses an
entry name that is not a single path component.
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import typer

from turbok.cli.objects import ContextOpt, KubeconfigOpt, NamespaceOpt, connect
from turbok.cli.output import fail, say

if TYPE_CHECKING:
    from turbok.sdk.client import SandboxConnection

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Run commands in sandboxes and copy files.")


def _connect(name: str, namespace: str | None, kubeconfig: Path | None, context: str | None) -> SandboxConnection:
    from turbok.api.status import NotFound
    from turbok.sdk.client import SandboxConnection

    with connect(kubeconfig, context) as api:
        ns = namespace or api.config.namespace
        sandbox = name
        try:
            claim = api.get(api.resource("sandboxclaims.extensions.agents.x-k8s.io"), name, ns)
        except NotFound:
            claim = None
        if claim is not None:
            sandbox = (claim.get("status") or {}).get("sandbox", {}).get("name", "")
            if not sandbox:
                fail(f"claim {ns}/{name} has no sandbox yet; wait for it: "
                     f"kubectl wait sandboxclaim/{name} -n {ns} --for=condition=Ready")
        else:
            try:
                api.get(api.resource("sandboxes.agents.x-k8s.io"), name, ns)
            except NotFound:
                fail(f"no SandboxClaim or Sandbox named {name!r} in namespace {ns}")
        config = api.config
    if not config.router_url:
        fail("the kubeconfig names no turbok router (extension turbok.dev/router); is this a turbok control plane?")
    if not config.router_token:
        fail("the kubeconfig's turbok.dev/router extension carries no router token (written by an older turbok?); "
             "restart the control plane to rewrite it: turbok down && turbok up")
    return SandboxConnection(config.router_url, config.router_token, ns, sandbox, timeout=None)


@app.command("exec")
def exec_(
    name: str = typer.Argument(..., help="SandboxClaim or Sandbox name."),
    command: list[str] = typer.Argument(..., help="The command and its arguments (after --)."),
    namespace: str | None = NamespaceOpt,
    timeout: float | None = typer.Option(None, "--timeout", help="Kill the command after this many seconds."),
    cwd: str | None = typer.Option(None, "--cwd", help="Working directory inside the sandbox (default /app)."),
    stdin: bool = typer.Option(False, "--stdin", "-i", help="Pass this process's standard input to the command."),
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Run a command in a sandbox, streaming its output; exit with its exit code."""
    data = sys.stdin.buffer.read() if stdin else None
    with _connect(name, namespace, kubeconfig, context) as conn:
        stream = conn.commands.stream(command, cwd=cwd, timeout=timeout, stdin=data)
        for frame in stream:
            out = sys.stdout.buffer if frame.stream == "stdout" else sys.stderr.buffer
            out.write(frame.data)
            out.flush()
        code = stream.exit_code if stream.exit_code is not None else 1
    if stream.timed_out:
        sys.stderr.write(f"turbok: command timed out after {timeout}s\n")
    raise typer.Exit(code)


def _split(spec: str) -> tuple[str | None, str]:
    head, sep, tail = spec.partition(":")
    if sep and "/" not in head and head:
        return head, tail
    return None, spec


@app.command("cp")
def cp(
    source: str = typer.Argument(..., help="Local path, or NAME:path in the sandbox's /app."),
    destination: str = typer.Argument(..., help="Local path, or NAME:path in the sandbox's /app."),
    namespace: str | None = NamespaceOpt,
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Copy files and directories between this machine and a sandbox's /app."""
    src_box, src = _split(source)
    dst_box, dst = _split(destination)
    if (src_box is None) == (dst_box is None):
        fail("exactly one side must be NAME:path in a sandbox (the other a local path)")
    if src_box is not None:
        with _connect(src_box, namespace, kubeconfig, context) as conn:
            count = _download(conn, src, Path(dst))
    else:
        assert dst_box is not None
        local = Path(src)
        if not local.exists():
            fail(f"{local}: no such file or directory")
        with _connect(dst_box, namespace, kubeconfig, context) as conn:
            count = _upload(conn, local, dst)
    say(f"copied {count} file{'s' if count != 1 else ''}")


def _upload(conn: SandboxConnection, local: Path, remote: str) -> int:
    if local.is_file():
        target = remote if remote and not remote.endswith("/") else str(PurePosixPath(remote or ".") / local.name)
        with local.open("rb") as f:
            conn.files.write(target.lstrip("/"), f)
        return 1
    count = 0
    for path in sorted(local.rglob("*")):
        if path.is_file():
            rel = path.relative_to(local).as_posix()
            with path.open("rb") as f:
                conn.files.write(str(PurePosixPath(remote or local.name) / rel).lstrip("/"), f)
            count += 1
    return count


def _download(conn: SandboxConnection, remote: str, local: Path) -> int:
    from turbok.sdk.errors import NotFound

    try:
        entries = conn.files.list(remote)
    except NotFound:
        entries = None
    if entries is None:  # a file
        target = local / PurePosixPath(remote).name if local.is_dir() else local
        with target.open("wb") as f:
            conn.files.read_to(remote, f)
        return 1
    local.mkdir(parents=True, exist_ok=True)
    count = 0
    for entry in entries:
        if entry.name in ("", ".", "..") or "/" in entry.name or "\0" in entry.name:
            fail(f"the sandbox listed an entry named {entry.name!r} under {remote or '/app'}: "
                 "not a file name, not copied")
        child = f"{remote.rstrip('/')}/{entry.name}" if remote else entry.name
        if entry.type == "directory":
            count += _download(conn, child, local / entry.name)
        else:
            with (local / entry.name).open("wb") as f:
                conn.files.read_to(child, f)
            count += 1
    return count


@app.command("ls")
def ls(
    name: str = typer.Argument(...),
    path: str = typer.Argument("", help="Directory under /app."),
    namespace: str | None = NamespaceOpt,
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """List a directory of a sandbox's /app."""
    with _connect(name, namespace, kubeconfig, context) as conn:
        for entry in sorted(conn.files.list(path), key=lambda e: e.name):
            suffix = "/" if entry.type == "directory" else ""
            say(f"{entry.size:>10}  {entry.name}{suffix}")
