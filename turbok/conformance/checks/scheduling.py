"""``gang_scheduling``: all-or-nothing admission of multi-pod workloads, through Kueue.

Test plan (KAR-0053): a workload of N co-scheduled pods that fits runs all N
to completion; one that does not fit gets no pod at all. The check makes the
capacity explicit instead of depending on the cluster's size: it creates its
own ResourceFlavor, a ClusterQueue with a small quota (1 CPU, 1 GiB) and a
LocalQueue, then submits two suspended Jobs to the queue:

- fitting: 3 pods x 100m CPU; Kueue must admit the whole Job (its Workload
  Admitted) and all 3 pods must succeed;
- non-fitting: 3 pods x 500m CPU (1.5 CPU > quota); for ``--negative-wait``
  seconds the Job must stay suspended with no pod created, while its Workload
  exists and is not admitted.

Other gang schedulers (Volcano, KAI, coscheduling) are recognised and end
Unknown: verify them by hand.
"""

from __future__ import annotations

from typing import Any

from turbok.conformance.checks.base import Check, CheckContext, Outcome, failed, passed, register, unknown
from turbok.conformance.checks.networking import condition
from turbok.conformance.checks.workloads import container, require_pods

__all__ = ["GangScheduling"]

KUEUE = "kueue.x-k8s.io"
_OTHERS = {"scheduling.volcano.sh": "Volcano", "scheduling.run.ai": "KAI scheduler", "scheduling.x-k8s.io": "coscheduling (scheduler-plugins)"}
PODS = 3


@register
class GangScheduling(Check):
    id = "gang_scheduling"
    plan = (
        "With Kueue: create a ResourceFlavor, a ClusterQueue with 1 CPU / 1Gi quota and a LocalQueue; submit a "
        f"Job of {PODS} pods x 100m that must be admitted whole and complete, then a Job of {PODS} pods x 500m "
        "that must stay suspended with no pod created."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        require_pods(ctx)
        disc = ctx.client.discovery
        version = disc.preferred_version(KUEUE, ("v1beta2", "v1beta1"))
        if version is None:
            others = [name for group, name in _OTHERS.items() if disc.has_group(group)]
            if others:
                return unknown(f"{', '.join(others)} found: the automated check drives Kueue; verify gang scheduling manually")
            return failed("no gang scheduling solution found: install Kueue (kueue.x-k8s.io) or another gang scheduler")
        api = f"{KUEUE}/{version}"
        ctx.step(f"Kueue serves {api}")
        queue = self._queues(ctx, api)

        fit = self._job(ctx, "fit", queue, "100m")
        done = ctx.wait_for(lambda: self._finished(ctx, fit), what=f"Job {fit} ({PODS} pods x 100m) to complete")
        if done is None:
            wl = self._workload(ctx, api, fit)
            return failed(f"the fitting Job {fit} did not complete: workload {self._state(wl)}, job {self._job_state(ctx, fit)}")
        if done == "Failed":
            return failed(f"the fitting Job {fit} failed: {self._job_state(ctx, fit)}")
        wl = self._workload(ctx, api, fit)
        if wl is None or (condition(wl, "Admitted") or {}).get("status") != "True":
            return failed(f"Job {fit} ran without a Kueue admission (workload {self._state(wl)}): Kueue does not manage batch Jobs")
        ctx.step(f"Job {fit} admitted whole by Kueue and all {PODS} pods succeeded")

        nofit = self._job(ctx, "nofit", queue, "500m")
        ctx.step(f"watching Job {nofit} ({PODS} pods x 500m > 1 CPU quota) for {ctx.options.negative_wait:g}s")
        started = ctx.wait_for(lambda: self._pods(ctx, nofit) or None, timeout=ctx.options.negative_wait)
        if started:
            return failed(f"partial or over-quota scheduling: {len(started)} pod(s) of the non-fitting Job {nofit} were created")
        job = ctx.client.get("batch/v1", "Job", nofit, ctx.namespace)
        if not (job.get("spec") or {}).get("suspend"):
            return failed(f"the non-fitting Job {nofit} was unsuspended although it exceeds the quota")
        wl = self._workload(ctx, api, nofit)
        if wl is None:
            return failed(f"Kueue created no Workload for Job {nofit}")
        if (condition(wl, "Admitted") or {}).get("status") == "True":
            return failed(f"Kueue admitted the non-fitting Job {nofit}")
        return passed(
            f"Kueue admitted {PODS} co-scheduled pods as one unit and held back a Job exceeding its quota "
            f"(workload {self._state(wl)})"
        )

    def _queues(self, ctx: CheckContext, api: str) -> str:
        flavor, cq, lq = ctx.name("flavor"), ctx.name("cq"), ctx.name("lq")
        ctx.create({"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": flavor}, "spec": {}})
        ctx.create({
            "apiVersion": api, "kind": "ClusterQueue", "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ctx.namespace}},
                "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": flavor, "resources": [
                    {"name": "cpu", "nominalQuota": "1"}, {"name": "memory", "nominalQuota": "1Gi"}]}]}],
            },
        })
        ctx.create({"apiVersion": api, "kind": "LocalQueue", "metadata": {"name": lq}, "spec": {"clusterQueue": cq}})

        def active() -> bool:
            obj = ctx.client.get(api, "ClusterQueue", cq)
            return (condition(obj, "Active") or {}).get("status") == "True"

        if not ctx.wait_for(active, what=f"ClusterQueue {cq} to be Active"):
            state = condition(ctx.client.get(api, "ClusterQueue", cq), "Active")
            raise failed(f"ClusterQueue {cq} never became Active: {state or 'no Active condition'}")
        return lq

    def _job(self, ctx: CheckContext, suffix: str, queue: str, cpu: str) -> str:
        name = ctx.name(suffix)
        ctx.create({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": queue}},
            "spec": {
                "suspend": True, "parallelism": PODS, "completions": PODS, "backoffLimit": 0,
                "template": {"metadata": {"labels": ctx.labels()}, "spec": {"restartPolicy": "Never", "containers": [
                    container("worker", ctx.options.image, "echo gang member up; sleep 2",
                              resources={"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"cpu": cpu, "memory": "64Mi"}})]}},
            },
        })
        return name

    @staticmethod
    def _finished(ctx: CheckContext, job: str) -> str | None:
        obj = ctx.client.get("batch/v1", "Job", job, ctx.namespace)
        for kind in ("Complete", "Failed"):
            if (condition(obj, kind) or {}).get("status") == "True":
                return kind
        if int((obj.get("status") or {}).get("succeeded") or 0) >= PODS:
            return "Complete"
        return None

    @staticmethod
    def _pods(ctx: CheckContext, job: str) -> list[dict[str, Any]]:
        return ctx.client.list("v1", "Pod", ctx.namespace, label_selector=f"job-name={job}")

    @staticmethod
    def _workload(ctx: CheckContext, api: str, job: str) -> dict[str, Any] | None:
        for wl in ctx.client.list(api, "Workload", ctx.namespace):
            if any(o.get("kind") == "Job" and o.get("name") == job for o in (wl.get("metadata") or {}).get("ownerReferences") or []):
                return wl
        return None

    @staticmethod
    def _state(wl: dict[str, Any] | None) -> str:
        if wl is None:
            return "missing"
        conds = ((wl.get("status") or {}).get("conditions")) or []
        return ", ".join(f"{c.get('type')}={c.get('status')}" + (f" ({c.get('reason')})" if c.get("reason") else "") for c in conds) or "no conditions"

    @staticmethod
    def _job_state(ctx: CheckContext, job: str) -> str:
        obj = ctx.client.get("batch/v1", "Job", job, ctx.namespace)
        st = obj.get("status") or {}
        return f"suspend={obj.get('spec', {}).get('suspend')}, active={st.get('active', 0)}, succeeded={st.get('succeeded', 0)}, failed={st.get('failed', 0)}"
