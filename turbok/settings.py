"""Bounds read from the environment when a server starts: one reader for every ``TURBOK_*`` setting.

The store, the API server and the router keep their bounds in frozen
dataclasses with documented defaults. ``from_env(cls, names)`` builds one where
each field named in ``names`` comes from its variable when that is set and not
empty; arguments ``given`` (not None) win over both. Integers take Kubernetes'
binary suffixes (``64Mi``, ``2Gi``) and ``_`` separators; a ``str`` field takes
the value stripped (its class checks what it may be); a value that does not
parse is a ``SettingError`` naming the variable, so a typo stops the start with
one clear line instead of running with a default nobody chose. Each class checks
its own ranges (``__post_init__``). This module imports nothing of turbok but
``turbok.errors``, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from turbok.errors import TurbokError

__all__ = ["SettingError", "check_positive", "from_env", "parse_size"]

T = TypeVar("T")

_SIZE = re.compile(r"(\d+)(Ki|Mi|Gi|Ti)?")
_UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class SettingError(TurbokError, ValueError):
    """A ``TURBOK_*`` variable, or a setting given in code, that cannot be used."""


def parse_size(raw: str) -> int:
    """``"4096"``, ``"64Mi"``, ``"1_000"`` as a number of bytes (or things); ValueError otherwise."""
    m = _SIZE.fullmatch(raw.strip().replace("_", ""))
    if m is None:
        raise ValueError(f"{raw!r} is not a whole number (optionally with Ki, Mi, Gi or Ti)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _parse(raw: str, kind: Any) -> int | float | str:
    if kind in (str, "str"):
        return raw.strip()
    if kind in (float, "float"):
        return float(raw)
    return parse_size(raw)


def from_env(cls: type[T], names: Mapping[str, str], environ: Mapping[str, str] | None = None,
             **given: Any) -> T:
    """An instance of the dataclass ``cls``: ``given`` values, else the variables ``names`` maps fields to.

    Fields neither given nor set keep their defaults. An unknown field in ``given`` is a TypeError
    (a caller's bug); an unparsable variable is a ``SettingError`` naming it.
    """
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(given) - set(fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no settings {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    for name, variable in names.items():
        if name in values:
            continue
        raw = environ.get(variable, "")
        if not raw.strip():
            continue
        try:
            values[name] = _parse(raw, fields[name].type)
        except ValueError:
            raise SettingError(f"{variable}={raw!r}: not a "
                               f"{'number' if fields[name].type in (float, 'float') else 'size or count'}") from None
    return cls(**values)


def check_positive(settings: Any, *, zero_allowed: frozenset[str] = frozenset()) -> None:
    """A ``SettingError`` for the first field of the dataclass ``settings`` that is negative (or zero)."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value < 0 or (value == 0 and f.name not in zero_allowed):
            raise SettingError(f"{type(settings).__name__}: {f.name} must be "
                               f"{'non-negative' if f.name in zero_allowed else 'positive'}, not {value!r}")
