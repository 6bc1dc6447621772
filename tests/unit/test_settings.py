"""``TURBOK_*`` settings: one reader, sizes with binary suffixes, one clear error per bad variable."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from turbok import settings


@dataclass(frozen=True)
class Bounds:
    size: int = 10
    rate: float = 1.5
    queue: int = 4

    def __post_init__(self) -> None:
        settings.check_positive(self, zero_allowed=frozenset({"queue"}))


NAMES = {"size": "T_SIZE", "rate": "T_RATE", "queue": "T_QUEUE"}


@pytest.mark.parametrize(("raw", "value"), [("4096", 4096), ("64Mi", 64 << 20), (" 2Gi ", 2 << 30),
                                            ("1_000", 1000), ("3Ki", 3072)])
def test_sizes_take_binary_suffixes(raw: str, value: int) -> None:
    assert settings.parse_size(raw) == value


@pytest.mark.parametrize("raw", ["", "-1", "1.5", "2G", "1e6", "Mi", "12 Mi"])
def test_other_sizes_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        settings.parse_size(raw)


def test_variables_fill_what_is_not_given_and_empty_ones_keep_the_default() -> None:
    got = settings.from_env(Bounds, NAMES, {"T_SIZE": "2Ki", "T_RATE": "0.25", "T_QUEUE": " "}, queue=0)
    assert got == Bounds(size=2048, rate=0.25, queue=0)
    assert settings.from_env(Bounds, NAMES, {}) == Bounds()


def test_a_bad_variable_names_itself() -> None:
    with pytest.raises(settings.SettingError, match=r"T_SIZE='lots'"):
        settings.from_env(Bounds, NAMES, {"T_SIZE": "lots"})
    with pytest.raises(settings.SettingError, match="size must be positive"):
        settings.from_env(Bounds, NAMES, {"T_SIZE": "0"})
    with pytest.raises(settings.SettingError, match="rate must be positive"):
        Bounds(rate=-1.0)
    with pytest.raises(TypeError, match="no settings colour"):
        settings.from_env(Bounds, NAMES, {}, colour=1)
