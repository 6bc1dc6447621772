"""Rendering plans, check reports and the API data for people (rich tables) and CI (JSON).

Machine-readable output is the ``to_dict`` of each object, unchanged; the
tables here are for reading. Nothing here decides anything: severities and
exit codes come from ``checker`` and ``plan``. Called by the CLI with its console.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from turbok.upgrade.apis import ApiCatalog, ApiStatus
from turbok.upgrade.checker import CheckReport, Finding, Severity
from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.plan import Plan, StepKind, Support
from turbok.upgrade.rehearsal import Rehearsal, StepResult
from turbok.upgrade.versions import Version

__all__ = ["render_apis", "render_check", "render_plan", "render_rehearsal", "render_step_result"]

_SEVERITY_STYLE = {Severity.BLOCKER: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_EXIT_MEANING = {0: "clean", 2: "warnings (deprecated or off-by-default APIs, risky feature gates)",
                 3: "blockers (removed APIs, skew violations, flags a new binary refuses)"}


def _findings_table(findings: Iterable[Finding], title: str) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left", pad_edge=False)
    t.add_column("severity", no_wrap=True)
    t.add_column("object / where", ratio=3, overflow="fold")
    t.add_column("apiVersion / use instead", ratio=2, overflow="fold")
    t.add_column("depr/rm", no_wrap=True)
    for f in findings:
        sev = Text(f"{f.severity.name.lower()}\n{f.kind}", style=_SEVERITY_STYLE[f.severity])
        obj = Text(f.subject)
        if f.where:
            obj.append(f"\n{f.where}", style="dim")
        api = Text(f.api_version)
        if f.api_version:
            api.append(f"\n→ {f.replacement or 'no replacement'}", style="green" if f.replacement else "red")
        when = f"{f.deprecated_in or '-'}/{f.removed_in}" if f.removed_in else ""
        t.add_row(sev, obj, api, when)
    return t


def _messages(console: Console, findings: Iterable[Finding]) -> None:
    seen: set[str] = set()
    for f in findings:
        if f.message in seen:
            continue
        seen.add(f.message)
        console.print(Text(f"  • {f.message}", style=_SEVERITY_STYLE[f.severity]), soft_wrap=True)
        if f.source:
            console.print(Text(f"    source: {f.source}", style="dim"), soft_wrap=True)


def render_check(report: CheckReport, console: Console) -> None:
    """The findings table, what each means, what was read, and the exit code's meaning."""
    inputs = report.inputs
    console.print(Text(f"Upgrade check for Kubernetes {report.target}", style="bold"))
    if "manifests" in inputs:
        m = inputs["manifests"]
        console.print(f"  manifests: {m['files']} file(s), {m['objects']} object(s), "
                      f"{m['skipped']} non-object document(s) skipped")
    if "cluster" in inputs:
        c = inputs["cluster"]
        console.print(f"  cluster: {c['server']} running {c['apiserver']}, {c['objects']} object view(s) read")
    if report.findings:
        ordered = sorted(report.findings, key=lambda f: (-int(f.severity), str(f.kind), f.subject))
        console.print(_findings_table(ordered, f"{len(ordered)} finding(s)"))
        _messages(console, ordered)
    else:
        console.print(Text("No deprecated or removed APIs, skew violations or risky feature gates found.", style="green"))
    for note in report.notes:
        console.print(Text(f"  note: {note}", style="dim"), soft_wrap=True)
    console.print(f"exit code {report.exit_code}: {_EXIT_MEANING.get(report.exit_code, '')}")


_SHORT = {StepKind.APISERVER: "apiserver", StepKind.EMULATION: "emulation", StepKind.CLOUD_CONTROLLER_MANAGER: "ccm",
          StepKind.ETCD: "etcd"}


def _cp(cp: ControlPlaneVersion) -> str:
    return f"{cp.binary} ({cp.emulated})" if cp.emulating else str(cp.binary)


_SUPPORT_STYLE = {Support.UPSTREAM: "green", Support.VENDOR: "yellow", Support.ETCD_SNAPSHOT: "bold red",
                  Support.UNSUPPORTED: "bold red", Support.NOT_NEEDED: "dim"}
_UNDO = {Support.UPSTREAM: "upstream", Support.VENDOR: "vendor", Support.ETCD_SNAPSHOT: "etcd",
         Support.UNSUPPORTED: "none", Support.NOT_NEEDED: "-"}


def render_plan(plan: Plan, console: Console) -> None:
    """The step table, then each step's runbook: actions, who supports it, rollback, blockers."""
    start, end = plan.start, plan.end
    if plan.direction == "none":
        console.print(Text(f"Nothing to do: the control plane already runs {start.apiserver}", style="bold"))
    else:
        head = f"{plan.direction.capitalize()} plan: {start.apiserver} → {end.apiserver}"
        if plan.direction == "upgrade":
            head += f" (strategy {plan.strategy})"
        console.print(Text(head, style="bold"))
    for w in plan.warnings:
        console.print(Text(f"  ! {w}", style="bold red"), soft_wrap=True)
    if plan.skipped_binaries:
        console.print(f"  binaries skipped with emulation: {', '.join(str(v) for v in plan.skipped_binaries)}")
    for note in plan.notes:
        console.print(Text(f"  note: {note}", style="dim"), soft_wrap=True)
    if plan.findings:
        console.print(_findings_table(plan.findings, "Before you start"))
        _messages(console, plan.findings)
    if not plan.steps:
        if plan.direction != "none":
            console.print("Nothing to do.")
        return
    with_ccm = any(s.state.ccm is not None for s in plan.steps)
    with_etcd = any(s.state.etcd is not None for s in plan.steps)
    t = Table(box=box.SIMPLE_HEAVY, show_lines=False, pad_edge=False, caption_justify="left",
              caption="(x.y): --emulated-version   *: skippable   undo: who supports the way back (upstream, a vendor, "
                      "or only the etcd snapshot)")
    cols = ("#", "step") + (("etcd",) if with_etcd else ()) + ("kube-apiserver", "kcm+scheduler")
    for col in cols + (("ccm",) if with_ccm else ()) + ("nodes", "undo"):
        t.add_column(col, no_wrap=True)
    for s in plan.steps:
        st = s.state
        nodes = str(st.kubelet) if st.kubelet == st.kube_proxy else f"{st.kubelet}/{st.kube_proxy}"
        undo = Text(_UNDO[s.rollback.support], style=_SUPPORT_STYLE[s.rollback.support])
        label = _SHORT.get(s.kind, str(s.kind))
        bad = s.findings or s.support is Support.UNSUPPORTED
        kind = Text(label, style="bold red") if bad else Text(label)
        row: list[str | Text] = [f"{s.number}{'*' if s.skippable else ''}", kind]
        if with_etcd:
            row.append(str(st.etcd) if st.etcd is not None else "-")
        row += [_cp(st.apiserver), _cp(st.controllers)]
        if with_ccm:
            row.append(str(st.ccm) if st.ccm is not None else "-")
        row += [nodes, undo]
        t.add_row(*row)
    console.print(t)
    console.print(Text("Runbook", style="bold"))
    for s in plan.steps:
        console.print(Text(f"{s.number}. {s.title}", style="bold"))
        if s.support is Support.VENDOR:
            console.print(Text(f"   this step is a vendor feature only ({', '.join(s.vendors)})",
                               style=_SUPPORT_STYLE[s.support]))
        elif s.support is not Support.UPSTREAM:
            console.print(Text(f"   this step is {str(s.support).upper()} upstream", style=_SUPPORT_STYLE[s.support]))
        for a in s.actions:
            console.print(f"   - {a}", soft_wrap=True, markup=False)
        for n in s.notes:
            console.print(Text(f"   note: {n}", style="dim"), soft_wrap=True)
        lo, hi = s.state.kubectl_range()
        console.print(Text(f"   after it: kube-apiserver {s.state.apiserver}, kubectl {lo} to {hi} supported", style="dim"),
                      soft_wrap=True)
        if s.skippable:
            console.print(Text(f"   skippable: {s.skip_reason}", style="cyan"), soft_wrap=True)
        rb = s.rollback
        if rb.support is not Support.NOT_NEEDED:
            console.print(Text(f"   rollback to the state after step {rb.to_step} ({rb.label()}):",
                               style=_SUPPORT_STYLE[rb.support]))
            for a in rb.actions:
                console.print(f"     - {a}", soft_wrap=True, markup=False)
            if rb.note:
                console.print(Text(f"     why: {rb.note}", style="dim"), soft_wrap=True)
        for f in s.findings:
            console.print(Text(f"   BLOCKER before this step: {f.subject} ({f.where}): {f.message}", style="bold red"),
                          soft_wrap=True)
    if not plan.supported:
        console.print(Text("This plan is NOT SUPPORTED upstream (see the warnings above).", style="bold red"))
    console.print(f"exit code {plan.exit_code}: {_EXIT_MEANING.get(plan.exit_code, '')}")


def render_apis(catalog: ApiCatalog, console: Console, target: Version | None) -> None:
    """The deprecation data as a table; with ``target``, only what is deprecated or removed there."""
    title = f"Deprecated and removed API versions{f' at {target.mm}' if target else ''} (data as of {catalog.as_of})"
    t = Table(box=box.SIMPLE_HEAVY, title=title, title_justify="left", pad_edge=False)
    t.add_column("apiVersion", overflow="fold", ratio=3)
    t.add_column("kind", overflow="fold", ratio=2)
    t.add_column("depr", no_wrap=True)
    t.add_column("removed", no_wrap=True)
    t.add_column("replacement", overflow="fold", ratio=3)
    never = Version(1, 10**6)  # sorts "no removal planned" last
    for e in sorted(catalog, key=lambda e: (e.removed_in or never, e.api_version, e.kind)):
        if target is not None:
            a = catalog.availability(e.api_version, e.kind, target)
            if a.status not in (ApiStatus.DEPRECATED, ApiStatus.REMOVED):
                continue
        if e.removed_in is None:
            removed = Text("never", style="dim")
        else:
            gone = target is not None and target.mm >= e.removed_in
            removed = Text(str(e.removed_in), style="bold red" if gone else "")
            if e.removed_in > catalog.newest_release:
                removed.append("?", style="dim")
        t.add_row(e.api_version, e.kind, str(e.deprecated_in), removed, e.replacement or "—")
    console.print(t)
    console.print(Text("?: planned removal (after the newest release in the data). Sources per entry: -o json.",
                       style="dim"))


def render_step_result(step: StepResult, console: Console) -> None:
    """One rehearsed step as it finishes: a line, and the failed checks under it."""
    mark = Text("ok  ", style="green") if step.ok else Text("FAIL", style="bold red")
    emu = f" (emulating {step.emulated_version})" if step.emulated_version else ""
    line = Text.assemble(mark, f" {step.number}. {step.title}  ", (f"[{step.binary}{emu}; rollback: {step.rollback}]",
                                                                     "dim"))
    console.print(line, soft_wrap=True)
    for c in step.checks:
        if not c.ok:
            console.print(Text(f"       {c.name}: {c.detail}", style="red"), soft_wrap=True, markup=False)


def render_rehearsal(rehearsal: Rehearsal, console: Console) -> None:
    """The summary after the live lines: what passed, and what was learned about the binaries."""
    plan = rehearsal.plan
    if plan.direction == "none":
        console.print(Text(f"Nothing to rehearse: the control plane already runs {plan.start.apiserver}", style="bold"))
        return
    checks = [c for s in rehearsal.steps for c in s.checks]
    failed = [c for c in checks if not c.ok]
    style = "bold green" if rehearsal.ok else "bold red"
    console.print(Text(f"Rehearsal of {plan.direction} {plan.start.apiserver} → {plan.end.apiserver}: "
                       f"{len(rehearsal.steps)} step(s), {len(checks)} check(s), {len(failed)} failed", style=style))
    learned = rehearsal.learned
    for b, accepted in sorted(learned.accepted_emulation.items()):
        if accepted:
            console.print(f"  kube-apiserver {b} accepts --emulated-version {accepted[0]}..{accepted[-1]}")
    for r in learned.binary_rollbacks:
        wrote = f" emulating {r.newer_emulated}" if r.newer_emulated else ""
        verdict = "worked" if r.ok else f"FAILED ({r.detail})"
        console.print(f"  kube-apiserver {r.older} on data written by {r.newer}{wrote}: {verdict}")
    if not plan.supported:
        console.print(Text("  the plan rehearsed is NOT SUPPORTED upstream: it skips kube-apiserver minors",
                           style="bold red"))
    console.print(f"exit code {0 if rehearsal.ok else 1}")
