"""KEP-4330 rules: the emulation window of each binary, min compatibility defaults, rollback windows."""

from __future__ import annotations

import pytest

from turbok.upgrade.emulation import (
    ControlPlaneVersion,
    can_emulate,
    default_min_compatibility,
    emulation_floor,
    rollback_window,
)
from turbok.upgrade.errors import PlanRefusedError
from turbok.upgrade.versions import Version


def V(minor: int, patch: int | None = None) -> Version:
    return Version(1, minor, patch)


@pytest.mark.parametrize(
    ("binary", "floor"),
    [(29, None), (30, None), (31, None), (32, 31), (33, 31), (34, 31), (35, 32), (36, 33)],
)
def test_emulation_floor_per_binary(binary: int, floor: int | None) -> None:
    # 1.31: flag must equal the binary; 1.32: N-1; 1.33+: max(N-3, 1.31)
    assert emulation_floor(V(binary, 2)) == (V(floor) if floor else None)


def test_can_emulate_stays_inside_the_window() -> None:
    assert can_emulate(V(35, 1), V(35))  # equal is always allowed
    assert can_emulate(V(35, 1), V(32))
    assert not can_emulate(V(35, 1), V(31))  # below the floor
    assert not can_emulate(V(35, 1), V(36))  # never newer than the binary
    assert not can_emulate(V(31, 4), V(30))  # 1.31 cannot emulate
    assert can_emulate(V(32, 0), V(31))


@pytest.mark.parametrize(
    ("binary", "emulated", "expected"),
    [(35, 35, 34), (35, 33, 32), (35, 32, 32), (33, 31, 31), (32, 31, 31), (32, 32, 31), (36, 33, 33)],
)
def test_default_min_compatibility_is_emulated_minus_one_clamped_to_the_floor(binary: int, emulated: int,
                                                                              expected: int) -> None:
    assert default_min_compatibility(V(binary), V(emulated)) == V(expected)


def test_control_plane_version_refuses_impossible_states() -> None:
    with pytest.raises(PlanRefusedError, match=r"cannot emulate 1\.31.*1\.32\.\.1\.35"):
        ControlPlaneVersion.of(V(35, 1), V(31))
    with pytest.raises(PlanRefusedError, match="no emulation before 1.32"):
        ControlPlaneVersion.of(V(31, 2), V(30))
    # the flag exists from 1.35; a 1.34 binary only has the default
    with pytest.raises(PlanRefusedError, match="--min-compatibility-version exists from 1.35"):
        ControlPlaneVersion.of(V(34, 1), None, V(31))
    with pytest.raises(PlanRefusedError, match="between 1.32 and the emulated version 1.35"):
        ControlPlaneVersion.of(V(35, 1), None, V(31))


def test_control_plane_version_fills_defaults_and_prints_the_flag() -> None:
    cp = ControlPlaneVersion.of(V(35, 7), V(32))
    assert (cp.emulated, cp.min_compat, cp.emulating) == (V(32), V(32), True)
    assert cp.flag() == "1.32"
    plain = ControlPlaneVersion.of(V(35, 7))
    assert (plain.emulated, plain.min_compat, plain.flag()) == (V(35), V(34), "(unset)")
    assert str(cp) == "1.35.7 (emulating 1.32)"


def test_rollback_window_is_min_compatibility_to_emulated_minus_one() -> None:
    assert rollback_window(ControlPlaneVersion.of(V(35, 1))) == (V(34), V(34))
    assert rollback_window(ControlPlaneVersion.of(V(35, 1), None, V(33))) == (V(33), V(34))
    assert rollback_window(ControlPlaneVersion.of(V(32, 4))) == (V(31), V(31))
    assert rollback_window(ControlPlaneVersion.of(V(31, 4))) is None  # no emulation yet
    # emulating its own floor: nothing older to go back to
    assert rollback_window(ControlPlaneVersion.of(V(35, 1), V(32))) is None
