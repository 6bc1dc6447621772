"""Runtime ids: fixed width, prefix-free, checked before any path is built (no services)."""

from __future__ import annotations

import pytest

from turbok.runtime.errors import InvalidSandboxSpec
from turbok.runtime.ids import ID_LENGTH, sandbox_id, validate_id


def test_ids_are_fixed_width_and_prefix_free() -> None:
    ids = {sandbox_id(f"uid-{i}") for i in range(2000)}
    assert len(ids) == 2000
    assert {len(i) for i in ids} == {ID_LENGTH}
    assert all(validate_id(i) == i for i in ids)
    # Fixed width makes prefix collisions impossible; check the property itself.
    ordered = sorted(ids)
    assert not any(b.startswith(a) for a, b in zip(ordered, ordered[1:], strict=False))


@pytest.mark.parametrize("bad", ["", "short", "x" * 25, "tk" + "A" * 22, "../" + "a" * 21, "tk" + "a" * 21 + "/"])
def test_validate_id_refuses_what_could_escape_or_prefix(bad: str) -> None:
    with pytest.raises(InvalidSandboxSpec, match="invalid sandbox id"):
        validate_id(bad)
