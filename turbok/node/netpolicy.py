"""NetworkPolicy on this node: which pod may talk to what, enforced on the pod network, and pods' DNS.

On a cluster the CNI plugin's agent on each node enforces NetworkPolicy for the
pods of that node; here the node does (docs/architecture.md, "Network
policy"). ``NetworkPolicies`` follows Pods, NetworkPolicies and Namespaces
through the node's subscription and keeps the pod network
(``turbok.runtime.network.PodNetwork``) told, as ``Binding``s per pod sandbox
and ``PeerSet``s (``turbok.runtime.network_policy``):

- A pod's binding is computed **before its worker boots it** (``pod_changed``,
  called by the node on the Pod's event): ``setup`` applies it in the same
  nftables transaction that admits the pod's address, so a pod never runs a
  moment with rules other than its own. A change of policies, labels or
  namespaces is applied shortly after (coalesced in one transaction).
- **Semantics** (Kubernetes', with turbok's default): a pod selected by no
  policy of a direction gets nothing in that direction (as if each namespace
  had a default-deny policy: sandboxes start isolated); otherwise the union of
  the rules of every policy selecting it with that ``policyType``. Peers:
  ``ipBlock`` (IPv4; IPv6 blocks match nothing, pods have no IPv6),
  ``podSelector``/``namespaceSelector`` (pods with an address), nothing (every
  destination: the public internet and every pod). Ports: numbers, ranges
  (``endPort``), names (ingress: the pod's own container ports; egress: the
  destination pods' ports, never an ipBlock's). Egress blocks reach private,
  shared and link-local ranges (the metadata address) only when the block lies
  inside them (``turbok.runtime.network_policy.GUARDED``). The host (router,
  port-forward, probes) always reaches its pods, as the kubelet's probes do.
- **Checked**: every ``CHECK_SECONDS`` (10) the pod network compares the kernel's
  tables with what it applied and puts back what they lost (``PodNetwork.check``:
  another home's control plane with other rules may have made them anew).
- **DNS**: ``dns_config`` writes the kubelet's resolv.conf with turbok's
  resolver (``turbok.runtime.network_dns``, on the pods' gateway) as the
  cluster DNS; a pod may ask it only when its egress allows anything.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from turbok.api.meta import LabelSelector
from turbok.api.status import ApiError
from turbok.node.client import NodeClient, Obj
from turbok.node.suspend import runtime_id
from turbok.runtime.cri import DNSConfig
from turbok.runtime.network_policy import Binding, Block, PeerSet, PortRange, Profile, Rule

__all__ = ["CLUSTER_DOMAIN", "NetworkPolicies", "PolicyNetwork", "dns_config", "host_search"]

log = logging.getLogger(__name__)

CLUSTER_DOMAIN = "cluster.local"
#: The kubelet's bounds on a pod's resolv.conf.
MAX_NAMESERVERS, MAX_SEARCHES = 3, 32
EVERYWHERE = ipaddress.IPv4Network("0.0.0.0/0")
#: Seconds between comparisons of the kernel's tables with what was applied (``NetworkPolicies.check_seconds``).
CHECK_SECONDS = 10.0
#: Pods whose sandboxes ended: their addresses may be handed out again, so they are in no peer set.
_DONE = ("Succeeded", "Failed")


class PolicyNetwork(Protocol):
    """What the node uses of ``turbok.runtime.network.PodNetwork`` for policies."""

    def bind(self, id: str, binding: Binding | None) -> None: ...

    def set_peers(self, sets: Mapping[str, PeerSet]) -> None: ...

    def sync(self) -> None: ...

    def attachment(self, id: str) -> Any: ...


# ---------------------------------------------------------------- DNS


def host_search(resolv_conf: Path) -> tuple[list[str], list[str]]:
    """The ``search`` domains and ``options`` of the host's resolv.conf."""
    searches: list[str] = []
    options: list[str] = []
    try:
        text = resolv_conf.read_text()
    except OSError:
        return [], []
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("search", "domain"):
            searches = parts[1:]
        elif parts and parts[0] == "options":
            options += parts[1:]
    return searches, options


def _merge_options(options: list[str], extra: list[Obj]) -> list[str]:
    by_name = {o.split(":", 1)[0]: o for o in options}
    for o in extra:
        name = str(o.get("name") or "")
        if name:
            by_name[name] = f"{name}:{o['value']}" if o.get("value") is not None else name
    return list(by_name.values())


def dns_config(pod: Obj, nameserver: str, *, resolv_conf: Path = Path("/etc/resolv.conf"),
               cluster_domain: str = CLUSTER_DOMAIN) -> DNSConfig:
    """The pod's resolv.conf as a kubelet writes it, turbok's resolver (``nameserver``) being the cluster's
    DNS: ``ClusterFirst`` (the default) and ``Default`` ask it (the host's own resolvers are the host's, not
    the pods'), ``None`` only what ``dnsConfig`` says; ``dnsConfig`` is added to the others."""
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    if policy != "None":
        host_searches, host_options = host_search(resolv_conf)
        servers = [nameserver]
        if policy == "Default":
            searches, options = host_searches, host_options
        else:  # ClusterFirst, ClusterFirstWithHostNet (no Pod here shares the host's network)
            ns = pod["metadata"].get("namespace") or "default"
            searches = [f"{ns}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain, *host_searches]
            options = ["ndots:5"]
    extra = spec.get("dnsConfig") or {}
    for s in extra.get("nameservers") or []:
        if s not in servers:
            servers.append(str(s))
    for d in extra.get("searches") or []:
        if d not in searches:
            searches.append(str(d))
    options = _merge_options(options, [o for o in extra.get("options") or [] if isinstance(o, dict)])
    return DNSConfig(servers=tuple(servers[:MAX_NAMESERVERS]), searches=tuple(searches[:MAX_SEARCHES]),
                     options=tuple(options))


# ---------------------------------------------------------------- the enforcer


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _selector(raw: Any) -> LabelSelector | None:
    """A LabelSelector from an API object's selector (None for one that does not parse: it selects nothing)."""
    try:
        return LabelSelector.from_match(raw if isinstance(raw, dict) else {})
    except ApiError:
        return None


@functools.lru_cache(maxsize=1024)
def _parsed_selector(canonical: str) -> LabelSelector | None:
    """``_selector`` of a selector's canonical JSON, parsed once: peer sets are matched against every pod
    at each change, so a parse per match would grow with the pods."""
    return _selector(json.loads(canonical))


@dataclass(frozen=True)
class _PeerSpec:
    """The pods a peer selects: in ``namespace`` (the policy's) or in namespaces ``namespaces`` selects."""

    namespace: str | None
    namespaces: str | None  # canonical JSON of a namespaceSelector
    pods: str | None  # canonical JSON of a podSelector

    @property
    def name(self) -> str:
        return "s-" + hashlib.sha256(_canonical([self.namespace, self.namespaces, self.pods]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _PortSpec:
    """Pods of ``peer`` (None: every pod) on the container ports named ``names`` ((protocol, name) pairs)."""

    peer: _PeerSpec | None
    names: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        key = [None if self.peer is None else self.peer.name, self.names]
        return "n-" + hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]


@dataclass
class _Pod:
    uid: str
    namespace: str
    labels: dict[str, str]
    rid: str
    ip: str | None
    ports: dict[tuple[str, str], int]  # (protocol, name) -> containerPort
    local: bool
    done: bool


@dataclass
class _Policy:
    namespace: str
    selector: LabelSelector | None
    ingress: list[Obj] | None  # None: the policy does not restrict this direction
    egress: list[Obj] | None


@dataclass
class _Compiled:
    rules: list[Rule] = field(default_factory=list)
    peers: set[_PeerSpec] = field(default_factory=set)
    ports: set[_PortSpec] = field(default_factory=set)


def _container_ports(pod: Obj) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    spec = pod.get("spec") or {}
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for p in c.get("ports") or []:
            if isinstance(p, dict) and p.get("name") and isinstance(p.get("containerPort"), int):
                out.setdefault((str(p.get("protocol") or "TCP").lower(), str(p["name"])), p["containerPort"])
    return out


class NetworkPolicies:
    """The node's NetworkPolicy enforcer; see the module docstring."""

    def __init__(self, client: NodeClient, network: PolicyNetwork, *, node_name: str) -> None:
        self.client = client
        self.network = network
        self.node_name = node_name
        self.kind = client.kinds.by_kind("networking.k8s.io/v1", "NetworkPolicy")
        self.namespace_kind = client.kinds.by_kind("v1", "Namespace")
        self._policies: dict[str, dict[str, _Policy]] = {}
        self._namespaces: dict[str, dict[str, str]] = {}
        self._pods: dict[str, _Pod] = {}
        self._rids: dict[str, str] = {}  # runtime id -> the uid of the latest Pod with it
        self._peers: set[_PeerSpec] = set()
        self._port_sets: set[_PortSpec] = set()
        #: Each peer set's members by pod uid, kept as pods change (one pod's change is matched against each
        #: set, not every pod against each set: a claim or a refill among thousands of pods stays cheap), and
        #: the ``PeerSet`` made of them (dropped when a member changes, made again when asked for).
        self._members: dict[_PeerSpec | _PortSpec, dict[str, frozenset[Any]]] = {}
        self._made: dict[_PeerSpec | _PortSpec, PeerSet] = {}
        self._rebind_all = False
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        #: How often the kernel's tables are compared with what was applied (``PodNetwork.check``: another
        #: home's control plane may make them anew); 0: never.
        self.check_seconds = CHECK_SECONDS
        self._checker: asyncio.Task[None] | None = None

    @property
    def resources(self) -> set[str]:
        """The kinds (``Kind.key``) whose changes ``object_changed`` wants, besides Pods."""
        return {self.kind.key, self.namespace_kind.key}

    async def start(self) -> None:
        """Read namespaces and policies (before the node lists its Pods, so their first bindings are right)."""
        for ns in await self.client.list(self.namespace_kind):
            self._namespaces[ns["metadata"]["name"]] = dict(ns["metadata"].get("labels") or {})
        for policy in await self.client.list(self.kind):
            self._set_policy(policy, deleted=False)
        self._rebind_all = True  # what was routed while listing
        self._soon()
        if self.check_seconds > 0 and callable(getattr(self.network, "check", None)):
            self._checker = asyncio.get_running_loop().create_task(self._check(), name="node-network-check")

    async def stop(self) -> None:
        self._stopped = True
        for task in (self._task, self._checker):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._checker = None

    async def _check(self) -> None:
        check = getattr(self.network, "check")  # noqa: B009 (a PodNetwork's, not in the protocol)
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                await asyncio.to_thread(check)
            except Exception as e:  # said, and tried again at the next turn
                log.warning("node %s: network policy rules not checked (%s)", self.node_name, e)

    async def settled(self) -> None:
        """Wait until every change seen so far is in the kernel (tests, benchmarks)."""
        while self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------ changes

    def object_changed(self, resource: str, obj: Obj, deleted: bool) -> None:
        if resource == self.kind.key:
            self._set_policy(obj, deleted)
        elif resource == self.namespace_kind.key:
            name = obj["metadata"]["name"]
            labels = {} if deleted else dict(obj["metadata"].get("labels") or {})
            if self._namespaces.get(name) == labels and not deleted:
                return
            if deleted:
                self._namespaces.pop(name, None)
            else:
                self._namespaces[name] = labels
            self._members.clear()  # namespace selectors: every set is matched again
            self._made.clear()
        else:
            return
        self._rebind_all = True
        self._soon()

    def _set_policy(self, obj: Obj, deleted: bool) -> None:
        md = obj["metadata"]
        ns, name = md.get("namespace", ""), md["name"]
        if deleted:
            self._policies.get(ns, {}).pop(name, None)
            return
        spec = obj.get("spec") or {}
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if spec.get("egress") else ["Ingress"])
        self._policies.setdefault(ns, {})[name] = _Policy(
            namespace=ns, selector=_selector(spec.get("podSelector")),
            ingress=list(spec.get("ingress") or []) if "Ingress" in types else None,
            egress=list(spec.get("egress") or []) if "Egress" in types else None)

    def pod_changed(self, pod: Obj, deleted: bool) -> None:
        """A Pod's change, before its worker sees it: its binding is set now, its peers' shortly."""
        md = pod["metadata"]
        uid = md["uid"]
        if deleted:
            gone = self._pods.pop(uid, None)
            if gone is not None and self._rids.get(gone.rid) == uid:
                del self._rids[gone.rid]
                self.network.bind(gone.rid, None)
            self._regroup(uid, None)
            self._soon()
            return
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        rid = runtime_id(pod)
        local = spec.get("nodeName") == self.node_name
        ip = None
        if local:
            att = self.network.attachment(rid)
            ip = getattr(att, "ip", None)
        ip = ip or status.get("podIP") or None
        info = _Pod(uid=uid, namespace=md.get("namespace", ""), labels=dict(md.get("labels") or {}), rid=rid,
                    ip=ip, ports=_container_ports(pod), local=local, done=status.get("phase") in _DONE)
        old = self._pods.get(uid)
        self._pods[uid] = info
        if local:
            self._rids[rid] = uid
            if old is None or old.labels != info.labels or old.ports != info.ports or not old.local:
                self.network.bind(rid, self._binding(info))
        if old is None or (old.ip, old.labels, old.ports, old.done) != (info.ip, info.labels, info.ports, info.done):
            self._regroup(uid, info)
            self._soon()

    # ------------------------------------------------------------ computing

    def _binding(self, pod: _Pod) -> Binding:
        egress: list[Rule] | None = None
        ingress: list[Rule] | None = None
        for policy in self._policies.get(pod.namespace, {}).values():
            if policy.selector is None or not policy.selector.matches(pod.labels):
                continue
            if policy.egress is not None:
                compiled = self._compile(policy, policy.egress, "to", pod, outward=True)
                egress = [*(egress or []), *compiled.rules]
                self._peers |= compiled.peers
                self._port_sets |= compiled.ports
            if policy.ingress is not None:
                compiled = self._compile(policy, policy.ingress, "from", pod, outward=False)
                ingress = [*(ingress or []), *compiled.rules]
                self._peers |= compiled.peers
        return Binding(egress=Profile(tuple(egress)) if egress else None,
                       ingress=Profile(tuple(ingress)) if ingress else None)

    def _compile(self, policy: _Policy, rules: list[Obj], peers_key: str, pod: _Pod, *, outward: bool) -> _Compiled:
        out = _Compiled()
        for raw in rules:
            if not isinstance(raw, dict):
                continue
            numeric: list[PortRange] = []
            named: list[tuple[str, str]] = []
            for port in raw.get("ports") or []:
                if not isinstance(port, dict):
                    continue
                protocol = str(port.get("protocol") or "TCP").lower()
                if protocol not in ("tcp", "udp", "sctp"):
                    continue
                number = port.get("port")
                if number is None:
                    numeric.append(PortRange(protocol))
                elif isinstance(number, int) and 1 <= number <= 65535:
                    end = port.get("endPort")
                    last = end if isinstance(end, int) and number <= end <= 65535 else number
                    numeric.append(PortRange(protocol, number, last))
                elif isinstance(number, str) and not outward:  # ingress: the pod's own port of that name
                    if (found := pod.ports.get((protocol, number))) is not None:
                        numeric.append(PortRange(protocol, found, found))
                elif isinstance(number, str):
                    named.append((protocol, number))
            restricted = bool(raw.get("ports"))
            blocks: list[Block] = []
            specs: list[_PeerSpec] = []
            any_pod = False
            peers = [p for p in raw.get(peers_key) or [] if isinstance(p, dict)]
            if not raw.get(peers_key):
                blocks, any_pod = [Block(EVERYWHERE)], True
            for peer in peers:
                if "ipBlock" in peer:
                    block = self._block(peer.get("ipBlock"))
                    if block is not None:
                        blocks.append(block)
                elif "podSelector" in peer or "namespaceSelector" in peer:
                    specs.append(_PeerSpec(
                        namespace=None if "namespaceSelector" in peer else policy.namespace,
                        namespaces=_canonical(peer["namespaceSelector"]) if "namespaceSelector" in peer else None,
                        pods=_canonical(peer["podSelector"]) if "podSelector" in peer else None))
            if numeric or not restricted:  # a rule whose ports are all unresolved names allows nothing here
                rule = Rule(blocks=tuple(sorted(set(blocks))), sets=tuple(sorted({s.name for s in specs})),
                            any_pod=any_pod, ports=tuple(sorted(set(numeric))))
                if rule.blocks or rule.sets or rule.any_pod:
                    out.rules.append(rule)
                    out.peers.update(specs)
            if named:
                targets: list[_PeerSpec | None] = [None] if any_pod else list(specs)
                port_specs = [_PortSpec(t, tuple(sorted(set(named)))) for t in targets]
                if port_specs:
                    out.rules.append(Rule(port_sets=tuple(sorted({p.name for p in port_specs}))))
                    out.ports.update(port_specs)
                    out.peers.update(specs)
        return out

    @staticmethod
    def _block(raw: Any) -> Block | None:
        if not isinstance(raw, dict):
            return None
        try:
            cidr = ipaddress.ip_network(str(raw.get("cidr")), strict=False)
        except ValueError:
            return None  # the API refuses these; from elsewhere, a peer that matches nothing
        if not isinstance(cidr, ipaddress.IPv4Network):
            return None
        excepts = []
        for text in raw.get("except") or []:
            try:
                net = ipaddress.ip_network(str(text), strict=False)
            except ValueError:
                continue
            if isinstance(net, ipaddress.IPv4Network) and net.subnet_of(cidr):
                excepts.append(net)
        return Block(cidr, tuple(sorted(set(excepts))))

    def _selected(self, spec: _PeerSpec, pod: _Pod) -> bool:
        if spec.namespace is not None:
            if pod.namespace != spec.namespace:
                return False
        else:
            ns_selector = _parsed_selector(spec.namespaces or "{}")
            if ns_selector is None or pod.namespace not in self._namespaces or not ns_selector.matches(
                    self._namespaces[pod.namespace]):
                return False
        if spec.pods is None:
            return True
        pod_selector = _parsed_selector(spec.pods)
        return pod_selector is not None and pod_selector.matches(pod.labels)

    def _contribution(self, spec: _PeerSpec | _PortSpec, pod: _Pod) -> frozenset[Any]:
        """What ``pod`` puts into the set ``spec``: its address, or (address, protocol, port) of its named ports."""
        if not pod.ip or pod.done:
            return frozenset()
        if isinstance(spec, _PeerSpec):
            return frozenset((pod.ip,)) if self._selected(spec, pod) else frozenset()
        if spec.peer is not None and not self._selected(spec.peer, pod):
            return frozenset()
        return frozenset((pod.ip, protocol, number) for protocol, name in spec.names
                         if (number := pod.ports.get((protocol, name))) is not None)

    def _regroup(self, uid: str, pod: _Pod | None) -> None:
        """One pod changed (None: gone): its place in every set already made."""
        for spec, members in self._members.items():
            now = frozenset() if pod is None else self._contribution(spec, pod)
            if members.get(uid, frozenset()) != now:
                if now:
                    members[uid] = now
                else:
                    members.pop(uid, None)
                self._made.pop(spec, None)

    def peer_sets(self) -> dict[str, PeerSet]:
        """Every peer set the bindings name, with its members now."""
        out: dict[str, PeerSet] = {}
        specs: list[_PeerSpec | _PortSpec] = [*self._peers, *self._port_sets]
        for spec in specs:
            members = self._members.get(spec)
            if members is None:  # a set new to the bindings: matched against every pod once
                members = self._members[spec] = {}
                for uid, pod in self._pods.items():
                    if found := self._contribution(spec, pod):
                        members[uid] = found
            made = self._made.get(spec)
            if made is None:
                union = frozenset().union(*members.values())
                made = self._made[spec] = PeerSet(addresses=union) if isinstance(spec, _PeerSpec) \
                    else PeerSet(ports=union)
            out[spec.name] = made
        for spec in [s for s in self._members if s not in self._peers and s not in self._port_sets]:
            del self._members[spec]  # no binding names it any more
            self._made.pop(spec, None)
        return out

    # ------------------------------------------------------------ applying

    def _soon(self) -> None:
        if self._stopped:
            return
        self._dirty = True
        if self._task is None or self._task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._apply(), name="node-network-policy")
            except RuntimeError:  # no loop (a synchronous caller in tests): applied by the next change
                return

    async def _apply(self) -> None:
        await asyncio.sleep(0)  # gather what else changes in this turn of the loop
        delay = 0.5
        while self._dirty:
            self._dirty = False
            if self._rebind_all:
                self._rebind_all = False
                self._peers, self._port_sets = set(), set()
                for rid, uid in self._rids.items():
                    pod = self._pods.get(uid)
                    if pod is not None and pod.local:
                        self.network.bind(rid, self._binding(pod))
            self.network.set_peers(self.peer_sets())
            try:
                await asyncio.to_thread(self.network.sync)
                delay = 0.5
            except Exception as e:  # the kernel refused: keep the last rules, say so, try again
                self._dirty = True
                log.warning("node %s: network policy rules not applied (%s); retrying in %.1f s",
                            self.node_name, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
