"""DRA drivers as kubelet plugins: registration over a Unix socket, then the DRA v1 gRPC service.

The kubelet's side, at the kubelet's documented paths (``registry_dir`` is
``/var/lib/kubelet/plugins_registry`` on a real node; turbok's node uses it
when it may, else ``<home>/kubelet/plugins_registry``):

1. A plugin puts a socket in ``registry_dir`` (any name ending ``.sock``).
2. ``PluginManager`` notices it (a look every ``poll`` seconds), calls
   ``Registration/GetInfo`` and accepts a ``DRAPlugin`` whose
   ``supported_versions`` name ``v1.DRAPlugin`` (or ``v1beta1.DRAPlugin``, the
   same messages) and whose ``endpoint`` is a socket; then
   ``NotifyRegistrationStatus`` tells it the outcome. A later registration of
   the same driver name replaces the earlier one (a driver being upgraded).
3. ``prepare``/``unprepare`` call ``NodePrepareResources`` /
   ``NodeUnprepareResources`` on the driver's endpoint, with a deadline
   (``CALL_TIMEOUT``). A driver whose registration socket is gone is
   forgotten; one that registered and died answers nothing: its calls fail
   with ``DriverUnavailable`` naming it, and nothing else is disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from turbok.errors import TurbokError
from turbok.node.dra.protos import DRA_SERVICE, DRA_V1BETA1_SERVICE, REGISTRATION_SERVICE, M, method_path

__all__ = ["CALL_TIMEOUT", "DriverUnavailable", "PluginManager", "Prepared", "PreparedDevice", "Registered"]

log = logging.getLogger(__name__)

#: Seconds a NodePrepareResources/NodeUnprepareResources call may take (the kubelet's is 45 s).
CALL_TIMEOUT = 45.0
SUPPORTED = {"v1.DRAPlugin": DRA_SERVICE, "v1beta1.DRAPlugin": DRA_V1BETA1_SERVICE}


class DriverUnavailable(TurbokError):
    """The DRA driver a claim needs is not registered, or does not answer."""


@dataclass(frozen=True)
class Registered:
    name: str
    endpoint: Path
    service: str
    registration: Path


@dataclass(frozen=True)
class PreparedDevice:
    requests: tuple[str, ...]
    pool: str
    device: str
    cdi_device_ids: tuple[str, ...]


@dataclass(frozen=True)
class Prepared:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


@dataclass
class PluginManager:
    registry_dir: Path
    poll: float = 1.0
    timeout: float = CALL_TIMEOUT
    drivers: dict[str, Registered] = field(default_factory=dict)
    _seen: dict[Path, float] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.registry_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        await self.scan()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="dra-plugin-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self.scan()
            except Exception:  # one bad plugin never stops the watcher
                log.exception("scanning %s", self.registry_dir)

    async def wait_for(self, driver: str, timeout: float = 10.0) -> Registered:
        """The driver's registration, once it is there (for tests and start-up)."""
        async with asyncio.timeout(timeout):
            while driver not in self.drivers:
                self._changed.clear()
                await self._changed.wait()
        return self.drivers[driver]

    async def scan(self) -> None:
        present = {p for p in self.registry_dir.glob("*.sock") if _is_socket(p)}
        for gone in set(self._seen) - present:
            del self._seen[gone]
            for name, reg in list(self.drivers.items()):
                if reg.registration == gone:
                    log.info("DRA driver %s deregistered (its socket %s is gone)", name, gone)
                    del self.drivers[name]
                    self._changed.set()
        for sock in sorted(present):
            mtime = sock.stat().st_mtime
            if self._seen.get(sock) == mtime:
                continue
            self._seen[sock] = mtime
            await self._register(sock)

    async def _register(self, sock: Path) -> None:
        async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
            get_info = channel.unary_unary(method_path(REGISTRATION_SERVICE, "GetInfo"),
                                           request_serializer=M.InfoRequest.SerializeToString,
                                           response_deserializer=M.PluginInfo.FromString)
            notify = channel.unary_unary(method_path(REGISTRATION_SERVICE, "NotifyRegistrationStatus"),
                                         request_serializer=M.RegistrationStatus.SerializeToString,
                                         response_deserializer=M.RegistrationStatusResponse.FromString)
            try:
                info = await get_info(M.InfoRequest(), timeout=5.0)
            except grpc.aio.AioRpcError as e:
                log.warning("plugin socket %s: GetInfo failed: %s", sock, e.details())
                return
            error = self._check(info)
            if not error:
                service = next(SUPPORTED[v] for v in info.supported_versions if v in SUPPORTED)
                self.drivers[info.name] = Registered(info.name, Path(info.endpoint), service, sock)
                self._changed.set()
                log.info("DRA driver %s registered (endpoint %s)", info.name, info.endpoint)
            else:
                log.warning("plugin socket %s refused: %s", sock, error)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await notify(M.RegistrationStatus(plugin_registered=not error, error=error), timeout=5.0)

    @staticmethod
    def _check(info: object) -> str:
        kind, name = getattr(info, "type", ""), getattr(info, "name", "")
        if kind != "DRAPlugin":
            return f"plugin type {kind!r} is not supported by this node (only DRAPlugin)"
        if not name:
            return "the plugin gave no driver name"
        versions = list(getattr(info, "supported_versions", []))
        if not any(v in SUPPORTED for v in versions):
            return f"none of the versions {versions} is supported (want one of {sorted(SUPPORTED)})"
        endpoint = Path(getattr(info, "endpoint", ""))
        if not endpoint.is_absolute() or not _is_socket(endpoint):
            return f"endpoint {str(endpoint)!r} is not a socket"
        return ""

    # ------------------------------------------------------------ calls

    def _driver(self, name: str) -> Registered:
        reg = self.drivers.get(name)
        if reg is None:
            raise DriverUnavailable(f"DRA driver {name} is not registered on this node")
        return reg

    async def prepare(self, driver: str, claims: list[tuple[str, str, str]]) -> dict[str, Prepared]:
        """``NodePrepareResources`` for (namespace, uid, name) claims; by claim uid."""
        reg = self._driver(driver)
        request = M.NodePrepareResourcesRequest(claims=[M.Claim(namespace=ns, uid=uid, name=name)
                                                        for ns, uid, name in claims])
        reply = await self._call(reg, "NodePrepareResources", request, M.NodePrepareResourcesResponse)
        out: dict[str, Prepared] = {}
        for _, uid, _ in claims:
            if uid not in reply.claims:
                out[uid] = Prepared(error=f"DRA driver {driver} did not prepare the claim")
                continue
            r = reply.claims[uid]
            out[uid] = Prepared(devices=tuple(PreparedDevice(tuple(d.request_names), d.pool_name, d.device_name,
                                                             tuple(d.cdi_device_ids)) for d in r.devices),
                                error=r.error)
        return out

    async def unprepare(self, driver: str, claims: list[tuple[str, str, str]]) -> dict[str, str]:
        """``NodeUnprepareResources``; the error of each claim by uid ("" when it went)."""
        reg = self._driver(driver)
        request = M.NodeUnprepareResourcesRequest(claims=[M.Claim(namespace=ns, uid=uid, name=name)
                                                          for ns, uid, name in claims])
        reply = await self._call(reg, "NodeUnprepareResources", request, M.NodeUnprepareResourcesResponse)
        return {uid: (reply.claims[uid].error if uid in reply.claims else "") for _, uid, _ in claims}

    async def _call(self, reg: Registered, method: str, request: Any, reply_type: Any) -> Any:
        try:
            async with grpc.aio.insecure_channel(f"unix://{reg.endpoint}") as channel:
                call = channel.unary_unary(method_path(reg.service, method),
                                           request_serializer=type(request).SerializeToString,
                                           response_deserializer=reply_type.FromString)
                return await call(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            raise DriverUnavailable(f"DRA driver {reg.name} at {reg.endpoint}: {method} failed: "
                                    f"{e.code().name}: {e.details()}") from None
