"""Units of baton.yml values: durations and percentages, parsed and shown.

This module owns the accepted forms of a duration (a number of seconds, or ``<number><unit>``
parts such as ``500ms`` or ``1m30s``) and of a percentage (``"5%"`` or a bare fraction in
[0, 1]; a bare number above 1 is refused because ``5`` is ambiguous), their canonical short
forms, and how a bad value is quoted back to a user (``shown``). Pure: no I/O.
"""

from __future__ import annotations

import math
import re

# --------------------------------------------------------------------------- values


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "y": 365 * 86400.0}
_DURATION_HINT = "a duration like 30s or 500ms"


def shown(value: object) -> str:
    """How a bad value is quoted back to the user, in YAML's words rather than Python's."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def parse_duration(value: object) -> float:
    """Seconds from ``"100ms"``, ``"2s"``, ``"10m"``, ``"1h"``, ``"1m30s"`` or a plain number.

    Raises ``ValueError`` (with a message fit for a user) for negatives, NaN, infinities,
    booleans and anything else.
    """
    seconds: float
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HINT}, got {shown(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if not text:
            raise ValueError(f"expected {_DURATION_HINT}, got {shown(value)}")
        if text.startswith("-") and text != "-":
            try:
                parse_duration(text[1:])
            except ValueError:
                raise ValueError(f"expected {_DURATION_HINT}, got {shown(value)}") from None
            raise ValueError(f"expected a duration of 0 or more (like 30s), got {shown(value)}")
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or pos == 0:
                raise ValueError(f"expected {_DURATION_HINT}, got {shown(value)}") from None
    else:
        raise ValueError(f"expected {_DURATION_HINT}, got {shown(value)}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"expected {_DURATION_HINT}, got {shown(value)}")
    if seconds < 0:
        raise ValueError(f"expected a duration of 0 or more (like 30s), got {shown(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable form: 0.1 → ``100ms``, 90 → ``90s``, 600 → ``10m``, 3600 → ``1h``."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_percent(value: object) -> float:
    """A fraction in [0, 1] from ``"5%"`` (→ 0.05) or a bare fraction such as ``0.05``.

    A bare number above 1 is refused rather than guessed at (``5`` could mean 5% or 500%).
    """
    hint = "a percentage like 5% (or a fraction between 0 and 1)"
    if isinstance(value, bool):
        raise ValueError(f"expected {hint}, got {shown(value)}")
    fraction: float
    if isinstance(value, int | float):
        fraction = float(value)
    elif isinstance(value, str) and value.strip().endswith("%"):
        try:
            fraction = float(value.strip()[:-1].strip()) / 100.0
        except ValueError:
            raise ValueError(f"expected {hint}, got {shown(value)}") from None
    elif isinstance(value, str):
        try:
            fraction = float(value.strip())
        except ValueError:
            raise ValueError(f"expected {hint}, got {shown(value)}") from None
    else:
        raise ValueError(f"expected {hint}, got {shown(value)}")
    if math.isnan(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(
            "expected a percentage between 0% and 100% (like 5%, or a fraction such as 0.05), "
            f"got {shown(value)}"
        )
    return fraction


def format_percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"
