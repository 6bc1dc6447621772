"""Pod status as the kubelet computes it, and the writer that sends it through ``pods/status``.

``pod_status(...)`` is pure: from what a pod worker knows (its containers'
views, the sandbox's address, what is finished) it computes ``phase``, the
kubelet's conditions in the kubelet's order (``PodReadyToStartContainers``,
``Initialized``, ``Ready``, ``ContainersReady``; ``PodScheduled`` and any
condition the node does not own are kept as the API has them), ``hostIP(s)``,
``podIP(s)``, ``startTime``, ``initContainerStatuses``, ``containerStatuses``,
``qosClass`` (kept: the API computes it at create), ``observedGeneration``.
``lastTransitionTime`` moves only when a condition's status flips.

``StatusWriter`` writes statuses one at a time, newest wins: a pod whose
status changes while an earlier write is queued is written once, with the
latest (coalesced). A status equal to what the API already holds is not
written. Writes read the Pod first and check its uid (a Pod deleted and made
again under the same name is another Pod), retrying on ``Conflict``.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from turbok.api import meta as m
from turbok.api.kinds import Kind
from turbok.api.status import ApiError, Conflict
from turbok.node.client import NodeClient, Obj

__all__ = ["ISOLATED", "NODE_CONDITIONS", "ContainerView", "isolation_condition", "StatusWriter", "merge_status", "pod_status", "set_condition"]

log = logging.getLogger(__name__)

#: turbok's own Pod condition: which isolation runs the Pod (reason ``GVisor`` or ``Bubblewrap``).
ISOLATED = "turbok.dev/Isolated"
#: Pod conditions the node owns, in the order the kubelet writes them (turbok's last).
#: GKE's Pod condition, written by the node when a Pod started from a snapshot (``turbok.node.snapshots``).
RESTORED = "PodRestored"
NODE_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", ISOLATED, RESTORED)
_CONDITION_ORDER = (*NODE_CONDITIONS[:4], "PodScheduled", ISOLATED, RESTORED)


def isolation_condition(isolation: str, notes: Sequence[str] = ()) -> tuple[str, str]:
    """(reason, message) of the ``turbok.dev/Isolated`` condition for a pod sandbox of ``isolation``."""
    if isolation == "gvisor":
        reason, message = "GVisor", ("isolated by gVisor (runsc): a user-space kernel between the Pod and the "
                                     "host")
    else:
        reason, message = "Bubblewrap", ("runsc is unavailable: isolated by bubblewrap (Linux namespaces), which "
                                         "shares the host kernel")
    if notes:
        message += "; " + "; ".join(notes)
    return reason, message


@dataclass
class ContainerView:
    """What the node knows of one container, as its ``containerStatuses`` entry says it."""

    name: str
    image: str
    init: bool = False
    #: an init container with ``restartPolicy: Always`` (a sidecar): runs beside the app containers
    sidecar: bool = False
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""
    image_id: str = ""

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def exit_code(self) -> int | None:
        t = self.state.get("terminated")
        return int(t.get("exitCode", 1)) if isinstance(t, dict) else None

    def entry(self) -> Obj:
        out: Obj = {"name": self.name, "state": copy.deepcopy(self.state),
                    "lastState": copy.deepcopy(self.last_state), "ready": self.ready,
                    "restartCount": self.restart_count, "image": self.image,
                    "imageID": self.image_id, "started": self.started}
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def set_condition(conditions: list[Obj], previous: Sequence[Obj], type_: str, value: bool,
                  reason: str = "", message: str = "", *, generation: int | None = None) -> None:
    """Append condition ``type_`` to ``conditions``, keeping ``previous``'s transition time unless it flips."""
    status = "True" if value else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    when = before.get("lastTransitionTime") if before and before.get("status") == status else None
    new: Obj = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": when or m.now()}
    if generation is not None:
        new["observedGeneration"] = generation
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    conditions.append(new)


def _names(views: Sequence[ContainerView]) -> str:
    return "[" + " ".join(v.name for v in views) + "]"


def phase_of(pod: Obj, inits: Sequence[ContainerView], apps: Sequence[ContainerView], *,
             terminal: bool = False) -> str:
    """Pending, Running, Succeeded or Failed, as the kubelet's ``getPhase`` counts containers."""
    policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
    pending_init = failed_init = 0
    for c in inits:
        if c.sidecar:
            if not (c.running and c.started):
                pending_init += 1
            continue
        if c.running:
            pending_init += 1
        elif "terminated" in c.state:
            failed_init += c.exit_code != 0
        elif "terminated" in c.last_state:
            failed_init += int(c.last_state["terminated"].get("exitCode", 1)) != 0
        else:
            pending_init += 1
    running = waiting = stopped = succeeded = 0
    for c in apps:
        if c.running:
            running += 1
        elif "terminated" in c.state:
            stopped += 1
            succeeded += c.exit_code == 0
        elif "terminated" in c.last_state:
            stopped += 1  # waiting to restart after it ended
        else:
            waiting += 1
    if failed_init and policy == "Never":
        return "Failed"
    if pending_init or failed_init or waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Failed" if policy == "Never" else "Running"
    return "Pending"


def pod_status(pod: Obj, *, previous: Obj | None = None, inits: Sequence[ContainerView], apps: Sequence[ContainerView], sandbox_ready: bool,
               pod_ip: str, host_ip: str, sandbox_failure: str = "", start_time: str | None, phase: str | None = None,
               reason: str = "", message: str = "", isolated: tuple[str, str] | None = None,
               restored: tuple[bool, str, str] | None = None) -> Obj:
    """The status the node wants the API to hold for ``pod`` (before ``merge_status``); conditions keep their
    transition times from ``previous`` (what the node last wanted), else from the API's status."""
    before = (previous or pod.get("status") or {}).get("conditions") or []
    gen = pod["metadata"].get("generation")
    phase = phase or phase_of(pod, inits, apps)
    done = phase in ("Succeeded", "Failed")
    conditions: list[Obj] = []
    # The kubelet leaves this condition without a reason; turbok says why a sandbox could not be made (a full
    # disk...), so that it shows on the Pod and its Sandbox, not only in an Event.
    failed = bool(sandbox_failure) and not sandbox_ready and not done
    set_condition(conditions, before, "PodReadyToStartContainers", sandbox_ready and not done,
                  "FailedCreatePodSandBox" if failed else "", sandbox_failure if failed else "", generation=gen)
    pending_inits = [c for c in inits if not c.sidecar and c.exit_code != 0]
    started_sidecars_missing = [c for c in inits if c.sidecar and not c.started]
    not_init = pending_inits + started_sidecars_missing
    if not not_init:
        set_condition(conditions, before, "Initialized", True, "PodCompleted" if done and inits else "",
                      generation=gen)
    else:
        set_condition(conditions, before, "Initialized", False, "ContainersNotInitialized",
                      f"containers with incomplete status: {_names(not_init)}", generation=gen)
    unready = [c for c in (*[i for i in inits if i.sidecar], *apps) if not c.ready]
    if done:
        reason_ = "PodCompleted"
        set_condition(conditions, before, "Ready", False, reason_, generation=gen)
        set_condition(conditions, before, "ContainersReady", False, reason_, generation=gen)
    elif unready or not apps:
        text = f"containers with unready status: {_names(unready)}"
        set_condition(conditions, before, "Ready", False, "ContainersNotReady", text, generation=gen)
        set_condition(conditions, before, "ContainersReady", False, "ContainersNotReady", text, generation=gen)
    else:
        gates = _unready_gates(pod)
        if gates:
            set_condition(conditions, before, "Ready", False, "ReadinessGatesNotReady", gates, generation=gen)
        else:
            set_condition(conditions, before, "Ready", True, generation=gen)
        set_condition(conditions, before, "ContainersReady", True, generation=gen)
    if isolated is not None:
        set_condition(conditions, before, ISOLATED, True, *isolated, generation=gen)
    if restored is not None:
        set_condition(conditions, before, RESTORED, *restored, generation=gen)
    status: Obj = {"phase": phase, "conditions": conditions}
    if gen is not None:
        status["observedGeneration"] = gen
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if start_time:
        status["startTime"] = start_time
    if inits:
        status["initContainerStatuses"] = [c.entry() for c in inits]
    status["containerStatuses"] = [c.entry() for c in apps]
    return status


def _unready_gates(pod: Obj) -> str:
    """Why the Pod's ``readinessGates`` keep it from Ready, in the kubelet's words ("" when none do)."""
    have = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    missing, false = [], []
    for gate in (pod.get("spec") or {}).get("readinessGates") or []:
        kind = gate.get("conditionType")
        if kind not in have:
            missing.append(f'corresponding condition of pod readiness gate "{kind}" does not exist.')
        elif have[kind] != "True":
            false.append(f'the status of pod readiness gate "{kind}" is not "True", but {have[kind]}')
    return ", ".join(missing + false)


def merge_status(current: Obj, wanted: Obj) -> Obj:
    """``wanted`` with what the node does not own kept from ``current`` (the API's status)."""
    out = dict(wanted)
    kept = [c for c in current.get("conditions") or [] if c.get("type") not in NODE_CONDITIONS]
    conditions = [*wanted.get("conditions", []), *kept]
    if not any(c.get("type") == "PodScheduled" for c in conditions):
        # a Pod made with its nodeName set skipped the scheduler: the kubelet says it is scheduled anyway
        conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                           "lastTransitionTime": m.now()})
    rank = {t: i for i, t in enumerate(_CONDITION_ORDER)}
    conditions.sort(key=lambda c: rank.get(c.get("type", ""), len(rank)))
    out["conditions"] = conditions
    for key in ("qosClass", "nominatedNodeName", "resize", "resourceClaimStatuses"):
        if key in current and key not in out:
            out[key] = current[key]
    return out


@dataclass
class _Pending:
    namespace: str
    name: str
    uid: str
    status: Obj
    done: list[asyncio.Future[None]] = field(default_factory=list)


class StatusWriter:
    """One writer of ``pods/status`` for the node: coalesced per Pod, in order, skipped when unchanged."""

    def __init__(self, client: NodeClient, kind: Kind) -> None:
        self.client = client
        self.kind = kind
        self._pending: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: statuses written (tests and metrics)
        self.writes = 0

    def set(self, pod: Obj, status: Obj) -> asyncio.Future[None]:
        """Queue ``status`` for ``pod`` (replacing one queued earlier); the future resolves once written."""
        md = pod["metadata"]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = self._pending.get(md["uid"])
        if entry is None:
            self._pending[md["uid"]] = entry = _Pending(md.get("namespace", ""), md["name"], md["uid"], status)
        entry.status = status
        entry.done.append(future)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pod-status-writer")
        return future

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for entry in self._pending.values():
            for f in entry.done:
                if not f.done():
                    f.cancel()
        self._pending.clear()

    async def _run(self) -> None:
        while True:
            while self._pending:
                _, entry = self._pending.popitem(last=False)
                try:
                    await self._write(entry)
                except Exception as e:  # a status that cannot be written must not stop the others
                    if not isinstance(e, ApiError):
                        log.exception("writing the status of pod %s/%s", entry.namespace, entry.name)
                    else:
                        log.warning("writing the status of pod %s/%s: %s", entry.namespace, entry.name, e)
                for f in entry.done:
                    if not f.done():
                        f.set_result(None)
            self._wake.clear()
            await self._wake.wait()

    async def _write(self, entry: _Pending) -> None:
        for _ in range(5):
            current = await self.client.try_get(self.kind, entry.namespace, entry.name)
            if current is None or current["metadata"].get("uid") != entry.uid:
                return  # gone, or another Pod under the same name
            merged = merge_status(current.get("status") or {}, entry.status)
            if _same(merged, current.get("status") or {}):
                return
            current["status"] = merged
            try:
                await self.client.update_status(self.kind, current)
                self.writes += 1
                return
            except Conflict:
                continue


def _same(a: Any, b: Any) -> bool:
    return bool(a == b)
