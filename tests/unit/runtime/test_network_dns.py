"""The pods' DNS forwarder on loopback: forwarding, cluster names, ids, bounds, a silent upstream."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from turbok.runtime.network_dns import PodResolver, question_name, read_nameservers

UPSTREAM, RESOLVER = "127.0.0.1", "127.0.0.2"


def query(name: str, ident: int = 0x1234) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


class Upstream(asyncio.DatagramProtocol):
    """Answers A queries with 203.0.113.7; ``forge`` first sends a reply with another id; ``silent`` drops."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.silent = False
        self.forge = False
        self.delay = 0.0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def answer(self, data: bytes) -> bytes:
        parsed = question_name(data)
        assert parsed is not None
        name, end = parsed
        self.asked.append(name)
        header = struct.pack("!HHHHHH", struct.unpack_from("!H", data)[0], 0x8180, 1, 1, 0, 0)
        return header + data[12:end] + struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("203.0.113.7")

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.silent:
            return
        asyncio.get_running_loop().call_later(self.delay, self._reply, data, addr)

    def _reply(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        reply = self.answer(data)
        if self.forge:
            self.transport.sendto(struct.pack("!H", (struct.unpack_from("!H", data)[0] + 1) & 0xFFFF) + reply[2:],
                                  addr)
        self.transport.sendto(reply, addr)


async def _tcp_upstream(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    size = struct.unpack("!H", await reader.readexactly(2))[0]
    reply = upstream.answer(await reader.readexactly(size))
    writer.write(struct.pack("!H", len(reply)) + reply)
    await writer.drain()
    writer.close()


@pytest.fixture
async def dns(tmp_path: Path) -> AsyncIterator[tuple[PodResolver, Upstream, Path]]:
    loop = asyncio.get_running_loop()
    upstream = Upstream()
    transport, _ = await loop.create_datagram_endpoint(lambda: upstream, local_addr=(UPSTREAM, 0))
    port = transport.get_extra_info("sockname")[1]
    tcp = await asyncio.start_server(lambda r, w: _tcp_upstream(upstream, r, w), UPSTREAM, port)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {UPSTREAM}\n")
    free = socket.socket()
    free.bind((RESOLVER, 0))
    listen = free.getsockname()[1]
    free.close()
    resolver = PodResolver(RESOLVER, port=listen, resolv_conf=resolv, upstream_port=port, timeout=0.3,
                           per_client=2)
    await resolver.start()
    yield resolver, upstream, resolv
    await resolver.stop()
    transport.close()
    tcp.close()


async def ask(resolver: PodResolver, message: bytes, *, tcp: bool = False, timeout: float = 2.0) -> bytes | None:
    loop = asyncio.get_running_loop()
    if tcp:
        reader, writer = await asyncio.open_connection(resolver.address, resolver.port)
        writer.write(struct.pack("!H", len(message)) + message)
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        reply = await reader.readexactly(size)
        writer.close()
        return reply
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (resolver.address, resolver.port))
        await loop.sock_sendall(sock, message)
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
    except TimeoutError:
        return None
    finally:
        sock.close()


def rcode(reply: bytes | None) -> int:
    assert reply is not None
    return reply[3] & 0xF


async def test_queries_go_to_the_hosts_resolver_and_come_back_with_their_own_id(dns: tuple[PodResolver, Upstream,
                                                                                          Path]) -> None:
    resolver, upstream, _ = dns
    for tcp in (False, True):
        reply = await ask(resolver, query("pypi.example", ident=0xBEEF), tcp=tcp)
        assert reply is not None and reply[:2] == b"\xbe\xef" and rcode(reply) == 0
        assert socket.inet_ntoa(reply[-4:]) == "203.0.113.7"
    assert upstream.asked == ["pypi.example", "pypi.example"]


async def test_cluster_names_are_answered_here_and_never_leave(dns: tuple[PodResolver, Upstream, Path]) -> None:
    resolver, upstream, _ = dns
    for name in ("db.team.svc.cluster.local", "cluster.local", "Kubernetes.Default.Svc.Cluster.Local"):
        assert rcode(await ask(resolver, query(name))) == 3
    assert upstream.asked == []


async def test_a_forged_reply_is_skipped_and_a_silent_upstream_is_a_servfail(dns: tuple[PodResolver, Upstream,
                                                                                       Path]) -> None:
    resolver, upstream, _ = dns
    upstream.forge = True
    reply = await ask(resolver, query("pypi.example"))
    assert reply is not None and socket.inet_ntoa(reply[-4:]) == "203.0.113.7"
    upstream.silent = True
    assert rcode(await ask(resolver, query("slow.example"))) == 2


async def test_a_pod_cannot_hold_more_than_its_share(dns: tuple[PodResolver, Upstream, Path]) -> None:
    resolver, upstream, _ = dns
    upstream.delay = 0.2
    replies = await asyncio.gather(*(ask(resolver, query(f"n{i}.example"), timeout=1) for i in range(5)))
    assert sum(r is not None for r in replies) == 2  # per_client=2: the others are dropped, as a busy server does
    assert len(upstream.asked) == 2


async def test_garbage_is_ignored_and_resolv_conf_changes_are_read(dns: tuple[PodResolver, Upstream, Path]) -> None:
    resolver, upstream, resolv = dns
    for junk in (b"", b"\x00" * 5, query("x.example")[:14], b"\x12\x34\x81\x00" + b"\x00" * 8):
        assert await ask(resolver, junk, timeout=0.3) is None
    resolv.write_text("# moved\nnameserver 192.0.2.1\n")
    os.utime(resolv, (1, 1))
    assert resolver.upstreams() == ["192.0.2.1"]
    assert read_nameservers(Path("/nonexistent")) == ["127.0.0.1"]


async def test_two_homes_resolvers_share_the_gateway_and_either_alone_answers(
        dns: tuple[PodResolver, Upstream, Path]) -> None:
    # Every home's control plane serves DNS on the one gateway: the second used to fail to bind (its pods were
    # left to the first's resolver, and to none once the first stopped).
    first, upstream, resolv = dns
    second = PodResolver(first.address, port=first.port, resolv_conf=resolv, upstream_port=first.upstream_port,
                         timeout=0.3)
    await second.start()
    try:
        for ident in range(8):  # the kernel spreads them; every one is answered
            assert rcode(await ask(first, query("pypi.example", ident))) == 0
        await first.stop()
        assert rcode(await ask(second, query("pypi.example", 99))) == 0
        assert rcode(await ask(second, query("pypi.example", 100), tcp=True)) == 0
    finally:
        await second.stop()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # something else on the port: still refused
    taken.bind((first.address, first.port))
    try:
        with pytest.raises(OSError):
            await PodResolver(first.address, port=first.port, resolv_conf=resolv).start()
    finally:
        taken.close()
