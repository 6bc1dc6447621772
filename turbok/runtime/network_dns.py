"""The pods' DNS resolver: a small forwarder on the pod network's gateway, port 53, UDP and TCP.

A pod's ``/etc/resolv.conf`` names the gateway (``turbok.node.netpolicy.dns_config``);
what a pod asks there is forwarded to the host's own resolvers (the ``nameserver``
lines of the host's ``/etc/resolv.conf``, read again when it changes; none means
127.0.0.1, as glibc reads it). The forwarder's own queries leave from the host,
as any of the host's traffic: they are not pod egress, so a pod whose policy
allows no DNS server can still resolve names, and only pods whose policy allows
some egress may ask (the pod network's ``dns`` set; the others' queries are
dropped before they reach this process).

- Names in the cluster domain (``cluster.local``: the search domains a kubelet
  writes for ``ClusterFirst``) are answered NXDOMAIN here, never forwarded:
  there is no cluster DNS on one machine, and the host's resolvers need not see
  them.
- Each forwarded query goes out with a new random id from a new socket (a
  random source port) and only a reply with that id and the same question is
  taken; the client's id is put back.
- Bounds: ``max_queries`` forwarded at once (1024), ``per_client`` at once per
  pod address (64; more are dropped, as an overloaded server drops, and the
  client retries), ``max_connections`` TCP connections (64) closed after
  ``idle`` seconds (10) without a query, ``timeout`` seconds per upstream (2).

Not a cache: the host's resolver (systemd-resolved, a router) caches.

Every home's control plane on a machine runs one on the same gateway (the bridge is the
machine's): the sockets are ``SO_REUSEPORT``, so each binds, the kernel spreads the pods'
queries over them, and when one home stops the others go on answering every pod (they
answer alike: the pod network's ``dns`` set, not the resolver, decides who may ask).
Only sockets of the same user with the option share the port; anything else on it
(a host's dnsmasq on the gateway) still makes ``start`` fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import struct
from collections import Counter
from pathlib import Path

from turbok.runtime import netns

__all__ = ["PodResolver", "question_name", "read_nameservers"]

log = logging.getLogger(__name__)

HEADER = struct.Struct("!HHHHHH")
QR, RA, RD_OPCODE = 0x8000, 0x0080, 0x7900
NXDOMAIN, SERVFAIL = 3, 2


def read_nameservers(path: Path) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf (scope ids dropped); ["127.0.0.1"] when none."""
    found = []
    try:
        text = path.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            address = parts[1].split("%", 1)[0]
            with contextlib.suppress(ValueError):
                found.append(str(ipaddress.ip_address(address)))
    return found or ["127.0.0.1"]


def question_name(message: bytes) -> tuple[str, int] | None:
    """(lower-case name without the final dot, end offset of the question) of a one-question query."""
    if len(message) < HEADER.size:
        return None
    _, flags, qdcount, _, _, _ = HEADER.unpack_from(message)
    if flags & QR or qdcount != 1:
        return None
    labels, i = [], HEADER.size
    while True:
        if i >= len(message):
            return None
        n = message[i]
        if n == 0:
            i += 1
            break
        if n > 63 or i + 1 + n > len(message):
            return None  # a compression pointer or a bad length: not in a query's question
        labels.append(message[i + 1:i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    if i + 4 > len(message):
        return None
    return ".".join(labels), i + 4


def _reply(query: bytes, end: int, rcode: int) -> bytes:
    """An answer with no records: the query's id, question and RD bit, ``rcode``."""
    qid, flags = struct.unpack_from("!HH", query)
    return HEADER.pack(qid, QR | (flags & RD_OPCODE) | RA | rcode, 1, 0, 0, 0) + query[HEADER.size:end]


class PodResolver:
    """UDP and TCP DNS on ``address``:``port`` (in the namespace ``netns_path``; None: this process's)."""

    def __init__(self, address: str, *, port: int = 53, resolv_conf: Path = Path("/etc/resolv.conf"),
                 netns_path: Path | None = None, cluster_domain: str = "cluster.local", timeout: float = 2.0,
                 max_queries: int = 1024, per_client: int = 64, max_connections: int = 64,
                 idle: float = 10.0, upstream_port: int = 53) -> None:
        self.address = address
        self.port = port
        self.resolv_conf = resolv_conf
        self.netns_path = netns_path
        self.cluster_domain = cluster_domain.strip(".").lower()
        self.timeout = timeout
        self.max_queries = max_queries
        self.per_client = per_client
        self.max_connections = max_connections
        self.idle = idle
        self.upstream_port = upstream_port
        self._upstreams: tuple[float, list[str]] = (-1.0, [])
        self._inflight: Counter[str] = Counter()
        self._connections = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ lifecycle

    def _socket(self, kind: int, family: int = socket.AF_INET) -> socket.socket:
        def make() -> socket.socket:
            return socket.socket(family, kind | socket.SOCK_CLOEXEC)

        return make() if self.netns_path is None else netns.call_in(self.netns_path, make)

    async def start(self) -> None:
        """Bind both sockets (``OSError`` when the address is not here or the port is taken)."""
        loop = asyncio.get_running_loop()
        udp, tcp = self._socket(socket.SOCK_DGRAM), self._socket(socket.SOCK_STREAM)
        try:
            # TCP may rebind over its own TIME_WAITs; both share the port with other homes' resolvers only.
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for s in (udp, tcp):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((self.address, self.port))
                s.setblocking(False)
            tcp.listen(64)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=udp)
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
        log.info("pod DNS resolver on %s:%d, forwarding to %s", self.address, self.port,
                 ", ".join(self.upstreams()))

    async def stop(self) -> None:
        """Close both sockets (closed when this returns: another home's resolver takes every query)."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
            await asyncio.sleep(0)  # the transport closes its socket on the loop's next turn
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def upstreams(self) -> list[str]:
        """The host's resolvers, read again when resolv.conf changes (never the pods' own gateway)."""
        try:
            mtime = os.stat(self.resolv_conf).st_mtime
        except OSError:
            mtime = 0.0
        if mtime != self._upstreams[0]:
            servers = [s for s in read_nameservers(self.resolv_conf) if s != self.address]
            self._upstreams = (mtime, servers)
        return self._upstreams[1]

    # ------------------------------------------------------------ answering

    def _local(self, query: bytes) -> bytes | None:
        """The answer given here (cluster-domain names), b"" for a message to ignore, or None to forward."""
        parsed = question_name(query)
        if parsed is None:
            return b""
        name, end = parsed
        if name == self.cluster_domain or name.endswith("." + self.cluster_domain):
            return _reply(query, end, NXDOMAIN)
        return None

    def datagram(self, query: bytes, client: tuple[str, int]) -> None:
        local = self._local(query)
        if local is not None:
            if local and self._udp is not None:
                self._udp.sendto(local, client)
            return
        if sum(self._inflight.values()) >= self.max_queries or self._inflight[client[0]] >= self.per_client:
            return  # dropped: the client retries
        self._inflight[client[0]] += 1
        task = asyncio.get_running_loop().create_task(self._answer_udp(query, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_udp(self, query: bytes, client: tuple[str, int]) -> None:
        try:
            reply = await self.forward(query, tcp=False)
            if self._udp is not None:
                self._udp.sendto(reply, client)
        finally:
            self._inflight[client[0]] -= 1
            if self._inflight[client[0]] <= 0:
                del self._inflight[client[0]]

    async def forward(self, query: bytes, *, tcp: bool) -> bytes:
        """The first upstream's answer to ``query`` (SERVFAIL when none answers)."""
        parsed = question_name(query)
        assert parsed is not None
        end = parsed[1]
        for server in self.upstreams():
            try:
                reply = await asyncio.wait_for(self._ask(server, query, end, tcp), self.timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                log.debug("pod DNS: %s did not answer (%s)", server, e)
                continue
            if reply is not None:
                return reply
        return _reply(query, end, SERVFAIL)

    async def _ask(self, server: str, query: bytes, end: int, tcp: bool) -> bytes | None:
        loop = asyncio.get_running_loop()
        ident = secrets.randbits(16)
        ours = struct.pack("!H", ident) + query[2:]
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        sock = self._socket(socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM, family)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (server, self.upstream_port))
            if tcp:
                await loop.sock_sendall(sock, struct.pack("!H", len(ours)) + ours)
                size = struct.unpack("!H", await _recv_exactly(sock, 2))[0]
                return self._checked(await _recv_exactly(sock, size), ident, query, end)
            await loop.sock_sendall(sock, ours)
            while True:  # a stray or forged datagram is skipped until the timeout
                reply = await loop.sock_recv(sock, 65535)
                checked = self._checked(reply, ident, query, end)
                if checked is not None:
                    return checked
        finally:
            sock.close()

    @staticmethod
    def _checked(reply: bytes, ident: int, query: bytes, end: int) -> bytes | None:
        """The reply with the client's id, if it answers our question with our id."""
        if len(reply) < end or struct.unpack_from("!H", reply)[0] != ident or not reply[2] & 0x80:
            return None
        if reply[HEADER.size:end].lower() != query[HEADER.size:end].lower():
            return None
        return query[:2] + reply[2:]

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= self.max_connections:
            writer.close()
            return
        self._connections += 1
        try:
            while True:
                try:
                    size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), self.idle))[0]
                    query = await asyncio.wait_for(reader.readexactly(size), self.idle)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                local = self._local(query)
                if local == b"":
                    return
                reply = local if local is not None else await self.forward(query, tcp=True)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise asyncio.IncompleteReadError(data, size)
        data += chunk
    return data


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, resolver: PodResolver) -> None:
        self.resolver = resolver

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.resolver.datagram(data, (str(addr[0]), int(addr[1])))
