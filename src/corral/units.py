"""Sizes as people write them (``256M``, ``10G``, ``1.5GiB``) and as people read them."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

KiB = 1024
MiB = 1024**2
GiB = 1024**3


def parse_size(text: str | int, default_unit: str = "") -> int:
    """Parse a size in bytes; units are binary (``M`` is MiB, as QEMU reads it).

    :param text: ``"256M"``, ``"10G"``, ``"1.5GiB"``, ``4096`` or ``"4096"``.
    :param default_unit: unit for a bare number (``"M"`` for memory sizes).
    :raise ValueError: the text is not a size; the message says what is accepted.
    """
    if isinstance(text, int):
        return text * _UNITS[default_unit.lower()]
    match = _SIZE.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a size; write a number with an optional unit (K, M, G, T)"
        )
    number, unit = match.groups()
    if not unit:
        unit = default_unit
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"{text!r} has an unknown unit {unit!r}; use K, M, G or T (powers of 1024)"
        )
    value = float(number) * factor
    if value != int(value):
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def format_size(nbytes: int) -> str:
    """``268435456`` -> ``"256 MiB"``; one decimal when needed."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    raise AssertionError("unreachable")
