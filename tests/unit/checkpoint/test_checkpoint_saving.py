"""A save returns before its copy, and the copy stays exact (saving.py): what is copied when,
the optimizer step that waits, in-place changes that are caught, and the fallback buffer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from turbok.checkpoint.errors import StateChangedError
from turbok.checkpoint.packing import Deferred, plan
from turbok.checkpoint.saving import DEFER_MIN, Snapshot, wait_copied


def test_large_tensors_and_immutable_leaves_are_copied_later_the_rest_now() -> None:
    big = torch.arange(DEFER_MIN // 4, dtype=torch.float32)
    small = torch.ones(8)
    arr = np.arange(10)
    lazy = Deferred((4,), np.dtype(np.int32), lambda: np.arange(4, dtype=np.int32))
    packing = plan({"big": big, "small": small, "arr": arr, "lazy": lazy, "raw": b"xyz"})
    snap = Snapshot(1, packing, copy="auto")
    names = [s.name for s in packing.shards]
    later = {names[i] for i in snap.later}
    assert later == {"big", "lazy", "raw"}  # bytes are immutable too
    # the small tensor and the numpy array were snapshotted: changing them now does not leak in
    small += 1
    arr += 1
    assert packing.leaves[names.index("big")].data_ptr() == big.data_ptr()  # not copied
    buf = bytearray(packing.data_size)
    packing.copy_into(memoryview(buf))
    snap.check_versions()
    snap.done()
    got = {s.name: bytes(buf[s.offset : s.offset + s.size]) for s in packing.shards}
    assert got["small"] == torch.ones(8).numpy().tobytes() and got["arr"] == np.arange(10).tobytes()
    assert got["lazy"] == np.arange(4, dtype=np.int32).tobytes()


def test_an_optimizer_step_waits_until_the_snapshot_is_copied() -> None:
    w = torch.nn.Parameter(torch.zeros(DEFER_MIN // 4))
    opt = torch.optim.SGD([w], lr=1.0)
    w.grad = torch.ones_like(w)
    snap = Snapshot(2, plan({"w": w.detach()}), copy="auto")
    assert not snap.copied.is_set()
    threading.Timer(0.3, snap.done).start()  # the stager finishes its copy later
    t0 = time.perf_counter()
    opt.step()
    assert time.perf_counter() - t0 >= 0.25, "the step did not wait for the copy"
    assert float(w.detach()[0]) == -1.0
    wait_copied(timeout=1)


def test_an_in_place_change_outside_the_optimizer_is_caught_not_saved_torn() -> None:
    t = torch.zeros(DEFER_MIN // 4)
    snap = Snapshot(3, plan({"t": t}), copy="auto")
    with torch.no_grad():
        t.add_(1)  # a hand-written update before the stager copied it
    with pytest.raises(StateChangedError, match="changed in place"):
        snap.check_versions()
    snap.done()


def test_copy_sync_defers_nothing() -> None:
    t = torch.zeros(DEFER_MIN // 4)
    snap = Snapshot(4, plan({"t": t}), copy="sync")
    assert snap.later == [] and snap.copied.is_set()
