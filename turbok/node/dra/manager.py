"""The kubelet's DRA manager: a Pod's claims prepared before its sandbox starts, unprepared after it ends.

``NodeDra.prepare(pod)`` (the pod worker, before ``run_pod_sandbox``):

1. each of the Pod's claims (``spec.resourceClaims``: a claim by name, or the
   one made from a template, named in ``status.resourceClaimStatuses``) must
   exist, be allocated and be reserved for this Pod (``status.reservedFor``),
   else ``ClaimsNotReady`` (the Pod waits, ``ContainerCreating``);
2. claims not prepared yet are grouped by driver and sent to each driver's
   ``NodePrepareResources`` (``plugins.PluginManager``); a driver that is
   not registered, does not answer or reports an error fails the Pod's start
   (``PrepareFailed``: the ``FailedPrepareDynamicResources`` Event, a retry);
3. the CDI devices of the requests each container names
   (``resources.claims``: a claim, or one of its requests) are resolved
   (``cdi.CdiRegistry``) into that container's env, device nodes and host
   mounts (``PodDevices``); a device node under ``/dev/nvidia`` turns on
   nvproxy for the pod's sandbox.

``unprepare(pod)`` (the worker, once the Pod's sandbox is gone or the Pod
finished) calls ``NodeUnprepareResources`` for claims no other Pod on this
node still uses. Admin-access results are prepared like any other.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from turbok.errors import TurbokError
from turbok.node.client import NodeClient, Obj
from turbok.node.dra.cdi import CdiError, CdiRegistry, Edits
from turbok.node.dra.plugins import DriverUnavailable, PluginManager, Prepared
from turbok.runtime.cri import ContainerConfig, DeviceNode, Mount, VolumeConfig

__all__ = ["ClaimsNotReady", "NodeDra", "PodDevices", "PrepareFailed", "pod_claim_names"]

log = logging.getLogger(__name__)

CDI_VOLUME_PREFIX = "turbok-cdi-"


class ClaimsNotReady(TurbokError):
    """A claim of the Pod does not exist, is not allocated or not reserved for it yet: it waits."""


class PrepareFailed(TurbokError):
    """A driver could not prepare a claim (or is not there): the Pod's start fails and is retried."""


def pod_claim_names(pod: Obj) -> dict[str, str | None]:
    """Pod claim name -> the ResourceClaim's name (None: made from a template, not created yet)."""
    statuses = {s.get("name"): s.get("resourceClaimName")
                for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
    out: dict[str, str | None] = {}
    for c in (pod.get("spec") or {}).get("resourceClaims") or []:
        name = str(c.get("name"))
        out[name] = c.get("resourceClaimName") or statuses.get(name)
    return out


@dataclass
class PodDevices:
    """What the Pod's prepared devices add: per container, and the pod sandbox's volumes and nvproxy."""

    containers: dict[str, Edits] = field(default_factory=dict)
    volumes: list[VolumeConfig] = field(default_factory=list)
    nvproxy: bool = False
    notes: list[str] = field(default_factory=list)
    _volume_of: dict[str, str] = field(default_factory=dict)

    def apply(self, config: ContainerConfig) -> ContainerConfig:
        """``config`` with its devices: env (the container's own env wins, as a kubelet's), device nodes,
        CDI mounts (on ``turbok-cdi-*`` host volumes of the pod sandbox)."""
        edits = self.containers.get(config.name)
        if edits is None:
            return config
        env = {**edits.env, **dict(config.env)}
        mounts = [*config.mounts, *(Mount(volume=self._volume_of[m.host_path], container_path=m.container_path,
                                          read_only=m.read_only) for m in edits.mounts)]
        devices: list[DeviceNode] = [*config.devices, *edits.devices]
        return dataclasses.replace(config, env=env, mounts=tuple(mounts), devices=tuple(devices))

    def add(self, container: str, edits: Edits) -> None:
        self.containers[container] = edits
        for m in edits.mounts:
            if m.host_path not in self._volume_of:
                name = f"{CDI_VOLUME_PREFIX}{len(self._volume_of)}"
                self._volume_of[m.host_path] = name
                self.volumes.append(VolumeConfig(name=name, kind="host", host_path=Path(m.host_path)))
        if any(d.host_path.startswith("/dev/nvidia") for d in edits.devices):
            self.nvproxy = True
        self.notes += edits.notes


class NodeDra:
    def __init__(self, client: NodeClient, plugins: PluginManager, cdi: CdiRegistry) -> None:
        self.client = client
        self.plugins = plugins
        self.cdi = cdi
        self.claim_kind = client.kinds.by_kind("resource.k8s.io/v1", "ResourceClaim")
        #: claim uid -> (namespace, name, drivers, what each driver prepared), and the Pods using it here
        self.prepared: dict[str, tuple[str, str, dict[str, Prepared]]] = {}
        self.users: dict[str, set[str]] = {}

    async def _claims(self, pod: Obj) -> dict[str, Obj]:
        md = pod["metadata"]
        ns, uid = md.get("namespace", ""), md["uid"]
        out: dict[str, Obj] = {}
        for pod_claim, name in pod_claim_names(pod).items():
            if name is None:
                raise ClaimsNotReady(f"waiting for the ResourceClaim of pod claim {pod_claim!r} to be created")
            claim = await self.client.try_get(self.claim_kind, ns, name)
            if claim is None:
                raise ClaimsNotReady(f'resourceclaim "{name}" not found')
            status = claim.get("status") or {}
            if not status.get("allocation"):
                raise ClaimsNotReady(f'resourceclaim "{name}" is not allocated yet')
            if not any(r.get("uid") == uid for r in status.get("reservedFor") or []):
                raise ClaimsNotReady(f'resourceclaim "{name}" is not reserved for this pod')
            out[pod_claim] = claim
        return out

    async def prepare(self, pod: Obj) -> PodDevices:
        claims = await self._claims(pod)
        pod_uid = pod["metadata"]["uid"]
        for claim in claims.values():
            cuid = claim["metadata"]["uid"]
            if cuid in self.prepared:
                self.users.setdefault(cuid, set()).add(pod_uid)
                continue
            results = ((claim["status"]["allocation"].get("devices") or {}).get("results")) or []
            drivers = sorted({str(r.get("driver")) for r in results})
            done: dict[str, Prepared] = {}
            for driver in drivers:
                ref = (claim["metadata"].get("namespace", ""), cuid, claim["metadata"]["name"])
                try:
                    answer = (await self.plugins.prepare(driver, [ref]))[cuid]
                except DriverUnavailable as e:
                    raise PrepareFailed(str(e)) from None
                if answer.error:
                    raise PrepareFailed(f"DRA driver {driver} failed to prepare claim "
                                        f"{ref[0]}/{ref[2]}: {answer.error}")
                done[driver] = answer
            self.prepared[cuid] = (claim["metadata"].get("namespace", ""), claim["metadata"]["name"], done)
            self.users.setdefault(cuid, set()).add(pod_uid)
        return self._devices(pod, claims)

    def _devices(self, pod: Obj, claims: Mapping[str, Obj]) -> PodDevices:
        out = PodDevices()
        spec = pod.get("spec") or {}
        for c in (*(spec.get("initContainers") or []), *(spec.get("containers") or [])):
            refs = (c.get("resources") or {}).get("claims") or []
            if not refs:
                continue
            ids: list[str] = []
            for ref in refs:
                claim = claims.get(str(ref.get("name")))
                if claim is None:
                    continue
                request = ref.get("request")
                for prepared in self.prepared[claim["metadata"]["uid"]][2].values():
                    for dev in prepared.devices:
                        if request and dev.requests and not any(r == request or r.startswith(f"{request}/")
                                                                for r in dev.requests):
                            continue
                        ids += dev.cdi_device_ids
            try:
                out.add(str(c["name"]), self.cdi.edits(ids))
            except CdiError as e:
                raise PrepareFailed(f"container {c['name']}: {e}") from None
        return out

    async def unprepare(self, pod: Obj) -> None:
        """Release what the Pod held; claims still used by another Pod here stay prepared."""
        pod_uid = pod["metadata"]["uid"]
        for cuid, pods in list(self.users.items()):
            pods.discard(pod_uid)
            if pods or cuid not in self.prepared:
                continue
            # Taken out before the first await: another Pod's unprepare running meanwhile skips it.
            ns, name, drivers = self.prepared.pop(cuid)
            self.users.pop(cuid, None)
            failed = False
            for driver in drivers:
                try:
                    errors = await self.plugins.unprepare(driver, [(ns, cuid, name)])
                except DriverUnavailable as e:
                    log.warning("unpreparing claim %s/%s: %s", ns, name, e)
                    failed = True
                    continue
                if errors.get(cuid):
                    log.warning("unpreparing claim %s/%s: driver %s: %s", ns, name, driver, errors[cuid])
                    failed = True
            if failed:  # kept, so that the next unprepare on this node tries again
                self.prepared.setdefault(cuid, (ns, name, drivers))
                self.users.setdefault(cuid, set())
