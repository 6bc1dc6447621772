"""Sandbox: keep the runtime sandbox in the state the object asks for, and say so in status.

Upstream semantics (kubernetes-sigs/agent-sandbox ``sandbox_controller.go``)
with the runtime sandbox in the role of the Pod:

- ``operatingMode: Running`` starts it (``runtime.start``: the pod template's
  first container under gVisor); ``Suspended`` hibernates it (its memory,
  processes and disk are kept; resuming restores them) where the runtime can,
  else, or with the annotation ``turbok.dev/suspend: disk``, stops it and
  keeps its disk.
- ``shutdownTime`` passed: ``Delete`` deletes the Sandbox, ``Retain`` stops
  it and keeps the object with Ready=False/``SandboxExpired``.
- A main process that exits is restarted per ``restartPolicy`` (Always,
  OnFailure, Never) or reported ``Finished`` (PodSucceeded/PodFailed). How
  it ended (``OOMKilled``, ``Error``, ``Completed``: the kubelet's words) is
  the Ready reason until it is back, a Warning event, and the annotations
  ``turbok.dev/restart-count`` and ``turbok.dev/last-termination``
  (``turbok.controllers.restarts``); restarts back off as the kubelet's do.
- Conditions Ready, Suspended, PodScheduled, Finished with upstream reasons,
  plus turbok's ``Isolated`` (GVisor or Bubblewrap), ``status.selector``,
  ``nodeName``, ``serviceFQDN`` when ``spec.service`` is true. ``podIPs``
  stays empty: sandboxes have no network by default; the runtime API is
  reached through the router.

Teardown (``runsc kill`` + ``delete``, ~2 s) runs in background tasks, off the
path of any Ready transition. A sandbox whose object is gone is removed from
the runtime; at start, runtime sandboxes without an object are removed too.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from turbok.api import meta as m
from turbok.api.kinds import Kind
from turbok.api.podtemplate import PIDS_LIMIT_ANNOTATION, claim_volume_names
from turbok.controllers import labels as lb
from turbok.controllers.base import DONE, Reconciler, Result, requeue
from turbok.controllers.client import Client, Obj
from turbok.controllers.events import EventRecorder
from turbok.controllers.podspec import InvalidPodTemplate, plan_pod
from turbok.controllers.restarts import Restarts, Termination, termination
from turbok.controllers.startqueue import REFILL, URGENT, StartQueue
from turbok.runtime.base import Isolation, Phase, Runtime, RuntimeState, SandboxSpec, sandbox_id
from turbok.runtime.errors import ImageError, RuntimeError_, SandboxStartFailed

__all__ = ["SandboxReconciler"]

log = logging.getLogger(__name__)

#: How often running sandboxes are checked for a main process that exited on its own
#: (a read of runsc's state file and /proc per sandbox: with hundreds, not free).
POLL_SECONDS = 5.0
POLL_BATCH = 100  # sandboxes whose state is read in one trip to a worker thread
#: ``disk`` on a Sandbox: suspend without keeping memory (the default keeps it where the runtime can).
SUSPEND_ANNOTATION = "turbok.dev/suspend"
CLUSTER_DOMAIN = "cluster.local"


def _isolation_condition(isolation: Isolation) -> tuple[str, str]:
    if isolation == Isolation.GVISOR:
        return "GVisor", "isolated by gVisor (runsc): a user-space kernel between the sandbox and the host"
    return "Bubblewrap", ("runsc is unavailable: isolated by bubblewrap (Linux namespaces), which shares the "
                          "host kernel")


class SandboxReconciler(Reconciler):
    concurrency = 16

    def __init__(self, client: Client, runtime: Runtime, starts: StartQueue | None = None,
                 events: EventRecorder | None = None) -> None:
        super().__init__(client)
        self.events = events or EventRecorder(client)
        self.starts = starts or StartQueue()
        self.kind: Kind = client.kinds.by_kind(lb.SANDBOX_API, "Sandbox")
        self.runtime = runtime
        self.node_name = socket.gethostname()
        self._ids: dict[tuple[str, str], str] = {}
        self._running: dict[tuple[str, str], str] = {}
        self._boots: dict[tuple[str, str], _Boot] = {}
        self._restarts: dict[tuple[str, str], Restarts] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        wanted = set()
        for obj in await self.client.list(self.kind):
            md = obj["metadata"]
            key = (md["namespace"], md["name"])
            self._ids[key] = sandbox_id(md["uid"])
            wanted.add(self._ids[key])
        for rid in await self.runtime.list():
            if rid not in wanted:
                log.info("removing runtime sandbox %s: no Sandbox object owns it", rid)
                self._spawn(self.runtime.remove(rid))
        self._poller = asyncio.create_task(self._poll(), name="sandbox-runtime-poller")

    async def stop(self) -> None:
        if self._poller:
            self._poller.cancel()
        for boot in self._boots.values():
            boot.task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=30)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _poll(self) -> None:
        """Revisit running sandboxes whose main process may have exited (the runtime has no events)."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            running = list(self._running.items())
            for i in range(0, len(running), POLL_BATCH):
                batch = running[i:i + POLL_BATCH]
                states = await self.runtime.states([rid for _, rid in batch])
                for key, rid in batch:
                    state = states.get(rid)
                    if state is not None and (state.phase != Phase.RUNNING or state.degraded):
                        self.enqueue(key, 0.0)

    async def _teardown(self, key: tuple[str, str], *, keep_disk: bool) -> None:
        rid = self._running.pop(key, None) or self._ids.get(key)
        if rid is None:
            return
        try:
            await (self.runtime.stop(rid) if keep_disk else self.runtime.remove(rid))
        except RuntimeError_ as e:
            log.warning("tearing down sandbox %s/%s (%s): %s", key[0], key[1], rid, e)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, namespace: str, name: str) -> Result:
        key = (namespace, name)
        obj = await self.client.try_get(self.kind, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            boot = self._boots.pop(key, None)
            if boot is not None:
                boot.task.cancel()  # still waiting for a slot, most likely; the teardown below cleans up
            if key in self._ids:
                self._spawn(self._teardown(key, keep_disk=False))
                if obj is None:
                    self._ids.pop(key, None)
            self._restarts.pop(key, None)
            return DONE
        rid = self._ids[key] = sandbox_id(obj["metadata"]["uid"])
        spec = obj.get("spec") or {}
        status = copy.deepcopy(obj.get("status") or {})
        gen = obj["metadata"].get("generation")
        result: Result = DONE

        shutdown = spec.get("shutdownTime")
        if shutdown:
            left = (m.parse_time(shutdown) - dt.datetime.now(dt.UTC)).total_seconds()
            if left <= 0:
                return await self._expire(obj, key, status)
            result = requeue(max(left, 0.05))

        if spec.get("operatingMode", "Running") == "Suspended":
            obj = await self._suspend(obj, key, rid, status, gen)
        elif (retry := await self._run(obj, key, rid, status, gen)) is not None:
            result = requeue(min(retry, result.requeue_after or retry))
        obj = await self._annotate_restarts(obj, key)
        await self._write_status(obj, status)
        return result

    async def _expire(self, obj: Obj, key: tuple[str, str], status: Obj) -> Result:
        md = obj["metadata"]
        if (obj.get("spec") or {}).get("shutdownPolicy") == "Delete":
            log.info("sandbox %s/%s reached its shutdownTime: deleting it", *key)
            await self.client.delete(self.kind, md["namespace"], md["name"], uid=md["uid"])
            return DONE
        self._spawn(self._teardown(key, keep_disk=True))
        kept = {"conditions": [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]}
        m.set_condition(kept, "Ready", False, "SandboxExpired", "Sandbox has expired",
                        observed_generation=md.get("generation"))
        await self._write_status(obj, kept)
        return DONE

    async def _suspend(self, obj: Obj, key: tuple[str, str], rid: str, status: Obj, gen: int | None) -> Obj:
        """Stop the runtime sandbox, keeping its disk and, where the runtime can, its memory;
        returns the object as last written."""
        state = await self.runtime.state(rid)
        if state.phase == Phase.RUNNING:
            m.set_condition(status, "Suspended", False, "PodTerminating", "Pod is terminating. Sandbox is suspending",
                            observed_generation=gen)
            m.set_condition(status, "Ready", False, "SandboxSuspended", "Sandbox is suspending",
                            observed_generation=gen)
            await self._write_status(obj, status)
            await self._hibernate_or_stop(obj, key, rid)
            obj = await self.client.get(self.kind, *key)
            state = await self.runtime.state(rid)
        message = "Pod has been terminated. Sandbox is suspended"
        if state.reason == "Hibernated":
            message += " with its memory; resuming restores it"
        m.set_condition(status, "Suspended", True, "PodTerminated", message, observed_generation=gen)
        m.set_condition(status, "Ready", False, "SandboxSuspended", "Sandbox is suspended", observed_generation=gen)
        _drop_condition(status, "PodScheduled")
        status.pop("podIPs", None)
        status.pop("nodeName", None)
        return obj

    async def _hibernate_or_stop(self, obj: Obj, key: tuple[str, str], rid: str) -> None:
        annotations = obj["metadata"].get("annotations") or {}
        if self.runtime.supports_hibernation and annotations.get(SUSPEND_ANNOTATION, "memory") != "disk":
            try:
                await self.runtime.hibernate(rid)
                self._running.pop(key, None)
                return
            except RuntimeError_ as e:
                log.warning("sandbox %s/%s: hibernation failed, stopping it (disk kept): %s", *key, e)
                await self.events.record(obj, "HibernationFailed", str(e), warning=True)
        await self._teardown(key, keep_disk=True)

    async def _run(self, obj: Obj, key: tuple[str, str], rid: str, status: Obj, gen: int | None) -> float | None:
        """Make the runtime sandbox run; returns seconds until a retry is worth it, if one is."""
        md, spec = obj["metadata"], obj.get("spec") or {}
        m.set_condition(status, "Suspended", False, "NotSuspended", "Sandbox is not suspended", observed_generation=gen)
        state = await self.runtime.state(rid)
        if state.phase != Phase.RUNNING or state.degraded:  # degraded: its disk failed; start checks it
            self._running.pop(key, None)
            ended = self._ended(obj, state)
            if ended is not None:
                wait = await self._after_end(obj, key, ended, status, gen)
                if wait is None or wait > 0:
                    return wait
            boot = self._boots.get(key)
            if boot is None:
                try:
                    plan = plan_pod(sandbox_id=rid, name=md["name"], pod_template=spec.get("podTemplate") or {},
                                    claim_volumes=tuple(claim_volume_names(spec)))
                except InvalidPodTemplate as e:
                    await self._warn_once(obj, status, e.reason, str(e))
                    m.set_condition(status, "Ready", False, e.reason, str(e), observed_generation=gen)
                    return None
                if plan.notes:
                    log.info("sandbox %s/%s: %s", md["namespace"], md["name"], "; ".join(plan.notes))
                # A warm pool's refill waits for claims and users: their sandboxes boot first.
                in_pool = lb.WARM_POOL_SANDBOX in (md.get("labels") or {})
                self._boots[key] = _Boot(asyncio.create_task(
                    self._boot(key, plan.spec, REFILL if in_pool else URGENT)))
                if ended is None:  # after a crash, Ready keeps saying why until the sandbox is back
                    m.set_condition(status, "Ready", False, "DependenciesNotReady", "Pod exists with phase: Pending",
                                    observed_generation=gen)
                if state.degraded:
                    m.set_condition(status, "Ready", False, state.reason, state.message, observed_generation=gen)
                    await self.events.record(obj, state.reason, state.message, warning=True)
                return None
            if not boot.task.done():
                return None  # the boot re-queues this sandbox when it ends
            error = boot.task.result()
            if error is not None:
                now = asyncio.get_running_loop().time()
                image = isinstance(error, ImageError)
                reason = "InvalidConfiguration" if image else "DependenciesNotReady"
                message = str(error) if image else f"Pod failed to start: {error}"
                if boot.retry_at is None:
                    # The image table or images directory may change; a failed start may be transient.
                    boot.retry_at = now + (30.0 if image else 5.0)
                    log.warning("sandbox %s/%s failed to start: %s", md["namespace"], md["name"], error)
                    await self.events.record(obj, "InvalidConfiguration" if image else "FailedStart", str(error),
                                             warning=True)
                m.set_condition(status, "Ready", False, reason, message, observed_generation=gen)
                if now < boot.retry_at:
                    return boot.retry_at - now
            del self._boots[key]
            if error is not None:
                return 0.0  # retry now: the next pass starts a new boot
            if (restarts := self._restarts.get(key)) is not None:
                restarts.running(asyncio.get_running_loop().time())  # a later end is a new one
            state = await self.runtime.state(rid)
            if state.phase != Phase.RUNNING:
                return 0.1  # it started and stopped already: look again, per restartPolicy
        self._running[key] = rid
        if (done := self._boots.get(key)) is not None and done.task.done():
            del self._boots[key]  # consumed here, so that a boot found later is one begun after this run
        restarts = self._restarts.get(key)
        if restarts is not None:
            restarts.running(asyncio.get_running_loop().time())
        _drop_condition(status, "Finished")
        reason, message = _isolation_condition(state.isolation)
        if state.message:  # what the runtime could not enforce, e.g. an unbounded disk
            message += f"; {state.message}"
        m.set_condition(status, "Isolated", True, reason, message, observed_generation=gen)
        m.set_condition(status, "PodScheduled", True, "PodScheduled", "", observed_generation=gen)
        m.set_condition(status, "Ready", True, "DependenciesReady", "Pod is Ready", observed_generation=gen)
        status["selector"] = f"{lb.SANDBOX_NAME_HASH}={lb.name_hash(md['name'])}"
        status["nodeName"] = self.node_name
        if spec.get("service"):
            status["service"] = md["name"]
            status["serviceFQDN"] = f"{md['name']}.{md['namespace']}.svc.{CLUSTER_DOMAIN}"
        else:
            status.pop("service", None)
            status.pop("serviceFQDN", None)
        return None

    @staticmethod
    def _ended(obj: Obj, state: RuntimeState) -> Termination | None:
        """How the main process ended, with the limits that explain it, if it ended on its own."""
        template = (obj.get("spec") or {}).get("podTemplate") or {}
        containers = (template.get("spec") or {}).get("containers") or [{}]
        memory = ((containers[0].get("resources") or {}).get("limits") or {}).get("memory")
        pids = ((template.get("metadata") or {}).get("annotations") or {}).get(PIDS_LIMIT_ANNOTATION)
        return termination(state, memory_limit=str(memory) if memory is not None else None, pids_limit=pids)

    async def _after_end(self, obj: Obj, key: tuple[str, str], ended: Termination, status: Obj,
                         gen: int | None) -> float | None:
        """Report a main process that ended (once per end) and apply restartPolicy: None when the sandbox is
        Finished, else seconds of back-off left before it restarts (0: restart now)."""
        policy = (((obj.get("spec") or {}).get("podTemplate") or {}).get("spec") or {}).get("restartPolicy", "Always")
        restart = policy == "Always" or (policy == "OnFailure" and ended.failed)
        restarts = self._restarts.get(key)
        if restarts is None:
            restarts = self._restarts[key] = Restarts.of(obj)
        now = asyncio.get_running_loop().time()
        if not restarts.pending:
            delay = restarts.ended(ended, restart=restart, now=now)
            md = obj["metadata"]
            what = f"{ended.message} (exit code {ended.exit_code})" if ended.exit_code is not None else ended.message
            if restart:
                what += f"; restart {restarts.count}" + (f" after a back-off of {delay:.0f}s" if delay else "")
            log.info("sandbox %s/%s: %s", md["namespace"], md["name"], what)
            await self.events.record(obj, ended.reason, what, warning=ended.failed)
        if not restart:
            reason, message = ("PodSucceeded", "Pod completed successfully") if not ended.failed else (
                "PodFailed", f"Pod failed: {ended.reason}: {ended.message}")
            m.set_condition(status, "Finished", True, reason, message, observed_generation=gen)
            m.set_condition(status, "Ready", False, reason, message, observed_generation=gen)
            return None
        wait = max(restarts.restart_at - now, 0.0)
        then = f"back-off {wait:.0f}s restarting it" if wait > 0 else "restarting it"
        m.set_condition(status, "Ready", False, ended.reason, f"{ended.message}; {then}", observed_generation=gen)
        return wait

    async def _annotate_restarts(self, obj: Obj, key: tuple[str, str]) -> Obj:
        """Mirror the restart count and last termination into the Sandbox's annotations; the object as written."""
        restarts = self._restarts.get(key)
        if restarts is None:
            return obj
        fresh = copy.deepcopy(obj)
        if not restarts.annotate(fresh):
            return obj
        return await self.client.update(self.kind, fresh)

    async def _boot(self, key: tuple[str, str], spec: SandboxSpec, priority: int) -> RuntimeError_ | None:
        """Start a sandbox in the background, when the start queue lets it; then reconcile it again.

        Boots wait in the start queue without holding a reconcile worker, so a cold claim's
        sandbox is never stuck behind a warm pool's refill for want of a worker.
        """
        try:
            async with self.starts.slot(priority):
                await self.runtime.start(spec)
            return None
        except RuntimeError_ as e:
            return e
        except Exception as e:  # never a boot that fails for good: report it and retry like any failed start
            log.exception("sandbox %s/%s: starting it failed", *key)
            return SandboxStartFailed(f"sandbox {spec.id}: {type(e).__name__}: {e}")
        finally:
            self.enqueue(key, 0.0)

    async def _warn_once(self, obj: Obj, status: Obj, reason: str, message: str) -> None:
        """A Warning event for a refusal, unless the Ready condition already says the same."""
        ready = m.condition({"status": status}, "Ready") or {}
        if (ready.get("reason"), ready.get("message")) != (reason, message):
            await self.events.record(obj, reason, message, warning=True)

    async def _write_status(self, obj: Obj, status: Obj) -> None:
        if status != (obj.get("status") or {}):
            fresh = copy.deepcopy(obj)
            fresh["status"] = status
            await self.client.update_status(self.kind, fresh)


@dataclass
class _Boot:
    """A start in the background; when it failed, the time a new attempt may begin."""

    task: asyncio.Task[RuntimeError_ | None]
    retry_at: float | None = None


def _drop_condition(status: Obj, type_: str) -> None:
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != type_]
    if conditions:
        status["conditions"] = conditions
    else:
        status.pop("conditions", None)
