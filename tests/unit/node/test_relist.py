"""The evented relist's sweep of every pod: as often as before for a few pods, within 1% of a core for many."""

from __future__ import annotations

from tests.unit.node.conftest import NodeHarness
from turbok.node.node import LOOK_SECONDS, SWEEP_BUDGET, NodeSettings


async def test_the_sweep_keeps_to_its_share_of_a_core(harness: NodeHarness) -> None:
    node = await harness.start(settings=NodeSettings(relist_seconds=2.0, sweep_seconds=60.0))
    assert node._sweep_interval(0) == node._sweep_interval(40) == 2.0  # a disk turned read-only: seen in 2 s
    assert node._sweep_interval(400) == 400 * LOOK_SECONDS / SWEEP_BUDGET == 20.0
    assert node._sweep_interval(1_800) == 60.0  # the most, whatever the count
