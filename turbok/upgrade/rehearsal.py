"""Rehearsing a plan on real binaries: every step and every rollback, on a scratch control plane.

``rehearse(plan, assets, objects)`` runs the user's own binaries (``assets``)
on a ``ScratchControlPlane`` in this order:

1. Preflight: start etcd and the current kube-apiserver (its binary, emulated
   and min compatibility version), then write ``objects``: the user's manifests,
   or a sample of every kind of API a cluster commonly holds (a CRD and a custom
   resource, a Deployment, a Service, a ConfigMap, a DeviceClass).
2. Each step of the plan, as a real upgrade would do it: replace the
   kube-apiserver binary, set ``--emulated-version``, run kube-controller-manager
   and kube-scheduler of the new binary. After each: ``/readyz``, ``/version``
   (binary and emulated version as planned), every object readable at its own
   apiVersion, every object writable (an annotation naming the step), a new
   ConfigMap created.
3. Where the plan says the step can be rolled back in place (upstream or a
   vendor), the rollback: the previous binary and flags again, then the same
   checks, plus "what the newer binary wrote reads back"; then forward again.
   Steps the scratch control plane has nothing for (nodes, etcd,
   cloud-controller-manager) are reported as not rehearsed.

What it learns (``Learned``) is kept beside the results so that tests can
compare it with the planner's tables: the ``--emulated-version`` range each
binary accepts (from ``--help``, and from every start), and whether each binary
downgrade worked on data written by the newer binary (the plan's vendor
rollbacks, plus, after the last step, the newest binary without emulation
replaced by the previous minor, which upstream does not support).

A step that fails stops the rehearsal; later steps are reported as not run.
Errors in the inputs (binaries missing) raise ``AssetsError`` before anything
starts. Called by ``turbok upgrade rehearse`` and the tests.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from turbok.api import status as st
from turbok.client.api import PATCH_TYPES, Api, status_code
from turbok.client.errors import ConnectionFailed
from turbok.upgrade.assets import Assets, BinarySet, probe_versions
from turbok.upgrade.emulation import ControlPlaneVersion, default_min_compatibility
from turbok.upgrade.errors import AssetsError, ScratchError
from turbok.upgrade.plan import ClusterState, Plan, Step, StepKind, Support
from turbok.upgrade.scratch import ScratchControlPlane
from turbok.upgrade.versions import Version

__all__ = ["BinaryRollback", "Check", "Learned", "Rehearsal", "StepResult", "rehearse", "sample_objects"]

ANNOTATION = "rehearsal.turbok.dev/step"
NAMESPACE = "turbok-rehearsal"
_GROUP = "rehearsal.turbok.dev"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class StepResult:
    """One plan step as rehearsed: the state it reached, the rollback label, and every check."""

    number: int
    title: str
    binary: str
    emulated_version: str | None
    rollback: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "binary": self.binary, "emulatedVersion": self.emulated_version,
                "rollback": self.rollback, "ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


@dataclass(frozen=True)
class BinaryRollback:
    """A kube-apiserver binary replaced by an older one on data the newer one wrote."""

    newer: Version
    newer_emulated: Version | None  # what the newer binary emulated while it wrote (None: nothing)
    older: Version
    ok: bool
    detail: str = ""


@dataclass
class Learned:
    """Facts read off the binaries during a rehearsal."""

    emulation_ranges: dict[Version, tuple[Version, Version]] = field(default_factory=dict)  # --help
    accepted_emulation: dict[Version, list[Version]] = field(default_factory=dict)  # probed: N-5..N+1
    min_compat_defaults: dict[Version, Version] = field(default_factory=dict)
    accepted: set[tuple[Version, Version]] = field(default_factory=set)  # (binary, emulated) that started
    binary_rollbacks: list[BinaryRollback] = field(default_factory=list)


@dataclass
class Rehearsal:
    plan: Plan
    steps: list[StepResult] = field(default_factory=list)
    learned: Learned = field(default_factory=Learned)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [s.to_dict() for s in self.steps]}


def sample_objects(served: set[str]) -> list[dict[str, Any]]:
    """Objects of the APIs most clusters hold, for a rehearsal without manifests (``served``: groupVersions)."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{_GROUP}"},
        "spec": {"group": _GROUP, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]},
    }
    labels = {"app": "rehearsal"}
    out: list[dict[str, Any]] = [
        crd,
        {"apiVersion": f"{_GROUP}/v1", "kind": "Widget", "metadata": {"name": "sample"}, "spec": {"size": 3}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sample"}, "data": {"written": "preflight"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sample"},
         "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sample"},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}}},
    ]
    if "resource.k8s.io/v1" in served:
        out.append({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "sample.rehearsal"},
                    "spec": {"selectors": [{"cel": {"expression": "device.driver == 'gpu.rehearsal.turbok.dev'"}}]}})
    return out


# --- the API of a running kube-apiserver -------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    api_version: str
    kind: str
    name: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}" + (f" -n {self.namespace}" if self.namespace else "")


class _Discovery:
    """Discovery-backed paths for kinds; rebuilt for every kube-apiserver started."""

    def __init__(self, client: Api) -> None:
        self.client = client
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}

    def served(self) -> set[str]:
        groups = self.client.request("GET", "/apis").get("groups") or []
        return {"v1"} | {v["groupVersion"] for g in groups for v in g.get("versions") or []}

    def resource(self, api_version: str, kind: str) -> tuple[str, bool] | None:
        """(plural, namespaced) for ``kind`` at ``api_version``, or None when not served."""
        if api_version not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            found: dict[str, tuple[str, bool]] = {}
            try:
                listed = self.client.request("GET", base)
            except st.ApiError:  # a groupVersion not served (404), or not yet
                listed = {}
            if isinstance(listed, dict):
                for res in listed.get("resources") or []:
                    if "/" not in res["name"]:
                        found[res["kind"]] = (res["name"], bool(res.get("namespaced")))
            self._resources[api_version] = found
        return self._resources[api_version].get(kind)

    def path(self, ref: _Ref) -> str | None:
        res = self.resource(ref.api_version, ref.kind)
        if res is None:
            return None
        plural, namespaced = res
        base = "/api/v1" if ref.api_version == "v1" else f"/apis/{ref.api_version}"
        ns = f"/namespaces/{ref.namespace}" if namespaced and ref.namespace else ""
        return f"{base}{ns}/{plural}" + (f"/{ref.name}" if ref.name else "")


def _reason(err: st.ApiError) -> str:
    """What the server said: its Status message (``error_from`` puts the code and body there when it sent none)."""
    return err.message or str(status_code(err))


# --- the rehearsal ----------------------------------------------------------------------------------


class _Runner:
    def __init__(self, plan: Plan, assets: Assets, objects: Sequence[dict[str, Any]],
                 progress: Callable[[StepResult], None] | None) -> None:
        self.plan = plan
        self.assets = assets
        self.objects = list(objects)
        self.progress = progress
        self.result = Rehearsal(plan)
        self.refs: list[_Ref] = []
        self.written: dict[_Ref, str] = {}
        self.cp: ScratchControlPlane | None = None
        self.client: Api | None = None
        self.api: _Discovery | None = None

    # --- processes ---

    def _binaries(self, binary: Version) -> BinarySet:
        return self.assets.get(binary)

    def _apiserver(self, cp_version: ControlPlaneVersion) -> None:
        assert self.cp is not None
        if self.client is not None:
            self.client.close()
            self.client = None
        extra: list[str] = []
        if cp_version.binary.minor >= 35 and cp_version.min_compat != default_min_compatibility(
                cp_version.binary, cp_version.emulated):
            extra.append(f"--min-compatibility-version={cp_version.min_compat}")
        emulated = cp_version.emulated if cp_version.emulating else None
        self.cp.start_apiserver(self._binaries(cp_version.binary).apiserver, emulated=emulated, extra=extra)
        self.result.learned.accepted.add((cp_version.binary, cp_version.emulated))
        self.client = self.cp.client()
        self.api = _Discovery(self.client)

    def _controllers(self, cp_version: ControlPlaneVersion) -> list[Check]:
        assert self.cp is not None
        bins = self._binaries(cp_version.binary)
        if bins.controller_manager is None and bins.scheduler is None:
            return [Check("controllers", True, f"no kube-controller-manager or kube-scheduler {cp_version.binary} "
                                               "given: not rehearsed")]
        emulated = cp_version.emulated if cp_version.emulating else None
        try:
            done = self.cp.run_controllers(bins.controller_manager, bins.scheduler, emulated=emulated)
        except ScratchError as e:
            return [Check("controllers healthy", False, str(e))]
        return [Check("controllers healthy", True, "; ".join(done))]

    # --- checks ---

    def _health(self, expect: ControlPlaneVersion) -> list[Check]:
        assert self.client is not None
        checks = []
        try:
            code = self.client.send("GET", "/readyz", accept="*/*").status_code
        except st.ApiError as e:
            code = status_code(e)
        checks.append(Check("healthy", code == 200, f"/readyz answered {code}"))
        try:
            info = self.client.request("GET", "/version")
        except st.ApiError as e:
            return [*checks, Check("version", False, f"/version: {_reason(e)} (planned {expect})")]
        git = str(info.get("gitVersion", ""))
        ok = git.lstrip("v").startswith(str(expect.binary))
        detail = f"gitVersion {git}"
        if expect.binary.minor >= 33:
            emu = f"{info.get('emulationMajor')}.{info.get('emulationMinor')}"
            mc = f"{info.get('minCompatibilityMajor')}.{info.get('minCompatibilityMinor')}"
            ok = ok and emu == str(expect.emulated) and mc == str(expect.min_compat)
            detail += f", emulating {emu}, min compatibility {mc}"
        checks.append(Check("version", ok, f"{detail} (planned {expect})"))
        return checks

    def _read_write(self, step: int, *, label: str = "") -> list[Check]:
        """Every object read back (with what was last written), every object written, a ConfigMap created."""
        assert self.client is not None and self.api is not None
        unread, mismatched, unwritten = [], [], []
        value = f"{step}{label}"
        for ref in self.refs:
            path = self.api.path(ref)
            if path is None:
                unread.append(f"{ref}: {ref.api_version} not served")
                continue
            try:
                obj = self.client.request("GET", path)
            except st.ApiError as e:
                unread.append(f"{ref}: {_reason(e)}")
                continue
            seen = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
            if ref in self.written and seen != self.written[ref]:
                mismatched.append(f"{ref}: annotation {seen!r}, last written {self.written[ref]!r}")
            patch = {"metadata": {"annotations": {ANNOTATION: value}}}
            try:
                self.client.send("PATCH", path, body=patch, content_type=PATCH_TYPES["merge"])
                self.written[ref] = value
            except st.ApiError as e:
                unwritten.append(f"{ref}: {_reason(e)}")
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"step-{value}".lower().replace("_", "-"), "namespace": NAMESPACE},
              "data": {"step": value}}
        try:
            self.client.send("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", body=cm)
        except st.ApiError as e:
            unwritten.append(f"new ConfigMap: {_reason(e)}")
        n = len(self.refs)
        return [
            Check("objects readable", not unread, "; ".join(unread) or f"{n} object(s) read"),
            Check("writes kept", not mismatched, "; ".join(mismatched) or "every object shows what was last written"),
            Check("objects writable", not unwritten, "; ".join(unwritten) or f"{n} object(s) updated, a ConfigMap created"),
        ]

    def _state_checks(self, state: ClusterState, step: int, *, label: str = "") -> list[Check]:
        return [*self._health(state.apiserver), *self._read_write(step, label=label)]

    # --- preflight ---

    def _write_objects(self) -> list[Check]:
        assert self.client is not None and self.api is not None
        failures: list[str] = []
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        self._create_namespace(ns)
        ordered = sorted(self.objects, key=lambda o: {"Namespace": 0, "CustomResourceDefinition": 1}.get(
            str(o.get("kind")), 2))
        for obj in ordered:
            meta = dict(obj.get("metadata") or {})
            ref = _Ref(str(obj.get("apiVersion")), str(obj.get("kind")), str(meta.get("name") or ""), "")
            res = self.api.resource(ref.api_version, ref.kind)
            if res is None and ref.kind != "Namespace" and self._wait_crd_served(ref):
                res = self.api.resource(ref.api_version, ref.kind)
            if res is None:
                failures.append(f"{ref}: {ref.api_version} {ref.kind} is not served by the current control plane")
                continue
            namespace = str(meta.get("namespace") or NAMESPACE) if res[1] else ""
            if res[1] and namespace != NAMESPACE:
                self._create_namespace({**ns, "metadata": {"name": namespace}})
            body = {**obj, "metadata": {**meta, "namespace": namespace} if namespace else meta}
            body["metadata"].pop("resourceVersion", None)
            ref = _Ref(ref.api_version, ref.kind, ref.name, namespace)
            path = self.api.path(_Ref(ref.api_version, ref.kind, "", namespace))
            assert path is not None
            try:
                try:
                    self.client.send("POST", path, body=body)
                except st.AlreadyExists:
                    self.client.send("GET", f"{path}/{ref.name}")
            except st.ApiError as e:
                failures.append(f"{ref}: {_reason(e)}")
                continue
            self.refs.append(ref)
            if ref.kind == "CustomResourceDefinition":
                self._wait_established(path, ref.name)
        return [Check("objects written", not failures,
                      "; ".join(failures) or f"{len(self.refs)} object(s) created: "
                      + ", ".join(sorted({f'{r.api_version} {r.kind}' for r in self.refs})))]

    def _create_namespace(self, ns: dict[str, Any]) -> None:
        assert self.client is not None
        with contextlib.suppress(st.ApiError):  # there already, or refused: the objects written into it say which
            self.client.send("POST", "/api/v1/namespaces", body=ns)

    def _wait_established(self, path: str, name: str) -> None:
        assert self.client is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                crd = self.client.request("GET", f"{path}/{name}")
            except st.ApiError:
                crd = {}
            conds = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                return
            time.sleep(0.2)

    def _wait_crd_served(self, ref: _Ref) -> bool:
        """A custom resource right after its CRD: discovery needs a moment."""
        assert self.client is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.api = _Discovery(self.client)
            if self.api.resource(ref.api_version, ref.kind) is not None:
                return True
            time.sleep(0.3)
        return False

    # --- steps ---

    def run(self) -> Rehearsal:
        self._require_binaries()
        for b in {self.plan.start.apiserver.binary, *[s.state.apiserver.binary for s in self.plan.steps]}:
            facts = self._binaries(b).help_facts
            if facts.emulated is not None:
                self.result.learned.emulation_ranges[b] = facts.emulated
            if facts.min_compat_default is not None:
                self.result.learned.min_compat_defaults[b] = facts.min_compat_default
            if b.minor >= 31:  # no --emulated-version before 1.31
                apiserver = self._binaries(b).apiserver
                self.result.learned.accepted_emulation[b] = [
                    b.add_minor(d) for d in range(-5, 2) if not probe_versions(apiserver, emulated=b.add_minor(d))]
        etcd = self.assets.etcd
        if etcd is None:
            raise AssetsError("no etcd binary among the assets (expected DIR/bin/etcd or DIR/<version>/etcd)")
        with ScratchControlPlane(etcd) as cp:
            self.cp = cp
            try:
                failed = False
                for step in self.plan.steps:
                    res = (self._skipped(step, "not run: an earlier step failed") if failed else self._step(step))
                    self.result.steps.append(res)
                    if self.progress is not None:
                        self.progress(res)
                    failed = failed or not res.ok
                if not failed:
                    self._probe_binary_rollback()
            finally:
                if self.client is not None:
                    self.client.close()
        return self.result

    def _require_binaries(self) -> None:
        wanted: list[tuple[Version, str]] = [(self.plan.start.apiserver.binary, "kube-apiserver")]
        for s in self.plan.steps:
            if s.kind in (StepKind.APISERVER, StepKind.EMULATION):
                wanted.append((s.state.apiserver.binary, "kube-apiserver"))
            if s.kind in (StepKind.CONTROLLERS, StepKind.EMULATION):
                wanted.append((s.state.controllers.binary, "kube-controller-manager"))
        for v, _name in wanted:
            self.assets.get(v)

    def _result(self, step: Step) -> StepResult:
        cp = step.state.apiserver
        return StepResult(step.number, step.title, str(cp.binary), str(cp.emulated) if cp.emulating else None,
                          str(step.rollback.support))

    def _skipped(self, step: Step, why: str) -> StepResult:
        res = self._result(step)
        res.checks.append(Check("rehearsed", False, why))
        return res

    def _step(self, step: Step) -> StepResult:
        res = self._result(step)
        try:
            res.checks.extend(self._do(step))
        except ScratchError as e:
            res.checks.append(Check("started", False, str(e)))
        except ConnectionFailed as e:
            res.checks.append(Check("api", False, f"kube-apiserver did not answer: {e}"))
        except st.ApiError as e:
            res.checks.append(Check("api", False, f"kube-apiserver refused a request: {_reason(e)}"))
        return res

    def _prev(self, step: Step) -> ClusterState:
        return self.plan.start if step.number == 1 else self.plan.steps[step.number - 2].state

    def _do(self, step: Step) -> list[Check]:
        new, prev = step.state, self._prev(step)
        if step.kind is StepKind.PREFLIGHT:
            self._start_etcd()
            self._apiserver(new.apiserver)
            checks = [Check("started", True, f"etcd and kube-apiserver {new.apiserver}")]
            checks += self._health(new.apiserver)
            if not self.objects:
                assert self.api is not None
                self.objects = sample_objects(self.api.served())
            checks += self._write_objects()
            checks += self._read_write(step.number)
            return checks
        if step.kind in (StepKind.NODES, StepKind.ETCD, StepKind.CLOUD_CONTROLLER_MANAGER):
            what = {StepKind.NODES: "no kubelets or kube-proxies run on a scratch control plane",
                    StepKind.ETCD: "the scratch control plane runs the one etcd given",
                    StepKind.CLOUD_CONTROLLER_MANAGER: "no cloud-controller-manager runs on a scratch control plane"}
            return [Check("rehearsed", True, f"nothing to rehearse: {what[step.kind]}")]
        checks = self._apply(step, new, prev, label="")
        if not all(c.ok for c in checks):
            return checks
        if step.rollback.support in (Support.UPSTREAM, Support.VENDOR):
            back = self._apply(step, prev, new, label="-rollback")
            checks += [Check(f"rollback: {c.name}", c.ok, c.detail) for c in back]
            if step.kind is StepKind.APISERVER and prev.apiserver.binary != new.apiserver.binary:
                self.result.learned.binary_rollbacks.append(BinaryRollback(
                    new.apiserver.binary, new.apiserver.emulated if new.apiserver.emulating else None,
                    prev.apiserver.binary, all(c.ok for c in back), "; ".join(c.detail for c in back if not c.ok)))
            if all(c.ok for c in back):
                again = self._apply(step, new, prev, label="-again")
                checks += [Check(f"forward again: {c.name}", c.ok, c.detail) for c in again]
        else:
            checks.append(Check("rollback", True, f"not attempted: the plan's way back is {step.rollback.support}"))
        return checks

    def _start_etcd(self) -> None:
        assert self.cp is not None
        self.cp.start_etcd()

    def _apply(self, step: Step, state: ClusterState, other: ClusterState, *, label: str) -> list[Check]:
        """Bring the scratch control plane to ``state`` (from ``other``) and check it."""
        checks: list[Check] = []
        api_changed = state.apiserver != other.apiserver
        if api_changed:
            try:
                self._apiserver(state.apiserver)
            except ScratchError as e:
                return [Check("started", False, str(e))]
            checks.append(Check("started", True, f"kube-apiserver {state.apiserver}"))
        if state.controllers != other.controllers or step.kind is StepKind.CONTROLLERS:
            checks += self._controllers(state.controllers)
        checks += self._state_checks(state, step.number, label=label)
        return checks

    def _probe_binary_rollback(self) -> None:
        """After the last step: the newest binary, not emulating, replaced by the previous minor's binary."""
        end = self.plan.end.apiserver
        if end.emulating or self.api is None:
            return
        older = self.assets.minor(end.binary.add_minor(-1))
        if older is None:
            return
        try:
            self._apiserver(ControlPlaneVersion.of(older.version))
            checks = self._read_write(len(self.plan.steps) + 1, label="-binary-rollback")
            ok, detail = all(c.ok for c in checks), "; ".join(c.detail for c in checks if not c.ok)
        except (ScratchError, ConnectionFailed, st.ApiError) as e:
            ok, detail = False, str(e)
        self.result.learned.binary_rollbacks.append(BinaryRollback(end.binary, None, older.version, ok, detail))


def rehearse(plan: Plan, assets: Assets, objects: Sequence[dict[str, Any]] = (), *,
             progress: Callable[[StepResult], None] | None = None) -> Rehearsal:
    """Run ``plan`` on ``assets`` (see the module docstring); raises ``AssetsError`` for missing binaries."""
    if plan.direction == "none" or not plan.steps:
        return Rehearsal(plan)
    return _Runner(plan, assets, objects, progress).run()

