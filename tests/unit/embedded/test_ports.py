"""Ports are chosen once per home and kept; first choices avoid the ephemeral range."""

from __future__ import annotations

import stat
from pathlib import Path

from turbok.embedded import ports
from turbok.home import Home


def test_kept_ports_round_trip_in_a_private_file(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    assert ports.load(home) == ports.Ports(0, 0)
    ports.save(home, ports.Ports(api=23456, router=23457))
    assert ports.load(home) == ports.Ports(api=23456, router=23457)
    assert stat.S_IMODE(home.ports.stat().st_mode) == 0o600


def test_a_damaged_ports_file_means_choose_again(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    for text in ("not json", "[1, 2]", '{"api": "x"}', '{"api": 70000, "router": -1}'):
        home.ports.write_text(text)
        assert ports.load(home) == ports.Ports(0, 0), text


def test_candidates_lie_below_the_ephemeral_range_then_any(tmp_path: Path) -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    tried = list(ports.candidates())
    assert tried[-1] == 0
    assert tried[:-1] and all(20000 <= p < low for p in tried[:-1])
    assert len(set(tried[:-1])) == len(tried[:-1])
