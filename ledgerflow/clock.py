"""Instants: the current time, a datetime as UTC, an instant as ISO text. No I/O but the clock.

Every module asks here, so "now" is one call and "as UTC" has one meaning per case:
`as_utc` for an instant someone gave us (naive is refused), `stored_as_utc` for a value read back
from a store that drops offsets (naive means UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current instant, aware UTC (this machine's clock, not the ledger database's)."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """`value` as a plain aware UTC datetime; a naive value is refused (it is not an instant).

    Built from the wall time and offset, since pendulum 2 DateTimes cannot take a ZoneInfo.
    """
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"{value!r} is naive; an instant needs a UTC offset")
    wall = datetime(*value.timetuple()[:6], value.microsecond)
    return (wall - offset).replace(tzinfo=UTC)


def stored_as_utc(value: datetime) -> datetime:
    """A value read back from a store: naive means UTC (SQLite text), aware is converted."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else as_utc(value)


def iso_z(value: datetime) -> str:
    """An instant as ISO 8601 text in UTC with a `Z`, e.g. `2025-03-09T10:00:00Z`."""
    return as_utc(value).isoformat().replace("+00:00", "Z")
