"""A stand-in host and a stand-in internet, made of network namespaces, for the pod network's policy tests.

``Internet`` makes two namespaces: ``host`` (where the pod network's bridge,
rules and resolver go: ``PodNetwork(host_netns=...)``) and ``outside`` ("the
internet"), joined by a veth pair on a /30 of 10.223.0.0/16 (so the outside
also has a private address). The host routes everything to the outside; the
outside holds, on its loopback, documentation addresses that stand for public
servers (TEST-NET-2/3: 198.51.100.0/24, 203.0.113.0/24, never routed on the
real internet) and the metadata address 169.254.169.254. Nothing here has a
route to the machine's own network: traffic stays inside these namespaces.

``DnsServer`` answers A queries in the outside (UDP and TCP, port 53) from a
table and records every name it is asked; ``ask`` sends one query from a
namespace and returns (rcode, addresses).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import select
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.runtime.podnet import link_namespaces, namespace, run_in, write_sysctl
from turbok.runtime import netns
from turbok.runtime.netlink import Netlink

PUBLIC = "203.0.113.10"  # an allowed "public server"
PUBLIC_2 = "203.0.113.11"
OTHER_PUBLIC = "198.51.100.10"  # a public address outside 203.0.113.0/24
DNS = "203.0.113.53"  # the host's upstream resolver, in the outside
METADATA = "169.254.169.254"


@dataclass
class Internet:
    host: Path
    outside: Path
    uplink: ipaddress.IPv4Network  # the /30 between them
    lan: Path | None = None

    @property
    def host_address(self) -> str:
        return str(self.uplink[1])

    @property
    def private(self) -> str:
        """The outside's own address: a private one (10.223.x.2)."""
        return str(self.uplink[2])


def _addresses(inside: Path, ips: list[str]) -> None:
    def add() -> None:
        with Netlink() as nl:
            for ip in ips:
                nl.add_address(1, ipaddress.IPv4Interface(f"{ip}/32"))

    netns.call_in(inside, add)


def _default_route(inside: Path, via: str, device: str) -> None:
    def add() -> None:
        with Netlink() as nl:
            link = nl.link(device)
            assert link is not None
            nl.set_default_route(ipaddress.IPv4Address(via), link.index)

    netns.call_in(inside, add)


@contextlib.contextmanager
def internet(tag: str) -> Iterator[Internet]:
    """The stand-in host and internet (see the module docstring); ``tag``: a unique short name."""
    uplink = ipaddress.IPv4Network(f"10.223.{os.getpid() % 250}.{(secrets.randbelow(60)) * 4}/30")
    with namespace(f"{tag}h") as host, namespace(f"{tag}o") as outside:
        link_namespaces(host, outside, left_ip=f"{uplink[1]}/30", right_ip=f"{uplink[2]}/30", name="up0")
        _addresses(outside, [PUBLIC, PUBLIC_2, OTHER_PUBLIC, DNS, METADATA])
        _default_route(host, str(uplink[2]), "up0")
        # A new namespace copies the machine's forwarding setting: the stand-in host starts as a host that
        # does not forward, whatever this machine does.
        write_sysctl(host, "net/ipv4/ip_forward", "0")
        yield Internet(host, outside, uplink)


# ---------------------------------------------------------------- DNS


def query(name: str, *, ident: int | None = None) -> bytes:
    ident = secrets.randbits(16) if ident is None else ident
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def parse(reply: bytes) -> tuple[int, list[str]]:
    """(rcode, A addresses) of a reply to ``query``."""
    _, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", reply)
    i = 12
    for _ in range(qd):
        while reply[i]:
            i += reply[i] + 1
        i += 5
    found = []
    for _ in range(an):
        if reply[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while reply[i]:
                i += reply[i] + 1
            i += 1
        rtype, _, _, size = struct.unpack_from("!HHIH", reply, i)
        i += 10
        if rtype == 1 and size == 4:
            found.append(socket.inet_ntoa(reply[i:i + 4]))
        i += size
    return flags & 0xF, found


def ask(inside: Path | None, server: str, name: str, *, tcp: bool = False,
        timeout: float = 1.5) -> tuple[int, list[str]] | None:
    """Ask ``server`` for ``name``'s A records from the namespace ``inside``; None when nothing answers."""
    message = query(name)

    def attempt() -> tuple[int, list[str]] | None:
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            s.settimeout(timeout)
            try:
                s.connect((server, 53))
                if tcp:
                    s.sendall(struct.pack("!H", len(message)) + message)
                    size = struct.unpack("!H", _exactly(s, 2))[0]
                    return parse(_exactly(s, size))
                s.send(message)
                return parse(s.recv(65535))
            except OSError:
                return None

    return run_in(inside, attempt)  # type: ignore[no-any-return]


def _exactly(s: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


@dataclass
class DnsServer:
    """An authoritative-ish server for ``records`` (name -> address) on ``address``:53 in ``inside``."""

    inside: Path
    address: str
    records: dict[str, str]
    asked: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        def make() -> tuple[socket.socket, socket.socket]:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.address, 53))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((self.address, 53))
            tcp.listen(8)
            return udp, tcp

        self._udp, self._tcp = netns.call_in(self.inside, make)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, message: bytes) -> bytes:
        ident, flags = struct.unpack_from("!HH", message)
        i, labels = 12, []
        while message[i]:
            labels.append(message[i + 1:i + 1 + message[i]].decode())
            i += message[i] + 1
        end = i + 5
        name = ".".join(labels).lower()
        self.asked.append(name)
        address = self.records.get(name)
        header = struct.pack("!HHHHHH", ident, 0x8180 | (0 if address else 3), 1, 1 if address else 0, 0, 0)
        body = message[12:end]
        if address:
            body += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
        return header + body

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._udp, self._tcp], [], [], 0.1)
            if self._udp in ready:
                data, peer = self._udp.recvfrom(65535)
                self._udp.sendto(self.answer(data), peer)
            if self._tcp in ready:
                conn, _ = self._tcp.accept()
                with conn:
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        size = struct.unpack("!H", _exactly(conn, 2))[0]
                        reply = self.answer(_exactly(conn, size))
                        conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._udp.close()
        self._tcp.close()
