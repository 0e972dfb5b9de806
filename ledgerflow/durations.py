"""Durations as the seed writes them: `30m`, `2h`, `1d`.

The grammar is exactly `<positive integer><unit>` with unit `m` (minutes), `h` (hours) or `d`
(days); `0m` is allowed only where a caller says zero is allowed. Nothing else is accepted: no
spaces, no signs, no fractions, no compound forms like `1h30m` (write `90m`).
"""

from __future__ import annotations

import re
from datetime import timedelta

from ledgerflow.errors import DurationError

_UNITS = {"m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"(\d{1,6})([mhd])")
GRAMMAR = "a whole number followed by m, h or d, e.g. 30m, 2h, 1d"


def parse_duration(text: str, *, field: str = "duration", allow_zero: bool = False) -> timedelta:
    """Parse `text` into a timedelta, or raise DurationError naming `field` and the grammar."""
    match = _PATTERN.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise DurationError(f"{field}={text!r} is not a duration; expected {GRAMMAR}")
    amount = int(match.group(1))
    if amount == 0 and not allow_zero:
        raise DurationError(f"{field}={text!r} must be greater than zero; expected {GRAMMAR}")
    return timedelta(seconds=amount * _UNITS[match.group(2)])


def format_duration(delta: timedelta) -> str:
    """The shortest seed-style text for `delta` (which must be a whole number of minutes)."""
    seconds = int(delta.total_seconds())
    if seconds % 60 or seconds < 0:
        raise DurationError(f"{delta} is not a whole, non-negative number of minutes")
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    raise AssertionError("unreachable: minutes always divide")
