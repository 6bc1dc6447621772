"""``turbok checkpoint``: the node agent, the operator, and tools over a cluster's checkpoints.

Commands: ``agent`` (the node agent), ``operator`` (CheckpointConfigurations
into agent DaemonSets), ``ls``, ``verify``, ``scrub``, ``repair``,
``restore``, ``delete``, ``events``. Thin: the work is in turbok.checkpoint.
Heavy imports stay inside the commands. Secrets (the agents' token, object
store credentials) are read from files only readable by their owner or from
the environment, never from flags.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import typer

from turbok.cli.output import console, fail, print_data

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Multi-tier checkpoints: agent, operator, ls, verify, scrub, repair, restore.")

_AGENT = typer.Option(None, "--agent", help="A node agent HOST:PORT to ask (default: $TURBOK_CHECKPOINT_AGENT).")
_CONFIG = typer.Option(None, "--config", help="Agent settings or CheckpointConfiguration YAML naming the tiers.")
_TOKEN_FILE = typer.Option(None, "--token-file", help="File (mode 0600) holding the agents' shared token "
                           "(default: $TURBOK_CHECKPOINT_TOKEN).")


def _secret_file(path: Path, what: str) -> str:
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as e:
        fail(f"cannot read {what} {path}: {e.strerror}")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        fail(f"{what} {path} is readable by others (mode {oct(st.st_mode & 0o777)}): chmod 600 it")
    return text


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        return _secret_file(token_file, "token file")
    return os.environ.get("TURBOK_CHECKPOINT_TOKEN", "")


def _tiers(agent: str | None, config: Path | None, token_file: Path | None = None) -> Any:
    from turbok.checkpoint.inventory import Tiers

    if agent is None and config is None:
        agent = os.environ.get("TURBOK_CHECKPOINT_AGENT")
        if agent is None:
            fail("say where the checkpoints are: --agent HOST:PORT or --config FILE")
    return Tiers(agent=agent, config=config, token=_token(token_file))


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--storage-option {pair!r}: use KEY=VALUE (e.g. endpoint=http://127.0.0.1:9000)")
        out[key] = value
    return out


@app.command("agent")
def agent_cmd(
    config: Path | None = _CONFIG,
    from_cluster: str | None = typer.Option(None, "--from-cluster", help="Read the CheckpointConfiguration NAME from the API server."),
    kubeconfig: Path | None = typer.Option(None, "--kubeconfig", help="Kubeconfig for --from-cluster and --discover "
                                           "(default: turbok's own, $KUBECONFIG, ~/.kube/config, or the Pod's service account)."),
    listen: str | None = typer.Option(None, help="HOST:PORT to serve on (port 0: any free port). Default 127.0.0.1:7480."),
    advertise: str | None = typer.Option(None, help="Address peers reach this agent at (default: --listen)."),
    metrics_listen: str | None = typer.Option(None, "--metrics-listen", help="HOST:PORT for Prometheus /metrics."),
    memory_dir: str | None = typer.Option(None, "--memory-dir", help="tmpfs directory of the memory tier."),
    disk_dir: str | None = typer.Option(None, "--disk-dir", help="Directory of the local disk tier."),
    memory_size: str | None = typer.Option(None, "--memory-size", help="Memory tier capacity (e.g. 8Gi). Default 4Gi."),
    job_memory_quota: str | None = typer.Option(None, "--job-memory-quota", help="Memory one job may hold (e.g. 16Gi); "
                                                "with it no job evicts another's parts."),
    disk_quota: str | None = typer.Option(None, "--disk-quota", help="Bytes the disk tier may hold in all (e.g. 500Gi)."),
    peer: list[str] = typer.Option([], "--peer", help="A peer agent HOST:PORT (repeat)."),
    discover: str | None = typer.Option(None, "--discover", help="Find peers through the API: the agents of the "
                                        "CheckpointConfiguration NAME (its DaemonSet's Pods)."),
    discover_namespace: str | None = typer.Option(None, "--discover-namespace", help="Namespace of those Pods (default turbok-checkpoint)."),
    pod_name: str | None = typer.Option(None, "--pod-name", help="This agent's Pod: its tiers are published on it."),
    node_name: str | None = typer.Option(None, "--node-name", help="This node's name (default: the host name)."),
    replication_factor: int | None = typer.Option(None, "--replication-factor", help="Peers holding a replica of each part (default 1)."),
    storage_url: str | None = typer.Option(None, "--storage-url", help="s3://, gs://, az:// or file:// URL for backups."),
    storage_option: list[str] = typer.Option([], "--storage-option", help="Object store option KEY=VALUE, e.g. "
                                             "endpoint=http://127.0.0.1:9000, region=us-east-1, allow_http=true (repeat)."),
    credentials_file: Path | None = typer.Option(None, "--credentials-file", help="YAML (mode 0600) of secret object store "
                                                 "options, e.g. access_key_id/secret_access_key. The store's own "
                                                 "environment variables (AWS_ACCESS_KEY_ID, ...) work too."),
    backup_every_steps: int | None = typer.Option(None, "--backup-every-steps", help="Back up steps that are multiples of N."),
    backup_interval: str | None = typer.Option(None, "--backup-interval", help="Back up at most this often (e.g. 30m)."),
    keep_memory: int | None = typer.Option(None, "--keep-memory", help="Steps kept in the memory tier (default 1)."),
    keep_disk: int | None = typer.Option(None, "--keep-disk", help="Steps kept on local disk (default 2)."),
    keep_object: int | None = typer.Option(None, "--keep-object", help="Newest backups kept in object storage (default 2)."),
    keep_object_every: int | None = typer.Option(None, "--keep-object-every", help="Also keep backups of steps that are multiples of N."),
    lease_timeout: str | None = typer.Option(None, "--lease-timeout", help="Drop a part a trainer has not staged after this long (default 10m)."),
    staging_timeout: float | None = typer.Option(None, "--staging-timeout", help="Seconds a save may wait for room in memory (default 120)."),
    token_file: Path | None = _TOKEN_FILE,
) -> None:
    """Run the node agent until SIGTERM or Ctrl-C."""
    import signal
    import threading

    import yaml

    from turbok.checkpoint.agent import Agent
    from turbok.checkpoint.config import Settings, fetch_configuration

    settings = Settings()
    if config is not None:
        settings = Settings.from_file(config, settings)
    if from_cluster is not None:
        settings = Settings.from_dict(fetch_configuration(from_cluster, kubeconfig=kubeconfig), settings)
    options = dict(settings.storage_options)
    options.update(_options(storage_option))
    if credentials_file is not None:
        secrets = yaml.safe_load(_secret_file(credentials_file, "credentials file")) or {}
        if not isinstance(secrets, dict):
            fail(f"credentials file {credentials_file}: expected a mapping of object store options")
        options.update({str(k): str(v) for k, v in secrets.items()})
    token = _token(token_file) if token_file is not None or os.environ.get("TURBOK_CHECKPOINT_TOKEN") else None
    overrides: dict[str, Any] = {
        "listen": listen, "advertise": advertise, "metrics_listen": metrics_listen, "memory_dir": memory_dir,
        "disk_dir": disk_dir, "memory_size": memory_size, "replication_factor": replication_factor,
        "storage_url": storage_url, "backup_every_steps": backup_every_steps, "peers": list(peer) or None,
        "job_memory_quota": job_memory_quota, "disk_quota": disk_quota, "discover": discover,
        "discover_namespace": discover_namespace, "pod_name": pod_name, "node_name": node_name,
        "backup_interval_s": backup_interval, "keep_memory": keep_memory, "keep_disk": keep_disk,
        "keep_object_last": keep_object, "keep_object_every": keep_object_every, "lease_timeout_s": lease_timeout,
        "staging_timeout_s": staging_timeout, "token": token,
        "storage_options": options if options != settings.storage_options else None,
        "kubeconfig": str(kubeconfig) if kubeconfig is not None else None,
    }
    settings = Settings.from_dict({k: v for k, v in overrides.items() if v is not None}, settings)
    agent = Agent(settings)
    address = agent.start()
    extra = f", metrics on port {agent.metrics_port}" if agent.metrics_port else ""
    print(f"checkpoint agent listening on {address}{extra}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()


@app.command("operator")
def operator_cmd(
    kubeconfig: Path | None = typer.Option(None, "--kubeconfig", help="Cluster to run against (default: $KUBECONFIG, "
                                           "~/.kube/config, or the Pod's service account)."),
    namespace: str = typer.Option("turbok-checkpoint", "--namespace", help="Namespace of the agents' DaemonSets."),
    image: str | None = typer.Option(None, "--image", help="Agent image when a configuration names none."),
    interval: float = typer.Option(10.0, "--interval", help="Seconds between reconciles."),
    once: bool = typer.Option(False, "--once", help="Reconcile every configuration once and exit."),
) -> None:
    """Reconcile CheckpointConfigurations into node agents (DaemonSet, RBAC) and their status."""
    import signal

    from turbok.checkpoint.operator import DEFAULT_IMAGE, Reconciler
    from turbok.client.kubeconfig import load_kubeconfig
    from turbok.client.rest import RestClient

    with RestClient(load_kubeconfig(kubeconfig)) as client:
        reconciler = Reconciler(client, namespace=namespace, image=image or DEFAULT_IMAGE, interval=interval)
        if once:
            for name, intent in reconciler.reconcile_all().items():
                console.print(f"{name}: {'ready' if intent.done else 'not ready'}: {intent.reason}", highlight=False)
            return
        signal.signal(signal.SIGTERM, lambda *_: reconciler.stop())
        console.print(f"checkpoint operator reconciling into namespace {namespace}", highlight=False)
        try:
            reconciler.run()
        except KeyboardInterrupt:
            reconciler.stop()


@app.command("ls")
def ls_cmd(
    job: str = typer.Option(..., "--job", help="The job to list."),
    agent: str | None = _AGENT,
    config: Path | None = _CONFIG,
    token_file: Path | None = _TOKEN_FILE,
    output: str = typer.Option("table", "-o", "--output", help="table, json or yaml."),
) -> None:
    """Show every step of a job against the tiers holding it (complete or not)."""
    from rich.table import Table

    from turbok.checkpoint.errors import JobNotFoundError

    with _tiers(agent, config, token_file) as tiers:
        rows, unreachable = tiers.rows(job)
    if not rows:
        raise JobNotFoundError(f"job {job!r} has no checkpoint on any reachable tier")
    if output != "table":
        data = [
            {"step": r.step, "worldSize": r.world_size, "complete": r.complete,
             "ranks": {str(k): [{"tier": t, "committed": c, **({"corrupt": True} if x else {})} for t, c, x in v]
                       for k, v in r.copies.items()}}
            for r in rows
        ]
        print_data({"job": job, "steps": data, "unreachable": unreachable}, output)
        return
    table = Table(title=f"checkpoints of {job}")
    table.add_column("STEP", justify="right")
    table.add_column("COMPLETE")
    table.add_column("RANK")
    table.add_column("COPIES (* = partial, ! = corrupt)")
    for r in rows:
        first = True
        for rank, copies in r.copies.items():
            where = "  ".join(t if c else (f"{t}!" if x else f"{t}*") for t, c, x in copies)
            table.add_row(str(r.step) if first else "", ("yes" if r.complete else "no") if first else "", str(rank), where)
            first = False
    console.print(table)
    for name, why in unreachable.items():
        console.print(f"[yellow]unreachable:[/] {name}: {why}", markup=True, highlight=False)


@app.command("verify")
def verify_cmd(
    job: str = typer.Option(..., "--job"),
    step: int | None = typer.Option(None, "--step", help="Only this step (default: all)."),
    agent: str | None = _AGENT,
    config: Path | None = _CONFIG,
    token_file: Path | None = _TOKEN_FILE,
) -> None:
    """Re-hash every committed copy from here; exit 1 if any copy is corrupt or unreadable."""
    with _tiers(agent, config, token_file) as tiers:
        checked, bad = tiers.verify(job, step)
    for b in bad:
        console.print(f"BAD  {b.key}  on {b.tier}: {b.problem}", markup=False, highlight=False)
    if bad:
        fail(f"{len(bad)} of {checked} copies of {job} failed verification")
    console.print(f"ok: {checked} copies of {job} verified", highlight=False)


def _scrub(job: str | None, step: int | None, agent: str | None, token_file: Path | None, repair: bool) -> None:
    from turbok.checkpoint.inventory import scrub_cluster

    agent = agent or os.environ.get("TURBOK_CHECKPOINT_AGENT")
    if agent is None:
        fail("say which agent to start from: --agent HOST:PORT")
    reports = scrub_cluster(agent, job=job, step=step, repair=repair, token=_token(token_file))
    checked = sum(int(r["checked"]) for r in reports)
    left = 0
    for r in reports:
        for f in r["findings"]:
            fixed = f["action"] in ("repaired", "quarantined")
            left += 0 if fixed else 1
            console.print(f"{'FIXED' if fixed else 'BAD  '}  {f['job']}/step {f['step']}/rank {f['rank']}  on "
                          f"{f['tier']}@{r['address']}: {f['problem']}" + (f" -> {f['action']}" if fixed else ""),
                          markup=False, highlight=False)
    if left:
        fail(f"{left} of {checked} copies are corrupt" + ("" if repair else "; run `turbok checkpoint repair` to fix them"))
    console.print(f"ok: {checked} copies checked on {len(reports)} agents", highlight=False)


@app.command("scrub")
def scrub_cmd(
    job: str | None = typer.Option(None, "--job", help="Only this job (default: every job)."),
    step: int | None = typer.Option(None, "--step", help="Only this step."),
    agent: str | None = _AGENT,
    token_file: Path | None = _TOKEN_FILE,
) -> None:
    """Each agent re-hashes its own copies (and the first, the object store's); exit 1 if any is bad."""
    _scrub(job, step, agent, token_file, repair=False)


@app.command("repair")
def repair_cmd(
    job: str | None = typer.Option(None, "--job", help="Only this job (default: every job)."),
    step: int | None = typer.Option(None, "--step", help="Only this step."),
    agent: str | None = _AGENT,
    token_file: Path | None = _TOKEN_FILE,
) -> None:
    """Scrub, and rewrite every bad copy from a good one; quarantine a part with no good copy."""
    _scrub(job, step, agent, token_file, repair=True)


@app.command("restore")
def restore_cmd(
    job: str = typer.Option(..., "--job"),
    to: Path = typer.Option(..., "--to", help="Directory to write the step into (disk-tier layout)."),
    step: int | None = typer.Option(None, "--step", help="Step to restore (default: newest complete)."),
    agent: str | None = _AGENT,
    config: Path | None = _CONFIG,
    token_file: Path | None = _TOKEN_FILE,
) -> None:
    """Fetch every rank of a step from the fastest verified copies into a directory."""
    from turbok.checkpoint.inventory import restore_to

    with _tiers(agent, config, token_file) as tiers:
        chosen, manifests = restore_to(
            tiers, job, step, to, progress=lambda m: console.print(f"rank {m.key.rank}: {m.payload_bytes} bytes", highlight=False)
        )
    console.print(f"restored {job} step {chosen} ({len(manifests)} ranks) to {to}", highlight=False)


@app.command("delete")
def delete_cmd(
    job: str = typer.Option(..., "--job"),
    step: int = typer.Option(..., "--step", help="The step to delete, every rank, on every tier."),
    agent: str | None = _AGENT,
    token_file: Path | None = _TOKEN_FILE,
) -> None:
    """Delete a step everywhere: the agent's tiers, its peers' and the object store."""
    from turbok.checkpoint.wire import Client

    agent = agent or os.environ.get("TURBOK_CHECKPOINT_AGENT")
    if agent is None:
        fail("say which agent to ask: --agent HOST:PORT")
    client = Client(agent, token=_token(token_file), timeout=300)
    try:
        client.call("delete_step", job=job, step=step, everywhere=True)
    finally:
        client.close()
    console.print(f"deleted {job} step {step}", highlight=False)


@app.command("events")
def events_cmd(
    job: str | None = typer.Option(None, "--job", help="Only this job."),
    agent: str | None = _AGENT,
    token_file: Path | None = _TOKEN_FILE,
    output: str = typer.Option("table", "-o", "--output", help="table, json or yaml."),
) -> None:
    """What an agent noticed: leases released, losses, hash mismatches, repairs, quarantines, evictions."""
    import time

    from turbok.checkpoint.wire import Client

    agent = agent or os.environ.get("TURBOK_CHECKPOINT_AGENT")
    if agent is None:
        fail("say which agent to ask: --agent HOST:PORT")
    client = Client(agent, token=_token(token_file))
    try:
        events = client.call("events", job=job)["events"]
    finally:
        client.close()
    if output != "table":
        print_data(events, output)
        return
    for e in events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
        console.print(f"{when}  {e['type']:7s}  {e['reason']:15s}  {e['message']}", markup=False, highlight=False)
