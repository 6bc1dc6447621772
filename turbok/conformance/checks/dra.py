"""``dra_support``: the Dynamic Resource Allocation APIs are served, usable, and publish devices.

Test plan (KAR-0051 and the upstream DRA API tests): every ``resource.k8s.io``
resource is served (``v1`` from Kubernetes 1.34, when DRA went GA), the
server accepts create/get/delete of a ResourceClaimTemplate (no device is
allocated without a Pod), and the published devices are usable: at least one
resource pool is complete (as many ResourceSlices of its newest generation as
``resourceSliceCount`` says, with devices) and a DeviceClass selects a driver
that publishes devices. No ResourceSlices at all ends Skipped (no accelerators
published through DRA), not Failed: the APIs themselves work.
"""

from __future__ import annotations

from typing import Any

from turbok.conformance.catalog import version_key
from turbok.conformance.checks.base import Check, CheckContext, Outcome, failed, passed, register, skipped
from turbok.conformance.checks.workloads import claim_template, device_class_drivers
from turbok.conformance.errors import ApiError

__all__ = ["DraSupport", "resource_pools"]

DRA_RESOURCES = ("deviceclasses", "resourceclaims", "resourceclaimtemplates", "resourceslices")
_NEEDED_VERBS = {"create", "get", "list", "delete"}


def resource_pools(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group ResourceSlices into pools (driver, pool name) at their newest generation."""
    pools: dict[tuple[str, str], dict[str, Any]] = {}
    for s in slices:
        spec = s.get("spec") or {}
        pool = spec.get("pool") or {}
        key = (spec.get("driver", ""), pool.get("name", ""))
        gen = int(pool.get("generation", 0))
        entry = pools.get(key)
        if entry is None or gen > entry["generation"]:
            entry = pools[key] = {"driver": key[0], "pool": key[1], "generation": gen, "slices": 0, "devices": 0,
                                  "expected": int(pool.get("resourceSliceCount", 1))}
        if gen == entry["generation"]:
            entry["slices"] += 1
            entry["devices"] += len(spec.get("devices") or [])
    for entry in pools.values():
        entry["complete"] = entry["slices"] == entry["expected"] and entry["devices"] > 0
    return sorted(pools.values(), key=lambda p: (p["driver"], p["pool"]))


@register
class DraSupport(Check):
    id = "dra_support"
    plan = (
        "Check discovery for resource.k8s.io (v1 from 1.34) with deviceclasses, resourceclaims, "
        "resourceclaimtemplates and resourceslices; create, read and delete a ResourceClaimTemplate; "
        "verify complete ResourceSlice pools and a DeviceClass selecting a publishing driver."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        disc = ctx.client.discovery
        if not disc.has_group("resource.k8s.io"):
            return failed("resource.k8s.io is not served: the Dynamic Resource Allocation APIs are disabled")
        served = disc.groups["resource.k8s.io"]
        if version_key(ctx.requirement.version) >= (1, 34):
            version = "v1" if "v1" in served else None
        else:
            version = disc.preferred_version("resource.k8s.io", ("v1", "v1beta2", "v1beta1"))
        if version is None:
            return failed(f"resource.k8s.io/v1 is not served (DRA is GA since Kubernetes 1.34); served: {', '.join(served)}")
        ctx.step(f"resource.k8s.io/{version} is served")
        resources = {r.name: r for r in disc.resources("resource.k8s.io", version)}
        missing = [n for n in DRA_RESOURCES if n not in resources or not resources[n].verbs >= _NEEDED_VERBS]
        if missing:
            return failed(f"resource.k8s.io/{version} lacks {', '.join(missing)} (or their create/get/list/delete verbs)")
        api = f"resource.k8s.io/{version}"

        classes = ctx.client.list(api, "DeviceClass")
        self._crud_probe(ctx, api, classes)
        slices = ctx.client.list(api, "ResourceSlice")
        ctx.step(f"{len(classes)} DeviceClass(es), {len(slices)} ResourceSlice(s)")
        if not slices:
            raise skipped(
                f"DRA APIs ({api}) are served and accept objects, but no DRA driver publishes devices "
                "(no ResourceSlices): install your accelerator's DRA driver to exercise allocation",
                api=api,
            )
        pools = resource_pools(slices)
        ctx.artifact("resource pools", "\n".join(
            f"{p['driver']}/{p['pool']}: generation {p['generation']}, {p['slices']}/{p['expected']} slices, "
            f"{p['devices']} devices, {'complete' if p['complete'] else 'INCOMPLETE'}" for p in pools))
        complete = [p for p in pools if p["complete"]]
        if not complete:
            return failed("no complete resource pool: every pool misses ResourceSlices or devices", pools=pools)
        publishing = {p["driver"] for p in complete}
        if not classes:
            return failed("devices are published but no DeviceClass exists: users cannot request them", pools=pools)
        usable = [c["metadata"]["name"] for c in classes if device_class_drivers(c) & publishing]
        if not usable:
            return failed(
                f"no DeviceClass selects the publishing drivers ({', '.join(sorted(publishing))})",
                deviceClasses=[c["metadata"]["name"] for c in classes],
            )
        return passed(
            f"{api} served and usable; {len(complete)} complete pool(s) from {', '.join(sorted(publishing))}; "
            f"DeviceClass(es) {', '.join(usable)}",
            pools=pools, deviceClasses=usable,
        )

    @staticmethod
    def _crud_probe(ctx: CheckContext, api: str, classes: list[dict[str, Any]]) -> None:
        class_name = classes[0]["metadata"]["name"] if classes else "turbok-conformance-probe"
        name = ctx.name("crud")
        try:
            ctx.create(claim_template(api, name, "probe", class_name))
            got = ctx.client.get(api, "ResourceClaimTemplate", name, ctx.namespace)
            if got["metadata"]["name"] != name:
                raise failed("reading back the ResourceClaimTemplate returned another object")
            ctx.client.delete(api, "ResourceClaimTemplate", name, ctx.namespace)
            for t in ctx.tracker.pending(ctx.id):
                if t.name == name:
                    ctx.tracker.forget(t)
            ctx.step("created, read back and deleted a ResourceClaimTemplate")
        except ApiError as e:
            raise failed(f"the DRA API refused a ResourceClaimTemplate: {e.api_message}") from e
