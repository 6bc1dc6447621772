"""Kubernetes resource quantities (``250m``, ``1.5``, ``512Mi``, ``1G``, ``1e3``) as numbers."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["QuantityError", "cpu_millis", "format_quantity", "parse_quantity", "to_bytes"]

_SUFFIXES = {
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_PATTERN = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$")


class QuantityError(ValueError):
    pass


def parse_quantity(value: str | int | float) -> Decimal:
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _PATTERN.match(value.strip())
    if not m:
        raise QuantityError(f"quantities must match the regular expression "
                            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {value!r}")
    number, exponent, suffix = m.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as e:
        raise QuantityError(f"invalid quantity {value!r}") from e
    if exponent:
        return base * Decimal(10) ** int(exponent[1:])
    return base * _SUFFIXES[suffix or ""]


def cpu_millis(value: str | int | float) -> int:
    """CPU in millicores, rounded up as the kubelet does (``250m`` -> 250, ``1.5`` -> 1500)."""
    return int((parse_quantity(value) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def to_bytes(value: str | int | float) -> int:
    return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))


_BINARY = (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10))
_DECIMAL = (("E", 18), ("P", 15), ("T", 12), ("G", 9), ("M", 6), ("k", 3))


def format_quantity(value: Decimal, *, binary: bool = False) -> str:
    """A canonical form as kube-apiserver writes it (``1Gi``, ``800m``, ``2``): binary suffixes for byte
    quantities where exact, else the largest decimal suffix that keeps the number whole."""
    if value == 0:
        return "0"
    sign, value = ("-", -value) if value < 0 else ("", value)
    if value == value.to_integral_value():
        whole = int(value)
        for suffix, shift in _BINARY if binary else ():
            if whole % (1 << shift) == 0:
                return f"{sign}{whole >> shift}{suffix}"
        for suffix, power in _DECIMAL:
            if whole % 10**power == 0:
                return f"{sign}{whole // 10**power}{suffix}"
        return f"{sign}{whole}"
    for suffix, scale in (("m", Decimal(1000)), ("u", Decimal(10**6)), ("n", Decimal(10**9))):
        scaled = value * scale
        if scaled == scaled.to_integral_value():
            return f"{sign}{int(scaled)}{suffix}"
    # Finer than a nano-unit: kube rounds up to the next nano-unit.
    return f"{sign}{int((value * Decimal(10**9)).to_integral_value(rounding='ROUND_CEILING'))}n"
