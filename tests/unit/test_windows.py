"""Window math: the exact DST rules of DESIGN.md, pinned."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pendulum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledgerflow.errors import ConfigError, DurationError, RecordIncomplete
from ledgerflow.windows import (
    Window,
    build_record,
    check_granularity,
    eligible_windows,
    last_window_ending_by,
    scheduled_windows,
    split_registered,
    window_containing,
    windows_between,
)

LA = "America/Los_Angeles"


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def local_day(day: str, tz: str, granularity: str) -> list[Window]:
    d = date.fromisoformat(day)
    zi = ZoneInfo(tz)
    lo = datetime(d.year, d.month, d.day, tzinfo=zi).astimezone(UTC)
    nxt = d + timedelta(days=1)
    hi = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zi).astimezone(UTC)
    return windows_between(lo, hi, tz, granularity)


def spans(ws: list[Window]) -> list[tuple[str, str]]:
    return [(w.start.strftime("%H:%M"), w.end.strftime("%H:%M")) for w in ws]


def assert_tiles(ws: list[Window]) -> None:
    for a, b in itertools.pairwise(ws):
        assert a.end == b.start, f"gap or overlap between {a} and {b}"
        assert a.start < a.end


def test_la_spring_forward_2h_has_one_short_window() -> None:
    ws = local_day("2025-03-09", LA, "2h")
    assert len(ws) == 12
    assert spans(ws)[:3] == [("08:00", "10:00"), ("10:00", "11:00"), ("11:00", "13:00")]
    assert sum((w.duration for w in ws), timedelta()) == timedelta(hours=23)
    assert [w.duration for w in ws].count(timedelta(hours=1)) == 1
    assert_tiles(ws)


def test_la_fall_back_2h_has_one_long_window() -> None:
    ws = local_day("2025-11-02", LA, "2h")
    assert len(ws) == 12
    assert spans(ws)[:2] == [("07:00", "10:00"), ("10:00", "12:00")]
    assert sum((w.duration for w in ws), timedelta()) == timedelta(hours=25)
    assert_tiles(ws)


def test_la_spring_forward_30m_drops_boundaries_that_do_not_advance() -> None:
    ws = local_day("2025-03-09", LA, "30m")
    # 02:30 local does not exist: fold=0 takes the pre-gap offset, so it is 10:30Z (DESIGN.md).
    around = [w for w in ws if z("2025-03-09T09:00:00Z") <= w.start < z("2025-03-09T11:30:00Z")]
    assert spans(around) == [
        ("09:00", "09:30"),
        ("09:30", "10:00"),
        ("10:00", "10:30"),
        ("10:30", "11:00"),
        ("11:00", "11:30"),
    ]
    assert len(ws) == 46
    assert all(w.duration == timedelta(minutes=30) for w in ws)
    assert_tiles(ws)


def test_la_fall_back_30m_takes_the_earlier_instant_for_ambiguous_times() -> None:
    ws = local_day("2025-11-02", LA, "30m")
    long = [w for w in ws if w.duration != timedelta(minutes=30)]
    # 01:30 is ambiguous: fold=0 takes PDT (08:30Z); 02:00 PST is 10:00Z.
    assert spans(long) == [("08:30", "10:00")]
    assert len(ws) == 48
    assert_tiles(ws)


def test_nonexistent_time_uses_offset_before_the_gap() -> None:
    ws = windows_between(z("2025-03-09T10:00:00Z"), z("2025-03-09T11:00:00Z"), LA, "30m")
    assert ws[0].start == z("2025-03-09T10:00:00Z")
    assert ws[1].start == z("2025-03-09T10:30:00Z")


def test_lord_howe_half_hour_shift() -> None:
    tz = "Australia/Lord_Howe"
    spring = local_day("2025-10-05", tz, "30m")
    assert sum((w.duration for w in spring), timedelta()) == timedelta(hours=23, minutes=30)
    assert len(spring) == 47
    fall = local_day("2025-04-06", tz, "30m")
    assert sum((w.duration for w in fall), timedelta()) == timedelta(hours=24, minutes=30)
    assert [w.duration for w in fall].count(timedelta(hours=1)) == 1
    for ws in (spring, fall, local_day("2025-10-05", tz, "2h"), local_day("2025-04-06", tz, "2h")):
        assert_tiles(ws)


def test_kolkata_half_hour_offset() -> None:
    ws = local_day("2025-06-01", "Asia/Kolkata", "2h")
    assert ws[0].start == z("2025-05-31T18:30:00Z")
    assert ws[0].target_day == date(2025, 6, 1)
    assert all(w.duration == timedelta(hours=2) for w in ws)
    assert len(ws) == 12


def test_one_day_granularity_follows_local_midnight() -> None:
    ws = windows_between(z("2025-03-08T12:00:00Z"), z("2025-03-11T00:00:00Z"), LA, "1d")
    assert [w.target_day.isoformat() for w in ws] == [
        "2025-03-08",
        "2025-03-09",
        "2025-03-10",
    ]
    assert [w.duration for w in ws] == [
        timedelta(hours=24),
        timedelta(hours=23),
        timedelta(hours=24),
    ]
    assert ws[1].time_interval == "1d"


def test_multi_day_granularity_is_anchored_to_the_epoch() -> None:
    ws = windows_between(z("2025-01-01T00:00:00Z"), z("2025-01-20T00:00:00Z"), "UTC", "7d")
    assert all((w.start.date() - date(1970, 1, 1)).days % 7 == 0 for w in ws)
    assert_tiles(ws)


def test_window_containing_and_half_open_edges() -> None:
    w = window_containing(z("2025-06-01T02:00:00Z"), "UTC", "2h")
    assert (w.start, w.end) == (z("2025-06-01T02:00:00Z"), z("2025-06-01T04:00:00Z"))
    w = window_containing(z("2025-06-01T03:59:59.999999Z"), "UTC", "2h")
    assert w.start == z("2025-06-01T02:00:00Z")


def test_future_data_protection_needs_end_before_now_minus_lag() -> None:
    now = z("2025-06-02T05:00:00Z")
    ws = eligible_windows(z("2025-05-31T00:00:00Z"), now, "UTC", "2h", timedelta(days=1))
    assert ws[-1].end == z("2025-06-01T04:00:00Z")
    assert all(w.end <= now - timedelta(days=1) for w in ws)
    exact = eligible_windows(
        z("2025-05-31T00:00:00Z"), z("2025-06-02T04:00:00Z"), "UTC", "2h", timedelta(days=1)
    )
    assert exact[-1].end == z("2025-06-01T04:00:00Z")


def test_unset_start_begins_with_the_latest_eligible_window_then_follows() -> None:
    # Off a boundary: the window holding the cutoff is not eligible, the one before it is.
    cutoff = z("2025-06-01T05:00:00Z")
    [first] = scheduled_windows(None, None, None, cutoff, "UTC", "2h")
    assert (first.start, first.end) == (z("2025-06-01T02:00:00Z"), z("2025-06-01T04:00:00Z"))
    # On a boundary: the window ending exactly at the cutoff is eligible.
    on_edge = last_window_ending_by(z("2025-06-01T04:00:00Z"), "UTC", "2h")
    assert on_edge == first
    # Later runs continue from the watermark (the end of what was registered), gap-free.
    later = scheduled_windows(first.end, None, None, z("2025-06-01T09:30:00Z"), "UTC", "2h")
    assert [w.start for w in later] == [z("2025-06-01T04:00:00Z"), z("2025-06-01T06:00:00Z")]
    idle = z("2025-06-01T09:59:00Z")
    assert scheduled_windows(later[-1].end, None, None, idle, "UTC", "2h") == []


def test_scheduled_windows_start_at_start_and_stop_before_end() -> None:
    cutoff = z("2025-03-11T00:00:00Z")
    ws = scheduled_windows(
        None, z("2025-03-09T09:00:00Z"), z("2025-03-09T16:00:00Z"), cutoff, LA, "2h"
    )
    assert_tiles(ws)
    assert ws[0].start <= z("2025-03-09T09:00:00Z") < ws[0].end
    assert ws[-1].start < z("2025-03-09T16:00:00Z") <= ws[-1].end


@settings(max_examples=40, deadline=None)
@given(
    cutoff=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
    tz=st.sampled_from([LA, "UTC", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/London"]),
    granularity=st.sampled_from(["15m", "1h", "2h", "3h", "1d", "7d"]),
)
def test_the_latest_eligible_window_ends_by_the_cutoff_and_its_successor_after(
    cutoff: datetime, tz: str, granularity: str
) -> None:
    last = last_window_ending_by(cutoff, tz, granularity)
    assert last.end <= cutoff
    assert window_containing(last.end, tz, granularity).end > cutoff


def test_split_registered_skips_duplicates_and_names_the_first_overlap() -> None:
    twos = windows_between(z("2025-06-01T00:00:00Z"), z("2025-06-01T08:00:00Z"), "UTC", "2h")
    known = [(w.start, w.end) for w in twos[1:3]]
    assert split_registered(twos, known) == ([twos[0], twos[3]], None)
    fours = windows_between(z("2025-06-01T00:00:00Z"), z("2025-06-01T08:00:00Z"), "UTC", "4h")
    fresh, clash = split_registered(fours, known)
    assert fresh == [] and clash == (fours[0], known[0])
    # A long registered window reaching over several candidates is found too.
    day = [(z("2025-05-31T00:00:00Z"), z("2025-06-01T04:00:00Z"))]
    assert split_registered(twos, day)[1] == (twos[0], day[0])


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("2x", "not a duration"),
        ("7h", "does not divide a day"),
        ("25h", "not a whole number of days"),
        ("0h", "greater than zero"),
        ("-2h", "not a duration"),
        ("1h30m", "not a duration"),
        ("2 h", "not a duration"),
    ],
)
def test_bad_granularity_names_the_value_and_what_is_allowed(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_granularity(text)
    assert repr(text) in str(info.value)
    assert needle in str(info.value)
    assert "e.g." in str(info.value) or "allowed" in str(info.value)


def test_durations_are_a_config_error_and_a_value_error() -> None:
    with pytest.raises(DurationError):
        check_granularity("abc")
    assert issubclass(DurationError, ValueError)


def test_unknown_timezone_suggests_the_right_spelling() -> None:
    with pytest.raises(ConfigError, match="did you mean 'America/Los_Angeles'"):
        windows_between(
            z("2025-01-01T00:00:00Z"), z("2025-01-02T00:00:00Z"), "america/los_angeles", "2h"
        )


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        windows_between(datetime(2025, 1, 1), datetime(2025, 1, 2), "UTC", "2h")


def test_pendulum_datetimes_give_the_same_windows() -> None:
    a = windows_between(
        pendulum.datetime(2025, 3, 9, tz="UTC"), pendulum.datetime(2025, 3, 10, tz="UTC"), LA, "2h"
    )
    b = windows_between(z("2025-03-09T00:00:00Z"), z("2025-03-10T00:00:00Z"), LA, "2h")
    assert [(w.start, w.end) for w in a] == [(w.start, w.end) for w in b]


def test_build_record_fills_key_fields_and_refuses_empty_ones() -> None:
    w = local_day("2025-03-09", LA, "2h")[1]
    record = build_record("web", w, LA)
    assert record["key_x"] == "web/2025-03-09/20250309T100000Z"
    assert record["key_z"] == "3600"
    assert str(record["key_y"]).startswith("2025-03-09T03:00:00-07:00")
    with pytest.raises(RecordIncomplete, match="key_y"):
        build_record("web", w, LA, hooks={"key_y": lambda *_: ""})
    record = build_record("web", w, LA, hooks={"key_y": lambda *_: ""}, check_fields=["key_x"])
    assert record["key_y"] == ""


ZONES = [
    "UTC",
    LA,
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Pacific/Chatham",
    "America/Santiago",
    "Africa/Casablanca",
]
GRANULARITIES = ["15m", "30m", "1h", "2h", "3h", "4h", "6h", "8h", "12h", "1d", "2d", "7d"]


@settings(max_examples=300, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    granularity=st.sampled_from(GRANULARITIES),
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2035, 1, 1)),
    minutes=st.integers(min_value=1, max_value=60 * 24 * 20),
)
def test_windows_tile_any_span_without_gap_or_overlap(
    tz: str, granularity: str, start: datetime, minutes: int
) -> None:
    lo = start.replace(tzinfo=UTC)
    hi = lo + timedelta(minutes=minutes)
    ws = windows_between(lo, hi, tz, granularity)
    step = check_granularity(granularity)
    assert ws[0].start <= lo < ws[0].end
    assert ws[-1].start < hi <= ws[-1].end
    assert_tiles(ws)
    zi = ZoneInfo(tz)
    for w in ws:
        # No DST shift in these zones exceeds 1h, so a window stays within a shift of its step.
        assert timedelta(0) < w.duration <= step + timedelta(hours=1)
        assert w.target_day == w.start.astimezone(zi).date()
    # Splitting the span changes nothing: windows are a property of time, not of the query.
    mid = lo + (hi - lo) / 2
    left, right = (
        windows_between(lo, mid, tz, granularity),
        windows_between(mid, hi, tz, granularity),
    )
    assert sorted(set(left) | set(right)) == ws
