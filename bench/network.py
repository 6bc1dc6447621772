"""Benchmark of the pod network: what attaching and detaching a pod costs, against ``ip`` doing the same.

1. ``PodNetwork.setup`` of N new pods, all kept (namespace, veth on the bridge,
   port flags, static fdb and ARP entries, address, routes), then ``setup`` again
   of each (the repair path the runtime takes before every boot), then
   ``teardown`` of each; p50/p99 of each. Then how long the kernel takes to free
   the namespaces and veth pairs in the background (``teardown`` does not wait).
2. Reference, same run: the same pod made with ``ip``/``bridge`` commands (the
   dozen processes a shell script would run) and removed with ``ip link del`` +
   ``ip netns del``, for a smaller number of pods, alternating with 1.
3. ``runsc_prefix`` (the wrapper runsc needs on Linux >= 6.10): a ``true`` run
   through it against a plain ``true``.
4. Per-pod policy at boot (``--policy``, issue 11): ``setup`` of N new pods whose
   binding (three profiles shared by all, as pods of a few templates share them)
   was set before, against ``setup`` without one (part 1); then a change of one
   pod's policy applied alone (``bind`` + ``sync``: its map elements swapped in one
   transaction) against the same element change made by an ``nft`` process, and
   against rewriting the whole table with every pod's elements (what a
   ruleset-per-change design would do), p50/p99 of each; the teardowns; what is
   left in the table after the last one; ``check`` (the node's periodic comparison of the tables
   with what was applied) with every pod attached. The profiles reach pods only (no address
   block), so the host's IPv4 forwarding is never turned on by the benchmark.

5. The machine's address book (``--ipam``, no root, no network): ``allocate`` by two
   homes taking turns on one book (the book's ``flock`` and a ``symlink``) against a bare
   ``symlink`` (what a book per home cost), ``release``, and opening a book that holds
   1,000 entries (a control plane's start: the owners' check, garbage, its own entries).

Usage (root, nft installed; makes its own bridge ``tkbn0`` on 10.212.0.0/20 and removes it)::

    .venv/bin/python bench/network.py [--pods 200] [--reference 40] [--policy | --ipam]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from turbok.runtime import netns
from turbok.runtime.ipam import Ipam
from turbok.runtime.netlink import Netlink
from turbok.runtime.network import PodNetwork, runsc_prefix
from turbok.runtime.network_policy import Binding, PeerSet, PortRange, Profile, Rule

NAME, CIDR = "tkbn", "10.212.0.0/20"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"{1e3 * pct(values, 0.5):.2f} / {1e3 * pct(values, 0.99):.2f} ms"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def ip_setup(net: PodNetwork, i: int) -> None:
    """One pod as a shell script would make it (what ``setup`` does, command by command)."""
    ns, ip = f"{NAME}-ref{i}", net.network.network_address + 2048 + i
    veth, mac = f"{NAME}r{i}", net.mac(ip)
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns, "address", mac)
    sh("ip", "link", "set", veth, "master", net.bridge, "up")
    sh("bridge", "link", "set", "dev", veth, "isolated", "on", "learning", "off", "flood", "off")
    sh("bridge", "fdb", "replace", mac, "dev", veth, "master", "static")
    sh("ip", "neigh", "replace", str(ip), "lladdr", mac, "dev", net.bridge, "nud", "permanent")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "addr", "add", f"{ip}/{net.network.prefixlen}", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "route", "replace", "default", "via", str(net.gateway))


def ip_teardown(net: PodNetwork, i: int) -> None:
    ip = net.network.network_address + 2048 + i
    sh("ip", "link", "del", f"{NAME}r{i}")
    sh("ip", "neigh", "del", str(ip), "dev", net.bridge)
    sh("ip", "netns", "del", f"{NAME}-ref{i}")


def leftover_links() -> int:
    with Netlink() as nl:
        return sum(1 for link in nl.links() if link.name.startswith(f"{NAME}v") or link.name.startswith(f"{NAME}r"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pods", type=int, default=200)
    p.add_argument("--reference", type=int, default=40)
    p.add_argument("--policy", action="store_true", help="only part 4: per-pod policy at boot")
    p.add_argument("--ipam", action="store_true", help="only part 5: the machine's address book")
    args = p.parse_args()
    if args.ipam:
        ipam(1000)
        return
    if os.geteuid() != 0:
        sys.exit("bench/network.py needs root")
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    if args.policy:
        policy(args.pods, args.reference)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        net = PodNetwork(Path(tmp) / "home", CIDR, name=NAME, shared_dir=Path(tmp) / "machine")
        t = time.perf_counter()
        net.ensure_host()
        print(f"ensure_host (bridge + nft table): {1e3 * (time.perf_counter() - t):.1f} ms")
        try:
            setup, again, teardown, ref_setup, ref_teardown = [], [], [], [], []
            ids = [f"bench-{i}" for i in range(args.pods)]
            for i, id in enumerate(ids):
                t = time.perf_counter()
                net.setup(id)
                setup.append(time.perf_counter() - t)
                if i < args.reference:  # alternate with the reference, so both see the same machine
                    t = time.perf_counter()
                    ip_setup(net, i)
                    ref_setup.append(time.perf_counter() - t)
            for id in ids:
                t = time.perf_counter()
                net.setup(id)
                again.append(time.perf_counter() - t)
            for i, id in enumerate(ids):
                t = time.perf_counter()
                net.teardown(id)
                teardown.append(time.perf_counter() - t)
                if i < args.reference:
                    t = time.perf_counter()
                    ip_teardown(net, i)
                    ref_teardown.append(time.perf_counter() - t)
            t = time.perf_counter()
            while leftover_links() and time.perf_counter() - t < 60:
                time.sleep(0.01)
            freed = time.perf_counter() - t
            print(f"setup, new pod ({args.pods}, {args.pods} kept):  p50/p99 {ms(setup)}"
                  f"   ip commands ({args.reference}): {ms(ref_setup)}"
                  f"   ratio of p50 {pct(setup, 0.5) / pct(ref_setup, 0.5):.3f}")
            print(f"setup again (before each boot): p50/p99 {ms(again)}")
            print(f"teardown:                       p50/p99 {ms(teardown)}"
                  f"   ip commands: {ms(ref_teardown)}   ratio of p50 {pct(teardown, 0.5) / pct(ref_teardown, 0.5):.3f}")
            print(f"kernel frees the {args.pods} namespaces and veth pairs {1e3 * freed:.0f} ms after the last teardown")
            plain, wrapped = [], []
            prefix = runsc_prefix(net.setup("bench-runsc").netns)
            for _ in range(50):
                t = time.perf_counter()
                sh("/bin/true")
                plain.append(time.perf_counter() - t)
                t = time.perf_counter()
                sh(*prefix, "/bin/true")
                wrapped.append(time.perf_counter() - t)
            print(f"runsc_prefix: {ms(wrapped)} against a plain exec {ms(plain)}: "
                  f"{1e3 * (pct(wrapped, 0.5) - pct(plain, 0.5)):.2f} ms more per boot"
                  + ("" if prefix else " (not needed on this kernel: empty)"))
        finally:
            net.remove_host()
            for path in Path("/run/netns").glob(f"{NAME}-*"):
                netns.remove(path)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


PROFILES = [
    Binding(egress=Profile((Rule(any_pod=True, ports=(PortRange("tcp", 443, 443),)),))),
    Binding(egress=Profile((Rule(sets=("s-00b0b0",)),)), ingress=Profile((Rule(any_pod=True),))),
    Binding(ingress=Profile((Rule(sets=("s-00b0b0",), ports=(PortRange("tcp", 8080, 8080),)),))),
]
OTHER = Binding(egress=Profile((Rule(any_pod=True, ports=(PortRange("udp", 53, 53),)),)))


def table_elements(net: PodNetwork) -> int:
    out = subprocess.run(["nft", "list", "table", "inet", net.table], capture_output=True, text=True).stdout
    out += subprocess.run(["nft", "list", "table", "bridge", net.table], capture_output=True, text=True).stdout
    return sum(line.count(" . ") + line.count(" : ") for line in out.splitlines() if "elements" in line or
               line.strip().startswith(('"', "10.")))


def policy(pods: int, reference: int) -> None:
    """Part 4 (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        net = PodNetwork(Path(tmp) / "home", CIDR, name=NAME, shared_dir=Path(tmp) / "machine")
        net.ensure_host()
        try:
            net.set_peers({"s-00b0b0": PeerSet(addresses=frozenset({"10.212.0.9"}))})
            plain: list[float] = []
            bound: list[float] = []
            change, by_nft, rewrite, teardown = [], [], [], []
            ids = [f"bench-{i}" for i in range(pods)]
            for i, id in enumerate(ids):
                if i % 2:
                    net.bind(id, PROFILES[i % 3])
                t = time.perf_counter()
                net.setup(id)
                (bound if i % 2 else plain).append(time.perf_counter() - t)
            for i, id in enumerate(ids):
                net.bind(id, OTHER if i % 2 else PROFILES[i % 3])
                t = time.perf_counter()
                net.sync()
                change.append(time.perf_counter() - t)
            checks = []
            for _ in range(20):  # what the node pays every few seconds to find lost elements (none here)
                t = time.perf_counter()
                assert net.check() == 0
                checks.append(time.perf_counter() - t)
            attachment = net.attachment(ids[0])
            assert attachment is not None
            egress = net._policy.applied.egress  # noqa: SLF001 (the benchmark reads what is applied)
            chain = egress[attachment.ip]
            for _ in range(reference):
                for verb in ("delete", "add"):
                    element = attachment.ip if verb == "delete" else f"{attachment.ip} : goto {chain}"
                    t = time.perf_counter()
                    sh("nft", f"{verb} element inet {net.table} egress {{ {element} }}")
                    by_nft.append(time.perf_counter() - t)
            policy_table = net._policy  # noqa: SLF001 (the benchmark drives the table the way ensure_host does)
            for _ in range(max(5, reference // 4)):
                t = time.perf_counter()
                policy_table.reset()  # one transaction: the tables anew, every chain, set and pod element
                commands, state = policy_table.plan(net._attached(), net._port)  # noqa: SLF001
                net._nftables().run(net.ruleset() + "\n".join(commands) + "\n")  # noqa: SLF001
                policy_table.commit(state)
                rewrite.append(time.perf_counter() - t)
            for id in ids:
                net.bind(id, None)
                t = time.perf_counter()
                net.teardown(id)
                teardown.append(time.perf_counter() - t)
            net.sync()
            print(f"setup, new pod without a policy ({len(plain)}): p50/p99 {ms(plain)}")
            print(f"setup, new pod with its policy ({len(bound)}):  p50/p99 {ms(bound)}"
                  f"   ratio of p50 {pct(bound, 0.5) / pct(plain, 0.5):.3f}")
            print(f"one pod's policy changed (bind + sync, {pods}):   p50/p99 {ms(change)}")
            print(f"  same element change by an nft process ({len(by_nft)}): p50/p99 {ms(by_nft)}"
                  f"   ratio of p50 {pct(change, 0.5) / (2 * pct(by_nft, 0.5)):.3f} (two processes per change)")
            print(f"  whole table rewritten with {pods} pods ({len(rewrite)}): p50/p99 {ms(rewrite)}"
                  f"   ratio of p50 {pct(change, 0.5) / pct(rewrite, 0.5):.3f}")
            print(f"check, tables as applied, {pods} pods ({len(checks)}): p50/p99 {ms(checks)}")
            print(f"teardown with policy elements:  p50/p99 {ms(teardown)}")
            print(f"elements left in the tables after the last teardown: {table_elements(net)}")
        finally:
            net.remove_host()
            for path in Path("/run/netns").glob(f"{NAME}-*"):
                netns.remove(path)


def us(values: list[float]) -> str:
    return f"{1e6 * pct(values, 0.5):.1f} / {1e6 * pct(values, 0.99):.1f} us"


def ipam(n: int) -> None:
    """Part 5 (see the module docstring)."""
    network = ipaddress.IPv4Network("10.212.0.0/16")
    gateway = (network.network_address + 1,)
    with tempfile.TemporaryDirectory() as tmp:
        book, raw_dir = Path(tmp) / "book", Path(tmp) / "raw"
        raw_dir.mkdir()
        homes = [Ipam(book, network, reserved=gateway, owner=Path(tmp) / h) for h in ("a", "b")]
        allocate, raw, release = [], [], []
        for i in range(n):  # alternating, so each allocation follows the other home's
            t = time.perf_counter()
            homes[i % 2].allocate(f"p{i}")
            allocate.append(time.perf_counter() - t)
            t = time.perf_counter()
            os.symlink(f"p{i}", raw_dir / str(network.network_address + 2 + i))
            raw.append(time.perf_counter() - t)
        for i in range(n):
            t = time.perf_counter()
            homes[i % 2].release(f"p{i}")
            release.append(time.perf_counter() - t)
        full = Ipam(book, network, reserved=gateway, owner=Path(tmp) / "c")
        for i in range(n):
            full.allocate(f"q{i}")
        opens = []
        for i in range(10):
            t = time.perf_counter()
            Ipam(book, network, reserved=gateway, owner=Path(tmp) / f"d{i}").entries()
            opens.append(time.perf_counter() - t)
        print(f"allocate, two homes on one book ({n}): p50/p99 {us(allocate)}   a bare symlink: {us(raw)}"
              f"   ratio of p50 {pct(allocate, 0.5) / pct(raw, 0.5):.2f}")
        print(f"release ({n}): p50/p99 {us(release)}")
        print(f"open a book holding {n} entries (10): p50/p99 {ms(opens)}")


if __name__ == "__main__":
    main()
