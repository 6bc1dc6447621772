"""The planner's tables, compared with what every binary in ../shared/kube says about itself.

Each kube-apiserver is asked directly: ``--help`` (the ``--emulated-version`` and
``--min-compatibility-version`` ranges), flag validation (which emulated and
min compatibility versions it accepts), and, running on a scratch etcd, what it
serves with and without ``--runtime-config=api/all=true``, the deprecation
warnings it sends, the feature gates ``/metrics`` lists, and which gates it
locks. Every binary found takes part, so a new release dropped into
../shared/kube fails here until turbok's data knows it.

Cost: one etcd and two kube-apiserver starts per binary plus one emulated start
(about 25 s for three binaries on 2 cores), and about 300 flag probes of 70 ms
run four at a time (about 6 s).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from turbok.client.api import Api
from turbok.upgrade.apis import api_catalog
from turbok.upgrade.assets import Assets, find_assets, probe_versions
from turbok.upgrade.cluster import parse_feature_gates
from turbok.upgrade.components import COMPONENTS, components_data
from turbok.upgrade.emulation import can_emulate, default_min_compatibility, emulation_floor
from turbok.upgrade.scratch import ScratchControlPlane
from turbok.upgrade.versions import Version, catalog

pytestmark = pytest.mark.integration

_WARNING = re.compile(r"is deprecated in v(\d+\.\d+)\+(?:, unavailable in v(\d+\.\d+)\+)?")
Kind = tuple[str, str]


@dataclass
class Facts:
    served_default: set[Kind] = field(default_factory=set)
    served_all: dict[Kind, str | None] = field(default_factory=dict)  # kind -> deprecation warning
    gates: dict[str, str] = field(default_factory=dict)  # name -> stage ("" is GA)


def _served(client: Api, *, warnings: bool) -> dict[Kind, str | None]:
    out: dict[Kind, str | None] = {}
    groups = client.request("GET", "/apis")["groups"]
    for gv in ["v1"] + [v["groupVersion"] for g in groups for v in g["versions"]]:
        base = "/api/v1" if gv == "v1" else f"/apis/{gv}"
        for res in client.request("GET", base).get("resources", []):
            if "/" in res["name"]:
                continue
            warning = None
            if warnings and "list" in res.get("verbs", []):
                warning = client.send("GET", f"{base}/{res['name']}", params={"limit": "1"}).headers.get("warning")
            out[(gv, res["kind"])] = warning
    return out


@pytest.fixture(scope="module")
def assets(kube_assets: Path) -> Assets:
    return find_assets([kube_assets])


@dataclass
class AllFacts:
    binaries: dict[Version, Facts]
    emulating: tuple[Version, Version, set[Kind]] | None  # newest binary, the minor it emulated, what it served

    def __getitem__(self, v: Version) -> Facts:
        return self.binaries[v]


@pytest.fixture(scope="module")
def facts(assets: Assets) -> Iterator[AllFacts]:
    """What each binary serves and reports, read off one scratch etcd in upgrade order."""
    assert assets.etcd is not None
    out: dict[Version, Facts] = {}
    emulating: tuple[Version, Version, set[Kind]] | None = None
    with ScratchControlPlane(assets.etcd) as cp:
        cp.start_etcd()
        for v, binaries in sorted(assets.sets.items()):
            f = Facts()
            cp.start_apiserver(binaries.apiserver)
            with cp.client() as c:
                f.served_default = set(_served(c, warnings=False))
                f.gates = {g.name: g.stage for g in parse_feature_gates(
                    c.send("GET", "/metrics", accept="text/plain").text)}
            cp.start_apiserver(binaries.apiserver, extra=["--runtime-config=api/all=true"])
            with cp.client() as c:
                f.served_all = _served(c, warnings=True)
            out[v] = f
        newest = max(assets.sets)
        previous = max((v for v in assets.sets if v.minor == newest.minor - 1), default=None)
        if previous is not None:
            cp.start_apiserver(assets.sets[newest].apiserver, emulated=previous.mm)
            with cp.client() as c:
                emulating = (newest, previous, set(_served(c, warnings=False)))
    yield AllFacts(out, emulating)


def _binaries(assets: Assets) -> list[Version]:
    return sorted(assets.sets)


def test_every_binary_is_a_release_the_data_knows(assets: Assets) -> None:
    releases = catalog()
    apis = api_catalog()
    for v in _binaries(assets):
        assert releases.knows(v), f"{v}: add it to turbok/upgrade/data/releases.yaml"
        assert releases.latest(v) >= v, f"{v}: newer than releases.yaml's latestPatch"
    assert apis.newest_release == max(_binaries(assets)).mm, "deprecated_apis.yaml's newestRelease"
    assert tuple(str(v) for v in _binaries(assets)) == components_data().binaries, "components.yaml's binaries"


def test_emulation_ranges_in_help_match_the_tables(assets: Assets) -> None:
    for v in _binaries(assets):
        facts = assets.sets[v].help_facts
        floor = emulation_floor(v)
        assert floor is not None
        assert facts.emulated == (floor, v.mm), v
        assert facts.min_compat == (floor, v.mm), v
        assert facts.min_compat_default == default_min_compatibility(v, v.mm), v


def test_accepted_emulated_and_min_compatibility_versions_match_the_tables(assets: Assets) -> None:
    cases = []
    for v in _binaries(assets):
        for d in range(-5, 2):
            cases.append((v, v.add_minor(d), None))
        floor = emulation_floor(v)
        assert floor is not None
        for e in (floor, v.add_minor(-1)):  # the default min compatibility when emulating e is accepted...
            cases.append((v, e, default_min_compatibility(v, e)))
            cases.append((v, e, e.add_minor(1)))  # ...one newer than the emulated version is not
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: probe_versions(assets.sets[c[0]].apiserver, emulated=c[1],
                                                         min_compat=c[2]), cases))
    for (v, e, mc), refused in zip(cases, answers, strict=True):
        if mc is None:
            assert (not refused) == can_emulate(v, e), (v, e, refused)
        else:
            assert (not refused) == (mc <= e), (v, e, mc, refused)


def test_deprecation_warnings_match_the_api_data(assets: Assets, facts: AllFacts) -> None:
    apis = api_catalog()
    for v in _binaries(assets):
        for (gv, kind), warning in facts[v].served_all.items():
            entry = apis.lookup(gv, kind)
            if warning is None:
                assert entry is None or v.mm < entry.deprecated_in, f"{v}: {gv} {kind} warns of nothing"
                continue
            m = _WARNING.search(warning)
            assert m is not None, warning
            assert entry is not None, f"{v}: {gv} {kind} warns {warning!r} but the data has no entry"
            assert str(entry.deprecated_in) == m.group(1), (gv, kind, warning)
            assert (str(entry.removed_in) if entry.removed_in else None) == m.group(2), (gv, kind, warning)


def test_every_kind_served_is_in_the_data_and_nothing_removed_is_served(assets: Assets, facts: AllFacts) -> None:
    apis = api_catalog()
    for v in _binaries(assets):
        served = facts[v].served_all
        for gv, kind in served:
            introduced = apis.introduced.get((gv, kind))
            assert introduced is not None and introduced <= v.mm, f"{v} serves {gv} {kind}: introducedIn?"
        for e in apis:
            if e.removed_in is not None and e.removed_in <= v.mm:
                assert (e.api_version, e.kind) not in served, f"{v} still serves {e.api_version} {e.kind}"


def test_off_by_default_apis_match_the_data(assets: Assets, facts: AllFacts) -> None:
    apis = api_catalog()
    for v in _binaries(assets):
        f = facts[v]
        assert f.served_default <= set(f.served_all)
        off = set(f.served_all) - f.served_default
        said_off = {k for k in f.served_all if not apis.availability(k[0], k[1], v).enabled_by_default}
        assert off == said_off, (v, sorted(off ^ said_off))


def test_a_binary_emulating_the_previous_minor_serves_that_minor_s_apis(assets: Assets,
                                                                        facts: AllFacts) -> None:
    if facts.emulating is None:
        pytest.skip("needs two consecutive minors among the binaries")
    newest, previous, served = facts.emulating
    assert served == facts[previous].served_default, newest


def _refusal(binary: Path, *args: str) -> str:
    with_kubeconfig = [] if binary.name == "kube-apiserver" else ["--kubeconfig=/nonexistent"]
    out = subprocess.run([str(binary), *args, *with_kubeconfig], capture_output=True, text=True, timeout=30,
                         check=False, cwd="/")
    return out.stdout + out.stderr


def _help_flags(binary: Path) -> set[str]:
    text = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False).stdout
    return set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", text, re.M))


def test_removed_feature_gates_and_flags_match_the_data(assets: Assets, facts: AllFacts) -> None:
    data = components_data()
    versions = _binaries(assets)
    for older, newer in zip(versions, versions[1:], strict=False):
        if newer.minor != older.minor + 1:
            continue
        removed = set(facts[older].gates) - set(facts[newer].gates)
        assert data.removed_gates[newer.mm] == removed, newer
        sets = (assets.sets[older], assets.sets[newer])
        for component, (old_bin, new_bin) in zip(COMPONENTS, zip(*[
                (s.apiserver, s.controller_manager, s.scheduler) for s in sets], strict=True), strict=True):
            assert old_bin is not None and new_bin is not None
            gone = _help_flags(old_bin) - _help_flags(new_bin)
            assert data.removed_flags[newer.mm][component] == gone, (newer, component)
            for flag in gone:  # the binary really refuses it
                assert f"unknown flag: --{flag}" in _refusal(new_bin, f"--{flag}=1"), (component, flag)
            if removed:  # kube-apiserver, kube-controller-manager and kube-scheduler share one gate registry
                gate = sorted(removed)[0]
                assert f"unrecognized feature gate: {gate}" in _refusal(new_bin, f"--feature-gates={gate}=true")


def test_locked_feature_gates_match_the_data(assets: Assets, facts: AllFacts) -> None:
    data = components_data()
    cases = []
    for v in _binaries(assets):
        locks = data.locked_gates[v.mm]
        for name, stage in facts[v].gates.items():
            if stage in ("", "DEPRECATED"):
                # try the value opposite to the lock (or "false" for a GA gate the data says is unlocked)
                value = "false" if locks.get(name, True) else "true"
                cases.append((v, name, value))
        assert set(locks) <= set(facts[v].gates), v
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: _refusal(assets.sets[c[0]].apiserver, f"--feature-gates={c[1]}={c[2]}"),
                                cases))
    for (v, name, value), text in zip(cases, answers, strict=True):
        locked = f"cannot set feature gate {name} to {value}" in text
        assert locked == (name in data.locked_gates[v.mm]), (v, name, value)
