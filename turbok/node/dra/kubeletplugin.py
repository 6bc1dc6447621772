"""The driver's side of a kubelet plugin, for turbok's own DRA drivers (and the tests' drivers).

``KubeletPlugin(driver, ...)`` serves a ``Driver`` exactly as an outside driver
serves itself, so turbok's drivers go through the same door as anyone's:

- the DRA v1 service (and v1beta1, same messages) on ``<plugin_dir>/<driver>/dra.sock``;
- the registration service on ``<registry_dir>/<driver>-reg.sock``, which the
  node's ``PluginManager`` finds and calls;
- the driver's ResourceSlices and DeviceClasses, published through the client
  at start (server-side, as upstream's ``kubeletplugin`` helper publishes
  them) and removed at stop (the DeviceClasses stay: users' claims name them);
- on ``NodePrepareResources``: the claim read from the API (its uid checked),
  its results for this driver handed to ``Driver.prepare``, which writes a CDI
  spec for the claim and returns the CDI device ids; ``NodeUnprepareResources``
  removes it. Both are idempotent, as the kubelet may call them again.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from turbok.api.status import ApiError, Conflict, NotFound
from turbok.node.client import NodeClient, Obj
from turbok.node.dra.protos import DRA_SERVICE, DRA_V1BETA1_SERVICE, REGISTRATION_SERVICE, M

__all__ = ["CDI_VERSION", "Driver", "KubeletPlugin", "write_cdi_spec"]

log = logging.getLogger(__name__)

CDI_VERSION = "0.6.0"


def write_cdi_spec(path: Path, kind: str, devices: dict[str, Obj], edits: Obj | None = None) -> None:
    """A CDI spec file (atomically, 0644: runtimes read it), one device per entry of ``devices``."""
    spec: Obj = {"cdiVersion": CDI_VERSION, "kind": kind,
                 "devices": [{"name": name, "containerEdits": e} for name, e in devices.items()]}
    if edits:
        spec["containerEdits"] = edits
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec, indent=1))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class Driver(abc.ABC):
    """A DRA driver: what it publishes, and what preparing a claim's devices means for it."""

    name: str

    @abc.abstractmethod
    def resource_slices(self, node_name: str) -> list[Obj]:
        """The node's ResourceSlices of this driver (metadata.name and spec filled in)."""

    def device_classes(self) -> list[Obj]:
        """DeviceClasses to create if absent (users' claims name them)."""
        return []

    @abc.abstractmethod
    def prepare(self, claim: Obj, results: list[Obj]) -> list[tuple[list[str], str, str, list[str]]]:
        """Make ``results`` (this driver's allocation results of ``claim``) usable; for each device:
        (request names, pool, device, CDI device ids)."""

    @abc.abstractmethod
    def unprepare(self, claim_uid: str) -> None:
        """Undo ``prepare`` (nothing to undo is fine)."""


class KubeletPlugin:
    def __init__(self, driver: Driver, *, client: NodeClient, node_name: str, registry_dir: Path,
                 plugin_dir: Path) -> None:
        self.driver = driver
        self.client = client
        self.node_name = node_name
        self.registry_socket = registry_dir / f"{driver.name}-reg.sock"
        self.endpoint = plugin_dir / driver.name / "dra.sock"
        self._servers: list[grpc.aio.Server] = []
        self.registered: asyncio.Event = asyncio.Event()
        self.registration_error = ""
        self._slice_kind = client.kinds.by_kind("resource.k8s.io/v1", "ResourceSlice")
        self._class_kind = client.kinds.by_kind("resource.k8s.io/v1", "DeviceClass")
        self._claim_kind = client.kinds.by_kind("resource.k8s.io/v1", "ResourceClaim")

    # ------------------------------------------------------------ lifecycle

    async def start(self, *, publish: bool = True) -> None:
        if publish:
            await self.publish()
        self.endpoint.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.registry_socket.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        for sock in (self.endpoint, self.registry_socket):
            sock.unlink(missing_ok=True)
        dra = grpc.aio.server()
        handlers = {"NodePrepareResources": grpc.unary_unary_rpc_method_handler(
                        self._prepare, request_deserializer=M.NodePrepareResourcesRequest.FromString,
                        response_serializer=M.NodePrepareResourcesResponse.SerializeToString),
                    "NodeUnprepareResources": grpc.unary_unary_rpc_method_handler(
                        self._unprepare, request_deserializer=M.NodeUnprepareResourcesRequest.FromString,
                        response_serializer=M.NodeUnprepareResourcesResponse.SerializeToString)}
        dra.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(DRA_SERVICE, handlers),
                                      grpc.method_handlers_generic_handler(DRA_V1BETA1_SERVICE, handlers)))
        dra.add_insecure_port(f"unix://{self.endpoint}")
        await dra.start()
        self._servers.append(dra)
        reg = grpc.aio.server()
        reg.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REGISTRATION_SERVICE, {
            "GetInfo": grpc.unary_unary_rpc_method_handler(
                self._get_info, request_deserializer=M.InfoRequest.FromString,
                response_serializer=M.PluginInfo.SerializeToString),
            "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
                self._notify, request_deserializer=M.RegistrationStatus.FromString,
                response_serializer=M.RegistrationStatusResponse.SerializeToString)}),))
        reg.add_insecure_port(f"unix://{self.registry_socket}")
        await reg.start()
        self._servers.append(reg)
        for sock in (self.endpoint, self.registry_socket):
            os.chmod(sock, 0o600)

    async def stop(self, *, unpublish: bool = True) -> None:
        for server in self._servers:
            await server.stop(grace=1.0)
        self._servers.clear()
        for sock in (self.registry_socket, self.endpoint):
            sock.unlink(missing_ok=True)
        if unpublish:
            for s in self.driver.resource_slices(self.node_name):
                with contextlib.suppress(ApiError):
                    await self.client.delete(self._slice_kind, "", s["metadata"]["name"])

    async def publish(self) -> None:
        """Create or replace this node's slices (removing ones of this driver and node it no longer has),
        and create the driver's DeviceClasses that do not exist."""
        wanted = {s["metadata"]["name"]: s for s in self.driver.resource_slices(self.node_name)}
        for old in await self.client.list(self._slice_kind):
            spec = old.get("spec") or {}
            if spec.get("driver") == self.driver.name and spec.get("nodeName") == self.node_name and \
                    old["metadata"]["name"] not in wanted:
                with contextlib.suppress(NotFound):
                    await self.client.delete(self._slice_kind, "", old["metadata"]["name"])
        for name, obj in wanted.items():
            current = await self.client.try_get(self._slice_kind, "", name)
            if current is None:
                await self.client.create(self._slice_kind, obj)
            elif current.get("spec") != obj["spec"]:
                obj = {**obj, "metadata": {**current["metadata"], **obj["metadata"]}}
                await self.client.update(self._slice_kind, obj)
        for dc in self.driver.device_classes():
            if await self.client.try_get(self._class_kind, "", dc["metadata"]["name"]) is None:
                with contextlib.suppress(Conflict):
                    await self.client.create(self._class_kind, dc)

    # ------------------------------------------------------------ registration

    async def _get_info(self, request: Any, context: Any) -> Any:
        return M.PluginInfo(type="DRAPlugin", name=self.driver.name, endpoint=str(self.endpoint),
                            supported_versions=["v1.DRAPlugin", "v1beta1.DRAPlugin"])

    async def _notify(self, request: Any, context: Any) -> Any:
        self.registration_error = request.error
        if request.plugin_registered:
            self.registered.set()
        else:
            log.warning("DRA driver %s: the node refused its registration: %s", self.driver.name, request.error)
        return M.RegistrationStatusResponse()

    # ------------------------------------------------------------ DRA

    async def _prepare(self, request: Any, context: Any) -> Any:
        reply = M.NodePrepareResourcesResponse()
        for c in request.claims:
            entry = reply.claims[c.uid]
            try:
                claim = await self.client.get(self._claim_kind, c.namespace, c.name)
                if claim["metadata"].get("uid") != c.uid:
                    raise NotFound(f"resourceclaim {c.namespace}/{c.name} with uid {c.uid} is gone")
                allocation = (claim.get("status") or {}).get("allocation") or {}
                results = [r for r in (allocation.get("devices") or {}).get("results") or []
                           if r.get("driver") == self.driver.name]
                devices = await asyncio.to_thread(self.driver.prepare, claim, results)
                for requests, pool, device, ids in devices:
                    entry.devices.add(request_names=requests, pool_name=pool, device_name=device,
                                      cdi_device_ids=ids)
            except Exception as e:  # reported per claim, as the protocol asks
                entry.error = f"{type(e).__name__}: {e}"
        return reply

    async def _unprepare(self, request: Any, context: Any) -> Any:
        reply = M.NodeUnprepareResourcesResponse()
        for c in request.claims:
            entry = reply.claims[c.uid]
            try:
                await asyncio.to_thread(self.driver.unprepare, c.uid)
            except Exception as e:
                entry.error = f"{type(e).__name__}: {e}"
        return reply


def results_by_device(results: Sequence[Obj]) -> dict[tuple[str, str], list[str]]:
    """(pool, device) -> the requests it was allocated for, in order."""
    out: dict[tuple[str, str], list[str]] = {}
    for r in results:
        out.setdefault((str(r.get("pool")), str(r.get("device"))), []).append(str(r.get("request")))
    return out
