"""The kubelet plugin interface: a test driver (written for these tests, on bare grpc, not turbok's helper)
registers over its socket and answers the DRA v1 calls; a plugin of another type is refused; a driver that
registers and dies fails its claims clearly and disturbs nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from turbok.node.dra.plugins import DriverUnavailable, PluginManager
from turbok.node.dra.protos import DRA_SERVICE, REGISTRATION_SERVICE, M


class TestDriver:
    """A minimal outside driver: its registration socket and its DRA endpoint, answering from a table."""

    __test__ = False

    def __init__(self, root: Path, name: str = "test.example.com", kind: str = "DRAPlugin",
                 versions: tuple[str, ...] = ("v1.DRAPlugin",)) -> None:
        self.name, self.kind, self.versions = name, kind, versions
        self.registration = root / "reg" / f"{name}-reg.sock"
        self.endpoint = root / "plugins" / name / "dra.sock"
        self.status: list[tuple[bool, str]] = []
        self.prepared: list[str] = []
        self.servers: list[grpc.aio.Server] = []

    async def start(self) -> None:
        for p in (self.registration, self.endpoint):
            p.parent.mkdir(parents=True, exist_ok=True)

        async def info(request: Any, context: Any) -> Any:
            return M.PluginInfo(type=self.kind, name=self.name, endpoint=str(self.endpoint),
                                supported_versions=list(self.versions))

        async def notify(request: Any, context: Any) -> Any:
            self.status.append((request.plugin_registered, request.error))
            return M.RegistrationStatusResponse()

        async def prepare(request: Any, context: Any) -> Any:
            reply = M.NodePrepareResourcesResponse()
            for c in request.claims:
                self.prepared.append(c.uid)
                if c.name == "broken":
                    reply.claims[c.uid].error = "no such device"
                else:
                    reply.claims[c.uid].devices.add(request_names=["gpu"], pool_name="pool", device_name="dev-0",
                                                    cdi_device_ids=[f"test.example.com/dev=dev-0-{c.uid}"])
            return reply

        async def unprepare(request: Any, context: Any) -> Any:
            reply = M.NodeUnprepareResourcesResponse()
            for c in request.claims:
                reply.claims[c.uid].error = ""
            return reply

        reg = grpc.aio.server()
        reg.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REGISTRATION_SERVICE, {
            "GetInfo": grpc.unary_unary_rpc_method_handler(info, M.InfoRequest.FromString,
                                                           M.PluginInfo.SerializeToString),
            "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
                notify, M.RegistrationStatus.FromString, M.RegistrationStatusResponse.SerializeToString)}),))
        reg.add_insecure_port(f"unix://{self.registration}")
        dra = grpc.aio.server()
        dra.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(DRA_SERVICE, {
            "NodePrepareResources": grpc.unary_unary_rpc_method_handler(
                prepare, M.NodePrepareResourcesRequest.FromString, M.NodePrepareResourcesResponse.SerializeToString),
            "NodeUnprepareResources": grpc.unary_unary_rpc_method_handler(
                unprepare, M.NodeUnprepareResourcesRequest.FromString,
                M.NodeUnprepareResourcesResponse.SerializeToString)}),))
        dra.add_insecure_port(f"unix://{self.endpoint}")
        for server in (dra, reg):
            await server.start()
            self.servers.append(server)

    async def die(self) -> None:
        """Stop answering, leaving its sockets behind (a crashed process does)."""
        for server in self.servers:
            await server.stop(grace=None)


async def test_a_driver_registers_and_answers(sockets: Path) -> None:
    driver = TestDriver(sockets)
    await driver.start()
    manager = PluginManager(sockets / "reg", poll=0.02)
    await manager.start()
    try:
        registered = await manager.wait_for("test.example.com", timeout=5)
        assert registered.endpoint == driver.endpoint
        assert driver.status == [(True, "")]
        answer = await manager.prepare("test.example.com", [("ns", "uid-1", "claim"), ("ns", "uid-2", "broken")])
        assert answer["uid-1"].devices[0].cdi_device_ids == ("test.example.com/dev=dev-0-uid-1",)
        assert answer["uid-1"].devices[0].requests == ("gpu",) and answer["uid-1"].error == ""
        assert answer["uid-2"].error == "no such device"
        assert await manager.unprepare("test.example.com", [("ns", "uid-1", "claim")]) == {"uid-1": ""}
        driver.registration.unlink()  # a driver that stops cleanly removes its registration socket
        await asyncio.sleep(0.1)
        assert "test.example.com" not in manager.drivers
    finally:
        await manager.stop()
        await driver.die()


async def test_a_plugin_of_another_type_or_version_is_refused(sockets: Path) -> None:
    csi = TestDriver(sockets, name="csi.example.com", kind="CSIPlugin")
    old = TestDriver(sockets, name="old.example.com", versions=("v1alpha3",))
    for d in (csi, old):
        await d.start()
    manager = PluginManager(sockets / "reg", poll=0.02)
    await manager.start()
    try:
        assert manager.drivers == {}
        assert csi.status == [(False, "plugin type 'CSIPlugin' is not supported by this node (only DRAPlugin)")]
        assert old.status[0][0] is False and "none of the versions ['v1alpha3'] is supported" in old.status[0][1]
    finally:
        await manager.stop()
        for d in (csi, old):
            await d.die()


async def test_a_driver_that_registers_and_dies_fails_its_claims_clearly(sockets: Path) -> None:
    alive, dead = TestDriver(sockets, name="alive.example.com"), TestDriver(sockets, name="dead.example.com")
    for d in (alive, dead):
        await d.start()
    manager = PluginManager(sockets / "reg", poll=0.02)
    manager.timeout = 2.0
    await manager.start()
    try:
        await manager.wait_for("dead.example.com")
        await dead.die()
        with pytest.raises(DriverUnavailable, match=r"DRA driver dead.example.com at .*: NodePrepareResources failed"):
            await manager.prepare("dead.example.com", [("ns", "u", "c")])
        with pytest.raises(DriverUnavailable, match="DRA driver nobody.example.com is not registered on this node"):
            await manager.prepare("nobody.example.com", [("ns", "u", "c")])
        ok = await manager.prepare("alive.example.com", [("ns", "u", "c")])  # nothing else disturbed
        assert ok["u"].error == ""
    finally:
        await manager.stop()
        await alive.die()
