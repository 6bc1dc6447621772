"""Idle auto-suspend: a Sandbox nobody used for a while is suspended, and woken by the next request for it.

Set per pod template (a SandboxTemplate's, so every Sandbox made from it, or a
Sandbox's own), as an annotation in ``spec.podTemplate.metadata``::

    turbok.dev/idle-timeout: "300"      # seconds without a router request or an exec

What counts as use is told to ``IdleSuspender.touch(namespace, name)`` by the
composition root (``turbok.embedded.activity``): every router request for the
Sandbox and every exec, attach or port-forward into its Pod. A Sandbox also
counts as used when it becomes Ready, when a claim adopts it from a warm pool
(its time warm in the pool is not idleness) and when this process starts.

A Sandbox idle past its timeout, Ready, running, and not a warm pool's (a pool
keeps its sandboxes warm on purpose) is suspended the way a user suspends one:
``spec.operatingMode: Suspended`` (so its Pod hibernates: memory, processes and
disk kept), with the annotation ``turbok.dev/idle-suspended: <time>`` on the
Sandbox saying why. ``wake(namespace, name)`` resumes a Sandbox suspended so
(``operatingMode: Running``, the annotation removed) and waits until it is Ready
again; one the user suspended is left alone. The router calls it when a request
names a Sandbox that is not Ready, then serves the request: the client sees a
slower answer, never the suspension.

Not a Reconciler: it keeps an index of the Sandboxes that ask for it (from the
client's change stream) and looks at them on a timer; one write per suspend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from turbok.api import meta as m
from turbok.api.kinds import Kind
from turbok.api.status import ApiError, NotFound
from turbok.controllers import labels as lb
from turbok.controllers.client import Client, Obj, ObjectEvent
from turbok.controllers.events import EventRecorder

__all__ = ["IDLE_SUSPENDED", "IDLE_TIMEOUT", "MIN_IDLE_TIMEOUT", "IdleSuspender", "idle_timeout"]

log = logging.getLogger(__name__)

IDLE_TIMEOUT = "turbok.dev/idle-timeout"
IDLE_SUSPENDED = "turbok.dev/idle-suspended"
#: The shortest timeout honoured (a shorter one is raised to it: a sandbox is not suspended between two
#: requests of one conversation).
MIN_IDLE_TIMEOUT = 10.0
#: How long ``wake`` waits for the Sandbox to be Ready again by default.
WAKE_TIMEOUT = 120.0


def idle_timeout(sandbox: Obj) -> float | None:
    """The Sandbox's idle timeout in seconds (None: never suspended for idleness)."""
    template = ((sandbox.get("spec") or {}).get("podTemplate") or {}).get("metadata") or {}
    raw = (template.get("annotations") or {}).get(IDLE_TIMEOUT)
    if raw is None:
        return None
    try:
        value = float(str(raw).strip().removesuffix("s"))
    except ValueError:
        return None
    if value != value or value <= 0:  # NaN, zero, negative: off
        return None
    return max(value, MIN_IDLE_TIMEOUT)


@dataclass
class _Watched:
    timeout: float
    ready: bool
    running: bool
    pooled: bool
    idle_suspended: bool


class IdleSuspender:
    """See the module docstring. ``clock``: monotonic seconds (tests pass their own)."""

    def __init__(self, client: Client, *, events: EventRecorder | None = None,
                 clock: Callable[[], float] = time.monotonic, tick: float | None = None) -> None:
        self.client = client
        self.kind: Kind = client.kinds.by_kind(lb.SANDBOX_API, "Sandbox")
        self.events = events or EventRecorder(client)
        self.clock = clock
        self._tick = tick
        self._watched: dict[tuple[str, str], _Watched] = {}
        self._last: dict[tuple[str, str], float] = {}
        self._ready_events: dict[tuple[str, str], asyncio.Event] = {}
        self._waking: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = False

    # ------------------------------------------------------------ activity (called by the router and streams)

    def touch(self, namespace: str, name: str) -> None:
        """The Sandbox ``namespace/name`` (or the Pod of that name) was used now. O(1), never blocks."""
        self._last[(namespace, name)] = self.clock()

    def last_used(self, namespace: str, name: str) -> float | None:
        return self._last.get((namespace, name))

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if not self._subscribed:
            self.client.subscribe(self._changed)
            self._subscribed = True
        now = self.clock()
        for sandbox in await self.client.list(self.kind):
            self._observe(sandbox, deleted=False)
            key = (sandbox["metadata"]["namespace"], sandbox["metadata"]["name"])
            self._last.setdefault(key, now)  # a restart counts as use: nobody is suspended for our downtime
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="idle-suspender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _changed(self, event: ObjectEvent) -> None:
        if event.resource != self.kind.key:
            return
        self._observe(event.object(), deleted=event.type == "DELETED")

    def _observe(self, sandbox: Obj, *, deleted: bool) -> None:
        md = sandbox["metadata"]
        key = (md.get("namespace", ""), md["name"])
        timeout = None if deleted or md.get("deletionTimestamp") else idle_timeout(sandbox)
        ready = not deleted and m.is_true(sandbox, "Ready")
        if ready and (event := self._ready_events.get(key)) is not None:
            event.set()
        if timeout is None:
            self._watched.pop(key, None)
            if deleted:
                self._last.pop(key, None)
            return
        before = self._watched.get(key)
        owner = lb.controller_of(sandbox)
        self._watched[key] = _Watched(
            timeout=timeout, ready=ready,
            running=(sandbox.get("spec") or {}).get("operatingMode", "Running") != "Suspended",
            pooled=owner is not None and owner.get("kind") == "SandboxWarmPool",
            idle_suspended=IDLE_SUSPENDED in (md.get("annotations") or {}))
        if ready and (before is None or not before.ready):
            self._last[key] = self.clock()  # (re)started: its idle time counts from now
        elif before is not None and before.pooled and not self._watched[key].pooled:
            self._last[key] = self.clock()  # handed to a claim: its time warm in the pool was not idleness

    # ------------------------------------------------------------ suspending

    async def _loop(self) -> None:
        while True:
            timeouts = [w.timeout for w in self._watched.values()]
            tick = self._tick or max(1.0, min(10.0, min(timeouts, default=40.0) / 4))
            await asyncio.sleep(tick)
            try:
                await self.sweep()
            except Exception:  # one bad pass must not end idle suspension for good
                log.exception("idle suspender: sweep failed")

    async def sweep(self) -> list[tuple[str, str]]:
        """Suspend every watched Sandbox idle past its timeout; the keys suspended."""
        now = self.clock()
        due = [key for key, w in self._watched.items()
               if w.ready and w.running and not w.pooled and now - self._last.get(key, now) >= w.timeout]
        done = []
        for key in due:
            if await self._suspend(*key, idle_for=now - self._last.get(key, now)):
                done.append(key)
        return done

    async def _suspend(self, namespace: str, name: str, *, idle_for: float) -> bool:
        body = {"metadata": {"annotations": {IDLE_SUSPENDED: m.now()}}, "spec": {"operatingMode": "Suspended"}}
        try:
            sandbox = await self.client.patch(self.kind, namespace, name, body)
        except NotFound:
            return False
        except ApiError as e:
            log.warning("idle suspender: suspending sandbox %s/%s: %s", namespace, name, e)
            return False
        log.info("sandbox %s/%s unused for %.0f s: suspending it", namespace, name, idle_for)
        w = self._watched.get((namespace, name))
        if w is not None:
            w.running = False
        await self.events.record(sandbox, "IdleSuspended", f"no request and no exec for {idle_for:.0f} s: suspended; "
                                 "the next router request resumes it")
        return True

    # ------------------------------------------------------------ waking (called by the router)

    async def wake(self, namespace: str, name: str, *, timeout: float = WAKE_TIMEOUT) -> bool:
        """Resume ``namespace/name`` if idleness suspended it and wait until it is Ready (or ``timeout``); False
        when there was nothing to wake (not found, running, or suspended by someone)."""
        key = (namespace, name)
        self.touch(namespace, name)
        pending = self._waking.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._wake(key, timeout))
            self._waking[key] = pending
            pending.add_done_callback(lambda _: self._waking.pop(key, None))
        return await asyncio.shield(pending)

    async def _wake(self, key: tuple[str, str], timeout: float) -> bool:
        sandbox = await self.client.try_get(self.kind, *key)
        if sandbox is None:
            return False
        suspended = (sandbox.get("spec") or {}).get("operatingMode") == "Suspended"
        if not suspended or IDLE_SUSPENDED not in (sandbox["metadata"].get("annotations") or {}):
            return False
        ready = self._ready_events.setdefault(key, asyncio.Event())
        ready.clear()
        try:
            await self.client.patch(self.kind, *key, {"metadata": {"annotations": {IDLE_SUSPENDED: None}},
                                                      "spec": {"operatingMode": "Running"}})
            log.info("sandbox %s/%s: resuming it for a request", *key)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), timeout)
        finally:
            self._ready_events.pop(key, None)
        self.touch(*key)
        return True
