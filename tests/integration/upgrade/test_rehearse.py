"""`turbok upgrade rehearse` on the real binaries of ../shared/kube, and what it learns compared with the tables.

Cost: the full rehearsal (1.36.3 -> 1.37.2, every rollback) starts etcd once,
kube-apiserver seven times and kube-controller-manager and kube-scheduler four
times: about 30 s on 2 cores; it runs once for the module. The failing
rehearsal starts kube-apiserver once (about 5 s); usage errors start nothing.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import turbok.upgrade.rehearsal as rehearsal_module
from turbok.cli.main import app
from turbok.upgrade.emulation import can_emulate, default_min_compatibility
from turbok.upgrade.plan import StepKind, Support
from turbok.upgrade.planner import PlanRequest, make_plan, start_state
from turbok.upgrade.rehearsal import Rehearsal
from turbok.upgrade.versions import Version

pytestmark = pytest.mark.integration

runner = CliRunner()
APP = Path(__file__).resolve().parents[2] / "data" / "upgrade" / "rehearsal" / "app.yaml"


def V(minor: int, patch: int | None = None) -> Version:
    return Version(1, minor, patch)


def rehearse_cli(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["upgrade", "rehearse", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def full(kube_assets: Path) -> Iterator[tuple[int, dict[str, Any], Rehearsal]]:
    """One real rehearsal through the CLI; the Rehearsal object is kept to compare what it learned."""
    seen: list[Rehearsal] = []
    real = rehearsal_module.rehearse

    def keep(*a: Any, **kw: Any) -> Rehearsal:
        result = real(*a, **kw)
        seen.append(result)
        return result

    mp = pytest.MonkeyPatch()
    mp.setattr(rehearsal_module, "rehearse", keep)
    try:
        code, out, _ = rehearse_cli("--from", "1.36.3", "--to", "1.37", "--assets", str(kube_assets),
                                    "-f", str(APP), "-o", "json")
    finally:
        mp.undo()
    yield code, json.loads(out), seen[0]


def test_rehearsal_passes_every_step_and_rollback_with_the_specified_json(
        full: tuple[int, dict[str, Any], Rehearsal]) -> None:
    code, doc, _ = full
    assert code == 0 and doc["ok"] is True
    assert set(doc) == {"ok", "steps"}
    for step in doc["steps"]:
        assert set(step) == {"title", "binary", "emulatedVersion", "rollback", "ok", "checks"}
        assert all(set(c) == {"name", "ok", "detail"} for c in step["checks"])
        assert step["ok"] is True and all(c["ok"] for c in step["checks"]), step
    got = [(s["binary"], s["emulatedVersion"], s["rollback"]) for s in doc["steps"]]
    assert got == [("1.36.3", None, "not-needed"), ("1.37.2", "1.36", "vendor"), ("1.37.2", "1.36", "upstream"),
                   ("1.37.2", None, "upstream"), ("1.37.2", None, "upstream")]
    preflight = {c["name"]: c["detail"] for c in doc["steps"][0]["checks"]}
    for api in ("serving.example.com/v1 Model", "apps/v1 Deployment", "resource.k8s.io/v1 DeviceClass"):
        assert api in preflight["objects written"]
    install = {c["name"]: c for c in doc["steps"][1]["checks"]}
    # the vendor rollback really ran: 1.36.3 read what 1.37.2 (emulating 1.36) wrote, then forward again
    for name in ("rollback: started", "rollback: writes kept", "rollback: objects writable", "forward again: version"):
        assert install[name]["ok"], install[name]
    assert "1.36.3" in install["rollback: started"]["detail"]
    switch = {c["name"]: c for c in doc["steps"][3]["checks"]}
    assert "emulating 1.37" in switch["version"]["detail"]
    assert "emulating 1.36" in switch["rollback: version"]["detail"]  # the emulated-version rollback upstream documents
    assert "controllers healthy" in switch and "nothing to rehearse" in doc["steps"][4]["checks"][0]["detail"]


def test_what_the_rehearsal_learned_matches_the_planner_s_tables(full: tuple[int, dict[str, Any], Rehearsal]) -> None:
    _, _, result = full
    learned = result.learned
    assert set(learned.accepted_emulation) == {V(36, 3), V(37, 2)}
    for binary, accepted in learned.accepted_emulation.items():
        assert accepted == [binary.add_minor(d) for d in range(-5, 2) if can_emulate(binary, binary.add_minor(d))]
        assert learned.min_compat_defaults[binary] == default_min_compatibility(binary, binary.mm)
    assert (V(37, 2), V(36)) in learned.accepted and (V(37, 2), V(37)) in learned.accepted
    by_kind = {(r.newer, r.newer_emulated, r.older): r for r in learned.binary_rollbacks}
    # the plan labels "reinstall 1.36.3 under 1.37.2 emulating 1.36" a vendor rollback: it must work
    vendor = by_kind[(V(37, 2), V(36), V(36, 3))]
    assert vendor.ok, vendor.detail
    plan = result.plan
    install = next(s for s in plan.steps if s.kind is StepKind.APISERVER)
    assert install.rollback.support is Support.VENDOR
    # 1.36.3 on data 1.37.2 wrote without emulation: a finding for these objects, never an upstream rollback;
    # the planner's way back from 1.37.2 lowers --emulated-version first and only then swaps binaries (vendor)
    assert (V(37, 2), None, V(36, 3)) in by_kind
    back = make_plan(PlanRequest(start_state(V(37, 2)), V(36)))
    kinds = [(s.kind, s.support) for s in back.steps]
    assert kinds.index((StepKind.EMULATION, Support.UPSTREAM)) < kinds.index((StepKind.APISERVER, Support.VENDOR))


def _fake_assets(real: Path, tmp: Path) -> Path:
    """1.36.3 as it is, and a "1.37.2" kube-apiserver that reports its version and then refuses to start."""
    (tmp / "1.36.3").symlink_to(real / "1.36.3")
    (tmp / "bin").symlink_to(real / "bin")
    broken = tmp / "1.37.2"
    broken.mkdir()
    script = broken / "kube-apiserver"
    script.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "Kubernetes v1.37.2"; exit 0; fi\n'
                      'echo "E1203 run.go:72] command failed: this kube-apiserver is broken on purpose" >&2; exit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    for name in ("kube-controller-manager", "kube-scheduler"):
        os.symlink(real / "1.37.2" / name, broken / name)
    return tmp


def test_a_step_that_fails_exits_1_and_stops_the_rehearsal(kube_assets: Path, tmp_path: Path) -> None:
    assets = _fake_assets(kube_assets, tmp_path)
    code, out, _ = rehearse_cli("--from", "1.36.3", "--to", "1.37", "--assets", str(assets), "-o", "json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    assert [s["ok"] for s in doc["steps"]] == [True, False, False, False, False]
    failed = next(c for c in doc["steps"][1]["checks"] if not c["ok"])
    assert failed["name"] == "started" and "broken on purpose" in failed["detail"]
    assert doc["steps"][2]["checks"] == [{"name": "rehearsed", "ok": False, "detail": "not run: an earlier step failed"}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "1.34.0", "--to", "1.37"), "no kube-apiserver 1.34.0 among the binaries given"),
        (("--from", "1.36.3", "--to", "1.99"), "unknown Kubernetes release 1.99"),
        (("--from", "1.36.3"), "Missing option '--to'"),
    ],
)
def test_usage_and_input_errors_exit_2_with_one_line(kube_assets: Path, args: tuple[str, ...], message: str) -> None:
    code, out, err = rehearse_cli(*args, "--assets", str(kube_assets))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out == ""
    assert len(lines) == 1 and message in lines[0], err


def test_assets_without_binaries_exit_2(tmp_path: Path) -> None:
    code, _, err = rehearse_cli("--from", "1.36.3", "--to", "1.37", "--assets", str(tmp_path))
    assert code == 2 and "no kube-apiserver binary in" in err
