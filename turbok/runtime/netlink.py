"""A small rtnetlink client: the few link, address, route and neighbour calls the pod network needs.

``turbok.runtime.network`` sets a pod up with about ten netlink messages on one
socket instead of a dozen ``ip`` processes (each ``ip`` is a fork and exec, about
a millisecond on a small machine; a message is microseconds). Only what the pod
network uses is here; it is not a general netlink library.

A ``Netlink`` socket belongs to the network namespace of the thread that opened
it, for its whole life: open it in the namespace you mean (``turbok.runtime.netns``
opens one inside a pod's namespace). One socket serves one thread at a time.

Errors are ``OSError`` with the kernel's errno and, where the kernel gives one,
its extended-ack message (``RTNETLINK: <what failed>: <why>``), so callers test
``e.errno`` (``ENODEV``: no such link, ``EEXIST``, ``ENOENT``...).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

__all__ = ["IF_OPER_UP", "Address", "Link", "Neighbour", "Netlink", "mac_bytes", "settle"]

# Message types (linux/rtnetlink.h).
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE = 24
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # on an NLMSG_ERROR: request cut short; attributes follow
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000

# Link attributes (linux/if_link.h).
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_OPERSTATE = 1, 3, 4, 5, 10, 16
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_NET_NS_FD = 12, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BRPORT_LEARNING, IFLA_BRPORT_UNICAST_FLOOD, IFLA_BRPORT_ISOLATED = 8, 9, 33
IFF_UP = 0x1
IF_OPER_UP = 6
SIOCETHTOOL, ETHTOOL_GLINK = 0x8946, 0xA

IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST = 254, 3, 0, 253, 1
NDA_DST, NDA_LLADDR = 1, 2
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_MASTER = 0x04
AF_BRIDGE = 7

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_NLA = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, data: bytes) -> bytes:
    size = _NLA.size + len(data)
    return _NLA.pack(size, kind) + data + b"\0" * (_align(size) - size)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _u8(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=B", value))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    at = 0
    while at + _NLA.size <= len(data):
        size, kind = _NLA.unpack_from(data, at)
        if size < _NLA.size:
            break
        yield kind & 0x3FFF, data[at + _NLA.size : at + size]
        at += _align(size)


def mac_bytes(mac: str) -> bytes:
    """``"0a:58:0a:d5:00:02"`` as six bytes."""
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    flags: int
    master: int | None
    kind: str
    #: A veth's other end: its index (in the namespace it lives in), or None.
    peer: int | None
    mac: str
    #: RFC 2863 state as the kernel last settled it (``IF_OPER_UP`` = 6): see ``settle``.
    operstate: int = 0


@dataclass(frozen=True)
class Address:
    index: int
    ip: ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Neighbour:
    index: int
    ip: str
    mac: str
    state: int


class Netlink:
    """One NETLINK_ROUTE socket, in the network namespace of the thread that made it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            self._sock.bind((0, 0))
            # Errors with the kernel's own words, and without the request echoed back.
            for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
                with contextlib.suppress(OSError):  # older kernels: plain errno only
                    self._sock.setsockopt(SOL_NETLINK, opt, 1)
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    @classmethod
    def adopt(cls, sock: socket.socket) -> Netlink:
        """Wrap a NETLINK_ROUTE socket opened elsewhere (in another namespace's thread)."""
        self = cls.__new__(cls)
        self._sock = sock
        self._seq = 0
        return self

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- transport --

    def _request(self, kind: int, flags: int, body: bytes, *, what: str) -> list[tuple[int, bytes]]:
        """Send one request; the replies' (type, payload) until the ACK or the end of a dump."""
        self._seq += 1
        seq = self._seq
        msg = _HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body
        self._sock.send(msg)
        out: list[tuple[int, bytes]] = []
        while True:
            data = self._sock.recv(1 << 16)
            at = 0
            while at + _HDR.size <= len(data):
                size, mtype, mflags, mseq, _ = _HDR.unpack_from(data, at)
                if size < _HDR.size:
                    raise OSError(errno.EPROTO, "RTNETLINK: truncated message")
                payload = data[at + _HDR.size : at + size]
                at += _align(size)
                if mseq != seq:
                    continue  # a late answer to an earlier request
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code == 0:
                        return out
                    raise OSError(-code, f"RTNETLINK: {what}: {_ext_ack(payload, mflags) or os.strerror(-code)}")
                out.append((mtype, payload))
                if not mflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return out

    def _do(self, kind: int, body: bytes, *, what: str, flags: int = 0) -> None:
        self._request(kind, NLM_F_ACK | flags, body, what=what)

    # -- links --

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        try:
            replies = self._request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name),
                                    what=f"get link {name}")
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return _parse_link(replies[0][1]) if replies else None

    def links(self) -> list[Link]:
        return [_parse_link(p) for t, p in self._request(RTM_GETLINK, NLM_F_DUMP, _IFINFO.pack(0, 0, 0, 0, 0),
                                                         what="list links") if t == RTM_NEWLINK]

    def add_bridge(self, name: str, *, mac: str) -> None:
        """A bridge with a fixed MAC (else it takes its ports' lowest, and every change flushes its ARP table)."""
        info = _nested(IFLA_LINKINFO, _str(IFLA_INFO_KIND, "bridge"))
        self._do(RTM_NEWLINK, _IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name) + _attr(IFLA_ADDRESS, mac_bytes(mac))
                 + info,
                 flags=NLM_F_CREATE | NLM_F_EXCL, what=f"add bridge {name}")

    def add_veth(self, name: str, *, peer: str, peer_netns_fd: int, peer_mac: str) -> None:
        """A veth pair: ``name`` here, ``peer`` (with ``peer_mac``) made directly in the namespace of the fd."""
        peer_msg = (_IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, peer) + _u32(IFLA_NET_NS_FD, peer_netns_fd)
                    + _attr(IFLA_ADDRESS, mac_bytes(peer_mac)))
        info = _nested(IFLA_LINKINFO, _str(IFLA_INFO_KIND, "veth"),
                       _nested(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg)))
        self._do(RTM_NEWLINK, _IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name) + info,
                 flags=NLM_F_CREATE | NLM_F_EXCL, what=f"add veth {name}")

    def set_link(self, index: int, *, up: bool | None = None, master: int | None = None,
                 mtu: int | None = None, mac: str | None = None) -> None:
        """Change a link: up or down, its bridge (``master=0``: none), MTU, MAC."""
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        attrs = b""
        if master is not None:
            attrs += _u32(IFLA_MASTER, master)
        if mac is not None:
            attrs += _attr(IFLA_ADDRESS, mac_bytes(mac))
        if mtu is not None:
            attrs += _u32(IFLA_MTU, mtu)
        self._do(RTM_NEWLINK, _IFINFO.pack(0, 0, index, flags, change) + attrs, what=f"set link {index}")

    def set_bridge_port(self, index: int, *, isolated: bool, learning: bool, unicast_flood: bool) -> None:
        """Bridge-port flags of an enslaved link (as ``bridge link set dev X isolated on learning off``)."""
        info = _nested(IFLA_PROTINFO, _u8(IFLA_BRPORT_ISOLATED, int(isolated)),
                       _u8(IFLA_BRPORT_LEARNING, int(learning)), _u8(IFLA_BRPORT_UNICAST_FLOOD, int(unicast_flood)))
        self._do(RTM_SETLINK, _IFINFO.pack(AF_BRIDGE, 0, index, 0, 0) + info, what=f"set bridge port {index}")

    def delete_link(self, name: str) -> bool:
        """Delete the link ``name``; False when there was none."""
        try:
            self._do(RTM_DELLINK, _IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name), what=f"delete link {name}")
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # -- addresses and routes --

    def addresses(self, index: int | None = None) -> list[Address]:
        out = []
        for t, p in self._request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(0, 0, 0, 0, 0), what="list addresses"):
            if t != RTM_NEWADDR:
                continue
            family, prefix, _, _, idx = _IFADDR.unpack_from(p)
            if index is not None and idx != index:
                continue
            found = dict(_attrs(p[_IFADDR.size :]))
            raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
            if raw is None:
                continue
            ip = ipaddress.ip_address(raw)
            out.append(Address(idx, ipaddress.ip_interface(f"{ip}/{prefix}")))
        return out

    def _addr(self, kind: int, index: int, ip: ipaddress.IPv4Interface, flags: int, what: str) -> None:
        raw = ip.ip.packed
        body = (_IFADDR.pack(socket.AF_INET, ip.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
                + _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw))
        self._do(kind, body, flags=flags, what=what)

    def add_address(self, index: int, ip: ipaddress.IPv4Interface) -> None:
        """Add ``ip`` (with its prefix) to the link; already there is fine."""
        self._addr(RTM_NEWADDR, index, ip, NLM_F_CREATE | NLM_F_REPLACE, f"add address {ip} to link {index}")

    def delete_address(self, index: int, ip: ipaddress.IPv4Interface) -> None:
        try:
            self._addr(RTM_DELADDR, index, ip, 0, f"delete address {ip} from link {index}")
        except OSError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                raise

    def set_default_route(self, gateway: ipaddress.IPv4Address, index: int) -> None:
        """``ip route replace default via GATEWAY dev INDEX``."""
        body = (_RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                + _attr(RTA_GATEWAY, gateway.packed) + _u32(RTA_OIF, index))
        self._do(RTM_NEWROUTE, body, flags=NLM_F_CREATE | NLM_F_REPLACE, what=f"default route via {gateway}")

    # -- neighbours and the bridge's forwarding table --

    def set_neighbour(self, index: int, ip: ipaddress.IPv4Address, mac: str) -> None:
        """A permanent ARP entry (``ip neigh replace IP lladdr MAC dev INDEX nud permanent``)."""
        body = (_NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0)
                + _attr(NDA_DST, ip.packed) + _attr(NDA_LLADDR, mac_bytes(mac)))
        self._do(RTM_NEWNEIGH, body, flags=NLM_F_CREATE | NLM_F_REPLACE, what=f"neighbour {ip}")

    def delete_neighbour(self, index: int, ip: ipaddress.IPv4Address) -> None:
        body = _NDMSG.pack(socket.AF_INET, index, 0, 0, 0) + _attr(NDA_DST, ip.packed)
        try:
            self._do(RTM_DELNEIGH, body, what=f"delete neighbour {ip}")
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV, errno.ESRCH):
                raise

    def neighbours(self, index: int | None = None) -> list[Neighbour]:
        out = []
        for t, p in self._request(RTM_GETNEIGH, NLM_F_DUMP, _NDMSG.pack(socket.AF_INET, 0, 0, 0, 0),
                                  what="list neighbours"):
            if t != RTM_NEWNEIGH:
                continue
            family, idx, state, _, _ = _NDMSG.unpack_from(p)
            if family != socket.AF_INET or (index is not None and idx != index):
                continue
            found = dict(_attrs(p[_NDMSG.size :]))
            if NDA_DST not in found:
                continue
            mac = ":".join(f"{b:02x}" for b in found.get(NDA_LLADDR, b""))
            out.append(Neighbour(idx, str(ipaddress.ip_address(found[NDA_DST])), mac, state))
        return out

    def add_fdb(self, port_index: int, mac: str) -> None:
        """A static entry in the bridge's forwarding table (``bridge fdb replace MAC dev PORT master static``)."""
        body = _NDMSG.pack(AF_BRIDGE, port_index, NUD_NOARP, NTF_MASTER, 0) + _attr(NDA_LLADDR, mac_bytes(mac))
        self._do(RTM_NEWNEIGH, body, flags=NLM_F_CREATE | NLM_F_REPLACE, what=f"fdb {mac} on link {port_index}")


def settle(name: str) -> bool:
    """Have the kernel finish a link's pending state change now; is its carrier on?

    When a link's carrier comes on, the kernel starts its transmit queue, sets its
    operational state and enables its bridge port later, from a work queue (for a
    bridge, up to a second later): until then what is sent through it is dropped,
    and a first SYN lost costs a connection a 1 s retransmit. ``ETHTOOL_GLINK``
    makes the kernel run that pending work for the link before it answers. Acts in
    the calling thread's namespace.
    """
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_GLINK, 0))
    ifreq = struct.pack("=16sQ", name.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    return bool(struct.unpack_from("=II", value.raw)[1])


def _parse_link(payload: bytes) -> Link:
    _, _, index, flags, _ = _IFINFO.unpack_from(payload)
    name, master, kind, peer, mac, operstate = "", None, "", None, "", 0
    for k, v in _attrs(payload[_IFINFO.size :]):
        if k == IFLA_IFNAME:
            name = v.rstrip(b"\0").decode()
        elif k == IFLA_MASTER:
            (master,) = struct.unpack("=I", v[:4])
        elif k == IFLA_LINK:
            (peer,) = struct.unpack("=I", v[:4])
        elif k == IFLA_ADDRESS:
            mac = ":".join(f"{b:02x}" for b in v)
        elif k == IFLA_OPERSTATE:
            operstate = v[0]
        elif k == IFLA_LINKINFO:
            for ik, iv in _attrs(v):
                if ik == IFLA_INFO_KIND:
                    kind = iv.rstrip(b"\0").decode()
    return Link(index, name, flags, master, kind, peer, mac, operstate)


def _ext_ack(payload: bytes, flags: int) -> str:
    """The kernel's message from an extended ACK, or ""."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # The error code, the request (only its header when NETLINK_CAP_ACK took), then the attributes.
    skip = _HDR.size if flags & NLM_F_CAPPED else _HDR.unpack_from(payload, 4)[0]
    for kind, value in _attrs(payload[4 + _align(skip) :]):
        if kind == NLMSGERR_ATTR_MSG:
            return value.rstrip(b"\0").decode(errors="replace")
    return ""
