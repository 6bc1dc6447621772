"""``turbok sandbox exec``/``cp``/``ls``: work inside a sandbox from the shell; ``snapshot``/``snapshots``/
``restore``/``fork``: its snapshots (SandboxSnapshot, docs/sandboxes.md "Snapshots and forks").

NAME is a SandboxClaim (its bound sandbox is used) or a Sandbox. The router
URL and the router's token come from the kubeconfig (the ``turbok.dev/router``
extension that ``turbok serve`` writes); ``exec`` streams output as it comes and
exits with the command's exit code (124 on timeout).

Names in a sandbox are chosen by the code running there: ``ls`` prints them
escaped (no markup, no control characters), and ``cp`` from a sandbox refuses an
entry name that is not a single path component.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import typer

from turbok.cli.objects import ContextOpt, KubeconfigOpt, NamespaceOpt, connect
from turbok.cli.output import fail, say

if TYPE_CHECKING:
    from turbok.client.rest import RestClient
    from turbok.sdk.client import SandboxConnection

Obj = dict[str, Any]
SNAPSHOTS = "sandboxsnapshots.agents.turbok.dev"
#: What ``turbok sandbox restore`` and ``fork`` put on a Sandbox (turbok.controllers.sandboxsnapshot).
RESTORE = "turbok.dev/restore-snapshot"
FROM_SNAPSHOT = "turbok.dev/snapshot"

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Run commands in sandboxes, copy files, snapshot, restore and fork them.")


def _sandbox_of(api: RestClient, name: str, ns: str) -> Obj:
    """The Sandbox ``name`` names: a SandboxClaim's bound one, or a Sandbox of that name; else one line and exit 1."""
    from turbok.api.status import NotFound

    sandboxes = api.resource("sandboxes.agents.x-k8s.io")
    try:
        claim = api.get(api.resource("sandboxclaims.extensions.agents.x-k8s.io"), name, ns)
    except NotFound:
        claim = None
    if claim is not None:
        bound = (claim.get("status") or {}).get("sandbox", {}).get("name", "")
        if not bound:
            fail(f"claim {ns}/{name} has no sandbox yet; wait for it: "
                 f"kubectl wait sandboxclaim/{name} -n {ns} --for=condition=Ready")
        name = bound
    try:
        return api.get(sandboxes, name, ns)
    except NotFound:
        fail(f"no SandboxClaim or Sandbox named {name!r} in namespace {ns}")


def _connect(name: str, namespace: str | None, kubeconfig: Path | None, context: str | None) -> SandboxConnection:
    from turbok.sdk.client import SandboxConnection

    with connect(kubeconfig, context) as api:
        ns = namespace or api.config.namespace
        sandbox = _sandbox_of(api, name, ns)["metadata"]["name"]
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


# ---------------------------------------------------------------- snapshots

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
WaitOpt = typer.Option(120.0, "--timeout", help="Seconds to wait for it to be ready (0: do not wait).")


def _check_name(what: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        fail(f"invalid {what} {value!r}: want a DNS label (a-z, 0-9 and '-', at most 63 characters)")
    return value


def _condition(obj: Obj, type_: str = "Ready") -> Obj:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), {})


def _wait_ready(api: RestClient, res: Any, name: str, ns: str, timeout: float, *, what: str,
                failed: tuple[str, ...] = ()) -> Obj:
    """The object once its Ready condition is True; one line and exit 1 on a reason in ``failed`` or the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        obj = api.get(res, name, ns)
        ready = _condition(obj)
        if ready.get("status") == "True":
            return obj
        if ready.get("reason") in failed:
            fail(f"{what}: {ready.get('reason')}: {ready.get('message') or 'no message'}")
        if time.monotonic() > deadline:
            fail(f"{what} is not ready after {timeout:.0f} s ({ready.get('reason') or 'no condition yet'}: "
                 f"{ready.get('message') or ''}); it may still become so: kubectl get {res.plural}/{name} -n {ns}")
        time.sleep(0.2)


def _size(value: Any) -> str:
    return f"{int(value) / 2**20:.1f} MiB" if isinstance(value, int) else "-"


@app.command("snapshot")
def snapshot(
    name: str = typer.Argument(..., help="SandboxClaim or Sandbox to snapshot (it must be running)."),
    snapshot_name: str | None = typer.Option(None, "--name", help="Name of the snapshot (default: NAME-TIME)."),
    namespace: str | None = NamespaceOpt,
    timeout: float = WaitOpt,
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Take a named snapshot (memory and filesystem) of a running sandbox; it runs on."""
    from turbok.api.status import AlreadyExists

    if snapshot_name is not None:
        _check_name("snapshot name", snapshot_name)
    with connect(kubeconfig, context) as api:
        ns = namespace or api.config.namespace
        sandbox = _sandbox_of(api, name, ns)["metadata"]["name"]
        snap = snapshot_name or f"{sandbox[:44]}-{time.strftime('%Y%m%d-%H%M%S')}".lower()
        res = api.resource(SNAPSHOTS)
        body = {"apiVersion": "agents.turbok.dev/v1alpha1", "kind": "SandboxSnapshot",
                "metadata": {"name": snap, "namespace": ns}, "spec": {"sandboxRef": {"name": sandbox}}}
        try:
            api.create(res, body, ns)
        except AlreadyExists:
            fail(f"a snapshot named {snap!r} already exists in namespace {ns}: choose another --name, or delete it "
                 f"first (turbok sandbox snapshots --delete {snap})")
        if timeout <= 0:
            say(f"snapshot {snap} of sandbox {sandbox} requested")
            return
        obj = _wait_ready(api, res, snap, ns, timeout, what=f"snapshot {snap}",
                          failed=("Failed", "SandboxNotFound", "SnapshotLost"))
    st = obj.get("status") or {}
    say(f"snapshot {snap} of sandbox {sandbox}: ready ({_size(st.get('memoryBytes'))} of memory, "
        f"{_size(st.get('diskBytes'))} of disk)")


@app.command("snapshots")
def snapshots(
    name: str | None = typer.Argument(None, help="Only the snapshots of this SandboxClaim or Sandbox."),
    delete: list[str] = typer.Option([], "--delete", help="Delete this snapshot (repeatable) instead of listing."),
    namespace: str | None = NamespaceOpt,
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """List the sandbox snapshots of a namespace (or of one sandbox), or delete some."""
    from turbok.api.status import NotFound

    with connect(kubeconfig, context) as api:
        ns = namespace or api.config.namespace
        res = api.resource(SNAPSHOTS)
        if delete:
            for snap in delete:
                try:
                    api.delete(res, _check_name("snapshot name", snap), ns)
                except NotFound:
                    fail(f"no snapshot named {snap!r} in namespace {ns}")
                say(f"snapshot {snap} deleted")
            return
        only = _sandbox_of(api, name, ns)["metadata"]["name"] if name else None
        items = [s for s in api.list(res, ns).get("items") or []
                 if only is None or s["spec"]["sandboxRef"]["name"] == only]
    say(f"{'NAME':<32} {'SANDBOX':<24} {'READY':<6} {'REASON':<16} {'MEMORY':>10} {'DISK':>10}  CREATED")
    for s in sorted(items, key=lambda s: s["metadata"].get("creationTimestamp") or ""):
        ready = _condition(s)
        st = s.get("status") or {}
        say(f"{s['metadata']['name']:<32} {s['spec']['sandboxRef']['name']:<24} {ready.get('status', '-'):<6} "
            f"{ready.get('reason', '-'):<16} {_size(st.get('memoryBytes')):>10} {_size(st.get('diskBytes')):>10}  "
            f"{s['metadata'].get('creationTimestamp', '')}")


@app.command("restore")
def restore(
    name: str = typer.Argument(..., help="SandboxClaim or Sandbox to put back."),
    snapshot_name: str = typer.Argument(..., help="The snapshot to put it back to."),
    namespace: str | None = NamespaceOpt,
    timeout: float = WaitOpt,
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Put a sandbox back to a snapshot: what it did since is gone (memory, processes and disk)."""
    from turbok.api.status import NotFound

    _check_name("snapshot name", snapshot_name)
    with connect(kubeconfig, context) as api:
        ns = namespace or api.config.namespace
        sandbox = _sandbox_of(api, name, ns)
        sb_name = sandbox["metadata"]["name"]
        try:
            snap = api.get(api.resource(SNAPSHOTS), snapshot_name, ns)
        except NotFound:
            fail(f"no snapshot named {snapshot_name!r} in namespace {ns} (turbok sandbox snapshots -n {ns})")
        if _condition(snap).get("status") != "True":
            fail(f"snapshot {snapshot_name} is not ready ({_condition(snap).get('reason', 'no condition yet')})")
        res = api.resource("sandboxes.agents.x-k8s.io")
        pods = api.resource("pods")
        pod_name = (sandbox["metadata"].get("annotations") or {}).get("agents.x-k8s.io/pod-name") or sb_name
        # Its Pod goes (suspended), and the next one, made for this request, starts from the snapshot.
        api.patch(res, sb_name, {"metadata": {"annotations": {RESTORE: snapshot_name}},
                                 "spec": {"operatingMode": "Suspended"}}, ns)
        deadline = time.monotonic() + max(timeout, 60.0)
        while True:
            try:
                api.get(pods, pod_name, ns)
            except NotFound:
                break
            if time.monotonic() > deadline:
                fail(f"the Pod of sandbox {sb_name} did not go; it is restored once it does "
                     f"(kubectl get pod/{pod_name} -n {ns})")
            time.sleep(0.2)
        api.patch(res, sb_name, {"spec": {"operatingMode": "Running"}}, ns)
        if timeout > 0:
            _wait_ready(api, res, sb_name, ns, timeout, what=f"sandbox {sb_name}")
    say(f"sandbox {sb_name} restored to snapshot {snapshot_name}")


@app.command("fork")
def fork(
    snapshot_name: str = typer.Argument(..., help="The snapshot to start from."),
    names: list[str] = typer.Argument(..., help="Name(s) of the new Sandbox(es)."),
    namespace: str | None = NamespaceOpt,
    timeout: float = WaitOpt,
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Start new sandboxes from a snapshot: each an independent copy of its memory, processes and disk."""
    from turbok.api.status import AlreadyExists, NotFound

    _check_name("snapshot name", snapshot_name)
    for n in names:
        _check_name("sandbox name", n)
    with connect(kubeconfig, context) as api:
        ns = namespace or api.config.namespace
        try:
            snap = api.get(api.resource(SNAPSHOTS), snapshot_name, ns)
        except NotFound:
            fail(f"no snapshot named {snapshot_name!r} in namespace {ns} (turbok sandbox snapshots -n {ns})")
        template = (snap.get("status") or {}).get("podTemplate")
        if _condition(snap).get("status") != "True" or not template:
            fail(f"snapshot {snapshot_name} is not ready ({_condition(snap).get('reason', 'no condition yet')})")
        res = api.resource("sandboxes.agents.x-k8s.io")
        for n in names:
            pod_template = dict(template)
            md = dict(pod_template.get("metadata") or {})
            md["annotations"] = {**(md.get("annotations") or {}), FROM_SNAPSHOT: snapshot_name}
            pod_template["metadata"] = md
            body = {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
                    "metadata": {"name": n, "namespace": ns}, "spec": {"podTemplate": pod_template}}
            try:
                api.create(res, body, ns)
            except AlreadyExists:
                fail(f"a sandbox named {n!r} already exists in namespace {ns}")
        for n in names:
            if timeout > 0:
                _wait_ready(api, res, n, ns, timeout, what=f"sandbox {n}")
            say(f"sandbox {n} forked from snapshot {snapshot_name}")
