"""The pod network on one machine: a network namespace per Pod, on a bridge turbok owns, traffic by policy.

What it makes (names for the default ``name="turbok"``; ``TURBOK_POD_CIDR``
changes the range, default ``10.213.0.0/16``)::

    host:  bridge turbok0  10.213.0.1/16 (the gateway)   nftables tables inet turbok, bridge turbok
             |  port turbokv0ad50002 (isolated, no learning, static fdb entry)
    pod:   netns /run/netns/turbok-<id>: lo, eth0 10.213.0.2/16 (MAC 0a:58:0a:d5:00:02),
           default route via 10.213.0.1

- **Who talks to whom.** The host reaches every pod (port-forward, the router,
  probes). What a pod may send is its **policy binding** (``bind``; the node
  computes them from NetworkPolicy objects, ``turbok.node.netpolicy``; see
  ``turbok.runtime.network_policy`` for what a profile allows): without one a
  pod reaches nothing but replies to the host, the host's ports in
  ``host_ports`` (none by default, ``TURBOK_POD_HOST_PORTS``) and, when its
  egress allows anything, the pods' resolver on the gateway's port 53
  (``turbok.runtime.network_dns``). Egress leaves the host NATed to the host's
  address (masquerade), and only what a policy allowed reaches the NAT. Pod to
  pod goes through the host (isolated bridge ports; the host answers pods' ARP
  for each other, ``proxy_arp_pvlan``) and needs the sender's egress and the
  receiver's ingress. Nothing from outside reaches a pod unless its ingress
  allows it. IPv6 is off on the bridge and the pods' eth0. A pod cannot take
  another's address: static ARP and forwarding entries, no learning, no
  unknown-unicast flooding, and the bridge table drops IPv4 from a port whose
  pod does not hold the source address.
- **Forwarding.** The first binding that reaches beyond the pods turns the
  host's IPv4 forwarding on; where it was off, a rule in ``host-forward``
  keeps the host's other interfaces from forwarding (``FORWARD_GUARD``).
- **Per pod** the tables hold elements, never rules: the source check, and for
  a bound pod the verdict-map elements to its profiles' chains and its ``dns``
  element; ``setup`` adds them and ``teardown`` removes them in the same
  transaction as the rest (libnftables in this process,
  ``turbok.runtime.network_nft``: about 0.1 ms, no ``nft`` process).
- **Addresses** are the machine's, as the bridge is: one book per bridge shared by every
  home, ``<shared_dir>/<bridge>/ipam`` (``shared_dir`` defaults to ``/var/lib/turbok/network``,
  ``TURBOK_NETWORK_STATE`` changes it), each entry naming its owner (this network's
  ``state_dir``, a home's ``network`` directory). Kept per id across restarts, released by
  ``teardown``; entries whose owner and namespace are both gone are collected
  (``turbok.runtime.ipam``). A home's own book of before (``state_dir/ipam``) moves in.
- **Cost.** ``setup`` is netlink messages on one socket (``turbok.runtime.netlink``),
  a throwaway thread that makes the namespace (``turbok.runtime.netns``) and one
  nftables transaction: no process.
- **host_netns**: the namespace that plays the host (None: this process's);
  tests put a stand-in host there.

The contract for the pod runtime (``turbok.runtime.cri``; runsc, ``--network=sandbox``):

1. ``ensure_host()`` once at start (idempotent: it rebuilds a missing bridge or
   tables; ``setup`` calls it itself when the bridge is gone, e.g. after a reboot).
2. ``setup(id)`` before **every** ``runsc run`` or ``runsc restore`` of the pod:
   runsc's netstack takes the namespace's addresses and routes away from the
   kernel when it starts, so a second boot in the same namespace finds none;
   ``setup`` puts them back (and repairs whatever a crash left half made).
   Put ``{"type": "network", "path": str(attachment.netns)}`` in the bundle's
   ``linux.namespaces`` and start runsc through ``turbok.runtime.bootns`` with the
   namespace, or run ``runsc_prefix(attachment.netns) + runsc argv`` (either works
   around a check of old runsc on new kernels: see ``runsc_prefix``).
   ``runsc checkpoint`` fails while an outside TCP connection to the pod is open
   (this runsc cannot save such an endpoint): close port-forwards before hibernating.
3. ``stop`` keeps the network; ``teardown(id)`` after the sandbox is gone (in
   ``remove_pod_sandbox``) removes the namespace, the veth, the host's entries,
   the pod's elements and the address. Idempotent; ``ids()`` lists what is attached.
4. ``connect(id or ip, port)`` opens a TCP connection from the host to a pod's
   port (port-forward): ``PortNotListening`` when nothing listens there.

The contract for the node (``turbok.node.netpolicy``): ``bind(id, binding)``
before the pod's boot (memory only; ``setup`` applies it), ``set_peers`` for
the peer sets bindings name, ``sync()`` to apply changes to running pods (one
transaction of the differences), ``check()`` every few seconds to put back what the
kernel's tables lost of them (another home's control plane with other rules made
them anew; a transaction that fails on such tables reads them and plans again itself).

``setup``/``teardown`` block for 1-3 ms, ``sync`` for about 0.5-1.5 ms; they are
thread-safe (call them through ``asyncio.to_thread`` or directly). Needs root and
nftables (Debian package ``nftables``: libnftables).

Errors (under ``turbok.runtime.errors.RuntimeError_``)::

    NetworkError             the pod network cannot do what was asked
    ├── NetworkUnavailable   the host part cannot be made (no nftables, range in use, no root)
    ├── NotAttached          connect() to an id without an address
    ├── PortNotListening     connect(): the pod refused the connection (nothing listens)
    └── PodUnreachable       connect(): no answer (sandbox not running) or not a pod address
    AddressesExhausted       (turbok.runtime.ipam) every address is in use
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from turbok.runtime import netns
from turbok.runtime.errors import RuntimeError_
from turbok.runtime.ipam import AddressesExhausted, Ipam
from turbok.runtime.netlink import IF_OPER_UP, Netlink, settle
from turbok.runtime.network_nft import Nft, NftError
from turbok.runtime.network_policy import Binding, PeerSet, PolicyTable, TableState, read_tables

__all__ = [
    "CIDR_ENV",
    "DEFAULT_CIDR",
    "HOST_PORTS_ENV",
    "SHARED_DIR",
    "SHARED_DIR_ENV",
    "AddressesExhausted",
    "Attachment",
    "Binding",
    "NetworkError",
    "NetworkUnavailable",
    "NotAttached",
    "PeerSet",
    "PodNetwork",
    "PodUnreachable",
    "PortNotListening",
    "runsc_prefix",
]

log = logging.getLogger(__name__)

#: A private range that Docker (172.17/16...), Kubernetes' usual pod and service ranges (10.244/16,
#: 10.42/16, 10.96/12), podman (10.88/16) and home networks (192.168/16) do not use.
DEFAULT_CIDR = "10.213.0.0/16"
CIDR_ENV = "TURBOK_POD_CIDR"
HOST_PORTS_ENV = "TURBOK_POD_HOST_PORTS"
#: Where the machine's pod network state (the address books, one per bridge) lives.
SHARED_DIR_ENV = "TURBOK_NETWORK_STATE"
SHARED_DIR = Path("/var/lib/turbok/network")
NETNS_DIR = Path("/run/netns")
POD_INTERFACE = "eth0"

_NAME = re.compile(r"[a-z][a-z0-9]{0,5}")
T = TypeVar("T")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class NetworkError(RuntimeError_):
    """The pod network cannot do what was asked; the message says what and why."""


class NetworkUnavailable(NetworkError):
    """The host's part of the pod network (bridge, nftables) cannot be made here."""


class NotAttached(NetworkError):
    """The id has no address on the pod network."""


class PortNotListening(NetworkError):
    """The pod refused a connection to the port: nothing listens on it."""


class PodUnreachable(NetworkError):
    """The address did not answer, or is not a pod's address."""


@dataclass(frozen=True)
class Attachment:
    """A pod's place on the network: its namespace (for the bundle) and its address."""

    netns: Path
    ip: str
    gateway: str
    prefix: int


class PodNetwork:
    """Namespaces, veths, addresses and firewall rules for the pods of one machine."""

    def __init__(self, state_dir: Path, cidr: str = DEFAULT_CIDR, *, name: str = "turbok",
                 netns_dir: Path = NETNS_DIR, host_ports: Sequence[int] = (),
                 host_netns: Path | None = None, shared_dir: Path | None = None) -> None:
        try:
            network = ipaddress.IPv4Network(cidr)
        except ValueError as e:
            raise NetworkUnavailable(f"pod network {cidr!r}: not an IPv4 network ({e}); set {CIDR_ENV}") from None
        if not network.is_private or network.is_loopback or network.is_link_local:
            raise NetworkUnavailable(f"pod network {cidr}: not a private range (use one inside 10.0.0.0/8, "
                                     f"172.16.0.0/12 or 192.168.0.0/16)")
        if not 8 <= network.prefixlen <= 29:
            raise NetworkUnavailable(f"pod network {cidr}: the prefix must be /8 to /29")
        if not _NAME.fullmatch(name):
            raise ValueError(f"network name {name!r}: want 1-6 lowercase letters and digits")
        for port in host_ports:
            if not 1 <= port <= 65535:
                raise NetworkUnavailable(f"pod network: host port {port} is not in 1-65535")
        self.state_dir = state_dir
        self.network = network
        self.gateway = network.network_address + 1
        self.name = name
        self.bridge = f"{name}0"
        self.table = name
        self.netns_dir = netns_dir
        self.host_ports = tuple(sorted(set(host_ports)))
        if shared_dir is None:
            shared_dir = Path(os.environ.get(SHARED_DIR_ENV, "").strip() or SHARED_DIR)
        self.shared_dir = shared_dir
        # The bridge is the machine's, so are its addresses: one book for every home (the bug this fixed: a
        # book per home, and two homes' pods on one address). Read at first use, not here.
        self._ipam = Ipam(shared_dir / self.bridge / "ipam", network, reserved=(self.gateway,), owner=state_dir,
                          in_use=lambda id: netns.exists(self.netns_path(id)), legacy=state_dir / "ipam")
        self._lock = threading.Lock()
        #: The namespace that plays the host (None: this process's; tests use a stand-in).
        self.host_netns = host_netns
        self._nft: Nft | None = None
        self._policy = PolicyTable(table=self.table, bridge=self.bridge)
        self._forwarding = False  # checked since the last ensure_host that the host forwards for pods

    @classmethod
    def from_env(cls, state_dir: Path, environ: Mapping[str, str] | None = None) -> PodNetwork:
        """The node's network: range from ``TURBOK_POD_CIDR``, host ports from ``TURBOK_POD_HOST_PORTS``, the
        machine's address books under ``TURBOK_NETWORK_STATE`` (default ``/var/lib/turbok/network``)."""
        env = os.environ if environ is None else environ
        cidr = env.get(CIDR_ENV, "").strip() or DEFAULT_CIDR
        raw = env.get(HOST_PORTS_ENV, "").strip()
        try:
            ports = [int(p) for p in raw.replace(",", " ").split()]
        except ValueError:
            raise NetworkUnavailable(f"{HOST_PORTS_ENV}={raw!r}: want port numbers separated by commas") from None
        shared = env.get(SHARED_DIR_ENV, "").strip()
        return cls(state_dir, cidr, host_ports=ports, shared_dir=Path(shared) if shared else SHARED_DIR)

    # -- names --

    def netns_path(self, id: str) -> Path:
        return self.netns_dir / f"{self.name}-{id}"

    def veth(self, ip: ipaddress.IPv4Address) -> str:
        """The host end of a pod's veth: the name plus its address in hex (15 characters at most)."""
        return f"{self.name}v{int(ip):08x}"

    @staticmethod
    def mac(ip: ipaddress.IPv4Address) -> str:
        """The pod's MAC: locally administered, 0a:58 and its IPv4 address (as OVN-Kubernetes does)."""
        return "0a:58:" + ":".join(f"{b:02x}" for b in ip.packed)

    def _attachment(self, id: str, ip: ipaddress.IPv4Address) -> Attachment:
        return Attachment(self.netns_path(id), str(ip), str(self.gateway), self.network.prefixlen)

    # -- the host --

    def _in_host(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the host's namespace: directly, or in a thread inside ``host_netns``."""
        return fn() if self.host_netns is None else netns.call_in(self.host_netns, fn)

    def _nftables(self) -> Nft:
        if self._nft is None:
            try:
                self._nft = Nft(self.host_netns)
            except NftError as e:
                raise NetworkUnavailable(f"pod network: {e}") from None
        return self._nft

    def ensure_host(self) -> None:
        """The bridge with the gateway address, and the nftables tables; idempotent."""
        def run() -> None:
            with Netlink() as host:
                self._ensure_host(host)

        with self._lock:
            self._in_host(run)

    def _ensure_host(self, host: Netlink) -> None:
        nft = self._nftables()
        try:
            netns.prepare_dir(self.netns_dir)
            bridge = host.link(self.bridge)
            names = {link.index: link.name for link in host.links()}
            for a in host.addresses():
                if (isinstance(a.ip, ipaddress.IPv4Interface) and a.ip.network.overlaps(self.network)
                        and (bridge is None or a.index != bridge.index)):
                    raise NetworkUnavailable(
                        f"pod network {self.network} overlaps {a.ip} on {names.get(a.index, a.index)}: "
                        f"choose another range with {CIDR_ENV}")
            if bridge is None:
                with contextlib.suppress(FileExistsError):
                    host.add_bridge(self.bridge, mac=self.mac(self.gateway))
                bridge = host.link(self.bridge)
                assert bridge is not None
            elif bridge.mac != self.mac(self.gateway):
                host.set_link(bridge.index, mac=self.mac(self.gateway))
            _sysctl(f"net/ipv6/conf/{self.bridge}/disable_ipv6", "1")
            # Pod to pod goes through the host (ports are isolated): the host answers a pod's ARP for
            # another pod with its own address and routes it back out, through the policy rules.
            _sysctl(f"net/ipv4/conf/{self.bridge}/forwarding", "1")
            _sysctl(f"net/ipv4/conf/{self.bridge}/proxy_arp_pvlan", "1")
            _sysctl(f"net/ipv4/conf/{self.bridge}/send_redirects", "0")
            _sysctl(f"net/ipv4/neigh/{self.bridge}/proxy_delay", "0")  # else up to 0.8 s per ARP answer
            want = ipaddress.IPv4Interface(f"{self.gateway}/{self.network.prefixlen}")
            for a in host.addresses(bridge.index):
                if a.ip != want and isinstance(a.ip, ipaddress.IPv4Interface):
                    host.delete_address(bridge.index, a.ip)
            host.add_address(bridge.index, want)
            host.set_link(bridge.index, up=True)
        except OSError as e:
            raise NetworkUnavailable(f"pod network: cannot make bridge {self.bridge}: {e.strerror}") from e
        self._forwarding = False
        try:
            attached = self._attached()
        except OSError as e:
            raise NetworkUnavailable(f"pod network: cannot open the address book {self._ipam.directory}: "
                                     f"{e.strerror or e} (set {SHARED_DIR_ENV} to a writable directory)") from e
        found = self._read_tables()
        if found is not None and found[0] == self.rules_version():
            # The same rules already there (a restart; another home's control plane): every element stays;
            # this process's pods' are its own again (their policy elements are put right by the first sync
            # after the node bound them: until then they keep what they had, no gap), the others' left be.
            self._policy.adopt(found[1], {str(ip) for ip in attached.values()})
            self._policy.forward_guard = found[1].forward_guard
            script = ""
            commands, state = self._policy.admit_sources(attached, self._port)
        else:
            self._policy.reset()
            self._policy.forward_guard = found is not None and found[1].forward_guard
            script = self.ruleset()
            commands, state = self._policy.plan(attached, self._port)
            # Other homes' pods on the bridge keep their source checks (the host still reaches them); their
            # policy elements go with the old tables (they are denied, not opened) until their control
            # plane's next transaction or ``check`` finds the tables changed and puts them back.
            others = {str(ip): self.veth(ip) for ip in self._ipam.others() if ip in self.network}
            if others:
                elements = ", ".join(f'"{port}" . {ip}' for ip, port in others.items())
                commands.append(f"add element bridge {self.table} sources {{ {elements} }}")
                self._policy.foreign.sources = others
                if found is not None:
                    log.warning("pod network: tables of %s replaced (other rules: another turbok version or "
                                "%s); %d pod(s) of other homes are without their policy until their nodes' next "
                                "check (10 s at most)", self.bridge, HOST_PORTS_ENV, len(others))
        if script or commands:
            try:
                nft.run(script + "\n".join(commands) + "\n")
            except NftError as e:
                raise NetworkUnavailable(f"pod network: nft refused the rules of table inet {self.table}: "
                                         f"{str(e)[-500:]}") from None
        self._policy.commit(state)
        log.info("pod network %s on bridge %s ready (table inet %s)", self.network, self.bridge, self.table)

    def ruleset(self) -> str:
        """The nftables script ``ensure_host`` applies where the tables are missing or older: one atomic
        replacement of tables ``inet <name>`` and ``bridge <name>`` (the per-pod elements and policy chains
        follow in the same transaction). The set ``host-ports`` carries a digest of it as its comment."""
        return self._ruleset(self.rules_version())

    def rules_version(self) -> str:
        return "rules " + hashlib.sha256(self._ruleset("").encode()).hexdigest()[:16]

    def _ruleset(self, version: str) -> str:
        ports = f"\n\t\telements = {{ {', '.join(map(str, self.host_ports))} }}" if self.host_ports else ""
        br, net, gw, t = self.bridge, self.network, self.gateway, self.table
        return f"""\
table inet {t}
delete table inet {t}
table bridge {t}
delete table bridge {t}
table inet {t} {{
	comment "turbok pod network {net} on {br}: pods reach what their policies allow, nothing else"
	set host-ports {{
		type inet_service
		comment "{version}"{ports}
	}}
	set dns {{
		type ipv4_addr
		comment "pods with egress: they may ask the resolver on {gw}:53"
	}}
	map egress {{
		type ipv4_addr : verdict
		comment "pod address -> goto its egress chain (e-...); absent: no egress"
	}}
	map ingress {{
		type ipv4_addr : verdict
		comment "pod address -> goto its ingress chain (i-...); absent: only the host reaches it"
	}}
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname "{br}" jump pod-to-host
	}}
	chain pod-to-host {{
		ct state established ct direction reply accept
		ct state related accept
		ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 ip saddr @dns accept
		ip saddr {net} ip daddr {gw} meta l4proto {{ tcp, udp }} th dport @host-ports accept
		counter drop comment "pods reach the host only on host-ports"
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		iifname "{br}" jump from-pod
		oifname "{br}" jump into-pod
		jump host-forward
	}}
	chain from-pod {{
		ct state established ct direction reply accept
		ct state related accept
		ip saddr vmap @egress
		counter drop comment "no egress from pods"
	}}
	chain into-pod {{
		ct state established ct direction reply accept
		ct state related accept
		goto to-pod
	}}
	chain to-pod {{
		ip daddr vmap @ingress
		counter drop comment "nothing forwarded into pods"
	}}
	chain host-forward {{
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr {net} ip saddr != {gw} oifname != "{br}" masquerade comment "allowed egress leaves as the host"
	}}
}}
table bridge {t} {{
	comment "turbok pod network: a pod sends IPv4 from its own address only"
	set sources {{
		type ifname . ipv4_addr
	}}
	chain prerouting {{
		type filter hook prerouting priority filter; policy accept;
		iifname "{self.name}v*" jump from-port
	}}
	chain from-port {{
		ether type arp accept
		ether type ip iifname . ip saddr @sources accept
		counter drop comment "not the port's own address"
	}}
}}
"""

    def remove_host(self) -> bool:
        """This owner's pods' networks, then the bridge and the tables (tests, uninstall), unless another
        home still has pods on the bridge: then those stay, and so does the host's part (False)."""
        for id in self.ids():
            self.teardown(id)
        if self._ipam.others():
            log.info("pod network: bridge %s kept: another home's pods are on it", self.bridge)
            self._ipam.close()
            return False

        def run() -> None:
            with Netlink() as host:
                host.delete_link(self.bridge)
            with contextlib.suppress(NftError, NetworkUnavailable):
                self._nftables().run(f"table inet {self.table}\ndelete table inet {self.table}\n"
                                     f"table bridge {self.table}\ndelete table bridge {self.table}\n")

        with self._lock:
            self._in_host(run)
            self._policy.reset()
        self._ipam.close()
        return True

    # -- pods --

    def _check_id(self, id: str) -> None:
        if not _ID.fullmatch(id):
            raise NetworkError(f"pod network: invalid id {id!r}")

    def setup(self, id: str) -> Attachment:
        """The pod's namespace on the bridge with its address; idempotent, and repairs a partial one."""
        self._check_id(id)
        with self._lock:
            got: list[ipaddress.IPv4Address] = []

            def run() -> None:
                with Netlink() as host:
                    try:
                        # A new address whose veth exists is someone's the book does not know (a home not yet
                        # moved to the machine's book, a pod of a turbok before it): skipped, never taken over.
                        got.append(self._ipam.allocate(id, avoid=lambda ip: host.link(self.veth(ip)) is not None))
                    except OSError as e:
                        raise NetworkError(f"pod network: cannot record an address for {id}: {e}") from e
                    self._setup(host, id, got[0])

            try:
                self._in_host(run)
            except OSError as e:
                where = f" ({got[0]})" if got else ""
                raise NetworkError(f"pod network: cannot attach {id}{where}: {e.strerror or e}") from e
            self._sync()  # the pod's source check and policy elements, before anything runs in it
        return self._attachment(id, got[0])

    def _setup(self, host: Netlink, id: str, ip: ipaddress.IPv4Address) -> None:
        bridge = host.link(self.bridge)
        if bridge is None:  # first use, or the host lost it (a reboot): make it all again
            self._ensure_host(host)
            bridge = host.link(self.bridge)
            assert bridge is not None
        veth, mac = self.veth(ip), self.mac(ip)
        path = self.netns_path(id)
        if not self.netns_dir.is_dir():  # /run is a tmpfs: gone after a reboot, like the bridge
            netns.prepare_dir(self.netns_dir)
        with netns.create(path) as pod:
            eth0, port = pod.link(POD_INTERFACE), host.link(veth)
            if eth0 is None or port is None or eth0.peer != port.index or eth0.mac != mac:
                # Half a pair, or one from another address: start this pod's pair afresh.
                if eth0 is not None:
                    pod.delete_link(POD_INTERFACE)
                if port is not None:
                    host.delete_link(veth)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    host.add_veth(veth, peer=POD_INTERFACE, peer_netns_fd=fd, peer_mac=mac)
                finally:
                    os.close(fd)
                _sysctl(f"net/ipv6/conf/{veth}/disable_ipv6", "1")
                port, eth0 = host.link(veth), pod.link(POD_INTERFACE)
                assert port is not None and eth0 is not None
            host.set_link(port.index, master=bridge.index, up=True)
            host.set_bridge_port(port.index, isolated=True, learning=False, unicast_flood=False)
            host.add_fdb(port.index, mac)
            host.set_neighbour(bridge.index, ip, mac)
            pod.set_link(1, up=True)  # lo is always link 1 of a namespace
            want = ipaddress.IPv4Interface(f"{ip}/{self.network.prefixlen}")
            for a in pod.addresses(eth0.index):
                if a.ip != want and isinstance(a.ip, ipaddress.IPv4Interface):
                    pod.delete_address(eth0.index, a.ip)
            pod.add_address(eth0.index, want)
            pod.set_link(eth0.index, up=True)
            pod.set_default_route(self.gateway, eth0.index)
        self._settle(host, veth)

    def _settle(self, host: Netlink, veth: str) -> None:
        """Have the kernel enable the pod's bridge port and the bridge's queue now, not from a work queue.

        The host end comes up before the pod's, so its carrier, and with it its bridge port
        and the bridge's own carrier (when it had no other port), come on later: meanwhile
        what the host sends the pod is dropped (a first SYN then costs a connection 1 s).
        """
        deadline = time.monotonic() + 2.0
        while True:
            settle(veth)
            settle(self.bridge)
            port = host.link(veth)
            if port is None or port.operstate == IF_OPER_UP:
                return
            if time.monotonic() > deadline:
                log.warning("pod network: %s is not up 2 s after setup (operstate %d)", veth, port.operstate)
                return
            time.sleep(0.001)

    def teardown(self, id: str) -> None:
        """Remove the pod's namespace, veth, host entries and address; idempotent."""
        self._check_id(id)
        with self._lock:
            ip = self._ipam.entries().get(id)

            def run() -> None:
                if ip is not None:
                    with Netlink() as host:
                        # The kernel deletes the veth pair with the namespace, in the background:
                        # deleting it here would wait 15-40 ms for RCU. Cut it off the bridge now,
                        # in case something (a sandbox not yet dead) still holds the namespace.
                        port = host.link(self.veth(ip))
                        if port is not None:
                            host.set_link(port.index, up=False, master=0)
                        bridge = host.link(self.bridge)
                        if bridge is not None:
                            host.delete_neighbour(bridge.index, ip)
                netns.remove(self.netns_path(id))

            try:
                self._in_host(run)
            except OSError as e:
                raise NetworkError(f"pod network: cannot detach {id}: {e.strerror or e}") from e
            # Its elements go before its address does: an address handed out again starts clean.
            self._sync(without=id)
            # Last, so that a crash before here leaves the address to find what to remove.
            self._ipam.release(id)

    def attachment(self, id: str) -> Attachment | None:
        """The id's attachment as recorded, without checking or changing anything."""
        ip = self._ipam.lookup(id)
        return None if ip is None else self._attachment(id, ip)

    def ids(self) -> list[str]:
        """Every id of this owner holding an address (to sweep those no pod sandbox has any more); other
        homes' are never listed."""
        return sorted(self._ipam.entries())

    # -- policy (turbok.runtime.network_policy; the node's turbok.node.netpolicy decides) --

    def bind(self, id: str, binding: Binding | None) -> None:
        """What the pod ``id`` may send and receive from now on (None: nothing, the default). Kept in
        memory; applied by the next ``setup`` of the id or ``sync``. Cheap: call it before the pod boots."""
        self._policy.set_binding(id, binding)  # its own lock: never waits for a transaction

    def bindings(self) -> dict[str, Binding]:
        return dict(self._policy.bindings)

    def set_peers(self, sets: Mapping[str, PeerSet]) -> None:
        """The members of every peer set the bindings name (replacing the previous ones); see ``bind``."""
        self._policy.sets = dict(sets)  # one reference swapped: a transaction reads one or the other

    def bridge_ports(self) -> int:
        """How many ports the bridge has (every home's pods on it): a directory listing in sysfs, which shows
        this process's namespace; from another host namespace, a netlink dump of its links."""
        if self.host_netns is None:
            try:
                return len(os.listdir(f"/sys/class/net/{self.bridge}/brif"))
            except OSError:
                return 0

        def count() -> int:
            with Netlink() as host:
                bridge = host.link(self.bridge)
                return 0 if bridge is None else sum(1 for link in host.links() if link.master == bridge.index)

        return self._in_host(count)

    def sync(self) -> None:
        """Bring the kernel's rules to the bindings and peer sets: one nftables transaction of the changes
        (blocks about 0.1 ms plus 10 us per changed element; call it off the event loop)."""
        with self._lock:
            self._sync()

    def _attached(self, without: str | None = None) -> dict[str, ipaddress.IPv4Address]:
        lo, hi = int(self.network.network_address), int(self.network.broadcast_address)  # `in` builds objects
        return {id: ip for id, ip in self._ipam.entries().items() if lo <= int(ip) <= hi and id != without}

    def _port(self, ip: ipaddress.IPv4Address) -> str:
        return self.veth(ip)

    def _sync(self, without: str | None = None) -> None:
        policy = self._policy
        if not self._forwarding and policy.needs_outside():
            self._enable_forwarding()
        commands, state = policy.plan(self._attached(without), self._port)
        if not commands:
            return
        try:
            self._nftables().run("\n".join(commands) + "\n")
        except NftError as e:
            if "No such file or directory" in str(e) and not self._tables_exist():
                # Someone flushed the ruleset (or a reboot's rules restore): make it all again.
                self._in_host(lambda: self._ensure_host_nl())
                return
            # The kernel holds other than what this process applied (another home's control plane made the
            # tables anew, an element was removed by hand): read them, and plan from what is there, once.
            found = self._read_tables()
            if found is None:
                raise NetworkError(f"pod network: nft refused the policy rules: {str(e)[-500:]}") from None
            # Ours: also the address of a pod being torn down, so that its elements are removed, not kept.
            policy.adopt(found[1], {str(ip) for ip in self._attached().values()})
            commands, state = policy.plan(self._attached(without), self._port)
            try:
                self._nftables().run("\n".join(commands) + "\n")
            except NftError as again:
                raise NetworkError(f"pod network: nft refused the policy rules: {str(again)[-500:]}") from None
            log.info("pod network: tables of %s changed behind this process; %d change(s) applied again",
                     self.bridge, len(commands))
        policy.commit(state)

    def check(self) -> int:
        """Put back what the tables lost of this process's pods' elements since it applied them (another
        home's control plane made them anew with other rules, an element removed by hand, a flushed
        ruleset); the number of nft commands applied (0: all as applied). Reads both tables (about 1 ms
        plus 10 us per element); the node calls it every few seconds, off the event loop."""
        with self._lock:
            found = self._read_tables()
            attached = self._attached()
            if found is None:
                if not attached:
                    return 0  # nothing of ours to lose; the next setup makes the tables
                self._in_host(self._ensure_host_nl)
                return 1
            kernel, applied = found[1], self._policy.applied
            ours = {str(ip) for ip in attached.values()}
            if all(kernel.sources.get(ip) == applied.sources.get(ip) and
                   kernel.egress.get(ip) == applied.egress.get(ip) and
                   kernel.ingress.get(ip) == applied.ingress.get(ip) and
                   (ip in kernel.dns) == (ip in applied.dns) for ip in ours) and \
                    all(name in kernel.chains for name in applied.chains) and \
                    all(kernel.sets.get(name) == members for name, members in applied.sets.items()):
                return 0
            self._policy.adopt(kernel, ours)
            commands, state = self._policy.plan(attached, self._port)
            if commands:
                try:
                    self._nftables().run("\n".join(commands) + "\n")
                except NftError as e:
                    raise NetworkError(f"pod network: nft refused the policy rules: {str(e)[-500:]}") from None
                log.warning("pod network: the tables of %s had lost elements of this home's pods; %d command(s) "
                            "put them back", self.bridge, len(commands))
            self._policy.commit(state)
            return len(commands)

    def _ensure_host_nl(self) -> None:
        with Netlink() as host:
            self._ensure_host(host)

    def _tables_exist(self) -> bool:
        try:
            self._nftables().run(f"list table inet {self.table}")
            self._nftables().run(f"list table bridge {self.table}")
        except NftError:
            return False
        return True

    def _read_tables(self) -> tuple[str, TableState] | None:
        """(rules version, what they hold) of this network's tables in the kernel; None if either is missing."""
        try:
            inet = self._nftables().list_json(f"table inet {self.table}")
            bridge = self._nftables().list_json(f"table bridge {self.table}")
        except NftError:
            return None  # a first start, or after a reboot
        return read_tables(inet, bridge)

    def _enable_forwarding(self) -> None:
        """A pod may reach beyond the host: have the host forward IPv4 (and NAT it, the ruleset's
        postrouting). Where the host did not forward before, its other interfaces still do not: a drop
        rule in ``host-forward``, which ``ensure_host`` keeps while the table lives."""
        def read() -> str:
            return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()

        self._forwarding = True
        if self._in_host(read) != "1" or self._policy.forward_guard:
            self._policy.forward_guard = True
            commands, state = self._policy.plan(self._attached(), self._port)
            try:
                self._nftables().run("\n".join(commands) + "\n")
            except NftError as e:
                raise NetworkError(f"pod network: nft refused the forwarding guard: {str(e)[-500:]}") from None
            self._policy.commit(state)
            self._in_host(lambda: _sysctl("net/ipv4/ip_forward", "1"))
            log.info("pod network: IPv4 forwarding on for pod egress; other interfaces still do not forward")

    # -- port-forward --

    async def connect(self, target: str, port: int, *,
                      timeout: float = 5.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection from the host to ``port`` of a pod, given its id or its address."""
        if not 1 <= port <= 65535:
            raise NetworkError(f"port {port} is not a TCP port (1-65535)")
        try:
            ip = ipaddress.IPv4Address(target)
            label = f"{ip}"
        except ValueError:
            found = self._ipam.lookup(target)
            if found is None:
                raise NotAttached(f"pod {target} has no address on the pod network") from None
            ip, label = found, f"{target} ({found})"
        if ip not in self.network or ip in (self.gateway, self.network.network_address, self.network.broadcast_address):
            raise PodUnreachable(f"{ip} is not a pod address on the pod network {self.network}")
        try:
            return await asyncio.wait_for(self._open(str(ip), port), timeout)
        except ConnectionRefusedError:
            raise PortNotListening(f"pod {label}: nothing listens on port {port}") from None
        except TimeoutError:
            raise PodUnreachable(f"pod {label}: port {port} did not answer within {timeout:g} s "
                                 f"(is the pod running?)") from None
        except OSError as e:
            if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
                raise PodUnreachable(f"pod {label}: unreachable ({e.strerror})") from None
            raise


    async def _open(self, ip: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.host_netns is None:
            return await asyncio.open_connection(ip, port)
        sock = netns.call_in(self.host_netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)


def _sysctl(key: str, value: str) -> None:
    """Write a sysctl of the calling thread's network namespace; a missing one (no IPv6) is fine."""
    with contextlib.suppress(FileNotFoundError):
        Path("/proc/sys", key).write_text(value)


def runsc_prefix(netns_path: Path) -> tuple[str, ...]:
    """argv to put before ``runsc ... run|restore`` of a sandbox in the namespace ``netns_path``.

    runsc (before gVisor's fix of issue 10704, so Debian's 0.0~20221219) refuses
    ``--network=sandbox`` on Linux >= 6.10 with "cannot run with network enabled
    in root network namespace": it tells the root namespace by
    ``/proc/sys/net/core/rmem_default`` existing, which newer kernels show in
    every namespace. The prefix runs runsc in a private copy of the mount table
    (``unshare --mount``, gone when ``runsc run`` exits) where that directory is
    hidden **for the pod's namespace only** (an empty tmpfs mounted from inside it),
    so the check still refuses a bundle without a namespace path (which would
    otherwise hand the host's own interfaces to the sandbox). About 4 ms; empty
    on kernels that need nothing.
    """
    if not netns.shows_rmem_default():
        return ()
    script = ('nsenter --net="$1" mount -t tmpfs -o ro,size=4k turbok-netns /proc/sys/net/core || exit 125; '
              'shift; exec "$@"')
    return ("unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", script, "turbok-runsc",
            str(netns_path))
