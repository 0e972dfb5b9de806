"""Window math: pure functions, no I/O, no Prefect.

The rules (DESIGN.md, "Windows"):

- windows are half-open `[start, end)` and carried as aware UTC datetimes;
- boundaries are local wall-clock multiples of the granularity from local midnight in the
  pipeline's timezone (for whole-day granularities of N days, every Nth local midnight counted
  from 1970-01-01);
- each local boundary becomes a UTC instant the way `zoneinfo` does with `fold=0`: an ambiguous
  time (fall-back) takes its earlier instant, a nonexistent one (spring-forward) takes the offset
  in force before the gap;
- a boundary not strictly later than the previous one is dropped, so windows tile time with no
  gap and no overlap and a DST day has one shorter or one longer window.

`zoneinfo` is used directly because the rule is defined by it; pendulum 2 and 3 resolve ambiguous
times differently. pendulum DateTimes are accepted wherever a datetime is, since they subclass it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from ledgerflow.clock import as_utc as as_utc  # re-exported: older callers import it from here
from ledgerflow.clock import iso_z
from ledgerflow.durations import format_duration, parse_duration
from ledgerflow.errors import ConfigError, RecordIncomplete

DAY = timedelta(days=1)
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True, order=True)
class Window:
    """One half-open window `[start, end)` in UTC, with the seed's labels."""

    start: datetime
    end: datetime
    target_day: date = field(compare=False)
    time_interval: str = field(compare=False)

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() != timedelta(0):
                raise ValueError(f"Window.{name} must be an aware UTC datetime, got {value!r}")
        if self.end <= self.start:
            raise ValueError(f"Window end {self.end} must be after start {self.start}")

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    @property
    def key(self) -> str:
        """A compact, sortable, path-safe name for the window: its UTC start."""
        return self.start.strftime("%Y%m%dT%H%M%SZ")

    def local(self, timezone: str) -> tuple[datetime, datetime]:
        """The window's start and end as wall-clock times in `timezone`."""
        tz = ZoneInfo(timezone)
        return self.start.astimezone(tz), self.end.astimezone(tz)

    @property
    def start_iso(self) -> str:
        """The start as ISO text in UTC, e.g. `2025-03-09T10:00:00Z`."""
        return iso_z(self.start)

    @property
    def end_iso(self) -> str:
        """The end as ISO text in UTC."""
        return iso_z(self.end)

    def to_dict(self) -> dict[str, str]:
        return {
            "start": self.start_iso,
            "end": self.end_iso,
            "target_day": self.target_day.isoformat(),
            "time_interval": self.time_interval,
        }


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or a ConfigError saying what is allowed."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ConfigError(f"timezone={name!r} is not an IANA timezone name such as 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        close = sorted(z for z in available_timezones() if z.lower() == name.lower())
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"timezone={name!r} is not a known IANA timezone{hint}; "
            "allowed: names such as 'UTC', 'America/Los_Angeles', 'Asia/Kolkata'"
        ) from exc


def check_granularity(text: str) -> timedelta:
    """Parse a granularity: it must divide 24h exactly or be a whole number of days."""
    step = parse_duration(text, field="granularity")
    if step < DAY and DAY % step != timedelta(0):
        raise ConfigError(
            f"granularity={text!r} does not divide a day; allowed: a divisor of 24h "
            "(e.g. 15m, 30m, 1h, 2h, 3h, 4h, 6h, 8h, 12h) or a whole number of days (1d, 7d)"
        )
    if step > DAY and step % DAY != timedelta(0):
        raise ConfigError(
            f"granularity={text!r} is longer than a day but not a whole number of days; "
            "allowed: a divisor of 24h or a whole number of days (e.g. 1d, 2d, 7d)"
        )
    return step


def to_utc(local_day: date, wall: time, tz: ZoneInfo) -> datetime:
    """A local wall-clock time as a UTC instant, resolved as zoneinfo does with fold=0."""
    return datetime.combine(local_day, wall, tzinfo=tz).replace(fold=0).astimezone(UTC)


def _day_boundaries(local_day: date, step: timedelta, tz: ZoneInfo) -> Iterator[datetime]:
    if step >= DAY:
        if (local_day - _EPOCH).days % (step // DAY) == 0:
            yield to_utc(local_day, time(0), tz)
        return
    offset = timedelta(0)
    while offset < DAY:
        yield to_utc(local_day, (datetime.min + offset).time(), tz)
        offset += step


def boundaries(first_day: date, last_day: date, step: timedelta, tz: ZoneInfo) -> list[datetime]:
    """Strictly increasing UTC boundaries for the local days `first_day..last_day` inclusive."""
    out: list[datetime] = []
    day = first_day
    while day <= last_day:
        for instant in _day_boundaries(day, step, tz):
            if not out or instant > out[-1]:
                out.append(instant)
        day += timedelta(days=1)
    return out


def windows_between(
    start: datetime, end: datetime, timezone: str, granularity: str
) -> list[Window]:
    """Every window that overlaps `[start, end)`: the first contains `start`, the last ends at or
    after `end`. Together they tile the span with no gap and no overlap."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("windows_between needs aware datetimes (a naive time has no instant)")
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        return []
    tz = zone(timezone)
    step = check_granularity(granularity)
    label = format_duration(step)
    # Pad by a step (and two days for DST and whole-day steps) so the windows holding the span's
    # edges are complete.
    pad = max(step, DAY) + 2 * DAY
    first_day = (start.astimezone(tz) - pad).date()
    last_day = (end.astimezone(tz) + pad).date()
    edges = boundaries(first_day, last_day, step, tz)
    result: list[Window] = []
    for lo, hi in itertools.pairwise(edges):
        if hi <= start:
            continue
        if lo >= end:
            break
        result.append(Window(lo, hi, lo.astimezone(tz).date(), label))
    return result


def window_containing(instant: datetime, timezone: str, granularity: str) -> Window:
    """The one window that holds `instant`."""
    return windows_between(instant, instant + timedelta(microseconds=1), timezone, granularity)[0]


@dataclass(frozen=True)
class Grid:
    """What cuts a pipeline's time into windows: its timezone and its granularity.

    Two configs with the same Grid produce the same windows; `granularity` is kept in its
    shortest text (`120m` and `2h` are one grid)."""

    timezone: str
    granularity: str

    @classmethod
    def of(cls, timezone: str, granularity: str) -> Grid:
        zone(timezone)
        return cls(timezone, format_duration(check_granularity(granularity)))

    def holds(self, start: datetime, end: datetime) -> bool:
        """Whether `[start, end)` is one window of this grid."""
        window = window_containing(start, self.timezone, self.granularity)
        return (window.start, window.end) == (as_utc(start), as_utc(end))

    def has_boundary(self, instant: datetime) -> bool:
        return window_containing(instant, self.timezone, self.granularity).start == as_utc(instant)

    def differences(self, new: Grid) -> list[str]:
        """One phrase per field that differs: the field, this (stored) value and the new one."""
        return [
            f"{name}: the ledger has {old!r}, the config says {now!r}"
            for name in ("timezone", "granularity")
            if (old := getattr(self, name)) != (now := getattr(new, name))
        ]


def split_registered(
    candidates: Sequence[Window], registered: Sequence[tuple[datetime, datetime]]
) -> tuple[list[Window], tuple[Window, tuple[datetime, datetime]] | None]:
    """Candidates not registered yet, and the first candidate that overlaps a registered window
    with other bounds (with that window), if any: registering it would overlap.

    `registered` must hold every registered window that overlaps the candidates' span."""
    known = sorted(registered)
    starts = [lo for lo, _ in known]
    longest = max((hi - lo for lo, hi in known), default=timedelta(0))
    fresh: list[Window] = []
    for window in candidates:
        # Registered windows overlapping this one start before its end; walk back from there
        # while they could still reach into it (registered windows may overlap each other).
        i = bisect.bisect_left(starts, window.end) - 1
        duplicate = False
        while i >= 0:
            lo, hi = known[i]
            if hi > window.start:
                if (lo, hi) != (window.start, window.end):
                    return fresh, (window, (lo, hi))
                duplicate = True
            elif lo < window.start - longest:
                break
            i -= 1
        if not duplicate:
            fresh.append(window)
    return fresh, None


def eligible_cutoff(now: datetime, x_time_back: timedelta) -> datetime:
    """Future-data protection: a window is eligible only when `end <= now - x_time_back`."""
    if x_time_back < timedelta(0):
        raise ConfigError(f"x_time_back={x_time_back} must not be negative")
    return as_utc(now) - x_time_back


def eligible_windows(
    after: datetime, now: datetime, timezone: str, granularity: str, x_time_back: timedelta
) -> list[Window]:
    """Windows from the one containing `after` up to the latest eligible one."""
    cutoff = eligible_cutoff(now, x_time_back)
    return [w for w in windows_between(after, cutoff, timezone, granularity) if w.end <= cutoff]


def last_window_ending_by(cutoff: datetime, timezone: str, granularity: str) -> Window:
    """The latest window whose end is at or before `cutoff` (the latest eligible window)."""
    holding = window_containing(cutoff - timedelta(microseconds=1), timezone, granularity)
    if holding.end <= cutoff:
        return holding
    return window_containing(holding.start - timedelta(microseconds=1), timezone, granularity)


def scheduled_windows(
    watermark: datetime | None,
    start: datetime | None,
    end: datetime | None,
    cutoff: datetime,
    timezone: str,
    granularity: str,
) -> list[Window]:
    """What the scheduled registration registers next: every window ending at or before `cutoff`,
    from the registration watermark on (the end of what it registered before, a grid boundary),
    else from the window holding `start`, else only the latest eligible window (no catch-up).
    Windows starting at or after `end` are never registered."""
    if watermark is not None:
        begin = watermark
    elif start is not None:
        begin = start
    else:
        begin = last_window_ending_by(cutoff, timezone, granularity).start
    cut = windows_between(begin, cutoff, timezone, granularity)
    return [w for w in before_end(cut, end) if w.end <= cutoff]


def before_end(windows: list[Window], end: datetime | None) -> list[Window]:
    """The windows a config whose `end` is `end` registers: those starting before it (all of
    them when it has none). The schedule, a move of `start` and a backfill all cut by it."""
    return windows if end is None else [w for w in windows if w.start < end]


def windows_before(
    start: datetime,
    first: datetime,
    cutoff: datetime,
    end: datetime | None,
    timezone: str,
    granularity: str,
) -> list[Window]:
    """When the config's `start` moved before `first` (the start of the first registered
    window): the windows from `start` up to `first`, eligible by `cutoff` and starting before
    `end`. They tile `[start, first)` with no gap and no overlap, so `start` must be a boundary
    of the grid and `first` too; otherwise ConfigError naming the nearest boundaries."""
    start, first = as_utc(start), as_utc(first)
    if start >= first:
        return []
    tz = zone(timezone)
    holding = window_containing(start, timezone, granularity)
    if holding.start != start:
        raise ConfigError(
            f"start={start.astimezone(tz).isoformat()} is before the first registered window "
            f"({first.astimezone(tz).isoformat()}) but is not a window boundary of the grid "
            f"(timezone={timezone!r}, granularity={granularity!r}); the nearest boundaries are "
            f"{holding.start.astimezone(tz).isoformat()} and "
            f"{holding.end.astimezone(tz).isoformat()}: set start to one of them"
        )
    earlier = windows_between(start, first, timezone, granularity)
    if earlier[-1].end != first:
        raise ConfigError(
            f"start={start.astimezone(tz).isoformat()} is before the first registered window, "
            f"which begins at {first.astimezone(tz).isoformat()}, not a window boundary of the "
            f"grid (timezone={timezone!r}, granularity={granularity!r}; it was cut on an "
            "earlier grid): registering the windows before it would overlap it. Backfill that "
            "span on its own grid, or keep start where it was"
        )
    return [w for w in before_end(earlier, end) if w.end <= cutoff]


# --- record completeness: the seed's function_x/y/z and check_fields ------------------------

KeyHook = Callable[[str, Window, str], "str | None"]
"""A key hook receives (pipeline_id, window, timezone) and returns the key's text, which is
recorded in the ledger and checked by check_fields; no hook decides where data is staged."""

KEY_FIELDS = ("key_x", "key_y", "key_z")


def stage_location(pipeline_id: str, window: Window) -> str:
    """Where the window's files are staged: `{pipeline_id}/{target_day}/{window key}`, under the
    stage's root or prefix. Always this path, whatever key_x hook is configured: the stage path
    must stay a function of the window alone, so a resumed or retried window finds its files and
    two windows never share a folder."""
    return f"{pipeline_id}/{window.target_day.isoformat()}/{window.key}"


def stage_path_label(pipeline_id: str, window: Window, _timezone: str) -> str:
    """The default key_x: the window's stage path (`stage_location`), recorded as a label.

    key_x is only recorded in the ledger; it never decides where data lands. A custom key_x
    hook changes the recorded text and nothing else."""
    return stage_location(pipeline_id, window)


def local_label(_pipeline_id: str, window: Window, timezone: str) -> str:
    """The default key_y: the window as local wall-clock text with offsets, for people."""
    lo, hi = window.local(timezone)
    return f"{lo.isoformat()}/{hi.isoformat()}"


def window_seconds(_pipeline_id: str, window: Window, _timezone: str) -> str:
    """The default key_z: the window's length in seconds (shows DST days at a glance)."""
    return str(int(window.duration.total_seconds()))


DEFAULT_HOOKS: Mapping[str, KeyHook] = {
    "key_x": stage_path_label,
    "key_y": local_label,
    "key_z": window_seconds,
}


def build_record(
    pipeline_id: str,
    window: Window,
    timezone: str,
    hooks: Mapping[str, KeyHook] | None = None,
    check_fields: Sequence[str] = KEY_FIELDS,
) -> dict[str, object]:
    """The seed's generated record for one window, with its key fields, checked for completeness.

    Raises RecordIncomplete naming the window and the field when a check_field is missing or
    empty: a hook bug must stop registration loudly, never drop a window silently.
    """
    record: dict[str, object] = {
        "pipeline_id": pipeline_id,
        "target_day": window.target_day,
        "window_start_time": window.start,
        "window_end_time": window.end,
        "time_interval": window.time_interval,
    }
    merged = {**DEFAULT_HOOKS, **(hooks or {})}
    for key in KEY_FIELDS:
        value = merged[key](pipeline_id, window, timezone)
        record[key] = None if value is None else str(value)
    missing = [f for f in check_fields if record.get(f) in (None, "")]
    if missing:
        raise RecordIncomplete(
            f"window {window.start_iso} of pipeline {pipeline_id!r} is incomplete: "
            f"check_fields {missing} are empty; every field in check_fields must be non-empty"
        )
    return record
