"""``turbok checkpoint``: run the node agent; list, verify and restore checkpoints.

Thin: the work is in turbok.checkpoint (agent.py, inventory.py). Heavy imports
stay inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from turbok.cli.output import console, fail, print_data

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Multi-tier checkpoints: agent, ls, verify, restore.")

_AGENT = typer.Option(None, "--agent", help="A node agent HOST:PORT to ask (default: $TURBOK_CHECKPOINT_AGENT).")
_CONFIG = typer.Option(None, "--config", help="Agent settings or CheckpointConfiguration YAML naming the tiers.")


def _tiers(agent: str | None, config: Path | None) -> Any:
    import os

    from turbok.checkpoint.inventory import Tiers

    if agent is None and config is None:
        agent = os.environ.get("TURBOK_CHECKPOINT_AGENT")
        if agent is None:
            fail("say where the checkpoints are: --agent HOST:PORT or --config FILE")
    return Tiers(agent=agent, config=config)


@app.command("agent")
def agent_cmd(
    config: Path | None = _CONFIG,
    from_cluster: str | None = typer.Option(None, "--from-cluster", help="Read the CheckpointConfiguration NAME from the API server."),
    kubeconfig: Path | None = typer.Option(None, "--kubeconfig", help="Kubeconfig for --from-cluster (default: turbok's own)."),
    listen: str | None = typer.Option(None, help="HOST:PORT to serve on (port 0: any free port)."),
    advertise: str | None = typer.Option(None, help="Address peers reach this agent at."),
    metrics_listen: str | None = typer.Option(None, "--metrics-listen", help="HOST:PORT for Prometheus /metrics."),
    memory_dir: str | None = typer.Option(None, "--memory-dir", help="tmpfs directory of the memory tier."),
    disk_dir: str | None = typer.Option(None, "--disk-dir", help="Directory of the local disk tier."),
    memory_size: str | None = typer.Option(None, "--memory-size", help="Memory tier capacity (e.g. 8Gi)."),
    peer: list[str] = typer.Option([], "--peer", help="A peer agent HOST:PORT (repeat)."),
    replication_factor: int | None = typer.Option(None, "--replication-factor"),
    storage_url: str | None = typer.Option(None, "--storage-url", help="s3://, gs://, az:// or file:// URL for backups."),
    backup_every_steps: int | None = typer.Option(None, "--backup-every-steps"),
) -> None:
    """Run the node agent until SIGTERM or Ctrl-C."""
    import signal
    import threading

    from turbok.checkpoint.agent import Agent
    from turbok.checkpoint.config import Settings, fetch_configuration

    settings = Settings()
    if config is not None:
        settings = Settings.from_file(config, settings)
    if from_cluster is not None:
        from turbok.home import home

        settings = Settings.from_dict(fetch_configuration(from_cluster, kubeconfig=kubeconfig or home().kubeconfig), settings)
    overrides: dict[str, Any] = {
        "listen": listen, "advertise": advertise, "metrics_listen": metrics_listen, "memory_dir": memory_dir,
        "disk_dir": disk_dir, "memory_size": memory_size, "replication_factor": replication_factor,
        "storage_url": storage_url, "backup_every_steps": backup_every_steps, "peers": list(peer) or None,
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


@app.command("ls")
def ls_cmd(
    job: str = typer.Option(..., "--job", help="The job to list."),
    agent: str | None = _AGENT,
    config: Path | None = _CONFIG,
    output: str = typer.Option("table", "-o", "--output", help="table, json or yaml."),
) -> None:
    """Show every step of a job against the tiers holding it (complete or not)."""
    from rich.table import Table

    from turbok.checkpoint.errors import JobNotFoundError

    with _tiers(agent, config) as tiers:
        rows, unreachable = tiers.rows(job)
    if not rows:
        raise JobNotFoundError(f"job {job!r} has no checkpoint on any reachable tier")
    if output != "table":
        data = [
            {"step": r.step, "worldSize": r.world_size, "complete": r.complete,
             "ranks": {str(k): [{"tier": t, "committed": c} for t, c in v] for k, v in r.copies.items()}}
            for r in rows
        ]
        print_data({"job": job, "steps": data, "unreachable": unreachable}, output)
        return
    table = Table(title=f"checkpoints of {job}")
    table.add_column("STEP", justify="right")
    table.add_column("COMPLETE")
    table.add_column("RANK")
    table.add_column("COPIES (* = partial)")
    for r in rows:
        first = True
        for rank, copies in r.copies.items():
            where = "  ".join(t if c else f"{t}*" for t, c in copies)
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
) -> None:
    """Re-hash every committed copy; exit 1 if any copy is corrupt or unreadable."""
    with _tiers(agent, config) as tiers:
        checked, bad = tiers.verify(job, step)
    for b in bad:
        console.print(f"BAD  {b.key}  on {b.tier}: {b.problem}", markup=False, highlight=False)
    if bad:
        fail(f"{len(bad)} of {checked} copies of {job} failed verification")
    console.print(f"ok: {checked} copies of {job} verified", highlight=False)


@app.command("restore")
def restore_cmd(
    job: str = typer.Option(..., "--job"),
    to: Path = typer.Option(..., "--to", help="Directory to write the step into (disk-tier layout)."),
    step: int | None = typer.Option(None, "--step", help="Step to restore (default: newest complete)."),
    agent: str | None = _AGENT,
    config: Path | None = _CONFIG,
) -> None:
    """Fetch every rank of a step from the fastest verified copies into a directory."""
    from turbok.checkpoint.inventory import restore_to

    with _tiers(agent, config) as tiers:
        chosen, manifests = restore_to(
            tiers, job, step, to, progress=lambda m: console.print(f"rank {m.key.rank}: {m.payload_bytes} bytes", highlight=False)
        )
    console.print(f"restored {job} step {chosen} ({len(manifests)} ranks) to {to}", highlight=False)
