"""Per-pod allow rules on the pod network: what a pod may send and receive, compiled to nftables.

The node (``turbok.node.netpolicy``) turns NetworkPolicy objects into a
``Binding`` per pod sandbox id (an egress and an ingress ``Profile``, or None
for "nothing": turbok's default) and ``PeerSet``s (the addresses of the pods a
selector picks); ``turbok.runtime.network.PodNetwork`` keeps them, and this
module's ``PolicyTable`` computes the nftables commands that bring the kernel
from what it holds to what is wanted, as one transaction:

- a **chain per distinct profile** (``e-<hash>``, ``i-<hash>``: the hash of its
  text, so pods with the same policies share one, and a changed policy is a new
  chain, swapped in atomically), made when the first pod needs it and deleted
  with the last;
- a **set per peer selector** (``s-...``: pod addresses; ``n-...``: address,
  protocol and port, for named ports), updated element by element as pods come,
  go or change labels;
- per attached pod: an element of the verdict maps ``egress`` and ``ingress``
  (pod address -> ``goto`` its chain), of the set ``dns`` (pods with any egress
  may ask the pods' resolver) and of the bridge table's ``sources`` (the port a
  pod's address may come from). A pod's boot adds these elements: no chain and
  no rule is rewritten for it.

What a profile allows (``Rule``): the union of its rules; a rule allows traffic
to (egress) or from (ingress) any of its peers on any of its ports. Peers are
address blocks (``Block``: a CIDR less its exceptions; they never match pods,
which are reached through selectors only), peer sets, or every pod. An egress
block reaches **private, shared, and link-local ranges only where the block
lies inside them** (``GUARDED``: 10/8, 172.16/12, 192.168/16, 100.64/10 and
169.254/16, the metadata address's range): ``0.0.0.0/0`` means the public
internet, ``10.1.2.0/24`` is that network. Loopback, ``0/8``, multicast and
reserved ranges are never reached. Traffic to another pod passes the sender's
egress and then the receiver's ingress.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALWAYS_EXCLUDED",
    "FORWARD_GUARD",
    "GUARDED",
    "PROTOCOLS",
    "Binding",
    "Block",
    "PeerSet",
    "PolicyTable",
    "PortRange",
    "Profile",
    "Rule",
    "TableState",
    "guard_exclusions",
    "read_tables",
]

PROTOCOLS = ("tcp", "udp", "sctp")
#: Ranges an egress block reaches only when it lies inside them (upstream's default exclusions, and
#: the carrier-grade NAT range that VPNs such as Tailscale use).
GUARDED = tuple(ipaddress.IPv4Network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"))
#: Never reached through the host: "this network", loopback, multicast, reserved and broadcast.
ALWAYS_EXCLUDED = tuple(ipaddress.IPv4Network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"))
_SET_NAME = re.compile(r"[sn]-[0-9a-f]{6,24}")
#: The comment of the rule that keeps a host on which turbok turned IPv4 forwarding on from forwarding
#: anything but its pods' traffic. The rule is also the mark that turbok did: it lives in the kernel, as the
#: sysctl does (a reboot clears both), so every start and every home on the machine finds it.
FORWARD_GUARD = "this host did not forward before turbok"


@dataclass(frozen=True, order=True)
class PortRange:
    """Ports ``first``-``last`` of a protocol (the whole protocol when 0-65535)."""

    protocol: str
    first: int = 0
    last: int = 65535

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r}: want one of {', '.join(PROTOCOLS)}")
        if not 0 <= self.first <= self.last <= 65535:
            raise ValueError(f"port range {self.first}-{self.last} is not within 0-65535")

    @property
    def every_port(self) -> bool:
        return self.first == 0 and self.last == 65535


@dataclass(frozen=True, order=True)
class Block:
    """An IPv4 CIDR less its exceptions (a NetworkPolicy ``ipBlock``)."""

    cidr: ipaddress.IPv4Network
    excepts: tuple[ipaddress.IPv4Network, ...] = ()


@dataclass(frozen=True)
class Rule:
    """Allowed: to/from any of the peers (blocks, the pods of ``sets``, every pod), on any of ``ports``
    (none: every port and protocol). ``port_sets`` (egress only) name sets of (address, protocol, port):
    pods reached on ports they name."""

    blocks: tuple[Block, ...] = ()
    sets: tuple[str, ...] = ()
    any_pod: bool = False
    ports: tuple[PortRange, ...] = ()
    port_sets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (*self.sets, *self.port_sets):
            if not _SET_NAME.fullmatch(name):
                raise ValueError(f"peer set name {name!r}: want s-<hex> or n-<hex>")


@dataclass(frozen=True)
class Profile:
    """What one direction of a pod's traffic may do: the union of ``rules`` (none: nothing)."""

    rules: tuple[Rule, ...] = ()

    @property
    def reaches_outside(self) -> bool:
        return any(rule.blocks for rule in self.rules)


@dataclass(frozen=True)
class Binding:
    """A pod's two profiles; None (or no rules) denies that direction, turbok's default."""

    egress: Profile | None = None
    ingress: Profile | None = None


@dataclass(frozen=True)
class PeerSet:
    """The members of a peer set: pod addresses (``s-`` sets), or (address, protocol, port) (``n-`` sets)."""

    addresses: frozenset[str] = frozenset()
    ports: frozenset[tuple[str, str, int]] = frozenset()


def guard_exclusions(cidr: ipaddress.IPv4Network) -> list[ipaddress.IPv4Network]:
    """What an egress block to ``cidr`` leaves out besides its own exceptions (see ``GUARDED``)."""
    out = [g for g in ALWAYS_EXCLUDED if g.subnet_of(cidr)]
    out += [g for g in GUARDED if g.subnet_of(cidr) and not cidr.subnet_of(g)]
    return out


def _merged_ports(ranges: Iterable[PortRange]) -> list[tuple[int, int]]:
    spans = sorted((r.first, r.last) for r in ranges)
    out: list[tuple[int, int]] = []
    for first, last in spans:
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def _port_matches(ports: tuple[PortRange, ...]) -> list[str]:
    """One match per protocol (``meta l4proto tcp th dport { 80, 8000-8080 }``); [""] for every port."""
    if not ports:
        return [""]
    out = []
    for protocol in PROTOCOLS:
        spans = _merged_ports(p for p in ports if p.protocol == protocol)
        if not spans:
            continue
        if spans == [(0, 65535)]:
            out.append(f"meta l4proto {protocol}")
        else:
            items = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
            out.append(f"meta l4proto {protocol} th dport {{ {items} }}")
    return out


def _networks(nets: Iterable[ipaddress.IPv4Network]) -> str:
    return ", ".join(str(n) for n in ipaddress.collapse_addresses(nets))


def chain_body(direction: str, profile: Profile, bridge: str) -> str:
    """The rules of a profile's chain (``direction``: ``egress`` or ``ingress``), one per line."""
    lines = []
    outward = direction == "egress"
    addr, dev = ("daddr", "oifname") if outward else ("saddr", "iifname")
    allowed = "accept"
    to_pod = "goto to-pod" if outward else "accept"
    for rule in profile.rules:
        matches = _port_matches(rule.ports)
        for block in rule.blocks:
            peer = f"ip {addr} {block.cidr}"
            left_out = [*block.excepts, *(guard_exclusions(block.cidr) if outward else ())]
            if left_out:
                peer += f" ip {addr} != {{ {_networks(left_out)} }}"
            lines += [f'{dev} != "{bridge}" {peer} {m} {allowed}' for m in matches]
        for name in rule.sets:
            lines += [f'{dev} "{bridge}" ip {addr} @{name} {m} {to_pod}' for m in matches]
        if rule.any_pod:
            lines += [f'{dev} "{bridge}" {m} {to_pod}' for m in matches]
        for name in rule.port_sets:
            lines.append(f'{dev} "{bridge}" ip {addr} . meta l4proto . th dport @{name} {to_pod}')
    lines.append(f'counter drop comment "{direction} not allowed by policy"')
    return "\n".join(" ".join(line.split()) for line in lines)


def chain_name(direction: str, body: str) -> str:
    return ("e-" if direction == "egress" else "i-") + hashlib.sha256(body.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def _referenced_sets(body: str) -> frozenset[str]:
    return frozenset(re.findall(r"@([sn]-[0-9a-f]+)", body))


@dataclass
class TableState:
    """What the tables hold of the policy: profile chains, peer sets, per-pod elements, the forwarding guard."""

    chains: dict[str, str] = field(default_factory=dict)  # name -> body
    sets: dict[str, PeerSet] = field(default_factory=dict)
    egress: dict[str, str] = field(default_factory=dict)  # pod address -> chain
    ingress: dict[str, str] = field(default_factory=dict)
    dns: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)  # pod address -> its bridge port
    forward_guard: bool = False


class PolicyTable:
    """Wanted bindings and peer sets, what the kernel holds, and the commands between the two.

    ``plan`` returns the commands and the state they make; ``commit`` records that state once nft
    applied them (``PodNetwork`` calls these under its lock). ``set_binding`` and ``sets`` may change
    meanwhile from another thread (the node's event loop, which must not wait for a transaction).
    """

    def __init__(self, *, table: str, bridge: str) -> None:
        self.table = table
        self.bridge = bridge
        self.sets: dict[str, PeerSet] = {}
        self.forward_guard = False
        self.applied = TableState()
        #: Per-pod elements in the tables that this process did not make and does not manage (another
        #: control plane's, while two share the machine): never deleted, their chains never either.
        self.foreign = TableState()
        self._bindings: dict[str, Binding] = {}
        #: id -> its (egress, ingress) chains, compiled once per change of its binding
        self._chains: dict[str, tuple[tuple[str, str] | None, tuple[str, str] | None]] = {}
        self._bodies: dict[tuple[str, Profile], tuple[str, str]] = {}
        #: pod id -> (its address, the address as text, its bridge port): looked up by id, whose hash is C's, not
        #: by the address, whose hash is ``ipaddress``'s Python (most of a plan's time at hundreds of pods)
        self._names: dict[str, tuple[ipaddress.IPv4Address, str, str]] = {}
        self._binding_lock = threading.Lock()

    @property
    def bindings(self) -> dict[str, Binding]:
        with self._binding_lock:
            return dict(self._bindings)

    def set_binding(self, id: str, binding: Binding | None) -> None:
        """The pod ``id``'s binding (None, or one without rules: nothing, the default)."""
        with self._binding_lock:
            if binding is None or (binding.egress is None and binding.ingress is None):
                self._bindings.pop(id, None)
                self._chains.pop(id, None)
                return
            self._bindings[id] = binding
            self._chains[id] = (self._chain("egress", binding.egress), self._chain("ingress", binding.ingress))

    def reset(self) -> None:
        """The table was made anew (``ensure_host``): it holds nothing of ours."""
        self.applied = TableState()
        self.foreign = TableState()

    def adopt(self, kernel: TableState, ours: set[str]) -> None:
        """Take the tables as they are (a restart, or another process made them): the per-pod elements of
        addresses in ``ours`` are this process's to keep right; the others are left as they are."""
        mine, other = TableState(chains=dict(kernel.chains), sets=dict(kernel.sets),
                               forward_guard=kernel.forward_guard), TableState()
        for field_name in ("egress", "ingress", "sources"):
            elements: dict[str, str] = getattr(kernel, field_name)
            for ip, value in elements.items():
                getattr(mine if ip in ours else other, field_name)[ip] = value
        mine.dns = {ip for ip in kernel.dns if ip in ours}
        other.dns = kernel.dns - mine.dns
        self.applied, self.foreign = mine, other

    def needs_outside(self) -> bool:
        """Does any bound pod's egress reach beyond the pods (so the host must forward and NAT)?"""
        with self._binding_lock:
            bindings = list(self._bindings.values())
        return any(b.egress is not None and b.egress.reaches_outside for b in bindings)

    def _chain(self, direction: str, profile: Profile | None) -> tuple[str, str] | None:
        if profile is None or not profile.rules:
            return None
        key = (direction, profile)
        found = self._bodies.get(key)
        if found is None:
            body = chain_body(direction, profile, self.bridge)
            found = self._bodies[key] = (chain_name(direction, body), body)
            if len(self._bodies) > 4096:  # profiles of pods long gone: keep the cache bounded
                self._bodies = {key: found}
        return found

    def plan(self, attached: Mapping[str, ipaddress.IPv4Address],
             port_of: Callable[[ipaddress.IPv4Address], str]) -> tuple[list[str], TableState]:
        """nft commands from what is applied to what is wanted, for the pods ``attached`` (id -> address)."""
        want = TableState(forward_guard=self.forward_guard)
        names = self._names
        for id, ip in attached.items():
            known = names.get(id)
            if known is None or known[0] is not ip and known[0] != ip:
                names[id] = (ip, str(ip), port_of(ip))
        want.sources = {names[id][1]: names[id][2] for id in attached}
        with self._binding_lock:
            chains = list(self._chains.items())
        for id, (egress, ingress) in chains:
            text = names[id][1] if id in attached else None
            if egress is not None:
                want.chains[egress[0]] = egress[1]
                if text is not None:
                    want.egress[text] = egress[0]
                    want.dns.add(text)
            if ingress is not None:
                want.chains[ingress[0]] = ingress[1]
                if text is not None:
                    want.ingress[text] = ingress[0]
        if len(names) > 2 * len(attached) + 64:  # addresses long released
            self._names = {id: names[id] for id in attached}
        referenced = set().union(*(_referenced_sets(body) for body in want.chains.values()))
        sets = self.sets  # replaced whole by whoever changes it: one consistent view
        want.sets = {name: sets.get(name, PeerSet()) for name in sorted(referenced)}
        return self._commands(self.applied, want), want

    def admit_sources(self, attached: Mapping[str, ipaddress.IPv4Address],
                      port_of: Callable[[ipaddress.IPv4Address], str]) -> tuple[list[str], TableState]:
        """After ``adopt``: only the missing source checks of ``attached`` pods, nothing removed (their
        policy elements stay as they were until the node binds them and a ``plan`` is applied)."""
        state = TableState(chains=dict(self.applied.chains), sets=dict(self.applied.sets),
                           egress=dict(self.applied.egress), ingress=dict(self.applied.ingress),
                           dns=set(self.applied.dns), sources=dict(self.applied.sources),
                           forward_guard=self.applied.forward_guard)
        new = {str(ip): port_of(ip) for ip in attached.values() if str(ip) not in state.sources}
        state.sources.update(new)
        cmds = _member_delta(f"bridge {self.table}", "sources", set(), {f'"{p}" . {ip}' for ip, p in new.items()})
        return cmds, state

    def commit(self, state: TableState) -> None:
        self.applied = state
        for ip in state.sources:  # an address now ours is no longer someone else's
            for elements in (self.foreign.egress, self.foreign.ingress, self.foreign.sources):
                elements.pop(ip, None)
            self.foreign.dns.discard(ip)

    def _commands(self, have: TableState, want: TableState) -> list[str]:
        t, cmds = f"inet {self.table}", []
        foreign = self.foreign
        if any((foreign.egress, foreign.ingress, foreign.dns, foreign.sources)):
            # Another's element for an address that is now ours is replaced, never added twice.
            have = TableState(
                chains=have.chains, sets=have.sets, forward_guard=have.forward_guard,
                egress={**{ip: c for ip, c in foreign.egress.items() if ip in want.sources}, **have.egress},
                ingress={**{ip: c for ip, c in foreign.ingress.items() if ip in want.sources}, **have.ingress},
                dns=have.dns | {ip for ip in foreign.dns if ip in want.sources},
                sources={**{ip: p for ip, p in foreign.sources.items() if ip in want.sources}, **have.sources})
        kept = {chain for elements in (foreign.egress, foreign.ingress)  # chains others' pods still use
                for ip, chain in elements.items() if ip not in want.sources}
        # 1. sets and their members (before the chains that name them)
        for name, members in want.sets.items():
            old = have.sets.get(name)
            if old is None:
                kind = "ipv4_addr" if name.startswith("s-") else "ipv4_addr . inet_proto . inet_service"
                cmds.append(f"add set {t} {name} {{ type {kind}; }}")
                old = PeerSet()
            cmds += _set_delta(t, name, old, members)
        # 2. chains
        for name, body in want.chains.items():
            if name not in have.chains:
                cmds.append(f"add chain {t} {name} {{\n{body}\n}}")
        if want.forward_guard and not have.forward_guard:
            cmds.append(f'add rule {t} host-forward counter drop comment "{FORWARD_GUARD}"')
        # 3. per-pod elements
        for map_name, old_map, new_map in (("egress", have.egress, want.egress),
                                           ("ingress", have.ingress, want.ingress)):
            gone = [ip for ip in old_map if old_map[ip] != new_map.get(ip)]
            if gone:
                cmds.append(f"delete element {t} {map_name} {{ {', '.join(gone)} }}")
            new = [f"{ip} : goto {chain}" for ip, chain in new_map.items() if old_map.get(ip) != chain]
            if new:
                cmds.append(f"add element {t} {map_name} {{ {', '.join(new)} }}")
        cmds += _member_delta(t, "dns", have.dns, want.dns)
        # Only the changed pods' elements are formatted (every pod's, at each change, would grow with the pods).
        old_src = {f'"{port}" . {ip}' for ip, port in have.sources.items() if want.sources.get(ip) != port}
        new_src = {f'"{port}" . {ip}' for ip, port in want.sources.items() if have.sources.get(ip) != port}
        cmds += _member_delta(f"bridge {self.table}", "sources", old_src, new_src)
        # 4. what nothing names any more (nor another's pods: their chains, and then every set, stay)
        others = {name: body for name, body in have.chains.items() if name in kept and name not in want.chains}
        cmds += [f"delete chain {t} {name}" for name in have.chains if name not in want.chains and name not in kept]
        want.chains.update(others)
        if others:  # their rules may name any set: none goes while they stay
            want.sets.update({name: members for name, members in have.sets.items() if name not in want.sets})
        cmds += [f"delete set {t} {name}" for name in have.sets if name not in want.sets]
        return cmds


def read_tables(inet: list[dict[str, Any]], bridge: list[dict[str, Any]]) -> tuple[str, TableState]:
    """What the kernel's tables hold (``nft -j list table`` of both), and the rules' version mark (the
    comment of the set ``host-ports``; "" when absent)."""
    state, version = TableState(), ""
    for item in inet:
        if "chain" in item and item["chain"]["name"].startswith(("e-", "i-")):
            state.chains[item["chain"]["name"]] = ""
        elif "rule" in item and item["rule"]["chain"] == "host-forward" and \
                item["rule"].get("comment") == FORWARD_GUARD:
            state.forward_guard = True
        for kind in ("set", "map"):
            body = item.get(kind)
            if not body:
                continue
            name, elements = body["name"], body.get("elem") or []
            if name == "host-ports":
                version = str(body.get("comment") or "")
            elif name == "dns":
                state.dns = {str(e) for e in elements}
            elif name in ("egress", "ingress"):
                getattr(state, name).update({str(k): str(v.get("goto", {}).get("target")) for k, v in elements})
            elif name.startswith("s-"):
                state.sets[name] = PeerSet(addresses=frozenset(str(e) for e in elements))
            elif name.startswith("n-"):
                state.sets[name] = PeerSet(ports=frozenset(
                    (str(c["concat"][0]), str(c["concat"][1]), int(c["concat"][2])) for c in elements))
    for item in bridge:
        body = item.get("set")
        if body and body["name"] == "sources":
            state.sources = {str(e["concat"][1]): str(e["concat"][0]) for e in body.get("elem") or []}
    return version, state


def _member_delta(table: str, name: str, old: set[str], new: set[str]) -> list[str]:
    cmds = []
    if old - new:
        cmds.append(f"delete element {table} {name} {{ {', '.join(sorted(old - new))} }}")
    if new - old:
        cmds.append(f"add element {table} {name} {{ {', '.join(sorted(new - old))} }}")
    return cmds


def _set_delta(table: str, name: str, old: PeerSet, new: PeerSet) -> list[str]:
    if name.startswith("s-"):
        return _member_delta(table, name, set(old.addresses), set(new.addresses))
    fmt = "{} . {} . {}".format
    return _member_delta(table, name, {fmt(*p) for p in old.ports}, {fmt(*p) for p in new.ports})
