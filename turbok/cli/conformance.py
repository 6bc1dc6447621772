"""``turbok conformance``: list the AI Conformance requirements, check a cluster, validate a PRODUCT.yaml.

Exit codes (all three commands): 0 when every MUST requirement passed (or is
N/A by its condition) / every file is valid; 1 when something failed (a
requirement, a file, the cluster); 2 for usage errors (bad options, unknown
version, no kubeconfig, unreadable file); 130 after Ctrl-C (``run``, once
cleanup is done). ``-o json`` prints one JSON document on stdout and keeps
progress on stderr. The work lives in ``turbok.conformance``; this module
only parses options and draws progress.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer

from turbok.cli.output import console, err_console, fail, print_data

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from turbok.conformance.catalog import Requirement
    from turbok.conformance.results import CheckResult, RunReport

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Certified Kubernetes AI Conformance: list, run, validate.")

_STYLE = {"Passed": "green", "Failed": "red", "Skipped": "yellow", "Unknown": "magenta"}
_ICON = {"Passed": "✔", "Failed": "✘", "Skipped": "–", "Unknown": "?"}


def _format(output: str, allowed: tuple[str, ...] = ("table", "json")) -> str:
    if output not in allowed:
        fail(f"unknown output format {output!r}: use {' or '.join(allowed)}", code=2)
    return output


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; usage and kubeconfig errors exit 2, other conformance errors exit 1, with one line."""
    from turbok.client.errors import KubeconfigError
    from turbok.conformance.errors import ConformanceError, UsageError

    try:
        return fn(*args, **kwargs)
    except (UsageError, KubeconfigError) as e:
        fail(str(e), code=2)
    except ConformanceError as e:
        fail(str(e), code=1)


# -- list ---------------------------------------------------------------------------------------


@app.command("list")
def list_requirements(
    version: str | None = typer.Option(None, "--version", help="One checklist version (1.33 .. 1.37)."),
    output: str = typer.Option("table", "--output", "-o", help="table or json."),
    drafts: bool = typer.Option(True, "--drafts/--no-drafts", help="Include draft requirements of future versions."),
) -> None:
    """List the requirements of every checklist, or of one version."""
    from rich.table import Table

    from turbok.conformance import catalog

    fmt = _format(output)
    versions = [version] if version else list(catalog.frozen_versions()) + (list(catalog.draft_versions()) if drafts else [])
    lists = [_guard(catalog.checklist, v) for v in versions]
    if fmt == "json":
        print_data({"checklists": [c.to_dict() for c in lists]}, "json")
        return
    if version:
        cl = lists[0]
        table = Table(title=f"AI Conformance v{cl.version}{' (draft)' if cl.draft else ''}", show_lines=True)
        for col in ("id", "category", "level", "description"):
            table.add_column(col, overflow="fold")
        for r in cl.requirements:
            table.add_row(r.id + (" (draft)" if r.draft else ""), r.category, r.level, r.description)
        console.print(table)
        return
    table = Table(title="AI Conformance requirements per Kubernetes version")
    table.add_column("id", no_wrap=True)
    table.add_column("category", overflow="fold")
    for cl in lists:
        table.add_column(f"{cl.version}{' draft' if cl.draft else ''}", justify="center")
    rows: dict[str, list[str]] = {}
    for i, cl in enumerate(lists):
        for r in cl.requirements:
            row = rows.setdefault(r.id, [r.id, r.category] + [""] * len(lists))
            row[2 + i] = r.level + ("*" if r.draft else "")
    for row in rows.values():
        table.add_row(*row)
    console.print(table)
    if any(cl.draft for cl in lists):
        console.print("* draft requirement, not in a frozen checklist yet", style="dim")


# -- run ----------------------------------------------------------------------------------------


class _Progress:
    """Draws the run with rich: a bar over the checks, the current step, one line per result."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def run_started(self, report: RunReport, selected: list[Requirement]) -> None:
        c = report.cluster
        self.progress.console.print(
            f"[bold]AI Conformance v{report.checklist_version}[/] against {c.server} "
            f"(context {c.context}, Kubernetes {c.git_version or '?'}, {c.engine}); run {report.run_id}"
        )
        for note in report.notes:
            self.progress.console.print(f"  note: {note}", style="dim", markup=False)
        self.task = self.progress.add_task("starting", total=len(selected))

    def check_started(self, requirement: Requirement) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=f"{requirement.id}")

    def check_step(self, requirement: Requirement, message: str) -> None:
        if self.task is not None:
            short = message if len(message) < 70 else message[:67] + "..."
            self.progress.update(self.task, description=f"{requirement.id}: {short}")

    def check_finished(self, result: CheckResult) -> None:
        from rich.text import Text

        s = result.status.value
        r = result.requirement
        line = Text(f"  {_ICON[s]} {s:<8}", style=_STYLE[s])
        origin = ", draft" if r.draft else (f", newer v{r.version}" if r.extra else "")
        line.append(f"{r.id} [{r.level}{origin}] ", style="bold")
        line.append(f"{result.reason} ({result.duration:.1f}s)")
        self.progress.console.print(line)
        if self.task is not None:
            self.progress.advance(self.task)

    def cleanup(self, message: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=f"cleanup: {message}")
        self.progress.console.print(f"  cleanup: {message}", style="dim", markup=False)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@app.command("run")
def run(
    kubeconfig: Path | None = typer.Option(None, "--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)."),
    context: str | None = typer.Option(None, "--context", help="Kubeconfig context (default: current-context)."),
    version: str | None = typer.Option(None, "--version", help="Checklist version to check against (default: the cluster's)."),
    focus: str | None = typer.Option(None, "--focus", help="Only requirements whose category/id matches this regular expression."),
    skip: str | None = typer.Option(None, "--skip", help="Leave out requirements whose category/id matches this regular expression."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Where reports go (default: ./turbok-conformance-TIMESTAMP)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Detect the version and print what would run; create nothing."),
    cleanup: bool = typer.Option(False, "--cleanup", help="Only delete leftovers labelled by earlier (interrupted) runs."),
    output: str = typer.Option("table", "--output", "-o", help="table or json (the results document on stdout)."),
    drafts: bool = typer.Option(True, "--drafts/--no-drafts", help="Also run checks of requirements that newer checklists "
                                "add (and drafts) as extras; they never affect the exit code."),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="Seconds to wait for each thing a check waits for."),
    negative_wait: float = typer.Option(30.0, "--negative-wait", min=0, help="Seconds to watch that something does NOT happen."),
    autoscaling_timeout: float = typer.Option(900.0, "--autoscaling-timeout", min=1, help="Seconds to wait for nodes to come and go."),
    poll_interval: float = typer.Option(2.0, "--poll-interval", min=0.01, help="Seconds between polls.", hidden=True),
    image: str | None = typer.Option(None, "--image", help="Small image with a shell for probe pods (busybox)."),
    cuda_image: str | None = typer.Option(None, "--cuda-image", help="Image with nvidia-smi for NVIDIA probes."),
    accelerator_resource: str | None = typer.Option(None, "--accelerator-resource", help="Extended resource of your accelerators (e.g. nvidia.com/gpu)."),
    gateway_class: str | None = typer.Option(None, "--gateway-class", help="GatewayClass to test (default: the first accepted one)."),
    sandbox_runtime_class: str | None = typer.Option(None, "--sandbox-runtime-class", help="RuntimeClass that sandboxes (default: gvisor, kata...)."),
    metrics_endpoint: str | None = typer.Option(None, "--metrics-endpoint", help="Accelerator metrics endpoint: NAMESPACE/SERVICE:PORT, optionally followed by /PATH."),
    prometheus: str | None = typer.Option(None, "--prometheus", help="Prometheus query API as NAMESPACE/SERVICE:PORT."),
) -> None:
    """Check a cluster against the AI Conformance checklist of its version; write reports."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from turbok.client.kubeconfig import load_kubeconfig
    from turbok.conformance import cleanup as cleanup_mod
    from turbok.conformance import reports
    from turbok.conformance.checks import CheckOptions
    from turbok.conformance.kube import KubeClient
    from turbok.conformance.runner import Runner, RunSettings

    fmt = _format(output)
    out = err_console if fmt == "json" else console
    config = _guard(load_kubeconfig, kubeconfig, context)
    options = CheckOptions(timeout=timeout, poll_interval=poll_interval, negative_wait=negative_wait,
                           autoscaling_timeout=autoscaling_timeout, accelerator_resource=accelerator_resource,
                           gateway_class=gateway_class, sandbox_runtime_class=sandbox_runtime_class,
                           metrics_endpoint=metrics_endpoint, prometheus=prometheus)
    if image:
        options.image = image
    if cuda_image:
        options.cuda_image = cuda_image
    client = _guard(KubeClient, config)
    with client:
        if cleanup:
            deleted, errors = _guard(cleanup_mod.sweep, client, on_delete=lambda name: out.print(f"deleted {name}", markup=False))
            if fmt == "json":
                print_data({"deleted": deleted, "errors": errors}, "json")
            else:
                out.print(f"deleted {deleted} object(s) labelled app.kubernetes.io/managed-by=turbok-conformance")
                for e in errors:
                    err_console.print(f"could not delete {e}", markup=False)
            raise typer.Exit(1 if errors else 0)
        settings = RunSettings(version=version, focus=focus, skip=skip, include_drafts=drafts, dry_run=dry_run, options=options)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        previous = signal.signal(signal.SIGTERM, _sigterm)
        try:
            with Progress(*columns, console=out, transient=True) as progress:
                report = _guard(Runner(client, settings, _Progress(progress)).run)
        finally:
            signal.signal(signal.SIGTERM, previous)
    written: dict[str, Path] = {}
    if not dry_run:
        target = output_dir or Path(f"turbok-conformance-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            written = reports.write_reports(report, target)
        except OSError as e:
            fail(f"cannot write reports to {target}: {e.strerror}")
    if fmt == "json":
        data = report.to_dict()
        data["reports"] = {k: str(v) for k, v in written.items()}
        print_data(data, "json")
    else:
        _summary(report, written)
    raise typer.Exit(report.exit_code)


def _summary(report: RunReport, written: dict[str, Path]) -> None:
    c = report.counts()
    if report.dry_run:
        console.print(f"[bold]dry run[/]: nothing was created; {c['Skipped']} check(s) above would run")
        return
    verdict = "[green]all MUST requirements satisfied[/]" if report.must_satisfied else "[red]MUST requirements not satisfied[/]"
    if report.interrupted:
        verdict = "[yellow]interrupted[/]: partial results"
    console.print(f"{c['Passed']} passed, {c['Failed']} failed, {c['Skipped']} skipped, {c['Unknown']} unknown: {verdict}")
    if report.cleanup_leftovers:
        console.print(f"[yellow]{len(report.cleanup_leftovers)} object(s) could not be deleted[/]: run `turbok conformance run --cleanup`")
    if written:
        console.print(f"reports in {written['results.json'].parent}: " + ", ".join(written), markup=False)


# -- validate -----------------------------------------------------------------------------------


@app.command("validate")
def validate(
    files: list[Path] = typer.Argument(..., help="PRODUCT.yaml files (evidence paths resolve next to each)."),
    check_urls: bool = typer.Option(False, "--check-urls", help="Also fetch every evidence and metadata URL."),
    output: str = typer.Option("table", "--output", "-o", help="table or json."),
) -> None:
    """Apply the CNCF submission rules to PRODUCT.yaml files."""
    from rich.markup import escape

    from turbok.conformance.validator import validate_file

    fmt = _format(output)
    for f in files:
        if not f.is_file():
            fail(f"{f} is not a file", code=2)
    results = [_guard(validate_file, f, check_urls=check_urls) for f in files]
    if fmt == "json":
        print_data({"valid": all(r.ok for r in results), "files": [r.to_dict() for r in results]}, "json")
    else:
        for r in results:
            for finding in sorted(r.findings, key=lambda x: (x.line or 0, x.severity)):
                style = "red" if finding.severity == "error" else "yellow"
                console.print(finding.format(r.source), style=style, markup=False, highlight=False, soft_wrap=True)
            head = escape(f"{r.source} (v{r.version or '?'}): ")
            if r.ok:
                console.print(f"[green]✔[/] {head}valid" + (f", {len(r.warnings)} warning(s)" if r.warnings else ""), highlight=False)
            else:
                console.print(f"[red]✘[/] {head}{len(r.errors)} error(s), {len(r.warnings)} warning(s)", highlight=False)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
