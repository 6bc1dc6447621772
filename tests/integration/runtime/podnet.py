"""Helpers for the pod network tests: unique networks per test process, reachability, leftovers.

Every network a test makes has its own name (bridge, table, veth and namespace
prefixes) and its own /26 inside 10.224.0.0/12, chosen from the test process'
pid, so tests running at the same time as a control plane (10.213.0.0/16) or as
another test process do not meet. Traffic goes only to addresses inside
namespaces these tests make.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from turbok.runtime import netlink, netns
from turbok.runtime.netlink import Netlink
from turbok.runtime.network import NETNS_DIR, PodNetwork


def require_root_network() -> None:
    """Skip (naming what is missing) where these tests cannot make namespaces and rules."""
    if os.geteuid() != 0:
        pytest.skip("the pod network needs root (network namespaces, bridges, nftables)")
    if shutil.which("nft") is None:
        pytest.skip("nft not installed (Debian package nftables; scripts/setup.sh installs it)")


_slice = os.getpid() % 256
# 64 /26 networks per test process, reused in turn: the whole suite makes more than 64, and each test's
# network is gone long before its slot comes round again.
_counter = itertools.cycle(range(64))


def unique_network_args() -> dict[str, Any]:
    n = next(_counter)
    base = ipaddress.IPv4Address(f"10.{224 + _slice // 16}.{(_slice % 16) * 16}.0") + n * 64
    return {"cidr": f"{base}/26", "name": f"t{_slice:02x}{n:02x}"[:6]}


def run_in(inside: Path | None, fn: Callable[[], Any]) -> Any:
    return fn() if inside is None else netns.call_in(inside, fn)


class Networks:
    """Makes PodNetworks for a test and removes every trace of them afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[tuple[PodNetwork, Path | None]] = []

    def make(self, *, inside: Path | None = None, **kw: Any) -> PodNetwork:
        args = {"shared_dir": self.root / "machine", **unique_network_args(), **kw}  # never /var/lib's book
        net = PodNetwork(self.root / args["name"], **args)
        self.made.append((net, inside))
        return net

    def cleanup(self) -> None:
        for net, inside in reversed(self.made):
            with contextlib.suppress(Exception):
                run_in(inside, net.remove_host)
            for path in NETNS_DIR.glob(f"{net.name}-*"):
                netns.remove(path)


def leftovers(net: PodNetwork, inside: Path | None = None) -> dict[str, list[str]]:
    """Everything of ``net``'s pods that still exists: namespaces, mounts, veths, addresses, ARP, IPAM."""
    prefix = f"{net.name}-"

    def host_side() -> dict[str, list[str]]:
        with Netlink() as nl:
            links = nl.links()
            bridge = next((link for link in links if link.name == net.bridge), None)
            return {
                "veths": [link.name for link in links if link.name.startswith(f"{net.name}v")],
                "addresses": [str(a.ip) for a in nl.addresses() if isinstance(a.ip, ipaddress.IPv4Interface)
                              and a.ip.ip in net.network and a.ip.ip != net.gateway],
                # Ours are permanent; the kernel's own ARP attempts (a connect to a gone pod) expire.
                "neighbours": [n.ip for n in nl.neighbours(bridge.index) if n.state & netlink.NUD_PERMANENT
                               and ipaddress.IPv4Address(n.ip) in net.network] if bridge else [],
            }

    found: dict[str, list[str]] = run_in(inside, host_side)
    found["netns files"] = sorted(p.name for p in net.netns_dir.glob(f"{prefix}*"))
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    found["netns mounts"] = [m.split()[4] for m in mounts if m.split()[4].startswith(str(net.netns_dir / prefix))]
    book = net.shared_dir / net.bridge / "ipam"
    found["ipam entries"] = sorted(p.name for p in book.iterdir() if p.is_symlink()) if book.exists() else []
    return found


def wait_clean(net: PodNetwork, inside: Path | None = None, timeout: float = 20.0) -> dict[str, list[str]]:
    """``leftovers`` once nothing is left, or what is left at the timeout (the kernel frees veth pairs
    with their namespace, in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {k: v for k, v in leftovers(net, inside).items() if v}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def listen(inside: Path | None, port: int, host: str = "0.0.0.0") -> socket.socket:
    """A listening TCP socket in the namespace ``inside`` (the caller's own with None)."""
    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
        s.settimeout(5)
        return s

    return run_in(inside, make)  # type: ignore[no-any-return]


def reach(inside: Path | None, ip: str, port: int, timeout: float = 0.6) -> str:
    """Try a TCP connection from the namespace ``inside``: "connected", "refused" or "no answer"."""
    def attempt() -> str:
        try:
            socket.create_connection((ip, port), timeout=timeout).close()
            return "connected"
        except ConnectionRefusedError:
            return "refused"
        except (TimeoutError, OSError):
            return "no answer"

    return run_in(inside, attempt)  # type: ignore[no-any-return]


def accepted(listener: socket.socket) -> int:
    """How many connections wait on ``listener`` (accepted and closed now)."""
    listener.setblocking(False)
    n = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            conn, _ = listener.accept()
            conn.close()
            n += 1
    listener.setblocking(True)
    return n


def nft_counter(net: PodNetwork, comment: str, inside: Path | None = None, family: str = "inet") -> int:
    """Packets counted by the rule of ``net``'s table (of ``family``) whose comment is ``comment``."""
    def listing() -> str:
        return subprocess.run(["nft", "list", "table", family, net.table], capture_output=True, text=True,
                              check=True).stdout

    for line in run_in(inside, listing).splitlines():
        if f'comment "{comment}"' in line:
            m = re.search(r"packets (\d+)", line)
            return int(m.group(1)) if m else 0
    raise AssertionError(f"no rule with comment {comment!r} in table {net.table}")


@contextlib.contextmanager
def namespace(name: str) -> Iterator[Path]:
    """A throwaway named network namespace (a stand-in host, or an 'outside' network)."""
    path = NETNS_DIR / name
    netns.prepare_dir(NETNS_DIR)
    netns.create(path).close()
    try:
        yield path
    finally:
        netns.remove(path)


def write_sysctl(inside: Path, key: str, value: str) -> None:
    netns.call_in(inside, lambda: Path("/proc/sys", key).write_text(value))


def link_namespaces(left: Path | None, right: Path, *, left_ip: str, right_ip: str, name: str) -> None:
    """A veth pair between two namespaces, ``name`` in ``left`` and ``eth0`` in ``right``, both up,
    with ``right`` routing everything through ``left``."""
    l_if, r_if = ipaddress.IPv4Interface(left_ip), ipaddress.IPv4Interface(right_ip)

    def in_left() -> None:
        fd = os.open(right, os.O_RDONLY)
        try:
            with Netlink() as nl:
                nl.add_veth(name, peer="eth0", peer_netns_fd=fd, peer_mac="0a:59:00:00:00:02")
                link = nl.link(name)
                assert link is not None
                nl.add_address(link.index, l_if)
                nl.set_link(link.index, up=True)
                nl.set_link(1, up=True)
        finally:
            os.close(fd)

    def in_right() -> None:
        with Netlink() as nl:
            link = nl.link("eth0")
            assert link is not None
            nl.add_address(link.index, r_if)
            nl.set_link(link.index, up=True)
            nl.set_link(1, up=True)
            nl.set_default_route(l_if.ip, link.index)

    run_in(left, in_left)
    netns.call_in(right, in_right)
