"""``turbok upgrade``: plan control-plane upgrades and rollbacks, and find what would break.

Commands: ``plan`` (an ordered, skew-checked plan with emulated versions and
rollback points), ``check`` (removed/deprecated APIs in manifests, Helm output
and live objects; skew violations; risky feature gates), ``apis`` (the
deprecation data turbok uses) and ``rehearse`` (a plan run step by step, with
its rollbacks, on the user's own binaries).

Exit codes, for CI: 0 clean, 2 deprecated APIs or other warnings, 3 removed
APIs or skew violations (blockers), 1 usage or input error (one line on
stderr: bad flags, unknown versions, malformed manifests, an unreachable
cluster, a rollback outside the emulation window). Click's own usage errors
are mapped to 1 as well, so 2 always means "deprecated". ``rehearse`` has its
own codes: 0 every step and rollback passed, 1 one failed, 2 usage or input
error, 130 interrupted.

Heavy imports stay inside the commands; the logic lives in ``turbok.upgrade``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from turbok.cli.output import console, err_console, fail, print_data, say_error

if TYPE_CHECKING:
    from turbok.upgrade.cluster import ClusterSnapshot
    from turbok.upgrade.components import ComponentFlags
    from turbok.upgrade.manifests import ManifestObject
    from turbok.upgrade.plan import ClusterState
    from turbok.upgrade.versions import Version

__all__ = ["app"]


try:  # typer >= 0.20 vendors click; older typer uses click itself: map usage errors of both
    from typer._click.exceptions import NoArgsIsHelpError as _VendoredNoArgs
    from typer._click.exceptions import UsageError as _VendoredUsageError

    _USAGE_ERRORS: tuple[type[Exception], ...] = (click.UsageError, _VendoredUsageError)
    _NO_ARGS: tuple[type[Exception], ...] = (click.exceptions.NoArgsIsHelpError, _VendoredNoArgs)
except ImportError:  # pragma: no cover - depends on the installed typer
    _USAGE_ERRORS = (click.UsageError,)
    _NO_ARGS = (click.exceptions.NoArgsIsHelpError,)


def _usage_exit(e: Exception, command_path: str) -> typer.Exit:
    """One line on stderr and exit 1: exit code 2 is reserved for "deprecated APIs found"."""
    ctx = getattr(e, "ctx", None)
    if isinstance(e, _NO_ARGS) and ctx is not None:
        typer.echo(ctx.get_help())
        return typer.Exit(1)
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    say_error(f"{message} (see `{command_path} --help`)")
    return typer.Exit(1)


def _path(parent: Any, info_name: str | None) -> str:
    return f"{parent.command_path} {info_name}" if parent is not None else str(info_name or "turbok upgrade")


class _Command(TyperCommand):
    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _USAGE_ERRORS as e:
            raise _usage_exit(e, _path(parent, info_name)) from None


class _RehearseCommand(TyperCommand):
    """``rehearse`` keeps the usual meaning of 2 (usage), since its 1 means "a step failed"."""

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _USAGE_ERRORS as e:
            exit_ = _usage_exit(e, _path(parent, info_name))
            raise typer.Exit(2 if exit_.exit_code == 1 else exit_.exit_code) from None


class _Group(TyperGroup):
    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _USAGE_ERRORS as e:
            raise _usage_exit(e, _path(parent, info_name)) from None

    def resolve_command(self, ctx: Any, args: Any) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except _USAGE_ERRORS as e:
            raise _usage_exit(e, ctx.command_path) from None


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    help="Plan safe control-plane upgrades (KEP-4330 emulated versions) and find removed APIs.\n\n"
         "Exit codes: 0 clean, 2 deprecated APIs or other warnings, 3 removed APIs or skew violations, "
         "1 usage or input error. See docs/upgrade.md.",
)


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


class StrategyOpt(StrEnum):
    auto = "auto"
    minor = "minor"
    classic = "classic"
    skip = "skip"


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """turbok.upgrade errors become one line and exit 1 (also when the sub-app runs on its own)."""
    from turbok.upgrade.errors import UpgradeError

    try:
        yield
    except UpgradeError as e:
        fail(str(e))


def _version(text: str | None, what: str) -> Version | None:
    from turbok.upgrade.versions import parse_version

    return parse_version(text, what=what) if text else None


def _paths(manifests: list[str] | None, paths: list[str] | None) -> list[str]:
    return [*(manifests or []), *(paths or [])]


def _read_cluster(kubeconfig: Path, context: str | None, *, kubectl: Version | None, objects: bool,
                  helm: bool) -> tuple[ClusterSnapshot, list[ManifestObject]]:
    from turbok.upgrade.apis import api_catalog
    from turbok.upgrade.cluster import ClusterReader, connect

    conn = connect(kubeconfig, context=context)
    with conn.client, err_console.status(f"Reading {conn.server} ...", spinner="dots"):
        reader = ClusterReader(conn.client, conn.server)
        snap = reader.snapshot(kubectl=kubectl)
        found: list[ManifestObject] = []
        if objects:
            found.extend(reader.objects(api_catalog().kinds()))
            if helm:
                found.extend(reader.helm_releases())
        snap.notes = reader.notes
    return snap, found


def _emit(data: dict[str, Any], output: Output) -> None:
    print_data(data, output.value)


_MANIFESTS = typer.Option(None, "--manifests", "-f", help="Manifest file or directory (repeatable; '-' reads stdin). "
                          "Helm output (helm template) works as is.")
_PATHS = typer.Argument(None, metavar="PATHS", help="More manifest files or directories.", show_default=False)
_KUBECONFIG = typer.Option(None, "--kubeconfig", help="Read the live cluster this kubeconfig points at.",
                           exists=False, dir_okay=False)
_CONTEXT = typer.Option(None, "--context", help="kubeconfig context (default: current-context).")
_OUTPUT = typer.Option(Output.table, "--output", "-o", help="table, json or yaml.")
_STRATEGY = typer.Option(StrategyOpt.auto, "--strategy",
                         help="auto (= minor): one kube-apiserver minor at a time, each emulating the previous one "
                              "first; classic: one minor at a time, no emulation; skip: skip binary minors with "
                              "emulation (KEP-4330, alpha) - UNSUPPORTED upstream, the plan says so.")
_FLAGS_FROM = typer.Option(None, "--flags-from", help="kubeadm static Pod manifests (/etc/kubernetes/manifests) or "
                           "ClusterConfiguration files: their flags and feature gates are checked against every binary "
                           "the plan installs (repeatable).")


@app.command("plan", cls=_Command)
def plan_cmd(
    to: str = typer.Option(..., "--to", help="Target version: 1.35 (newest known patch) or 1.35.2."),
    from_: str | None = typer.Option(None, "--from", help="Current control-plane version (default: read from --kubeconfig)."),
    from_emulated: str | None = typer.Option(None, "--from-emulated-version",
                                             help="The --emulated-version the control plane runs with now, if any."),
    min_compat: str | None = typer.Option(None, "--min-compatibility-version",
                                          help="The --min-compatibility-version it runs with now (1.35+), if set."),
    kubelet: str | None = typer.Option(None, "--kubelet-version", help="Oldest kubelet (default: --from)."),
    kube_proxy: str | None = typer.Option(None, "--kube-proxy-version", help="Oldest kube-proxy (default: kubelet's)."),
    ccm: str | None = typer.Option(None, "--ccm-version", "--cloud-controller-manager-version",
                                   help="Version of your cloud-controller-manager, if you run one."),
    strategy: StrategyOpt = _STRATEGY,
    etcd: str | None = typer.Option(None, "--etcd-version", help="The etcd your control plane runs (e.g. 3.5.24): "
                                    "etcd steps are planned one etcd minor at a time."),
    flags_from: list[str] | None = _FLAGS_FROM,
    kubeconfig: Path | None = _KUBECONFIG,
    context: str | None = _CONTEXT,
    manifests: list[str] | None = _MANIFESTS,
    paths: list[str] | None = _PATHS,
    output: Output = _OUTPUT,
) -> None:
    """Plan an upgrade (or a rollback, when --to is older) step by step, honouring the version skew policy."""
    from turbok.upgrade.apis import api_catalog
    from turbok.upgrade.checker import FindingKind, check_feature_gates, check_objects, check_skew_now
    from turbok.upgrade.manifests import read_manifests
    from turbok.upgrade.planner import PlanRequest, Strategy, make_plan
    from turbok.upgrade.report import render_plan

    with _errors():
        target = _version(to, "--to")
        assert target is not None
        objects: list[ManifestObject] = list(read_manifests(_paths(manifests, paths)).objects)
        snap = None
        if kubeconfig is not None:
            snap, live = _read_cluster(kubeconfig, context, kubectl=None, objects=True, helm=True)
            objects.extend(live)
        elif from_ is None:
            fail("--from is required unless --kubeconfig names a cluster to read it from")
        start = _start(snap, from_=from_, emulated=from_emulated, min_compat=min_compat, kubelet=kubelet,
                       kube_proxy=kube_proxy, ccm=ccm, etcd=etcd, flags_from=flags_from)
        flags = _flags(snap, flags_from)
        plan = make_plan(PlanRequest(start, target, Strategy(strategy.value), objects, flags))
        if snap is not None:
            plan.findings.extend(check_skew_now(snap.versions))
            plan.findings.extend(check_feature_gates(snap.feature_gates or []))
            plan.notes.extend(snap.notes)
        current = snap.apiserver.emulated if snap is not None else None
        plan.findings.extend(f for f in check_objects(objects, plan.target, api_catalog(), current=current)
                             if f.kind is FindingKind.DEPRECATED)
    if output is Output.table:
        render_plan(plan, console)
    else:
        _emit(plan.to_dict(), output)
    raise typer.Exit(plan.exit_code)


def _flags(snap: ClusterSnapshot | None, flags_from: list[str] | None) -> ComponentFlags | None:
    """The components' flags: files given with --flags-from, else the cluster's control-plane Pods."""
    from turbok.upgrade.components import read_flag_files

    if flags_from:
        return read_flag_files(flags_from)
    return snap.flags if snap is not None and snap.flags else None


def _start(snap: ClusterSnapshot | None, *, from_: str | None, emulated: str | None, min_compat: str | None,
           kubelet: str | None, kube_proxy: str | None, ccm: str | None, etcd: str | None = None,
           flags_from: list[str] | None = None) -> ClusterState:
    """The starting state: flags win; the cluster (or the static Pods in --flags-from) fills in what they leave out."""
    from turbok.upgrade.components import read_flag_files
    from turbok.upgrade.etcd import parse_etcd_version
    from turbok.upgrade.planner import start_state
    from turbok.upgrade.skew import Component
    from turbok.upgrade.versions import catalog

    etcd_version = parse_etcd_version(etcd) if etcd else None
    if etcd_version is None and flags_from:
        image = read_flag_files(flags_from).etcd_image
        if image:
            etcd_version = parse_etcd_version(image.rpartition(":")[2], what=f"etcd image {image}")
    if etcd_version is None and snap is not None:
        etcd_version = snap.etcd
    binary = _version(from_, "--from")
    emu = _version(emulated, "--from-emulated-version")
    mc = _version(min_compat, "--min-compatibility-version")
    kl, kp = _version(kubelet, "--kubelet-version"), _version(kube_proxy, "--kube-proxy-version")
    cc = _version(ccm, "--cloud-controller-manager-version")
    controllers = None
    if snap is not None:
        cp = snap.apiserver
        if binary is None:
            binary = cp.binary
            emu = emu or (cp.emulated if cp.emulating else None)
            mc = mc or (cp.min_compat if cp.binary.minor >= 35 else None)
            ctl = [i.control for i in snap.versions.of(Component.CONTROLLER_MANAGER) + snap.versions.of(Component.SCHEDULER)
                   if i.control is not None]
            controllers = min(ctl, key=lambda c: (c.emulated, c.binary)) if ctl else None
        v = snap.versions
        kl = kl or min((i.version for i in v.of(Component.KUBELET)), default=None)
        kp = kp or min((i.version for i in v.of(Component.KUBE_PROXY)), default=None)
        cc = cc or min((i.version for i in v.of(Component.CLOUD_CONTROLLER_MANAGER)), default=None)
    assert binary is not None
    catalog().require(binary, what="--from")
    state = start_state(binary, emulated=emu, min_compat=mc, kubelet=kl, kube_proxy=kp, ccm=cc, etcd=etcd_version)
    return state.with_(controllers=controllers) if controllers is not None else state


@app.command("check", cls=_Command)
def check_cmd(
    to: str = typer.Option(..., "--to", help="Target version to check against (its minor matters)."),
    manifests: list[str] | None = _MANIFESTS,
    paths: list[str] | None = _PATHS,
    kubeconfig: Path | None = _KUBECONFIG,
    context: str | None = _CONTEXT,
    kubectl: str | None = typer.Option(None, "--kubectl-version", help="Also check this kubectl version's skew."),
    helm: bool = typer.Option(True, "--helm-releases/--no-helm-releases",
                              help="With --kubeconfig, also check deployed Helm 3 releases."),
    output: Output = _OUTPUT,
) -> None:
    """Find deprecated and removed APIs, skew violations and risky feature gates for a target version."""
    from turbok.upgrade.apis import api_catalog
    from turbok.upgrade.checker import (
        CheckReport,
        check_feature_gates,
        check_objects,
        check_skew_at,
        check_skew_now,
    )
    from turbok.upgrade.manifests import read_manifests
    from turbok.upgrade.report import render_check
    from turbok.upgrade.skew import ClusterVersions, Component, Instance
    from turbok.upgrade.versions import catalog

    all_paths = _paths(manifests, paths)
    if not all_paths and kubeconfig is None and kubectl is None:
        fail("nothing to check: give --manifests PATH (or paths), --kubeconfig FILE and/or --kubectl-version")
    with _errors():
        target = _version(to, "--to")
        assert target is not None
        catalog().require(target, what="--to")
        apis = api_catalog()
        report = CheckReport(target=target)
        if all_paths:
            read = read_manifests(all_paths)
            report.inputs["manifests"] = {"files": read.files, "objects": len(read.objects), "skipped": read.skipped}
            report.findings.extend(check_objects(read.objects, target, apis))
        if kubeconfig is not None:
            snap, live = _read_cluster(kubeconfig, context, kubectl=_version(kubectl, "--kubectl-version"),
                                       objects=True, helm=helm)
            report.inputs["cluster"] = {"server": snap.server, "apiserver": str(snap.apiserver),
                                        "objects": len(live)}
            report.findings.extend(check_objects(live, target, apis, current=snap.apiserver.emulated))
            report.findings.extend(check_skew_now(snap.versions))
            report.findings.extend(check_skew_at(snap.versions, target))
            if snap.feature_gates is not None:
                report.findings.extend(check_feature_gates(snap.feature_gates))
            report.notes.extend(snap.notes)
        elif kubectl is not None:
            local = _version(kubectl, "--kubectl-version")
            assert local is not None
            report.findings.extend(check_skew_at(ClusterVersions((Instance(Component.KUBECTL, "local", local),)), target))
    if output is Output.table:
        render_check(report, console)
    else:
        _emit(report.to_dict(), output)
    raise typer.Exit(report.exit_code)


@app.command("apis", cls=_Command)
def apis_cmd(
    to: str | None = typer.Option(None, "--to", help="Only what is deprecated or removed at this version."),
    output: Output = _OUTPUT,
) -> None:
    """List the deprecated and removed API versions turbok knows, with replacements and sources."""
    from turbok.upgrade.apis import api_catalog
    from turbok.upgrade.report import render_apis

    with _errors():
        target = _version(to, "--to")
        apis = api_catalog()
        if target is not None:
            from turbok.upgrade.versions import catalog

            catalog().require(target, what="--to")
    if output is Output.table:
        render_apis(apis, console, target)
        return
    rows = []
    for e in apis:
        if target is not None and apis.availability(e.api_version, e.kind, target).status.value not in ("deprecated", "removed"):
            continue
        rows.append({"apiVersion": e.api_version, "kind": e.kind, "stage": e.stage, "deprecatedIn": str(e.deprecated_in),
                     "removedIn": str(e.removed_in) if e.removed_in is not None else None, "replacement": e.replacement, "source": e.source, "notes": e.notes})
    _emit({"kind": "DeprecatedApiList", "asOf": apis.as_of, "items": rows}, output)


@app.command("rehearse", cls=_RehearseCommand)
def rehearse_cmd(
    to: str = typer.Option(..., "--to", help="Target version: 1.37 (the newest patch among --assets) or 1.37.2."),
    from_: str = typer.Option(..., "--from", help="The control plane's version now; its binaries must be in --assets."),
    assets: list[Path] = typer.Option(..., "--assets", help="Your binaries: a directory laid out like unpack.sh's "
                                      "output (one folder per version) or like KUBEBUILDER_ASSETS (repeatable).",
                                      file_okay=False),
    from_emulated: str | None = typer.Option(None, "--from-emulated-version",
                                             help="The --emulated-version the control plane runs with now, if any."),
    min_compat: str | None = typer.Option(None, "--min-compatibility-version",
                                          help="The --min-compatibility-version it runs with now (1.35+), if set."),
    strategy: StrategyOpt = _STRATEGY,
    manifests: list[str] | None = _MANIFESTS,
    paths: list[str] | None = _PATHS,
    output: Output = _OUTPUT,
) -> None:
    """Run a plan step by step on a scratch control plane made of your own binaries, with every rollback.

    Exit codes: 0 every step and rollback passed, 1 one failed, 2 usage or input error, 130 interrupted.
    """
    from dataclasses import replace

    from turbok.upgrade.assets import find_assets
    from turbok.upgrade.errors import UpgradeError
    from turbok.upgrade.manifests import read_manifests
    from turbok.upgrade.planner import PlanRequest, Strategy, make_plan, start_state
    from turbok.upgrade.rehearsal import StepResult, rehearse
    from turbok.upgrade.report import render_rehearsal, render_step_result
    from turbok.upgrade.versions import catalog

    progress_console = err_console if output is not Output.table else console
    try:
        found = find_assets(assets)
        releases = catalog()
        newest = {v.mm: s.version.patch or 0 for v, s in sorted(found.sets.items())}
        # plan with the patches the user has, not the newest ones turbok knows of
        releases = replace(releases, latest_patch={**releases.latest_patch, **newest})
        target = _version(to, "--to")
        binary = _version(from_, "--from")
        assert target is not None and binary is not None
        binary = found.get(binary).version
        start = start_state(binary, emulated=_version(from_emulated, "--from-emulated-version"),
                            min_compat=_version(min_compat, "--min-compatibility-version"))
        read = read_manifests(_paths(manifests, paths))
        bodies = [o.body for o in read.objects if o.body is not None]
        plan = make_plan(PlanRequest(start, target, Strategy(strategy.value)), releases=releases)

        def progress(step: StepResult) -> None:
            render_step_result(step, progress_console)

        result = rehearse(plan, found, bodies, progress=progress)
    except KeyboardInterrupt:
        say_error("interrupted: every process of the scratch control plane was stopped")
        raise typer.Exit(130) from None
    except UpgradeError as e:
        say_error(str(e))
        raise typer.Exit(2) from None
    if output is Output.table:
        render_rehearsal(result, console)
    else:
        _emit(result.to_dict(), output)
    raise typer.Exit(0 if result.ok else 1)
