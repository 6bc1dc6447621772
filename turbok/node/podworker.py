"""One worker per Pod bound to this node: the kubelet's pod worker and SyncPod, over ``PodRuntime``.

A worker is a task that syncs its Pod, level-triggered, whenever the Pod
changes, the runtime reports a container change (the node's relist, a
kubelet's PLEG), a probe changes its mind, or a back-off runs out:

1. Admission, once: a Pod the node cannot run (``podspec.refusals``) is
   Failed with the reason; what is honoured only in part is a Warning Event
   each (``podspec.notices``).
2. The pod sandbox: its volumes (``volumes.pod_volumes``: a failure is a
   ``FailedMount`` Event and a retry), then ``run_pod_sandbox`` in a boot slot
   (``StartQueue``: urgent Pods before warm-pool refills); a failure is a
   ``FailedCreatePodSandBox`` Event and a retry with back-off. A sandbox that
   dies, or whose disk failed (``DiskFailed``), is made again
   (``SandboxChanged``), as the kubelet does.
3. Init containers in order, each to completion (``restartPolicy: Always``
   init containers are sidecars: started in order and kept running); a failed
   one is restarted with back-off, or fails the Pod under ``restartPolicy:
   Never``. Then the app containers. Each start: env (``env``), mounts
   (``volumes``), security context (``security``), ``$(VAR)`` expansion, the
   ``Pulled``/``Created``/``Started`` Events, probes (``probes``), postStart.
4. A container that ends is restarted per ``restartPolicy`` with the
   kubelet's CrashLoopBackOff (``restarts``): ``lastState``, ``restartCount``,
   the ``BackOff`` Event; one that fails its liveness/startup probe, or whose
   image changed in the spec, is killed and restarted (``Killing``).
5. Status (``status.pod_status``) is handed to the node's ``StatusWriter``
   whenever it changed; a Pod whose containers are all done is Succeeded or
   Failed, its sandbox stopped (logs kept).
6. Deletion (``deletionTimestamp``, or the Pod gone): a boot waiting for its
   slot is abandoned, one in flight is let finish and torn down; preStop hooks
   and SIGTERM then SIGKILL within the grace period (``Killing``); the pod
   sandbox is stopped in one of the node's teardown slots (``reaper``), or
   hibernated/stopped and kept when the Pod says ``turbok.dev/on-delete``
   (``suspend``); the final status is written; then the Pod is deleted with
   ``gracePeriodSeconds=0``. What a removed sandbox leaves (network, disk,
   directory, emptyDirs) goes in the background after that (``Reaper.remove``).

The runtime id is ``suspend.runtime_id(pod)``, known before anything runs, so
a teardown never depends on a boot having finished. Workers sharing a runtime
id (an old Pod of a Sandbox still terminating while its new Pod starts) run
one after the other (``NodeContext.lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from turbok.api import meta as m
from turbok.api.status import ApiError
from turbok.node import podspec
from turbok.node.client import Obj
from turbok.node.containers import ContainerRecord, container_hash, fingerprint
from turbok.node.context import NodeContext
from turbok.node.dra.manager import ClaimsNotReady, PodDevices, PrepareFailed
from turbok.node.env import ContainerConfigError, container_env
from turbok.node.images import ensure_image
from turbok.node.probes import ContainerProber
from turbok.node.restarts import BackOff, rfc3339, terminated
from turbok.node.security import security_context
from turbok.node.startqueue import REFILL, URGENT
from turbok.node.status import isolation_condition, phase_of, pod_status
from turbok.node.suspend import Kept, on_delete, runtime_id, spec_hash
from turbok.node.volumes import VolumeError, container_mounts, pod_volumes, sync_files
from turbok.runtime.cri import (
    ContainerState,
    ContainerStatus,
    PodSandboxState,
    PodSandboxStatus,
    VolumeConfig,
)
from turbok.runtime.errors import ImageError, RuntimeError_

__all__ = ["NodeContext", "PodWorker"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The kubelet never gives a container less than this to stop, whatever the grace period says.
MIN_GRACE = 2.0
DEFAULT_GRACE = 30
#: Retries of a Pod waiting on an input (a Secret, a ConfigMap, a claim) when no change wakes it first; a change
#: of one in its namespace retries it at once (``inputs_changed``).
INPUT_RETRY = 10.0
#: Back-off of failed boots: 1 s doubling to 30 s (image pulls: the kubelet's 10 s doubling to 5 minutes).
BOOT_BACKOFF_BASE, BOOT_BACKOFF_CAP = 1.0, 30.0
TEARDOWN_TRIES = 3
#: A sync that failed unexpectedly is tried again after this many seconds.
SYNC_RETRY = 5.0


class _Deleted(Exception):
    """The Pod is being deleted: stop syncing it."""


class PodWorker:
    def __init__(self, ctx: NodeContext, pod: Obj, *, on_done: Callable[[PodWorker], None] | None = None) -> None:
        self.ctx = ctx
        self.pod = pod
        md = pod["metadata"]
        self.uid: str = md["uid"]
        self.key = f"{md.get('namespace', '')}/{md['name']}"
        self.rid = runtime_id(pod)
        self.gone = False
        self.finished: str | None = None  # Succeeded or Failed, once reported
        self.sandbox_ready = False
        #: why the last try to create the pod sandbox failed ("" once one is made): PodReadyToStartContainers says it
        self.sandbox_failure = ""
        self.booted = False
        #: the volumes the runtime has (None: unknown, a sandbox adopted after a restart)
        self.volumes: list[VolumeConfig] | None = None
        self.pod_ip = ""
        self.start_time: str | None = (pod.get("status") or {}).get("startTime")
        self.started_mono: float | None = None
        self.fingerprint: tuple[Any, ...] | None = None
        self.reason = ""
        self.message = ""
        self.isolated: tuple[str, str] | None = None  # the turbok.dev/Isolated condition, once booted
        #: what the Pod's prepared ResourceClaims give its containers (``turbok.node.dra``)
        self.devices: PodDevices | None = None
        self.restored: tuple[bool, str, str] | None = None  # the PodRestored condition, once started from a snapshot
        self._on_done = on_done
        self._admitted = False
        self._adopting = True  # the first sync takes over what already runs (a control-plane restart)
        self._boot_backoff = BackOff(base=BOOT_BACKOFF_BASE, cap=BOOT_BACKOFF_CAP)
        self._warned: set[tuple[str, str]] = set()
        self._published: Obj | None = None
        self._wake = asyncio.Event()
        self._critical = 0
        self._task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        spec = pod.get("spec") or {}
        self.inits = [ContainerRecord(c, init=True) for c in spec.get("initContainers") or []]
        self.apps = [ContainerRecord(c, init=False) for c in spec.get("containers") or []]

    # ------------------------------------------------------------ control

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"pod-worker {self.key}")

    async def stop(self) -> None:
        """Stop working on the Pod, leaving it as it is (the node stops; a restart re-adopts it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def update(self, pod: Obj) -> None:
        """The Pod as the API has it now."""
        if pod["metadata"].get("uid") != self.uid:
            return
        self.pod = pod
        self._changed()

    def removed(self, last: Obj | None = None) -> None:
        """The Pod is gone from the API (``last``: the object as it was removed)."""
        if last is not None and last["metadata"].get("uid") == self.uid:
            self.pod = last
        self.gone = True
        self._changed()

    def wake(self) -> None:
        self._wake.set()

    def _inputs_found(self) -> None:
        """Input changes need not wake this worker any more, unless a container still waits for one."""
        if not any(c.waits_for_inputs for c in (*self.inits, *self.apps)):
            self.ctx.input_waiters.discard(self)

    def inputs_changed(self) -> None:
        """A Secret, ConfigMap or claim of the Pod's namespace changed: what waits on one is retried now."""
        for c in (*self.inits, *self.apps):
            if c.waits_for_inputs:
                c.retry_at = 0.0
        self._wake.set()

    @property
    def deleting(self) -> bool:
        return self.gone or bool(self.pod["metadata"].get("deletionTimestamp"))

    @property
    def watched(self) -> bool:
        """Whether the node's relist should look at this Pod's sandbox."""
        return self.sandbox_ready and self.finished is None and not self.deleting

    def _changed(self) -> None:
        if self.deleting:
            for c in (*self.inits, *self.apps):
                if c.prober is not None:
                    c.prober.pod_terminating()  # liveness and startup stop; readiness goes on
            if self._sync_task is not None and not self._sync_task.done() and not self._critical:
                self._sync_task.cancel()  # waiting for a slot, an input, a hook: abandon it
        self._wake.set()

    async def _critical_call(self, call: Awaitable[T]) -> T:
        """A runtime call that must finish once begun (a half-made sandbox is worse than a late teardown)."""
        self._critical += 1
        try:
            return await call
        finally:
            self._critical -= 1

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        if self.ctx.busy(self.rid) and not self.deleting:
            self.ctx.events.record(self.pod, "SandboxInUse", f"waiting for pod sandbox {self.rid}: another Pod of "
                                   "the same turbok.dev/sandbox-identity still holds it")
        try:
            async with self.ctx.lock(self.rid):
                if not self.deleting:
                    self._sync_task = asyncio.get_running_loop().create_task(self._live(), name=f"sync {self.key}")
                    try:
                        await self._sync_task
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise  # the node is stopping: leave the Pod as it is
                    except _Deleted:
                        pass
                await self._terminate()
        except asyncio.CancelledError:
            if self._sync_task is not None:
                self._sync_task.cancel()
            raise
        except Exception:
            log.exception("pod %s: worker failed", self.key)
        finally:
            self.ctx.input_waiters.discard(self)
            for c in (*self.inits, *self.apps):
                await self._stop_prober(c)
            self.done.set()
            task = asyncio.current_task()
            if self._on_done is not None and not (task is not None and task.cancelling()):
                self._on_done(self)

    async def _live(self) -> None:
        while not self.deleting:
            self._wake.clear()
            try:
                delay = await self._sync()
            except _Deleted:
                return
            except ApiError as e:
                log.warning("pod %s: %s", self.key, e)
                delay = 1.0
            except RuntimeError_ as e:
                log.warning("pod %s: the runtime failed: %s", self.key, e)
                delay = SYNC_RETRY
            except Exception:  # a bug must not abandon the Pod: it would never be torn down
                log.exception("pod %s: sync failed", self.key)
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise asyncio.CancelledError from None  # nor swallow the node's stop: it would wait forever
                delay = SYNC_RETRY
            if self.deleting:
                return
            await self._sleep(delay)

    async def _sleep(self, delay: float | None) -> None:
        if self._wake.is_set():
            return
        waits: set[asyncio.Task[Any]] = {asyncio.ensure_future(self._wake.wait())}
        if delay is not None:
            waits.add(asyncio.ensure_future(self.ctx.clock.sleep(max(delay, 0.0))))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()

    def _check(self) -> None:
        if self.deleting:
            raise _Deleted

    # ------------------------------------------------------------ sync

    async def _sync(self) -> float | None:
        """One step towards what the Pod asks for; seconds until the next step is due (None: on change)."""
        pod = self.pod
        if self.finished is not None:
            return None
        now = self.ctx.clock.now()
        if self.started_mono is None:
            self.started_mono = now
            self.start_time = self.start_time or m.now()
        if not self._admitted:
            refusal = podspec.refusals(pod)
            if refusal is not None:
                await self._fail(*refusal, warn=True)
                return None
            for reason, message in podspec.notices(pod, dra=self.ctx.dra is not None):
                self._warn_once(reason, message)
            self._admitted = True
        deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        if isinstance(deadline, int) and now - self.started_mono >= deadline:
            await self._fail("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
            return None
        wake: float | None = deadline - (now - self.started_mono) if isinstance(deadline, int) else None

        sb = await self.ctx.runtime.pod_sandbox_status(self.rid)
        adopting, self._adopting = self._adopting, False
        if sb.state != PodSandboxState.READY or sb.reason == "DiskFailed":
            if adopting and sb.state != PodSandboxState.READY and self._adopt_finished():
                return None
            after = await self._sandbox_down(sb)
            if after is not None:
                return after
            boot = await self._boot()
            if isinstance(boot, float):
                return _soonest(wake, boot)
            sb = boot
        elif adopting:
            self._adopt(sb)
        self.sandbox_ready = True
        self.pod_ip = sb.ip
        self._observe(sb)
        self._check()
        after = await self._containers()
        self._publish()
        phase = phase_of(self.pod, [c.view for c in self.inits], [c.view for c in self.apps])
        if phase in ("Succeeded", "Failed"):
            await self._finish(phase)
            return None
        return _soonest(wake, after)

    def _adopt_finished(self) -> bool:
        """At start, a Pod the API says is finished whose sandbox is stopped stays finished."""
        phase = (self.pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            self.finished = phase
            return True
        return False

    def _adopt(self, sb: PodSandboxStatus, *, probes: bool = True) -> None:
        """Take over a sandbox that runs already: keep the counts and readiness the API has."""
        self.booted = True
        status = self.pod.get("status") or {}
        known = {s.get("name"): s for s in (*(status.get("initContainerStatuses") or []),
                                             *(status.get("containerStatuses") or []))}
        running = {c.name: c for c in sb.containers}
        for c in (*self.inits, *self.apps):
            before = known.get(c.name) or {}
            c.view.restart_count = int(before.get("restartCount", 0))
            c.view.last_state = copy.deepcopy(before.get("lastState") or {})
            c.attempts = c.view.restart_count + (1 if c.name in running else 0)
            if (rt := running.get(c.name)) is not None:
                c.attempts = max(c.attempts, rt.attempt + 1)
                c.hash = container_hash(c.spec)
                if rt.state == ContainerState.RUNNING:
                    c.view.started = bool(before.get("started", True))
                    c.view.ready = bool(before.get("ready", False))
                    c.running_since = self.ctx.clock.now()
                    if probes:
                        self._start_prober(c)
            if c.view.init and not c.view.sidecar and \
                    ((before.get("state") or {}).get("terminated") or {}).get("exitCode") == 0:
                c.completed = True
        log.info("pod %s: adopted its running pod sandbox %s", self.key, self.rid)

    async def _sandbox_down(self, sb: PodSandboxStatus) -> float | None:
        """The sandbox is not running: say why if it ran; None when a (new) boot should follow."""
        if not self.booted:
            return None
        if sb.reason == "DiskFailed":
            self.ctx.events.record(self.pod, "DiskFailed", sb.message or "the pod's disk failed", warning=True)
            await self._critical_call(self.ctx.runtime.stop_pod_sandbox(self.rid))
            sb = await self.ctx.runtime.pod_sandbox_status(self.rid)
        self._observe(sb)
        for c in (*self.inits, *self.apps):
            await self._stop_prober(c)
            # what the runtime no longer reports as exited went with the sandbox: not ready, not started
            c.view.ready = c.view.started = False
            if "running" in c.view.state:
                c.view.state = {"waiting": {"reason": "ContainerCreating"}}
        self.sandbox_ready = False
        policy = (self.pod.get("spec") or {}).get("restartPolicy", "Always")
        if policy == "Never" and all(c.attempts for c in self.apps):
            await self._finish(phase_of(self.pod, [c.view for c in self.inits], [c.view for c in self.apps],
                                        terminal=True))
            return 0.0
        self.ctx.events.record(self.pod, "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.")
        for c in self.inits:
            if not c.view.sidecar:
                c.completed = False  # a new sandbox runs its init containers again, as the kubelet does
        return None

    async def _boot(self) -> PodSandboxStatus | float:
        """Make the pod sandbox run; its status, or seconds until a retry."""
        pod = self.pod
        kept = self.ctx.kept.get(self.rid)
        if kept is not None and kept.mode == "hibernate" and kept.spec_hash != spec_hash(pod):
            self.ctx.events.record(pod, "HibernationDiscarded", "the pod spec changed since the sandbox hibernated: "
                                   "it starts on its kept disk without its memory")
            await self._critical_call(self.ctx.runtime.stop_pod_sandbox(self.rid))
        try:
            volumes = await pod_volumes(self.ctx.client, pod, storage=self.ctx.storage, sandbox_id=self.rid,
                                        allocatable=self.ctx.allocatable(), tokens=self.ctx.tokens,
                                        warn=self._warn_once)
        except VolumeError as e:
            for message in e.messages:
                self._warn_once(e.reason, message)
            self._waiting_all("ContainerCreating")
            self._publish()
            self.ctx.input_waiters.add(self)
            return INPUT_RETRY
        self._inputs_found()
        devices = await self._prepare_devices()
        if isinstance(devices, float):
            return devices
        if devices is not None:
            volumes = [*volumes, *devices.volumes]
        config = podspec.sandbox_config(pod, self.rid, volumes, dns=self.ctx.dns(pod))
        if devices is not None and devices.nvproxy:
            config = dataclasses.replace(config, nvproxy=True)
        plan = None
        if self.ctx.snapshots is not None and not self.booted:  # only a Pod's first boot starts from a snapshot
            try:
                plan = await self.ctx.snapshots.restore_plan(pod, kept)
            except ApiError as e:
                log.warning("pod %s: looking up its snapshot: %s", self.key, e)
                return INPUT_RETRY
        if self.ctx.starts.full:
            self._waiting_all("ContainerCreating")
            self._publish()  # it waits for a boot slot: say so
        async with self.ctx.starts.slot(self._priority()):
            self._check()
            try:
                sb = None
                if plan is not None and plan.snapshot_id is not None:
                    try:
                        sb = await self._critical_call(self.ctx.runtime.restore_pod_sandbox(config, plan.snapshot_id))
                    except (RuntimeError_, NotImplementedError) as e:  # the Pod starts afresh, and says why
                        plan = dataclasses.replace(plan, snapshot_id=None, reason="RestoreFailed", message=str(e))
                if sb is None:
                    sb = await self._critical_call(self.ctx.runtime.run_pod_sandbox(config))
            except RuntimeError_ as e:
                delay = self._boot_backoff.ended(now=self.ctx.clock.now(), ran=None) or self._boot_backoff.base
                self.ctx.events.record(pod, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {e}",
                                       warning=True)
                log.warning("pod %s: creating its pod sandbox failed: %s", self.key, e)
                self.sandbox_failure = f"Failed to create pod sandbox: {e}"
                self._waiting_all("ContainerCreating")
                self._publish()
                return delay
        self._boot_backoff = BackOff(base=BOOT_BACKOFF_BASE, cap=BOOT_BACKOFF_CAP)
        self.sandbox_failure = ""
        self.booted = True
        self.volumes = volumes
        running = {c.name for c in sb.containers if c.state == ContainerState.RUNNING}
        if plan is not None:
            if plan.snapshot_id is not None and running:
                self.restored = (True, "Restored", f"Pod restored from snapshot {plan.name}")
            else:
                why = plan.message or f"snapshot {plan.name} could not be restored"
                self.restored = (False, plan.reason or "RestoreFailed", f"{why}; the Pod started afresh")
                self.ctx.events.record(pod, "RestoreFailed", self.restored[2], warning=True)
        if kept is not None and kept.hibernation_failed and plan is None:
            self.restored = (False, "HibernationFailed", f"its memory could not be kept when it was suspended "
                             f"({kept.hibernation_failed}); the Pod started on its kept disk")
        if kept is not None:
            self.ctx.kept.remove(self.rid)
        if running and (kept is not None or (plan is not None and plan.snapshot_id is not None)):
            self._restored(running, f"snapshot {plan.name}" if plan is not None and plan.snapshot_id else "")
        return sb

    def _priority(self) -> int:
        """A warm pool's Pods start after the Pods someone waits for."""
        return REFILL if podspec.background(self.pod) else URGENT

    async def _prepare_devices(self) -> PodDevices | float | None:
        """The Pod's ResourceClaims prepared by their drivers (``turbok.node.dra``); None without claims,
        seconds until a retry when a claim is not ready (an input: woken by claim changes) or failed."""
        if self.ctx.dra is None or not (self.pod.get("spec") or {}).get("resourceClaims"):
            return None
        try:
            self.devices = await self.ctx.dra.prepare(self.pod)
        except ClaimsNotReady as e:
            log.info("pod %s: %s", self.key, e)
            self._waiting_all("ContainerCreating")
            self._publish()
            self.ctx.input_waiters.add(self)
            return INPUT_RETRY
        except PrepareFailed as e:
            self.ctx.events.record(self.pod, "FailedPrepareDynamicResources", f"Failed to prepare dynamic "
                                   f"resources: {e}", warning=True)
            self._waiting_all("ContainerCreating")
            self._publish()
            return self._boot_backoff.ended(now=self.ctx.clock.now(), ran=None) or self._boot_backoff.base
        self._inputs_found()
        for note in self.devices.notes:
            self._warn_once("NotHonoured", note)
        return self.devices

    async def _unprepare_devices(self) -> None:
        if self.ctx.dra is not None and (self.pod.get("spec") or {}).get("resourceClaims"):
            try:
                await self.ctx.dra.unprepare(self.pod)
            except Exception as e:  # the claim controller deallocates anyway; the driver is told next time
                log.warning("pod %s: unpreparing its resource claims: %s", self.key, e)
            self.devices = None

    def _restored(self, names: set[str], snapshot: str = "") -> None:
        """Containers that came back with the sandbox's memory: running, their init containers done."""
        self.ctx.events.record(self.pod, "Resumed", f"Pod sandbox restored from {snapshot or 'hibernation'} with "
                               "its memory and processes")
        for c in self.inits:
            if not c.view.sidecar:
                c.completed = True
                c.view.state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
        for c in (*self.inits, *self.apps):
            if c.name in names:
                c.attempts = max(c.attempts, 1)
                c.hash = container_hash(c.spec)
                c.running_since = self.ctx.clock.now()
                self._start_prober(c)

    # ------------------------------------------------------------ containers

    def _observe(self, sb: PodSandboxStatus) -> None:
        """Bring the views up to date with the runtime's account of the containers."""
        self.fingerprint = fingerprint(sb)
        self.isolated = isolation_condition(sb.isolation.value, sb.notes)
        for note in sb.notes:
            self._warn_once("NotHonoured", note)
        by_name = {c.name: c for c in sb.containers}
        now = self.ctx.clock.now()
        for c in (*self.inits, *self.apps):
            st = by_name.get(c.name)
            if st is None or c.attempts == 0:
                continue
            c.view.container_id = st.container_id or c.view.container_id
            c.view.image_id = st.image_id or c.view.image_id
            if st.image:
                c.view.image = st.image
            for note in st.notes:
                self._warn_once("NotHonoured", f"container {c.name}: {note}")
            if st.state == ContainerState.RUNNING:
                c.view.state = {"running": {"startedAt": rfc3339(st.started_at) or m.now()}}
                if c.prober is not None:
                    c.view.started = c.prober.started
                    c.view.ready = c.prober.started and c.prober.ready
                else:
                    c.view.started = True
                    c.view.ready = True
                continue
            if st.state != ContainerState.EXITED:
                continue
            key = (st.attempt, st.finished_at)
            if c.counted == key:
                continue
            c.counted = key
            c.view.ready = c.view.started = False
            ended = terminated(st)
            c.view.state = {"terminated": ended}
            # how long it ran, on the node's clock (the runtime's times are wall-clock, for status only)
            ran = now - c.running_since if c.running_since is not None else None
            c.running_since = None
            if c.prober is not None:
                self._spawn(self._stop_prober(c))
            if self.deleting or self.finished is not None:
                continue
            if c.view.init and not c.view.sidecar and st.exit_code == 0:
                c.completed = True
                continue
            if not self._restarts(c, st):
                continue
            delay = c.backoff.ended(now=now, ran=ran)
            c.view.last_state = {"terminated": ended}
            if delay > 0:
                self._backoff_waiting(c, delay)
            log.info("pod %s: container %s ended (%s, exit code %s); restart %s", self.key, c.name,
                     ended["reason"], ended["exitCode"], f"in {delay:.0f}s" if delay else "now")

    def _restarts(self, c: ContainerRecord, st: ContainerStatus) -> bool:
        if c.view.sidecar:
            return True
        policy = str((self.pod.get("spec") or {}).get("restartPolicy", "Always"))
        if c.view.init:
            return policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and st.exit_code != 0)

    def _backoff_waiting(self, c: ContainerRecord, delay: float) -> None:
        md = self.pod["metadata"]
        who = f"{md['name']}_{md.get('namespace', '')}({self.uid})"
        c.view.state = {"waiting": {"reason": "CrashLoopBackOff",
                                    "message": f"back-off {delay:.0f}s restarting failed container={c.name} "
                                               f"pod={who}"}}
        self.ctx.events.record(self.pod, "BackOff", f"Back-off restarting failed container {c.name} in pod {who}",
                               warning=True, field_path=c.field_path)

    async def _containers(self) -> float | None:
        """Start, restart or kill containers as the spec and the restart policy say; seconds to the next step."""
        policy = (self.pod.get("spec") or {}).get("restartPolicy", "Always")
        wake: float | None = None
        for c in self.inits:
            self._check()
            if c.view.sidecar:
                if c.view.running:
                    wake = _soonest(wake, await self._running(c))
                    if not c.view.started:
                        return wake  # the next init container waits until this sidecar has started
                    continue
                wake = _soonest(wake, await self._ensure_started(c))
                if not c.view.started:
                    return wake
                continue
            if c.completed:
                continue
            if c.view.running:
                return _soonest(wake, await self._running(c))
            if c.attempts and c.view.exit_code not in (None, 0) and policy == "Never":
                return wake  # the phase is Failed: the caller finishes the Pod
            return _soonest(wake, await self._ensure_started(c))
        for c in self.apps:
            self._check()
            if c.view.running:
                wake = _soonest(wake, await self._running(c))
                continue
            if c.attempts and ("terminated" in c.view.state and not self._will_restart(c, policy)):
                continue
            wake = _soonest(wake, await self._ensure_started(c))
        return wake

    def _will_restart(self, c: ContainerRecord, policy: str) -> bool:
        code = c.view.exit_code
        return policy == "Always" or (policy == "OnFailure" and code not in (None, 0))

    async def _running(self, c: ContainerRecord) -> float | None:
        """A running container: kill it if a probe or a spec change says so."""
        if c.prober is not None and c.prober.failed is not None:
            probe, why = c.prober.failed
            await self._kill(c, message=f"Container {c.name} failed {probe.lower()} probe, will be restarted",
                             grace=self._probe_grace(c, probe))
            log.info("pod %s: container %s failed its %s probe: %s", self.key, c.name, probe.lower(), why)
            return 0.0
        if c.hash and c.hash != container_hash(c.spec_now(self.pod)):
            await self._kill(c, message=f"Container {c.name} definition changed, will be restarted")
            c.spec = c.spec_now(self.pod)
            c.backoff = BackOff()
            return 0.0
        return None

    def _probe_grace(self, c: ContainerRecord, probe: str) -> float:
        spec = c.spec.get(f"{probe.lower()}Probe") or {}
        value = spec.get("terminationGracePeriodSeconds")
        return float(value) if isinstance(value, int) else self._grace()

    async def _ensure_started(self, c: ContainerRecord) -> float | None:
        """Start ``c`` unless a back-off says wait; seconds to wait, if any."""
        now = self.ctx.clock.now()
        left = max(c.backoff.waiting(now), c.retry_at - now)
        if left > 0:
            return left
        return await self._start(c)

    async def _start(self, c: ContainerRecord) -> float | None:
        pod = self.pod
        c.spec = c.spec_now(pod)
        now = self.ctx.clock.now()
        image_ready = await ensure_image(self.ctx, pod, c, now=now)  # pulls per imagePullPolicy (node/images.py)
        if isinstance(image_ready, float):
            return image_ready
        self._check()
        try:
            env = await container_env(self.ctx.client, pod, c.spec, node_name=self.ctx.node_name,
                                      host_ip=self.ctx.host_ip, pod_ip=self.pod_ip,
                                      pod_ips=[self.pod_ip] if self.pod_ip else [],
                                      allocatable=self.ctx.allocatable(), warn=self._warn_once)
            plan = security_context(pod, c.spec, image_uid=0 if image_ready is None else image_ready.policy_uid)
            mounts = container_mounts(pod, c.spec, env=env)
        except ContainerConfigError as e:
            c.view.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            self.ctx.events.record(pod, "Failed", f"Error: {e}", warning=True, field_path=c.field_path)
            self.ctx.input_waiters.add(self)
            c.retry_at = now + INPUT_RETRY
            c.waits_for_inputs = True
            return INPUT_RETRY
        c.waits_for_inputs = False
        self._inputs_found()
        for reason, message in plan.notes:
            self._warn_once(reason, message)
        config = podspec.container_config(c.spec, env=env, mounts=mounts, security=plan.context,
                                          attempt=c.attempts, background=podspec.background(pod))
        if self.ctx.dra is not None and (pod.get("spec") or {}).get("resourceClaims"):
            devices = self.devices or await self._prepare_devices()  # adopted: prepared again (idempotent)
            if isinstance(devices, float) or devices is None:
                return devices if isinstance(devices, float) else INPUT_RETRY
            config = devices.apply(config)
        image = config.image
        if image_ready is None:  # a runtime without an image service: its images are always here
            self.ctx.events.record(pod, "Pulled", f'Container image "{image}" already present on machine',
                                   field_path=c.field_path)
        self._check()
        try:
            # A container's start is a boot (one runsc sandbox per container where one runs at a time): it takes
            # a start slot as the pod sandbox's does, or a pool's refill would start hundreds of them at once.
            async with self.ctx.starts.slot(self._priority()):
                self._check()
                st = await self._critical_call(self.ctx.runtime.start_container(self.rid, config))
        except ImageError as e:
            # This node never pulls (images come from its local table): the kubelet's words for an image
            # that is not on the machine and will not be pulled. Retried with back-off: the table may change.
            delay = c.image_backoff.ended(now=now, ran=None) or c.image_backoff.base
            c.view.state = {"waiting": {"reason": "ErrImageNeverPull", "message": str(e)}}
            self.ctx.events.record(pod, "ErrImageNeverPull", f'Container image "{image}" is not present on this '
                                   f"node and it never pulls: {e}", warning=True, field_path=c.field_path)
            c.retry_at = now + delay
            return delay
        except RuntimeError_ as e:
            c.attempts += 1
            self.ctx.events.record(pod, "Failed", f"Error: {e}", warning=True, field_path=c.field_path)
            delay = c.backoff.ended(now=now, ran=0.0)
            c.view.restart_count = max(c.attempts - 1, 0)
            c.view.state = {"waiting": {"reason": "RunContainerError", "message": str(e)}}
            return delay or 1.0
        c.image_backoff = BackOff(base=10.0)
        c.attempts += 1
        c.view.restart_count = c.attempts - 1
        c.hash = container_hash(c.spec)
        c.counted = None
        c.running_since = now
        c.view.state = {"running": {"startedAt": rfc3339(st.started_at) or m.now()}}
        c.view.container_id = st.container_id
        c.view.image_id = st.image_id
        self.ctx.events.record(pod, "Created", f"Created container: {c.name}", field_path=c.field_path)
        self.ctx.events.record(pod, "Started", f"Started container {c.name}", field_path=c.field_path)
        self._start_prober(c)
        if c.prober is None:
            c.view.started = c.view.ready = True
        else:
            c.view.started = c.prober.started
            c.view.ready = c.prober.started and c.prober.ready
        post = ((c.spec.get("lifecycle") or {}).get("postStart"))
        if post:
            why = await podspec.run_hook(self.ctx.runtime, self.rid, c.spec, post, pod_ip=self.pod_ip,
                                         clock=self.ctx.clock, timeout=float(self._grace()))
            if why is not None:
                self.ctx.events.record(pod, "FailedPostStartHook", "PostStartHook failed", warning=True,
                                       field_path=c.field_path)
                log.info("pod %s: postStart of %s failed: %s", self.key, c.name, why)
                await self._kill(c, message=f"Container {c.name} failed its postStart hook, will be restarted",
                                 pre_stop=False)
                return 0.0
        return None

    def _start_prober(self, c: ContainerRecord) -> None:
        if not any(k in c.spec for k in ("startupProbe", "livenessProbe", "readinessProbe")):
            c.prober = None
            return
        def unhealthy(probe: str, message: str) -> None:
            self.ctx.events.record(self.pod, "Unhealthy", f"{probe} probe failed: {message}", warning=True,
                                   field_path=c.field_path)

        c.prober = ContainerProber(runtime=self.ctx.runtime, sandbox_id=self.rid, pod=self.pod, container=c.spec,
                                   pod_ip=self.pod_ip, clock=self.ctx.clock, on_change=self.wake,
                                   on_unhealthy=unhealthy)
        c.prober.start()

    async def _stop_prober(self, c: ContainerRecord) -> None:
        prober, c.prober = c.prober, None
        if prober is not None:
            with contextlib.suppress(Exception):
                await prober.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _kill(self, c: ContainerRecord, *, message: str | None = None, grace: float | None = None,
                    pre_stop: bool = True) -> None:
        """Stop a running container as the kubelet's killContainer: preStop, then SIGTERM, SIGKILL at grace."""
        if not c.view.running:
            return
        grace = float(self._grace()) if grace is None else grace
        self.ctx.events.record(self.pod, "Killing", message or f"Stopping container {c.name}",
                               field_path=c.field_path)
        await self._stop_prober(c)
        start = self.ctx.clock.now()
        hook = (c.spec.get("lifecycle") or {}).get("preStop")
        if hook and pre_stop and grace > 0:
            why = await podspec.run_hook(self.ctx.runtime, self.rid, c.spec, hook, pod_ip=self.pod_ip,
                                         clock=self.ctx.clock, timeout=grace)
            if why is not None:
                self.ctx.events.record(self.pod, "FailedPreStopHook", f"PreStopHook failed: {why}", warning=True,
                                       field_path=c.field_path)
        left = max(grace - (self.ctx.clock.now() - start), MIN_GRACE)
        try:
            st = await self._critical_call(self.ctx.runtime.stop_container(self.rid, c.name, left))
        except RuntimeError_ as e:
            log.warning("pod %s: stopping container %s: %s", self.key, c.name, e)
            return
        if st.state == ContainerState.EXITED:
            self._observe_one(c, st)

    def _observe_one(self, c: ContainerRecord, st: ContainerStatus) -> None:
        others = [ContainerStatus(name=o.name, state=ContainerState.UNKNOWN) for o in (*self.inits, *self.apps)
                  if o is not c]
        fp = self.fingerprint
        self._observe(PodSandboxStatus(id=self.rid, state=PodSandboxState.READY, isolation=self.ctx.runtime.isolation,
                                       ip=self.pod_ip, containers=(st, *others)))
        self.fingerprint = fp  # a partial view: the relist still compares with the last full one

    def _grace(self) -> int:
        md, spec = self.pod["metadata"], self.pod.get("spec") or {}
        value = md.get("deletionGracePeriodSeconds") if md.get("deletionTimestamp") else None
        if value is None:
            value = spec.get("terminationGracePeriodSeconds")
        return int(value) if isinstance(value, int) else DEFAULT_GRACE

    def _waiting_all(self, reason: str) -> None:
        for c in (*self.inits, *self.apps):
            if c.attempts == 0 and "waiting" in c.view.state:
                init_wait = c.view.init or not self.inits
                c.view.state = {"waiting": {"reason": reason if init_wait else "PodInitializing"}}

    async def refresh_volumes(self) -> None:
        """kubelet's periodic volume sync: changed configMap/secret/downwardAPI/projected files reach the
        running pod sandbox (``volumes.sync_files``). Called by the node on input changes and every minute."""
        if not self.booted or self.finished or self.pod["metadata"].get("deletionTimestamp"):
            return
        self.volumes = await sync_files(self.ctx.runtime, self.rid, self.ctx.client, self.pod, self.volumes,
                                        allocatable=self.ctx.allocatable(), tokens=self.ctx.tokens,
                                        warn=self._warn_once)

    def _warn_once(self, reason: str, message: str) -> None:
        if (reason, message) not in self._warned:
            self._warned.add((reason, message))
            self.ctx.events.record(self.pod, reason, message, warning=True)

    # ------------------------------------------------------------ status

    def _publish(self, *, phase: str | None = None) -> asyncio.Future[None] | None:
        status = pod_status(self.pod, previous=self._published, inits=[c.view for c in self.inits], apps=[c.view for c in self.apps],
                            sandbox_ready=self.sandbox_ready, sandbox_failure=self.sandbox_failure,
                            pod_ip=self.pod_ip, host_ip=self.ctx.host_ip,
                            start_time=self.start_time, phase=phase or self.finished, reason=self.reason,
                            message=self.message, isolated=self.isolated, restored=self.restored)
        if status == self._published:
            return None
        self._published = status
        return self.ctx.status.set(self.pod, status)

    async def _fail(self, reason: str, message: str, *, warn: bool = False) -> None:
        """The Pod fails as a whole (refused, past its deadline): kill what runs, say why."""
        self.reason, self.message = reason, message
        self.ctx.events.record(self.pod, reason, message, warning=warn or reason != "DeadlineExceeded")
        await self._finish("Failed")

    async def _finish(self, phase: str) -> None:
        """Every container is done (or the Pod failed): stop the sandbox, keeping its logs; report the phase."""
        self.finished = phase
        await asyncio.gather(*(self._kill(c) for c in self.apps if c.view.running))
        for c in reversed(self.inits):
            await self._kill(c)
        if self.booted:
            with contextlib.suppress(RuntimeError_):
                await self._critical_call(self.ctx.runtime.stop_pod_sandbox(self.rid))
        self.sandbox_ready = False
        self._publish(phase=phase)
        await self._unprepare_devices()
        log.info("pod %s: %s", self.key, phase)

    # ------------------------------------------------------------ deletion

    async def _terminate(self) -> None:
        """The Pod is being deleted: stop or keep its sandbox, write its last status, delete it for good."""
        pod = self.pod
        mode = on_delete(pod)
        grace = float(self._grace()) if not self.gone else MIN_GRACE
        for attempt in range(TEARDOWN_TRIES):
            try:
                await self._teardown(mode, grace)
                break
            except Exception as e:  # the Pod goes anyway; the reaper goes on trying, else the next start's sweep
                log.warning("pod %s: tearing down pod sandbox %s (try %d): %s", self.key, self.rid, attempt + 1, e)
                self.ctx.events.record(pod, "FailedKillPod", f"error killing pod: {e}", warning=True)
                await self.ctx.clock.sleep(2.0 ** attempt)
        else:
            if mode is None and self.ctx.kept.get(self.rid) is None:
                self.ctx.reaper.remove(self.rid, self._remove_sandbox)
        await self._unprepare_devices()
        if self.gone:
            return
        phase = self.finished or phase_of(self.pod, [c.view for c in self.inits], [c.view for c in self.apps],
                                          terminal=True)
        self.sandbox_ready = False
        written = self._publish(phase=phase)
        if written is not None:
            with contextlib.suppress(Exception):
                await written
        md = self.pod["metadata"]
        try:
            await self.ctx.client.delete(self.ctx.pod_kind, md.get("namespace", ""), md["name"],
                                         grace_period_seconds=0, uid=self.uid)
        except ApiError as e:
            log.warning("pod %s: final delete: %s", self.key, e)

    async def _teardown(self, mode: str | None, grace: float) -> None:
        runtime = self.ctx.runtime
        sb = await runtime.pod_sandbox_status(self.rid)
        running = sb.state == PodSandboxState.READY
        if running:
            if self._adopting:  # deleted while the node was down: kill what runs as gracefully as ever
                self._adopting = False
                self._adopt(sb, probes=False)
            self._observe(sb)
        kept_as = None
        failed = ""  # why the memory asked to be kept is not
        if mode == "hibernate" and running:
            if runtime.supports_hibernation:
                try:
                    async with self.ctx.reaper.slot():
                        await self._critical_call(runtime.hibernate_pod_sandbox(self.rid))
                    kept_as = "hibernate"
                except (RuntimeError_, NotImplementedError) as e:
                    log.warning("pod %s: hibernation failed, stopping it (disk kept): %s", self.key, e)
                    failed = str(e)
            else:
                failed = "this node's runtime cannot hibernate"
            if failed:
                self.ctx.events.record(self.pod, "HibernationFailed", f"{failed}; the sandbox is stopped, its disk "
                                       "kept", warning=True)
        if mode is not None and kept_as is None:
            if running:
                await self._kill_all(grace)
            async with self.ctx.reaper.slot():
                await self._critical_call(runtime.stop_pod_sandbox(self.rid))
            kept_as = "stop"
        if kept_as is not None:
            previous = self.ctx.kept.get(self.rid)
            kept = Kept.of(self.pod, kept_as, hibernation_failed=failed)
            if previous is not None and kept_as == "stop" and previous.mode == "hibernate" and not running:
                kept = previous  # it never ran again since it hibernated: its memory is still there
            self.ctx.kept.put(kept)
            self.ctx.events.record(self.pod, "Suspended", "Pod sandbox hibernated: its memory, processes and disk "
                                   "are kept" if kept.mode == "hibernate" else "Pod sandbox stopped: its disk is kept")
        else:
            if running:
                await self._kill_all(grace)
            async with self.ctx.reaper.slot():  # once stopped, nothing of it runs: the Pod may go
                await self._critical_call(runtime.stop_pod_sandbox(self.rid))
            self.ctx.kept.remove(self.rid)
            self.ctx.reaper.remove(self.rid, self._remove_sandbox)
        for c in (*self.inits, *self.apps):
            if c.view.running:  # hibernated or stopped with the sandbox
                c.view.ready = c.view.started = False
                c.view.state = {"terminated": {"exitCode": 0 if kept_as == "hibernate" else 137,
                                               "reason": "Completed" if kept_as == "hibernate" else "Error",
                                               "startedAt": c.view.state["running"].get("startedAt"),
                                               "finishedAt": m.now()}}

    async def _remove_sandbox(self) -> None:
        """The bounded emptyDirs and the rest of a stopped pod sandbox (network, disk, directory): the reaper's
        background work, after the Pod is gone. The emptyDirs first: until its last step the runtime lists the
        sandbox, so a removal cut short anywhere is found by the next start's sweep, which does both."""
        if self.ctx.storage is not None:
            await self.ctx.storage.release_pod(self.rid)
        await self.ctx.runtime.remove_pod_sandbox(self.rid)

    async def _kill_all(self, grace: float) -> None:
        """App containers at once, then sidecars in reverse order, as the kubelet kills a Pod."""
        self.sandbox_ready = False
        await asyncio.gather(*(self._kill(c, grace=grace) for c in self.apps if c.view.running))
        for c in reversed(self.inits):
            await self._kill(c, grace=grace)


_BACKGROUND: set[asyncio.Task[None]] = set()


def _soonest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
