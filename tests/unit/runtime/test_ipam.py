"""The pod network's address book: one address per id, kept on disk, never handed out twice, shared by homes."""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path

import pytest

from turbok.runtime.ipam import AddressesExhausted, Ipam, owner_token

NET = ipaddress.IPv4Network("10.213.0.0/29")  # hosts .1-.6
GW = ipaddress.IPv4Address("10.213.0.1")


def make(path: Path, network: ipaddress.IPv4Network = NET) -> Ipam:
    return Ipam(path, network, reserved=(GW,))


def entries_on_disk(book: Path) -> dict[str, str]:
    """address -> "<owner token>:<id>" of every entry in the book."""
    return {p.name: os.readlink(p) for p in book.iterdir() if p.is_symlink()}


def test_each_id_gets_its_own_host_address_and_keeps_it(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    a, b = ipam.allocate("a"), ipam.allocate("b")
    assert a != b
    for ip in (a, b):
        assert ip in NET and ip not in (NET.network_address, NET.broadcast_address, GW)
    assert ipam.allocate("a") == a and ipam.lookup("a") == a
    assert ipam.owner_of(b) == "b" and ipam.entries() == {"a": a, "b": b}


def test_addresses_survive_a_restart_and_are_not_reused(tmp_path: Path) -> None:
    first = make(tmp_path)
    held = {id: first.allocate(id) for id in ("a", "b", "c")}
    again = make(tmp_path)  # a new process: reads the directory
    assert again.entries() == held
    assert again.allocate("b") == held["b"]
    fresh = again.allocate("d")
    assert fresh not in held.values()


def test_release_frees_the_address_and_is_idempotent(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    ip = ipam.allocate("a")
    assert ipam.release("a") is True and ipam.release("a") is False
    assert ipam.lookup("a") is None and ipam.entries() == {}
    assert entries_on_disk(tmp_path) == {}
    assert make(tmp_path).entries() == {}  # gone on disk too
    assert ip not in make(tmp_path).entries().values()


def test_round_robin_does_not_hand_a_released_address_out_at_once(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    a = ipam.allocate("a")
    ipam.release("a")
    assert ipam.allocate("b") != a


def test_round_robin_goes_on_after_a_restart(tmp_path: Path) -> None:
    first = make(tmp_path)
    a, b = first.allocate("a"), first.allocate("b")
    first.release("a")
    c = make(tmp_path).allocate("c")  # a new process
    assert c not in (a, b) and int(c) == int(b) + 1


def test_exhaustion_is_a_clear_error_and_a_release_makes_room(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    got = [ipam.allocate(f"p{i}") for i in range(5)]  # .2-.6
    assert len(set(got)) == 5
    with pytest.raises(AddressesExhausted, match=r"10\.213\.0\.0/29.*TURBOK_POD_CIDR"):
        ipam.allocate("one-too-many")
    assert ipam.lookup("one-too-many") is None
    ipam.release("p2")
    assert ipam.allocate("one-too-many") == got[2]


def test_no_double_allocation_between_threads_or_two_books_on_one_directory(tmp_path: Path) -> None:
    net = ipaddress.IPv4Network("10.213.0.0/24")
    left, right = make(tmp_path, net), make(tmp_path, net)  # e.g. two processes that raced
    results: dict[str, ipaddress.IPv4Address] = {}
    lock = threading.Lock()

    def run(book: Ipam, prefix: str) -> None:
        for i in range(60):
            ip = book.allocate(f"{prefix}{i}")
            with lock:
                results[f"{prefix}{i}"] = ip

    threads = [threading.Thread(target=run, args=(book, p)) for book, p in
               ((left, "l"), (right, "r"), (left, "m"), (right, "s"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 240 and len(set(results.values())) == 240
    assert {str(ip): f"{left.token}:{id}" for id, ip in results.items()} == entries_on_disk(tmp_path)


def test_an_entry_from_another_range_moves_into_the_new_one(tmp_path: Path) -> None:
    old = make(tmp_path)
    was = old.allocate("a")
    new_net = ipaddress.IPv4Network("10.213.8.0/29")
    new = Ipam(tmp_path, new_net, reserved=(new_net.network_address + 1,))
    assert new.lookup("a") is None  # not an address of this network
    now = new.allocate("a")
    assert now in new_net and now != was
    assert new.entries() == {"a": now}
    assert not (tmp_path / str(was)).exists()


def test_files_that_are_not_entries_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not an entry")
    (tmp_path / "10.213.0.2").write_text("a regular file, not a symlink")
    ipam = make(tmp_path)
    assert ipam.entries() == {}
    ip = ipam.allocate("a")
    assert ip != ipaddress.IPv4Address("10.213.0.2")  # the name is taken on disk: skipped
    assert (tmp_path / "README").read_text() == "not an entry"


def test_two_entries_for_one_id_keep_the_lowest(tmp_path: Path) -> None:
    token = owner_token(tmp_path)
    os.symlink(f"{token}:a", tmp_path / "10.213.0.5")
    os.symlink(f"{token}:a", tmp_path / "10.213.0.3")
    ipam = make(tmp_path)
    assert ipam.entries() == {"a": ipaddress.IPv4Address("10.213.0.3")}
    assert sorted(entries_on_disk(tmp_path)) == ["10.213.0.3"]
    assert ipam.allocate("b") != ipaddress.IPv4Address("10.213.0.3")


def test_a_crash_after_the_entry_leaves_an_allocation_the_id_finds_again(tmp_path: Path) -> None:
    # What a crash right after symlink() leaves: the entry alone. The next process gives it back.
    os.symlink(f"{owner_token(tmp_path)}:a", tmp_path / "10.213.0.4")
    assert make(tmp_path).allocate("a") == ipaddress.IPv4Address("10.213.0.4")


def test_a_network_without_hosts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Ipam(tmp_path, ipaddress.IPv4Network("10.213.0.0/31"))


# -- one book per machine, shared by homes --

_ALLOCATOR = """
import ipaddress, json, sys
from pathlib import Path
from turbok.runtime.ipam import Ipam
book, home, prefix = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ipam = Ipam(book, ipaddress.IPv4Network("10.213.0.0/24"), reserved=(ipaddress.IPv4Address("10.213.0.1"),),
            owner=home)
sys.stdin.readline()  # both processes have opened their books: go
got = {f"{prefix}{i}": str(ipam.allocate(f"{prefix}{i}")) for i in range(100)}
print(json.dumps({"got": got, "mine": {k: str(v) for k, v in ipam.entries().items()}}))
"""


def test_two_homes_allocating_at_once_never_get_the_same_address(tmp_path: Path) -> None:
    # The bug: each home kept its own book (<home>/network/ipam) for the one machine-wide bridge, so two
    # control planes handed out the same addresses. Two processes, two homes, one book.
    import json
    import subprocess
    import sys

    book = tmp_path / "machine" / "turbok0" / "ipam"
    procs = [subprocess.Popen([sys.executable, "-c", _ALLOCATOR, str(book), str(tmp_path / home / "network"), p],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for home, p in (("home-a", "a"), ("home-b", "b"))]
    for proc in procs:  # both at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    a, b = (json.loads(out) for out in outs)
    assert len(set(a["got"].values()) | set(b["got"].values())) == 200  # no address twice
    assert a["mine"] == a["got"] and b["mine"] == b["got"]  # each sees only its own
    on_disk = entries_on_disk(book)
    assert len(on_disk) == 200
    tokens = {owner_token(tmp_path / home / "network") for home in ("home-a", "home-b")}
    assert {target.split(":")[0] for target in on_disk.values()} == tokens


def test_a_home_sees_and_releases_only_its_own_entries(tmp_path: Path) -> None:
    book = tmp_path / "book"
    a = Ipam(book, NET, reserved=(GW,), owner=tmp_path / "a")
    b = Ipam(book, NET, reserved=(GW,), owner=tmp_path / "b")
    ip = a.allocate("pod")
    assert b.lookup("pod") is None and b.entries() == {} and b.release("pod") is False
    other = b.allocate("pod")  # the same id in another home is another pod
    assert other != ip and a.lookup("pod") == ip
    assert entries_on_disk(book) == {str(ip): f"{a.token}:pod", str(other): f"{b.token}:pod"}


def _gone_home(tmp_path: Path, book: Path, *ids: str) -> tuple[Path, dict[str, ipaddress.IPv4Address]]:
    """A home that allocated, then stopped and was deleted."""
    home = tmp_path / "gone-home"
    ipam = Ipam(book, NET, reserved=(GW,), owner=home)
    held = {id: ipam.allocate(id) for id in ids}
    ipam.close()
    home.rmdir()
    return home, held


def test_entries_of_a_deleted_home_without_namespaces_are_collected(tmp_path: Path) -> None:
    book = tmp_path / "book"
    home, held = _gone_home(tmp_path, book, "x", "y")
    alive = {"y"}  # y's network namespace is still there (a sandbox not yet dead)
    b = Ipam(book, NET, reserved=(GW,), owner=tmp_path / "b", in_use=lambda id: id in alive)
    b.entries()  # opening the book collects
    assert entries_on_disk(book) == {str(held["y"]): f"{owner_token(home)}:y"}
    alive.clear()
    assert b.collect() == [("y", held["y"])]
    assert entries_on_disk(book) == {}
    assert list((book / ".owners").iterdir()) == [book / ".owners" / b.token]  # the gone owner's record too


def test_a_running_or_merely_stopped_home_keeps_its_addresses(tmp_path: Path) -> None:
    book = tmp_path / "book"
    running = Ipam(book, NET, reserved=(GW,), owner=tmp_path / "running")
    ip_running = running.allocate("r")
    (tmp_path / "running").rmdir()  # deleted under a live control plane: its lock still says it runs
    stopped = Ipam(book, NET, reserved=(GW,), owner=tmp_path / "stopped")
    ip_stopped = stopped.allocate("s")
    stopped.close()  # stopped, home kept (pods hibernated across a reboot come back on their address)
    other = Ipam(book, NET, reserved=(GW,), owner=tmp_path / "other")
    assert other.collect() == []
    assert set(entries_on_disk(book)) == {str(ip_running), str(ip_stopped)}
    running.close()
    assert other.collect() == [("r", ip_running)]  # now stopped and its home gone


def test_a_full_range_collects_before_it_says_so(tmp_path: Path) -> None:
    book = tmp_path / "book"
    b = Ipam(book, NET, reserved=(GW,), owner=tmp_path / "b")
    b.entries()  # open before the other home fills the range
    _, held = _gone_home(tmp_path, book, *(f"p{i}" for i in range(5)))
    assert b.allocate("mine") in held.values()


def test_a_homes_older_book_moves_into_the_machines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home" / "network"
    legacy = home / "ipam"
    legacy.mkdir(parents=True)
    os.symlink("a", legacy / "10.213.0.2")
    os.symlink("b", legacy / "10.213.0.3")
    book = tmp_path / "book"
    other = Ipam(book, NET, reserved=(GW,), owner=tmp_path / "other")
    assert other.allocate("o") == ipaddress.IPv4Address("10.213.0.2")  # what the bug did: taken twice
    ipam = Ipam(book, NET, reserved=(GW,), owner=home, legacy=legacy)
    assert ipam.entries() == {"b": ipaddress.IPv4Address("10.213.0.3")}
    assert "10.213.0.2 of a" in caplog.text  # a gets a new address at its next setup
    assert not legacy.exists()
    assert ipam.allocate("a") not in (ipaddress.IPv4Address("10.213.0.2"), ipaddress.IPv4Address("10.213.0.3"))


def test_an_address_in_use_outside_the_book_is_skipped(tmp_path: Path) -> None:
    ipam = make(tmp_path)
    outside = {ipaddress.IPv4Address("10.213.0.2"), ipaddress.IPv4Address("10.213.0.3")}
    got = ipam.allocate("a", avoid=lambda ip: ip in outside)
    assert got == ipaddress.IPv4Address("10.213.0.4")
    assert ipam.allocate("a", avoid=lambda ip: True) == got  # an address already held is kept as it is
    assert ipam.allocate("b") == ipaddress.IPv4Address("10.213.0.5")
    with pytest.raises(AddressesExhausted):
        ipam.allocate("c", avoid=lambda ip: True)


def test_a_home_named_through_a_link_is_the_same_owner(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    book = tmp_path / "book"
    ip = Ipam(book, NET, reserved=(GW,), owner=tmp_path / "real" / "network").allocate("pod")
    assert Ipam(book, NET, reserved=(GW,), owner=tmp_path / "link" / "network").lookup("pod") == ip


def test_an_owners_record_left_empty_by_a_crash_is_written_at_its_next_start(tmp_path: Path) -> None:
    book, home = tmp_path / "book", tmp_path / "home"
    (book / ".owners").mkdir(parents=True)
    (book / ".owners" / owner_token(home)).touch()  # made, never written
    ipam = Ipam(book, NET, reserved=(GW,), owner=home)
    ip = ipam.allocate("pod")
    ipam.close()  # stopped, its home kept: its address stays
    assert Ipam(book, NET, reserved=(GW,), owner=tmp_path / "other").collect() == []
    assert (book / ".owners" / owner_token(home)).read_text() == str(home)
    assert str(ip) in entries_on_disk(book)
