"""Leases die with their client; pins are counted and die with theirs (leases.py)."""

from __future__ import annotations

import threading
import time

import pytest

from turbok.checkpoint.errors import CheckpointError
from turbok.checkpoint.leases import Residency
from turbok.checkpoint.manifest import PartKey

KEY = PartKey("j", 40, 0)


def _residency(timeout: float = 60.0) -> Residency:
    return Residency(threading.Condition(threading.RLock()), lease_timeout=timeout)


def test_a_live_lease_refuses_another_writer_and_dies_with_its_connection() -> None:
    r = _residency()
    r.take_lease(KEY, owner=1)
    with pytest.raises(CheckpointError, match="already being saved"):
        r.take_lease(KEY, owner=2)
    assert r.drop_owner(1) == [KEY]  # the trainer's connection closed mid-copy
    r.take_lease(KEY, owner=2)  # the resumed trainer's save succeeds
    assert not r.end_lease(KEY, owner=1) and r.end_lease(KEY, owner=2)
    assert KEY not in r.busy()


def test_a_lease_times_out_and_another_connection_of_the_same_library_may_stage() -> None:
    r = _residency(timeout=0.05)
    r.take_lease(KEY, owner=1, session="s")
    assert r.end_lease(KEY, owner=9, session="s")  # the library's stager connection
    r.take_lease(KEY, owner=1, session="s")
    time.sleep(0.1)
    assert r.expired() == [KEY]
    assert not r.end_lease(KEY, owner=1, session="s")


def test_pins_are_counted_and_released_exactly_once_or_with_their_connection() -> None:
    r = _residency()
    a = r.pin(KEY)
    r.pin(KEY, owner=7)
    a.release()
    a.release()  # idempotent: does not drop the other pin
    assert r.pinned(KEY)
    r.drop_owner(7)
    assert not r.pinned(KEY) and KEY not in r.busy()
    c = r.pin(KEY, owner=3)
    assert r.release_owned(KEY, 3) and not r.release_owned(KEY, 3)
    assert c._released


def test_a_part_being_received_is_busy_and_refuses_a_local_writer() -> None:
    r = _residency()
    r.begin_receiving(KEY, "memory")
    with pytest.raises(CheckpointError):
        r.take_lease(KEY, owner=1)
    assert KEY in r.busy()
    r.end_receiving(KEY)
    r.take_lease(KEY, owner=1)
