"""Compiling pod policies to nftables, and the commands that move the kernel from one state to the next."""

from __future__ import annotations

import ipaddress

import pytest

from turbok.runtime.network_policy import (
    Binding,
    Block,
    PeerSet,
    PolicyTable,
    PortRange,
    Profile,
    Rule,
    chain_body,
    guard_exclusions,
)

net = ipaddress.IPv4Network
EVERYWHERE = net("0.0.0.0/0")


def names(nets: list[ipaddress.IPv4Network]) -> list[str]:
    return sorted(str(n) for n in nets)


def test_an_egress_block_reaches_private_and_link_local_ranges_only_where_it_lies_inside_them() -> None:
    assert names(guard_exclusions(EVERYWHERE)) == sorted([
        "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4",
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"])
    assert guard_exclusions(net("10.1.0.0/16")) == []  # listed: inside 10/8
    assert guard_exclusions(net("169.254.169.254/32")) == []  # the metadata address, listed
    assert names(guard_exclusions(net("8.0.0.0/5"))) == ["10.0.0.0/8"]  # holds 10/8 without lying in it
    assert guard_exclusions(net("203.0.113.0/24")) == []


def test_an_egress_chain_allows_the_blocks_ports_and_pods_and_drops_the_rest() -> None:
    profile = Profile((
        Rule(blocks=(Block(EVERYWHERE, (net("203.0.113.0/24"),)),),
             ports=(PortRange("tcp", 443, 443), PortRange("tcp", 8000, 8100), PortRange("tcp", 8050, 8200),
                    PortRange("udp"))),
        Rule(sets=("s-00aa11",), any_pod=False),
        Rule(port_sets=("n-00bb22",)),
    ))
    lines = chain_body("egress", profile, "turbok0").splitlines()
    excluded = ("ip daddr != { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, "
                "172.16.0.0/12, 192.168.0.0/16, 203.0.113.0/24, 224.0.0.0/3 }")
    assert lines == [
        f'oifname != "turbok0" ip daddr 0.0.0.0/0 {excluded} meta l4proto tcp th dport {{ 443, 8000-8200 }} accept',
        f'oifname != "turbok0" ip daddr 0.0.0.0/0 {excluded} meta l4proto udp accept',
        'oifname "turbok0" ip daddr @s-00aa11 goto to-pod',
        'oifname "turbok0" ip daddr . meta l4proto . th dport @n-00bb22 goto to-pod',
        'counter drop comment "egress not allowed by policy"',
    ]


def test_an_ingress_chain_matches_sources_and_the_pods_own_ports() -> None:
    profile = Profile((Rule(blocks=(Block(net("198.51.100.0/24")),), any_pod=True, ports=(PortRange("tcp", 80, 80),)),))
    assert chain_body("ingress", profile, "br0").splitlines() == [
        'iifname != "br0" ip saddr 198.51.100.0/24 meta l4proto tcp th dport { 80 } accept',
        'iifname "br0" meta l4proto tcp th dport { 80 } accept',
        'counter drop comment "ingress not allowed by policy"',
    ]


def test_bad_values_are_refused_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="protocol"):
        PortRange("icmp")
    with pytest.raises(ValueError, match="0-65535"):
        PortRange("tcp", 90, 80)
    with pytest.raises(ValueError, match="peer set name"):
        Rule(sets=("s-; flush ruleset",))


def _table() -> tuple[PolicyTable, dict[str, ipaddress.IPv4Address]]:
    return PolicyTable(table="turbok", bridge="turbok0"), {}


def port(ip: ipaddress.IPv4Address) -> str:
    return f"v{int(ip):08x}"


def test_a_pods_boot_adds_elements_only_and_shared_profiles_share_one_chain() -> None:
    table, attached = _table()
    allow = Binding(egress=Profile((Rule(blocks=(Block(EVERYWHERE),), ports=(PortRange("tcp", 443, 443),)),)))
    table.set_binding("a", allow)
    table.set_binding("b", allow)
    attached["a"] = ipaddress.IPv4Address("10.213.0.2")
    cmds, state = table.plan(attached, port)
    table.commit(state)
    [chain] = [c for c in cmds if c.startswith("add chain")]
    name = chain.split()[4]
    assert cmds == [chain, f"add element inet turbok egress {{ 10.213.0.2 : goto {name} }}",
                    "add element inet turbok dns { 10.213.0.2 }",
                    'add element bridge turbok sources { "v0ad50002" . 10.213.0.2 }']
    # The second pod of the same profile: three elements, no chain, no rule.
    attached["b"] = ipaddress.IPv4Address("10.213.0.3")
    cmds, state = table.plan(attached, port)
    table.commit(state)
    assert cmds == [f"add element inet turbok egress {{ 10.213.0.3 : goto {name} }}",
                    "add element inet turbok dns { 10.213.0.3 }",
                    'add element bridge turbok sources { "v0ad50003" . 10.213.0.3 }']
    assert table.plan(attached, port)[0] == []  # nothing changed: nothing to do


def test_a_pod_given_another_address_moves_its_elements_with_it() -> None:
    """The plan keeps each pod's address text and bridge port by pod id: a new address (an equal one made anew,
    or another) is seen, never the old one's text."""
    table, attached = _table()
    table.set_binding("a", Binding(egress=Profile((Rule(blocks=(Block(EVERYWHERE),)),))))
    attached["a"] = ipaddress.IPv4Address("10.213.0.2")
    table.commit(table.plan(attached, port)[1])
    attached["a"] = ipaddress.IPv4Address("10.213.0.2")  # equal, another object: nothing to do
    assert table.plan(attached, port)[0] == []
    attached["a"] = ipaddress.IPv4Address("10.213.0.7")
    cmds, state = table.plan(attached, port)
    assert "delete element inet turbok egress { 10.213.0.2 }" in cmds
    assert any(c.startswith("add element inet turbok egress { 10.213.0.7 : goto ") for c in cmds)
    assert 'add element bridge turbok sources { "v0ad50007" . 10.213.0.7 }' in cmds
    assert set(state.sources) == {"10.213.0.7"}


def test_a_changed_policy_swaps_the_element_and_the_last_user_takes_its_chain_along() -> None:
    table, attached = _table()
    old = Binding(egress=Profile((Rule(blocks=(Block(EVERYWHERE),)),)))
    new = Binding(egress=Profile((Rule(sets=("s-0000ab",)),)))
    table.set_binding("a", old)
    table.sets = {"s-0000ab": PeerSet(addresses=frozenset({"10.213.0.9"}))}
    attached["a"] = ipaddress.IPv4Address("10.213.0.2")
    cmds, state = table.plan(attached, port)
    table.commit(state)
    old_chain = next(c.split()[4] for c in cmds if c.startswith("add chain"))
    table.set_binding("a", new)
    cmds, state = table.plan(attached, port)
    table.commit(state)
    new_chain = next(c.split()[4] for c in cmds if c.startswith("add chain"))
    assert cmds == [
        "add set inet turbok s-0000ab { type ipv4_addr; }",
        "add element inet turbok s-0000ab { 10.213.0.9 }",
        next(c for c in cmds if c.startswith("add chain")),
        "delete element inet turbok egress { 10.213.0.2 }",
        f"add element inet turbok egress {{ 10.213.0.2 : goto {new_chain} }}",
        f"delete chain inet turbok {old_chain}",
    ]
    # Members follow; then the pod goes and everything it needed with it.
    table.sets = {"s-0000ab": PeerSet(addresses=frozenset({"10.213.0.10"}))}
    cmds, state = table.plan(attached, port)
    table.commit(state)
    assert cmds == ["delete element inet turbok s-0000ab { 10.213.0.9 }",
                    "add element inet turbok s-0000ab { 10.213.0.10 }"]
    table.set_binding("a", None)
    cmds, state = table.plan({}, port)
    table.commit(state)
    assert cmds == ["delete element inet turbok egress { 10.213.0.2 }", "delete element inet turbok dns { 10.213.0.2 }",
                    'delete element bridge turbok sources { "v0ad50002" . 10.213.0.2 }',
                    f"delete chain inet turbok {new_chain}", "delete set inet turbok s-0000ab"]
    assert table.applied.chains == {} and table.applied.sets == {}


def test_a_profile_without_rules_and_no_profile_both_deny() -> None:
    table, attached = _table()
    table.set_binding("a", Binding(egress=Profile(()), ingress=None))
    attached["a"] = ipaddress.IPv4Address("10.213.0.2")
    cmds, _ = table.plan(attached, port)
    assert cmds == ['add element bridge turbok sources { "v0ad50002" . 10.213.0.2 }']
    assert not table.needs_outside()
    table.set_binding("a", Binding(egress=Profile((Rule(blocks=(Block(EVERYWHERE),)),))))
    assert table.needs_outside()


def test_taken_over_tables_keep_what_another_home_made_and_replace_it_for_an_address_now_ours() -> None:
    from turbok.runtime.network_policy import TableState

    table, attached = _table()
    allow = Binding(egress=Profile((Rule(blocks=(Block(EVERYWHERE),)),)))
    kernel = TableState(chains={"e-00000000000000aa": "", "e-00000000000000bb": ""},
                        sets={"s-0000ab": PeerSet(addresses=frozenset({"10.213.0.9"}))},
                        egress={"10.213.0.2": "e-00000000000000aa", "10.213.0.7": "e-00000000000000bb"},
                        dns={"10.213.0.2", "10.213.0.7"},
                        sources={"10.213.0.2": "v0ad50002", "10.213.0.7": "v0ad50007"})
    attached["a"] = ipaddress.IPv4Address("10.213.0.2")
    table.adopt(kernel, ours={"10.213.0.2"})
    # Ours was taken as it is; once bound and planned, what differs is put right. 10.213.0.7 is another's.
    table.set_binding("a", allow)
    cmds, state = table.plan(attached, port)
    table.commit(state)
    chain = next(c.split()[4] for c in cmds if c.startswith("add chain"))
    assert "delete chain inet turbok e-00000000000000aa" in cmds  # only our pod used it
    assert not any("10.213.0.7" in c or "e-00000000000000bb" in c for c in cmds)
    assert not any(c.startswith("delete set") for c in cmds)  # another's chain may name any set
    assert f"add element inet turbok egress {{ 10.213.0.2 : goto {chain} }}" in cmds
    # The other home's address becomes ours (a bind): its element is replaced, never added twice.
    attached["b"] = ipaddress.IPv4Address("10.213.0.7")
    table.set_binding("b", allow)
    cmds, state = table.plan(attached, port)
    table.commit(state)
    assert cmds[:2] == ["delete element inet turbok egress { 10.213.0.7 }",
                        f"add element inet turbok egress {{ 10.213.0.7 : goto {chain} }}"]
    assert "delete chain inet turbok e-00000000000000bb" in cmds and "delete set inet turbok s-0000ab" in cmds
    assert table.foreign.egress == {} and table.foreign.sources == {}
