"""ledgerflow.clock: the one place that says what now is, what UTC is and how an instant reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pendulum
import pytest
from ledgerflow.clock import as_utc, iso_z, stored_as_utc, utc_now
from ledgerflow.windows import Window, windows_between

LA = ZoneInfo("America/Los_Angeles")


def test_utc_now_is_aware_utc_and_moves_forward() -> None:
    before = datetime.now(UTC)
    now = utc_now()
    assert now.utcoffset() == timedelta(0)
    assert now >= before


def test_as_utc_keeps_the_instant_and_drops_the_zone() -> None:
    local = datetime(2025, 3, 9, 1, 30, tzinfo=LA)  # PST, -08:00
    utc = as_utc(local)
    assert utc == local
    assert utc.tzinfo is UTC
    assert (utc.hour, utc.minute) == (9, 30)


def test_as_utc_takes_pendulum_datetimes_as_plain_datetimes() -> None:
    value = pendulum.datetime(2025, 7, 1, 1, 30, tz="America/Los_Angeles")
    utc = as_utc(value)
    assert type(utc) is datetime
    assert utc == datetime(2025, 7, 1, 8, 30, tzinfo=UTC)  # PDT, -07:00


def test_as_utc_refuses_a_naive_value_saying_why() -> None:
    with pytest.raises(ValueError, match="is naive; an instant needs a UTC offset"):
        as_utc(datetime(2025, 3, 9, 1, 30))


def test_a_stored_naive_value_is_read_as_utc_and_an_aware_one_converted() -> None:
    assert stored_as_utc(datetime(2025, 3, 9, 10)) == datetime(2025, 3, 9, 10, tzinfo=UTC)
    plus_two = datetime(2025, 3, 9, 12, tzinfo=timezone(timedelta(hours=2)))
    stored = stored_as_utc(plus_two)
    assert stored == datetime(2025, 3, 9, 10, tzinfo=UTC)
    assert stored.tzinfo is UTC


def test_iso_z_writes_utc_with_a_z() -> None:
    assert iso_z(datetime(2025, 3, 9, 2, tzinfo=LA)) == "2025-03-09T10:00:00Z"
    assert iso_z(datetime(2025, 3, 9, 10, 0, 0, 5, tzinfo=UTC)) == "2025-03-09T10:00:00.000005Z"


def test_a_window_reads_its_bounds_the_way_its_dict_does() -> None:
    start = datetime(2025, 3, 9, 8, tzinfo=UTC)
    windows: list[Window] = windows_between(
        start, start + timedelta(hours=6), "America/Los_Angeles", "2h"
    )
    spring_forward = windows[0]
    assert spring_forward.start_iso == spring_forward.to_dict()["start"] == "2025-03-09T08:00:00Z"
    assert spring_forward.end_iso == spring_forward.to_dict()["end"] == "2025-03-09T10:00:00Z"
