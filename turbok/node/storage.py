"""Local persistent storage on this node: a default StorageClass, a provisioner and the PV controller's binding.

On a cluster, PersistentVolumeClaims are bound by kube-controller-manager's PV
controller and provisioned by a CSI or local-path provisioner; on one machine
``LocalStorage`` does both jobs, as kind's ``rancher.io/local-path`` setup does:

- **StorageClass** ``standard`` (made at start if missing, never overwritten),
  the default (``storageclass.kubernetes.io/is-default-class: "true"``),
  provisioner ``turbok.dev/local-path``, ``reclaimPolicy: Delete``,
  ``volumeBindingMode: Immediate``: one node has no topology to wait for, so
  a claim is bound as soon as it exists (``WaitForFirstConsumer`` classes are
  bound the same way, when their first consumer is a Pod of this node, which is
  every Pod).
- **PV controller**: a claim without ``storageClassName`` gets the default
  class (kube's retroactive default class assignment); a claim is bound to the
  smallest Available PersistentVolume that fits (class, access modes, size,
  ``volumeMode``, a pre-bound ``claimRef``/``volumeName``), else provisioned.
  Binding writes what the PV controller writes: the PV's ``claimRef`` and
  ``status.phase: Bound``; the claim's ``spec.volumeName``, annotations
  ``pv.kubernetes.io/bind-completed`` and ``bound-by-controller``,
  ``status.phase: Bound``, ``accessModes`` and ``capacity``. A PV whose claim
  is gone turns ``Released``; with ``reclaimPolicy: Delete`` its data and the
  PV go, with ``Retain`` both stay.
- **Provisioner**: a claim of a class whose provisioner is
  ``turbok.dev/local-path`` gets a PV ``pvc-<claim uid>`` (``hostPath`` on this
  node, ``nodeAffinity`` to it, ``pv.kubernetes.io/provisioned-by``, the
  ``kubernetes.io/pv-protection`` and provisioner finalizers), with Events
  ``Provisioning`` and ``ProvisioningSucceeded`` (or ``ProvisioningFailed``:
  ``selector``, ``dataSource`` and ``volumeMode: Block`` are not supported).
- **Protection**: claims get the ``kubernetes.io/pvc-protection`` finalizer;
  a deleted claim goes only once no running Pod of this node uses it.

Each local volume is its own bounded ext4 image (``turbok.runtime.disk``, as a
sandbox's disk): ``<root>/volumes/<pv>/disk.img`` mounted on ``.../disk`` (mode
0777, as local-path makes its directories), sized to the claim's request
(at least ``MIN_VOLUME_BYTES``): writes past it fail with ENOSPC. The image
is sparse: it takes on the host only what was written. Where loop devices or
``mkfs.ext4`` are missing the volume is a plain directory and the claim gets
a Warning ``VolumeSizeNotEnforced`` Event. The same images bound an
``emptyDir`` with a ``sizeLimit`` (``empty_dir``: ``<root>/emptydir/<pod
sandbox id>/<volume>``, removed with the pod sandbox by ``release_pod``).

The pod worker mounts a claim through ``claim_path`` (``turbok.node.volumes``):
the PV must be this provisioner's, and its directory is computed from the PV's
name, never read from the object (a PV's ``hostPath`` is not trusted).
Images stay mounted while the node runs (running pod sandboxes hold them) and
are unmounted when their PV or pod sandbox is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

from turbok.api import meta
from turbok.api.kinds import EVENT, PERSISTENT_VOLUME, PERSISTENT_VOLUME_CLAIM, POD, STORAGE_CLASS
from turbok.api.podtemplate import as_dict
from turbok.api.quantity import QuantityError, format_quantity, parse_quantity
from turbok.api.status import AlreadyExists, ApiError, Conflict, NotFound
from turbok.node.client import NodeClient, Obj, ObjectEvent
from turbok.runtime.disk import MIN_EPHEMERAL_STORAGE, Disks, bounds
from turbok.runtime.podlayout import SandboxDir
from turbok.runtime.teardown import in_teardown_thread

__all__ = [
    "DEFAULT_CLASS",
    "DEFAULT_CLASS_ANNOTATION",
    "MIN_VOLUME_BYTES",
    "PROVISIONER",
    "PVC_PROTECTION",
    "PV_PROTECTION",
    "LocalStorage",
    "StorageError",
    "VolumeImages",
]

log = logging.getLogger("turbok.node.storage")

PROVISIONER = "turbok.dev/local-path"
DEFAULT_CLASS = "standard"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
_BETA_DEFAULT_CLASS_ANNOTATION = "storageclass.beta.kubernetes.io/is-default-class"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"
_PROVISIONER_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"
_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
#: The smallest volume (and emptyDir bound) made: an ext4 image needs room for its own metadata.
MIN_VOLUME_BYTES = MIN_EPHEMERAL_STORAGE
#: How often everything is looked at again without a change (a pod that ended frees a deleted claim).
RESYNC_SECONDS = 30.0
_COMPONENT = "persistentvolume-controller"


class StorageError(Exception):
    """A claim cannot be mounted (yet); ``str()`` is what kubelet would say."""


class _VolumeDir(SandboxDir):
    """The directory of one bounded volume image (``SandboxDir``'s disk paths, any safe name)."""

    def __init__(self, root: Path, name: str) -> None:  # noqa: D107 - no runtime-id check: names are ours
        self.id = name
        self.path = root / name


class VolumeImages:
    """Bounded ext4 images under one root, one per name, each mounted on ``<root>/<name>/disk``.

    Blocking (mkfs, mount): call from a worker thread.
    """

    def __init__(self, root: Path, disks: Disks) -> None:
        self.root = root
        self.disks = disks

    def _dir(self, name: str) -> _VolumeDir:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid volume name {name!r}")
        return _VolumeDir(self.root, name)

    def path(self, name: str) -> Path:
        return self._dir(name).disk

    def exists(self, name: str) -> bool:
        return self._dir(name).path.is_dir()

    def ensure(self, name: str, size: int) -> Path:
        """The mounted directory of ``name``, made (``size`` bytes, at least ``MIN_VOLUME_BYTES``) if new."""
        vdir = self._dir(name)
        fresh = not vdir.path.exists()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        vdir.path.mkdir(mode=0o700, exist_ok=True)
        self.disks.prepare(vdir, bounds(max(size, MIN_VOLUME_BYTES)))
        if fresh:
            os.chmod(vdir.disk, 0o777)  # any user of any pod may write it, as local-path's directories
        return vdir.disk

    def unmount(self, name: str) -> None:
        vdir = self._dir(name)
        if vdir.path.exists():
            self.disks.unmount(vdir)

    def remove(self, name: str) -> None:
        """Unmount and delete ``name``'s image and directory (idempotent)."""
        vdir = self._dir(name)
        if not vdir.path.exists():
            return
        self.disks.unmount(vdir)
        shutil.rmtree(vdir.path)

    def names(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []


def _bytes(value: object) -> int | None:
    try:
        return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))  # type: ignore[arg-type]
    except (QuantityError, TypeError, AttributeError):
        return None


def _is_default(sc: Obj) -> bool:
    annotations = as_dict(as_dict(sc.get("metadata")).get("annotations"))
    return "true" in (annotations.get(DEFAULT_CLASS_ANNOTATION), annotations.get(_BETA_DEFAULT_CLASS_ANNOTATION))


def _key(obj: Obj) -> tuple[str, str]:
    md = obj["metadata"]
    return str(md.get("namespace") or ""), str(md["name"])


def _ref_key(ref: Obj) -> tuple[str, str]:
    return str(ref.get("namespace") or ""), str(ref.get("name") or "")


def _claim_uses(pod: Obj, claim: str) -> bool:
    for volume in as_dict(pod.get("spec")).get("volumes") or []:
        if as_dict(as_dict(volume).get("persistentVolumeClaim")).get("claimName") == claim:
            return True
    return False


def unmount_volumes(root: Path, disks: Disks | None = None) -> None:
    """Unmount every volume image under the storage ``root`` (PersistentVolumes' and bounded emptyDirs'; data
    kept, the next use mounts it again). Only when no pod sandbox uses them (``turbok down --stop-sandboxes``):
    ``LocalStorage.stop`` leaves them mounted for the pods still running."""
    disks = disks or Disks()
    images = [VolumeImages(root / "volumes", disks)]
    with contextlib.suppress(FileNotFoundError):
        images += [VolumeImages(Path(e.path), disks) for e in os.scandir(root / "emptydir")
                   if e.is_dir(follow_symlinks=False)]
    for volumes in images:
        for name in volumes.names():
            volumes.unmount(name)


class LocalStorage:
    """The node's StorageClass, local provisioner and PV binding; also bounded emptyDirs.

    ``start`` makes the class, binds what is pending and follows changes; ``stop`` ends that (images
    stay mounted: pod sandboxes still running hold them).
    """

    def __init__(self, client: NodeClient, root: Path, *, node_name: str, disks: Disks | None = None,
                 resync: float = RESYNC_SECONDS) -> None:
        self.client = client
        self.root = root
        self.node_name = node_name
        self.disks = disks or Disks()
        self.volumes = VolumeImages(root / "volumes", self.disks)
        self.empty_dirs_root = root / "emptydir"
        self.resync = resync
        self._host = socket.gethostname()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._told: set[tuple[str, str]] = set()  # (uid, reason) of Events already recorded
        self._watch_pods = False  # claims being deleted or waiting for a consumer: pods matter

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Ensure the StorageClass, bind what is pending, then follow changes (``client.subscribe``)."""
        await self.ensure_class()
        self.client.subscribe(self._on_event)
        await self.sync()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="turbok-node-storage")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def unmount_all(self) -> None:
        """Unmount every volume image under the root (see ``unmount_volumes``)."""
        await asyncio.to_thread(unmount_volumes, self.root, self.disks)

    def _on_event(self, event: ObjectEvent) -> None:
        if event.resource in (PERSISTENT_VOLUME_CLAIM.key, PERSISTENT_VOLUME.key, STORAGE_CLASS.key) or \
                (event.resource == POD.key and self._watch_pods):
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.resync)
            self._wake.clear()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep following changes: the next one retries
                log.exception("local storage: sync failed")

    async def ensure_class(self) -> None:
        """Make the ``standard`` StorageClass if there is none of that name (a user's is left alone)."""
        body: Obj = {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": DEFAULT_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": False,
        }
        if await self.client.try_get(STORAGE_CLASS, "", DEFAULT_CLASS) is None:
            with contextlib.suppress(AlreadyExists):
                await self.client.create(STORAGE_CLASS, body)

    # ------------------------------------------------------------------ the controller

    async def sync(self) -> None:
        """Look at every claim and volume once (level-triggered; safe to call any time)."""
        classes = {sc["metadata"]["name"]: sc for sc in await self.client.list(STORAGE_CLASS)}
        volumes = {pv["metadata"]["name"]: pv for pv in await self.client.list(PERSISTENT_VOLUME)}
        claims = await self.client.list(PERSISTENT_VOLUME_CLAIM, None)
        self._watch_pods = False
        for claim in claims:
            try:
                await self._sync_claim(claim, classes, volumes)
            except Conflict:
                self._wake.set()  # changed under us: look again
            except ApiError as e:
                log.warning("claim %s/%s: %s", *_key(claim), e)
        by_key = {_key(c): c for c in await self.client.list(PERSISTENT_VOLUME_CLAIM, None)}
        pvs = list((await self._volumes()).values())
        for pv in pvs:
            try:
                await self._sync_volume(pv, by_key)
            except Conflict:
                self._wake.set()
            except ApiError as e:
                log.warning("volume %s: %s", pv["metadata"]["name"], e)
        alive = {str(o["metadata"].get("uid", "")) for o in (*by_key.values(), *pvs)}
        self._told = {told for told in self._told if told[0] in alive}  # forget Events of objects gone

    async def _volumes(self) -> dict[str, Obj]:
        return {pv["metadata"]["name"]: pv for pv in await self.client.list(PERSISTENT_VOLUME)}

    async def _event(self, obj: Obj, reason: str, message: str, *, warning: bool = False, once: bool = True,
                     component: str = _COMPONENT) -> None:
        uid = str(obj["metadata"].get("uid", ""))
        if once and (uid, reason) in self._told:
            return
        self._told.add((uid, reason))
        md = obj["metadata"]
        stamp = meta.now()
        event: Obj = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{md['name'][:200]}.", "namespace": md.get("namespace") or "default"},
            "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", ""),
                               "name": md["name"], "namespace": md.get("namespace", ""), "uid": uid,
                               "resourceVersion": md.get("resourceVersion", "")},
            "reason": reason, "message": message, "type": "Warning" if warning else "Normal", "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": component, "host": self._host},
            "reportingComponent": component, "reportingInstance": self._host,
        }
        try:
            await self.client.create(EVENT, event)
        except ApiError as e:
            log.warning("could not record event %s on %s: %s", reason, md["name"], e)

    async def _in_use(self, claim: Obj) -> bool:
        namespace, name = _key(claim)
        for pod in await self.client.list(POD, namespace):
            if not as_dict(pod.get("spec")).get("nodeName"):
                continue
            if as_dict(pod.get("status")).get("phase") in ("Succeeded", "Failed"):
                continue
            if _claim_uses(pod, name):
                return True
        return False

    def _default_class(self, classes: dict[str, Obj]) -> str | None:
        defaults = [sc for sc in classes.values() if _is_default(sc)]
        if not defaults:
            return None
        # kube picks the newest default when there are several.
        newest = max(defaults, key=lambda sc: (str(sc["metadata"].get("creationTimestamp", "")),
                                               sc["metadata"]["name"]))
        return str(newest["metadata"]["name"])

    async def _sync_claim(self, claim: Obj, classes: dict[str, Obj], volumes: dict[str, Obj]) -> None:
        md = claim["metadata"]
        finalizers = list(md.get("finalizers") or [])
        if md.get("deletionTimestamp"):
            self._watch_pods = True
            if PVC_PROTECTION in finalizers and not await self._in_use(claim):
                md["finalizers"] = [f for f in finalizers if f != PVC_PROTECTION]
                await self.client.update(PERSISTENT_VOLUME_CLAIM, claim)
            return
        if PVC_PROTECTION not in finalizers:
            md["finalizers"] = [*finalizers, PVC_PROTECTION]
            claim = await self.client.update(PERSISTENT_VOLUME_CLAIM, claim)
            md = claim["metadata"]
        spec = as_dict(claim.get("spec"))
        status = as_dict(claim.get("status"))
        name = spec.get("volumeName")
        if name:
            pv = volumes.get(name)
            if pv is None:
                if status.get("phase") == "Bound":
                    await self._claim_status(claim, {"phase": "Lost"})
                    await self._event(claim, "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the "
                                                          "volume is lost!", warning=True)
                return
            ref = as_dict(as_dict(pv.get("spec")).get("claimRef"))
            if not ref or (_ref_key(ref) == _key(claim) and ref.get("uid") in (None, "", md.get("uid"))):
                await self._bind(claim, pv)
            else:
                await self._event(claim, "FailedBinding", f"volume \"{name}\" already bound to a different claim.",
                                  warning=True)
                await self._pending(claim)
            return
        if spec.get("storageClassName") is None:
            default = self._default_class(classes)
            if default is not None:
                spec["storageClassName"] = default
                claim = await self.client.update(PERSISTENT_VOLUME_CLAIM, claim)
                spec = claim["spec"]
        class_name = spec.get("storageClassName")
        sc = classes.get(class_name) if class_name else None
        if sc is not None and sc.get("volumeBindingMode") == "WaitForFirstConsumer" and not await self._in_use(claim):
            self._watch_pods = True
            await self._pending(claim)
            await self._event(claim, "WaitForFirstConsumer", "waiting for first consumer to be created before binding")
            return
        match = self._match(claim, volumes.values())
        if match is not None:
            await self._bind(claim, match)
            return
        await self._pending(claim)
        if not class_name:
            await self._event(claim, "FailedBinding", "no persistent volumes available for this claim and no storage "
                                                      "class is set")
            return
        if sc is None:
            await self._event(claim, "ProvisioningFailed",
                              f"storageclass.storage.k8s.io \"{class_name}\" not found", warning=True)
            return
        provisioner = str(sc.get("provisioner", ""))
        annotations = claim["metadata"].setdefault("annotations", {})
        if annotations.get(_STORAGE_PROVISIONER) != provisioner:
            annotations[_STORAGE_PROVISIONER] = annotations[_BETA_STORAGE_PROVISIONER] = provisioner
            claim = await self.client.update(PERSISTENT_VOLUME_CLAIM, claim)
        if provisioner != PROVISIONER:
            await self._event(claim, "ExternalProvisioning",
                              f"Waiting for a volume to be created either by the external provisioner '{provisioner}' "
                              "or manually by the system administrator. If volume creation is delayed, please verify "
                              "that the provisioner is running and correctly registered.")
            return
        pv = await self._provision(claim, sc)
        if pv is not None:
            await self._bind(claim, pv)

    def _match(self, claim: Obj, volumes: Iterable[Obj]) -> Obj | None:
        """The smallest Available volume that fits the claim (kube's ``FindMatchingVolume``, simplified)."""
        spec = as_dict(claim.get("spec"))
        want = _bytes(as_dict(as_dict(spec.get("resources")).get("requests")).get("storage")) or 0
        modes = set(spec.get("accessModes") or [])
        mode = spec.get("volumeMode") or "Filesystem"
        best: tuple[int, Obj] | None = None
        for pv in volumes:
            pvspec = as_dict(pv.get("spec"))
            if as_dict(pv["metadata"]).get("deletionTimestamp"):
                continue
            ref = as_dict(pvspec.get("claimRef"))
            if ref and (_ref_key(ref) != _key(claim) or ref.get("uid") not in (None, "",
                                                                                         claim["metadata"].get("uid"))):
                continue
            if not ref and as_dict(pv.get("status")).get("phase") not in (None, "Pending", "Available"):
                continue
            if (pvspec.get("storageClassName") or "") != (spec.get("storageClassName") or ""):
                continue
            if (pvspec.get("volumeMode") or "Filesystem") != mode or not modes <= set(pvspec.get("accessModes") or []):
                continue
            size = _bytes(as_dict(pvspec.get("capacity")).get("storage")) or 0
            if size < want or spec.get("selector"):
                continue
            if ref:
                return pv  # pre-bound to this claim
            if best is None or size < best[0]:
                best = (size, pv)
        return best[1] if best else None

    async def _pending(self, claim: Obj) -> None:
        if as_dict(claim.get("status")).get("phase") != "Pending":
            await self._claim_status(claim, {"phase": "Pending"})

    async def _claim_status(self, claim: Obj, status: Obj) -> Obj:
        claim["status"] = {**as_dict(claim.get("status")), **status}
        if status.get("phase") == "Pending":
            claim["status"].pop("capacity", None)
        out = await self.client.update_status(PERSISTENT_VOLUME_CLAIM, claim)
        claim.update(out)
        return out

    async def _provision(self, claim: Obj, sc: Obj) -> Obj | None:
        md, spec = claim["metadata"], as_dict(claim.get("spec"))
        namespace, claim_name = _key(claim)
        problem = None
        request = _bytes(as_dict(as_dict(spec.get("resources")).get("requests")).get("storage"))
        if request is None:
            problem = "the claim requests no storage (spec.resources.requests.storage)"
        elif spec.get("selector"):
            problem = f"claim Selector is not supported by {PROVISIONER}"
        elif spec.get("dataSource") or spec.get("dataSourceRef"):
            problem = f"data sources are not supported by {PROVISIONER}"
        elif spec.get("volumeMode") == "Block":
            problem = f"block volumes are not supported by {PROVISIONER}; use volumeMode Filesystem"
        if problem is not None:
            await self._event(claim, "ProvisioningFailed", f"failed to provision volume with StorageClass "
                                                           f"\"{sc['metadata']['name']}\": {problem}", warning=True)
            return None
        assert request is not None
        name = f"pvc-{md['uid']}"
        await self._event(claim, "Provisioning", f"External provisioner is provisioning volume for claim "
                                                 f"\"{namespace}/{claim_name}\"", component=PROVISIONER)
        size = max(request, MIN_VOLUME_BYTES)
        try:
            async with self._lock(name):
                path = await asyncio.to_thread(self.volumes.ensure, name, size)
        except (OSError, ValueError) as e:
            await self._event(claim, "ProvisioningFailed", f"failed to provision volume with StorageClass "
                                                           f"\"{sc['metadata']['name']}\": {e}", warning=True,
                              once=False, component=PROVISIONER)
            return None
        if self.disks.unbounded_reason:
            await self._event(claim, "VolumeSizeNotEnforced", f"volume {name} is a plain directory: its size is not "
                                                              f"enforced ({self.disks.unbounded_reason})", warning=True)
        reclaim = sc.get("reclaimPolicy") or "Delete"
        finalizers = [PV_PROTECTION] + ([_PROVISIONER_FINALIZER] if reclaim == "Delete" else [])
        pv: Obj = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {_PROVISIONED_BY: PROVISIONER}, "finalizers": finalizers},
            "spec": {
                "capacity": {"storage": format_quantity(Decimal(size), binary=True)},
                "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                "persistentVolumeReclaimPolicy": reclaim,
                "storageClassName": sc["metadata"]["name"],
                "volumeMode": "Filesystem",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.node_name]}]}]}},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace,
                             "name": claim_name, "uid": md["uid"], "resourceVersion": md.get("resourceVersion", "")},
            },
        }
        try:
            created = await self.client.create(PERSISTENT_VOLUME, pv)
        except AlreadyExists:
            created = await self.client.get(PERSISTENT_VOLUME, "", name)
        await self._event(claim, "ProvisioningSucceeded", f"Successfully provisioned volume {name}",
                          component=PROVISIONER)
        return created

    async def _bind(self, claim: Obj, pv: Obj) -> None:
        """Finish binding ``claim`` and ``pv`` (each step only where it is not done yet)."""
        md = claim["metadata"]
        pv_name = pv["metadata"]["name"]
        ref = as_dict(as_dict(pv.get("spec")).get("claimRef"))
        if not ref or not ref.get("uid"):
            namespace, claim_name = _key(claim)
            pv["spec"]["claimRef"] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace,
                                      "name": claim_name, "uid": md["uid"],
                                      "resourceVersion": md.get("resourceVersion", "")}
            if not ref:
                pv["metadata"].setdefault("annotations", {})[_BOUND_BY_CONTROLLER] = "yes"
            pv = await self.client.update(PERSISTENT_VOLUME, pv)
        if as_dict(pv.get("status")).get("phase") != "Bound":
            pv["status"] = {**as_dict(pv.get("status")), "phase": "Bound"}
            pv = await self.client.update_status(PERSISTENT_VOLUME, pv)
        annotations = md.get("annotations") or {}
        if claim["spec"].get("volumeName") != pv_name or annotations.get(_BIND_COMPLETED) != "yes":
            claim["spec"]["volumeName"] = pv_name
            md["annotations"] = {**annotations, _BIND_COMPLETED: "yes", _BOUND_BY_CONTROLLER: "yes"}
            claim.update(await self.client.update(PERSISTENT_VOLUME_CLAIM, claim))
        pvspec = as_dict(pv.get("spec"))
        want = {"phase": "Bound", "accessModes": list(pvspec.get("accessModes") or []),
                "capacity": dict(as_dict(pvspec.get("capacity")))}
        status = as_dict(claim.get("status"))
        if any(status.get(k) != v for k, v in want.items()):
            await self._claim_status(claim, want)

    async def _sync_volume(self, pv: Obj, claims: dict[tuple[str, str], Obj]) -> None:
        md, spec = pv["metadata"], as_dict(pv.get("spec"))
        name = str(md["name"])
        ours = as_dict(md.get("annotations")).get(_PROVISIONED_BY) == PROVISIONER
        ref = as_dict(spec.get("claimRef"))
        claim = claims.get(_ref_key(ref)) if ref else None
        if claim is not None and ref.get("uid") and claim["metadata"].get("uid") != ref["uid"]:
            claim = None  # a new claim of the same name is not this volume's
        phase = as_dict(pv.get("status")).get("phase")
        if md.get("deletionTimestamp"):
            if claim is not None and phase == "Bound":
                return  # pv-protection: it goes once its claim does
            if ours and spec.get("persistentVolumeReclaimPolicy", "Delete") == "Delete":
                await self._remove_image(name)
            finalizers = [f for f in md.get("finalizers") or [] if f not in (PV_PROTECTION, _PROVISIONER_FINALIZER)]
            if finalizers != list(md.get("finalizers") or []):
                md["finalizers"] = finalizers
                with contextlib.suppress(NotFound):
                    await self.client.update(PERSISTENT_VOLUME, pv)
            return
        if not ref:
            if phase != "Available":
                await self._volume_phase(pv, "Available")
            return
        if claim is not None:
            return  # bound, or about to be: the claim's sync does it
        if ref.get("uid") is None and phase in (None, "Pending", "Available"):
            if phase != "Available":
                await self._volume_phase(pv, "Available")  # pre-bound to a claim not made yet
            return
        if phase not in ("Released", "Failed"):
            await self._volume_phase(pv, "Released")
        policy = spec.get("persistentVolumeReclaimPolicy") or "Retain"
        if policy == "Delete":
            if not ours:
                await self._event(pv, "VolumeFailedDelete", f"no deleter for volume {name}: only {PROVISIONER} "
                                                            "volumes are deleted by this node", warning=True)
                return
            await self._remove_image(name)
            with contextlib.suppress(NotFound):
                await self.client.delete(PERSISTENT_VOLUME, "", name)
        elif policy == "Recycle":
            await self._event(pv, "VolumeFailedRecycle", "recycling is not supported (it is deprecated in "
                                                         "Kubernetes); delete the volume or use Retain", warning=True)

    async def _volume_phase(self, pv: Obj, phase: str) -> None:
        pv["status"] = {**as_dict(pv.get("status")), "phase": phase}
        pv.update(await self.client.update_status(PERSISTENT_VOLUME, pv))

    async def _remove_image(self, name: str) -> None:
        async with self._lock(name):
            await asyncio.to_thread(self.volumes.remove, name)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # ------------------------------------------------------------------ what pods mount

    async def claim_path(self, namespace: str, claim_name: str) -> Path:
        """The mounted directory of the volume bound to claim ``namespace/claim_name``; ``StorageError``
        (kubelet's words) while it cannot be mounted."""
        claim = await self.client.try_get(PERSISTENT_VOLUME_CLAIM, namespace, claim_name)
        where = f"error processing PVC {namespace}/{claim_name}"
        if claim is None:
            raise StorageError(f"{where}: persistentvolumeclaim \"{claim_name}\" not found")
        if claim["metadata"].get("deletionTimestamp"):
            raise StorageError(f"{where}: PVC is being deleted")
        pv_name = as_dict(claim.get("spec")).get("volumeName")
        if not pv_name or as_dict(claim.get("status")).get("phase") != "Bound":
            raise StorageError(f"{where}: PVC is not bound")
        pv = await self.client.try_get(PERSISTENT_VOLUME, "", pv_name)
        if pv is None:
            raise StorageError(f"{where}: persistentvolume \"{pv_name}\" not found")
        if as_dict(pv["metadata"].get("annotations")).get(_PROVISIONED_BY) != PROVISIONER:
            raise StorageError(f"{where}: volume \"{pv_name}\" was not made by {PROVISIONER}: the embedded node mounts "
                               "only its own local volumes")
        size = _bytes(as_dict(as_dict(pv.get("spec")).get("capacity")).get("storage")) or MIN_VOLUME_BYTES
        async with self._lock(pv_name):
            if not self.volumes.exists(pv_name):
                raise StorageError(f"{where}: the data of volume \"{pv_name}\" is gone from this node")
            try:
                return await asyncio.to_thread(self.volumes.ensure, pv_name, size)
            except (OSError, ValueError) as e:
                raise StorageError(f"{where}: mounting volume \"{pv_name}\": {e}") from e

    def _empty_dirs(self, sandbox_id: str) -> VolumeImages:
        SandboxDir(self.empty_dirs_root, sandbox_id)  # checks the id before it names a path
        return VolumeImages(self.empty_dirs_root / sandbox_id, self.disks)

    async def empty_dir(self, sandbox_id: str, volume: str, size: int) -> Path:
        """A bounded directory for ``emptyDir`` ``volume`` of pod sandbox ``sandbox_id``: writes past
        ``size`` bytes (at least ``MIN_VOLUME_BYTES``) fail with ENOSPC. Kept until ``release_pod``."""
        images = self._empty_dirs(sandbox_id)
        async with self._lock(f"{sandbox_id}/{volume}"):
            try:
                return await asyncio.to_thread(images.ensure, volume, size)
            except (OSError, ValueError) as e:
                raise StorageError(f"emptyDir {volume}: {e}") from e

    @property
    def unbounded_reason(self) -> str | None:
        """Why volume sizes are not enforced on this machine (None: they are)."""
        return self.disks.unbounded_reason

    async def release_pod(self, sandbox_id: str) -> None:
        """Remove the bounded emptyDirs of pod sandbox ``sandbox_id`` (call with ``remove_pod_sandbox``)."""
        images = self._empty_dirs(sandbox_id)

        def remove_all() -> None:
            for name in images.names():
                images.remove(name)
            with contextlib.suppress(FileNotFoundError, OSError):
                images.root.rmdir()

        await in_teardown_thread(remove_all)  # unmounts: never in the boots' threads
