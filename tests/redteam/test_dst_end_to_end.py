"""DST end to end: real rows at chosen instants around clock changes, loaded by the flow, then
inspected and operated through the CLI (README "Concepts", "Run it", "Operate").

The promise: a DST day never means a lost, duplicated or silently wrong row, and users can see
each window's state. Each case puts rows on both readings of a repeated wall time, on window
boundaries and in the last microsecond before them, and checks that every row is in the target
once, in the window that holds its instant, that `windows --json` shows local times and a
`target_day` that agree with the window, and that the audit passed. The window grid itself is
pinned by `tests/unit/test_windows.py`; here the expected window lengths are written out by hand
only to prove the rows went where the README says. Two tests were breaks, fixed in s28 (FINDINGS.md,
wave 8): a skipped local day refused with a false reason, and TIMESTAMP_NS/_MS/_S source
columns failing every window.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest
from ledgerflow.cli import app

from tests.integration.kit import BrokenLoadTarget, Pipeline

from .helpers import cli, query, run, runner

pytestmark = pytest.mark.usefixtures("prefect_harness")

LA = "America/Los_Angeles"
US = timedelta(microseconds=1)
H = 3600.0


def local(zone: str, *parts: int, fold: int = 0) -> datetime:
    """A wall time in `zone` (fold=1: the second reading of a repeated time), as UTC."""
    return datetime(*parts, tzinfo=ZoneInfo(zone)).replace(fold=fold).astimezone(UTC)  # type: ignore[misc]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def make_pipeline(
    root: Path, instants: list[datetime], ts_type: str = "TIMESTAMPTZ", **config: Any
) -> tuple[Pipeline, str]:
    """A pipeline whose source holds one row per instant (`e0000`, `e0001`, ... in order)."""
    pipeline = Pipeline(root, rows=1)
    con = duckdb.connect(str(pipeline.source_path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("DROP TABLE web_events")
        con.execute(f"CREATE TABLE web_events (event_id VARCHAR, ts {ts_type})")
        if instants:
            con.executemany(
                "INSERT INTO web_events VALUES (?, ?)",
                [[f"e{i:04d}", t] for i, t in enumerate(instants)],
            )
    finally:
        con.close()
    return pipeline, asyncio.run(pipeline.save(**config))


def every(lo: datetime, hi: datetime, minutes: int) -> list[datetime]:
    out, t = [], lo
    while t < hi:
        out.append(t)
        t += timedelta(minutes=minutes)
    return out


def source_rows(pipeline: Pipeline) -> list[tuple[str, datetime]]:
    return query(pipeline.source_path, "SELECT event_id, ts FROM web_events ORDER BY event_id")  # type: ignore[return-value]


def loaded_ids(pipeline: Pipeline) -> list[str]:
    return [r[0] for r in query(pipeline.warehouse, "SELECT event_id FROM web_events ORDER BY 1")]


def assert_each_row_once_in_its_window(
    pipeline: Pipeline, name: str, zone: str
) -> list[dict[str, Any]]:
    """Every source row inside the registered windows is in the target once, each window's
    counts are its rows, the audit passed, and the window reads the same in local time."""
    tz = ZoneInfo(zone)
    windows = cli("windows", "-c", name, "--limit", "1000")
    assert windows, "no windows registered"
    first, last = utc(windows[0]["start"]), utc(windows[-1]["end"])
    rows = source_rows(pipeline)
    inside = sorted(i for i, t in rows if first <= t < last)
    assert loaded_ids(pipeline) == inside, "target differs from the source rows of its windows"
    previous = first
    for w in windows:
        lo, hi = utc(w["start"]), utc(w["end"])
        assert lo == previous, f"windows do not tile at {w['start']}"
        previous = hi
        held = sum(1 for _, t in rows if lo <= t < hi)
        assert (w["status"], w["source_count"], w["target_count"]) == ("COMPLETED", held, held), w
        assert w["audit_result"] in ("PASS", "MATCH"), w
        assert w["local_start"] == lo.astimezone(tz).isoformat(), w
        assert w["local_end"] == hi.astimezone(tz).isoformat(), w
        assert w["target_day"] == lo.astimezone(tz).date().isoformat(), w
    return windows  # type: ignore[no-any-return]


def output(result: Any) -> str:
    err = result.stderr if result.stderr_bytes else ""
    return f"{result.stdout}{err}"


# --- what held ----------------------------------------------------------------------------------

# (zone, granularity, local start, local end, window lengths in hours, extra instants)
CASES = {
    "LA fall-back 1h": (
        LA,
        "1h",
        (2025, 11, 2, 0),
        (2025, 11, 2, 4),
        [1, 2, 1, 1],
        [local(LA, 2025, 11, 2, 1, 30), local(LA, 2025, 11, 2, 1, 30, fold=1)],
    ),
    "LA fall-back 30m": (
        LA,
        "30m",
        (2025, 11, 2, 0, 30),
        (2025, 11, 2, 2, 30),
        [0.5, 0.5, 1.5, 0.5],
        [local(LA, 2025, 11, 2, 1, 15, fold=1), local(LA, 2025, 11, 2, 1, 45, fold=1)],
    ),
    "LA fall-back 3h": (LA, "3h", (2025, 11, 2, 0), (2025, 11, 2, 6), [4, 3], []),
    "LA fall-back 1d": (LA, "1d", (2025, 11, 1), (2025, 11, 3), [24, 25], []),
    "Lord_Howe 30-minute fall-back 30m": (
        "Australia/Lord_Howe",
        "30m",
        (2025, 4, 6, 1),
        (2025, 4, 6, 2, 30),
        [0.5, 1, 0.5],
        [
            local("Australia/Lord_Howe", 2025, 4, 6, 1, 45),
            local("Australia/Lord_Howe", 2025, 4, 6, 1, 45, fold=1),
        ],
    ),
    "Santiago fall-back at midnight 2h": (
        "America/Santiago",
        "2h",
        (2025, 4, 5, 20),
        (2025, 4, 6, 2),
        [2, 3, 2],
        [
            local("America/Santiago", 2025, 4, 5, 23, 30),
            local("America/Santiago", 2025, 4, 5, 23, 30, fold=1),
        ],
    ),
    "Havana ambiguous midnight 1h": (
        "America/Havana",
        "1h",
        (2025, 11, 1, 23),
        (2025, 11, 2, 2),
        [1, 2, 1],
        [
            local("America/Havana", 2025, 11, 2, 0, 0, fold=1),
            local("America/Havana", 2025, 11, 2, 0, 30, fold=1),
        ],
    ),
    "Apia skipped day 1d": ("Pacific/Apia", "1d", (2011, 12, 29), (2012, 1, 1), [24, 24], []),
    "Moscow permanent change 1h": (
        "Europe/Moscow",
        "1h",
        (2014, 10, 26, 0),
        (2014, 10, 26, 3),
        [1, 2, 1],
        [
            local("Europe/Moscow", 2014, 10, 26, 1, 30),
            local("Europe/Moscow", 2014, 10, 26, 1, 30, fold=1),
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_row_lands_once_in_the_window_holding_it(tmp_path: Path, case: str) -> None:
    zone, granularity, lo_parts, hi_parts, hours, extra = CASES[case]
    lo, hi = local(zone, *lo_parts), local(zone, *hi_parts)
    edges, t = [lo], lo
    for h in hours:
        t += timedelta(hours=h)
        edges.append(t)
    assert edges[-1] == hi, "the case's window lengths do not add up to its span"
    # Boundaries, the last microsecond before each, both readings of repeated wall times, a
    # row every 20 minutes, and rows just outside the span (never loaded).
    instants = sorted(
        {*edges[:-1], *(e - US for e in edges[1:]), *extra, *every(lo, hi, 20)} | {lo - US, hi}
    )
    pipeline, name = make_pipeline(
        tmp_path,
        instants,
        timezone=zone,
        granularity=granularity,
        start=lo,
        end=hi,
    )
    assert run(name).is_completed()
    windows = assert_each_row_once_in_its_window(pipeline, name, zone)
    assert [(utc(w["end"]) - utc(w["start"])).total_seconds() / H for w in windows] == hours
    assert len(loaded_ids(pipeline)) == len(instants) - 2  # all but the two outside


# (zone, DST day, local hours in that day, windows of 6h in it)
DAYS = {
    "LA fall-back (25h)": (LA, date(2025, 11, 2), 25, 4),
    "LA spring-forward (23h)": (LA, date(2025, 3, 9), 23, 4),
    "Santiago, no local midnight (23h)": ("America/Santiago", date(2025, 9, 7), 23, 4),
    "Santiago, fall-back at midnight (25h)": ("America/Santiago", date(2025, 4, 5), 25, 4),
    "Lord_Howe, 30-minute fall-back (24.5h)": ("Australia/Lord_Howe", date(2025, 4, 6), 24.5, 4),
}


@pytest.mark.parametrize("case", list(DAYS))
def test_operator_commands_given_a_dst_day_take_that_local_day(tmp_path: Path, case: str) -> None:
    """`windows`, `reload` and `backfill --start DAY --end NEXT` (plain dates: local midnight)
    take exactly the windows of that local day, 23, 24.5 or 25 hours of them; the reload loads
    them again, each row once."""
    zone, day, day_hours, count = DAYS[case]
    tz = ZoneInfo(zone)
    nxt = day + timedelta(days=1)
    lo = datetime.combine(day, datetime.min.time(), tzinfo=tz) - timedelta(hours=6)
    hi = datetime.combine(nxt, datetime.min.time(), tzinfo=tz) + timedelta(hours=6)
    instants = every(lo.astimezone(UTC), hi.astimezone(UTC), 25)
    pipeline, name = make_pipeline(
        tmp_path, instants, timezone=zone, granularity="6h", start=lo, end=hi
    )
    assert run(name).is_completed()
    span = ("--start", day.isoformat(), "--end", nxt.isoformat())

    listed = cli("windows", "-c", name, *span)
    assert len(listed) == count
    assert {w["target_day"] for w in listed} == {day.isoformat()}
    covered = utc(listed[-1]["end"]) - utc(listed[0]["start"])
    assert covered.total_seconds() / H == day_hours
    every_window = cli("windows", "-c", name)
    assert [w for w in every_window if w["target_day"] == day.isoformat()] == listed

    plan = cli("backfill", "-c", name, *span)
    assert (plan["windows"], plan["new"], plan["registered"]) == (count, 0, 0)

    reopened = cli("reload", "-c", name, *span)["reopened"]
    assert sorted(reopened) == sorted(w["id"] for w in listed)
    assert run(name).is_completed()
    assert_each_row_once_in_its_window(pipeline, name, zone)
    assert len(loaded_ids(pipeline)) == len(instants)


def test_backfill_of_a_fall_back_day_registers_each_window_once(tmp_path: Path) -> None:
    lo, hi = local(LA, 2025, 11, 2), local(LA, 2025, 11, 3)
    instants = every(lo - timedelta(hours=1), hi + timedelta(hours=7), 30)
    pipeline, name = make_pipeline(
        tmp_path, instants, timezone=LA, granularity="6h", start=hi, end=hi + timedelta(hours=6)
    )
    assert run(name).is_completed()  # the scheduled window after the DST day
    span = ("--start", "2025-11-02", "--end", "2025-11-03")
    first = cli("backfill", "-c", name, *span)
    assert (first["windows"], first["new"]) == (4, 4)
    again = cli("backfill", "-c", name, *span)
    assert (again["windows"], again["new"]) == (4, 0)
    assert run(name).is_completed()
    assert_each_row_once_in_its_window(pipeline, name, LA)
    assert loaded_ids(pipeline) == sorted(
        i for i, t in source_rows(pipeline) if lo <= t < hi + timedelta(hours=6)
    )


def test_retry_given_a_fall_back_day_resets_that_days_failed_windows(tmp_path: Path) -> None:
    lo, hi = local(LA, 2025, 11, 1, 18), local(LA, 2025, 11, 3, 6)
    instants = every(lo, hi, 60)
    pipeline, name = make_pipeline(
        tmp_path,
        instants,
        target=BrokenLoadTarget,
        timezone=LA,
        granularity="6h",
        start=lo,
        end=hi,
        max_window_attempts=1,
    )
    broken = pipeline.warehouse.with_suffix(".broken")
    broken.write_bytes(b"not parquet")
    assert not run(name).is_completed()
    broken.unlink()
    failed = cli("windows", "-c", name, "--status", "FAILED")
    assert len(failed) == 6
    reset = cli("retry", "-c", name, "--start", "2025-11-02", "--end", "2025-11-03")["reset"]
    # 2025-11-02 in Los Angeles is 25 hours: four 6h windows, the first 7 hours long.
    assert sorted(reset) == sorted(w["id"] for w in failed if w["target_day"] == "2025-11-02")
    assert len(reset) == 4
    assert run(name).is_completed()
    day = [
        w
        for w in cli("windows", "-c", name, "--start", "2025-11-02", "--end", "2025-11-03")
        if w["status"] == "COMPLETED"
    ]
    assert len(day) == 4
    assert loaded_ids(pipeline) == sorted(
        i for i, t in source_rows(pipeline) if local(LA, 2025, 11, 2) <= t < local(LA, 2025, 11, 3)
    )


@pytest.mark.parametrize(
    ("at", "refused"),
    [
        # 02:00 PST happens once and is a boundary of both grids; 01:00 PDT and 01:00 PST are
        # 1h boundaries only on one reading (01:00 PST is none: the 1h window there is 2h long).
        ("2025-11-02T02:00:00-08:00", ["2025-11-02T01:00:00-07:00", "2025-11-02T01:00:00-08:00"]),
        ("2025-03-09T03:00:00-07:00", ["2025-03-09T01:00:00-08:00"]),
    ],
)
def test_retile_1h_to_2h_at_the_dst_change(tmp_path: Path, at: str, refused: list[str]) -> None:
    day = utc(at).astimezone(ZoneInfo(LA)).date()
    lo = datetime.combine(day, datetime.min.time(), tzinfo=ZoneInfo(LA))
    hi = lo + timedelta(hours=6)
    instants = every(lo.astimezone(UTC), hi.astimezone(UTC), 15)
    instants += [utc(at) - US, utc(at)]
    pipeline, name = make_pipeline(
        tmp_path,
        sorted(set(instants)),
        timezone=LA,
        granularity="1h",
        start=lo,
        end=hi,
        windows_per_run=2,
        concurrency=1,
    )
    assert run(name).is_completed()  # 00:00-01:00 and the 01:00 window (to `at`) loaded
    asyncio.run(pipeline.save(timezone=LA, granularity="2h", start=lo, end=hi, concurrency=1))
    for instant in refused:
        result = runner.invoke(app, ["retile", "-c", name, "--at", instant])
        assert result.exit_code == 2 and "not a window boundary" in output(result), output(result)
    done = cli("retile", "-c", name, "--at", at)
    assert done["new"]["granularity"] == "2h"
    assert run(name).is_completed()
    windows = assert_each_row_once_in_its_window(pipeline, name, LA)
    assert [w["time_interval"] for w in windows] == ["1h", "1h", "2h", "2h"][: len(windows)]
    assert len(loaded_ids(pipeline)) == len(set(instants))
    assert runner.invoke(app, ["status", "-c", name]).exit_code == 0


def test_lag_is_real_elapsed_time_across_the_fall_back(tmp_path: Path) -> None:
    """With now - x_time_back at 10:30Z (02:30 PST), the window 01:00 PDT - 02:00 PST (ending
    10:00Z) is eligible and 02:00 - 03:00 PST (ending 11:00Z) is not: wall-clock arithmetic an
    hour either way would get one of them wrong."""
    cutoff = datetime(2025, 11, 2, 10, 30, tzinfo=UTC)
    lo, hi = local(LA, 2025, 11, 2), local(LA, 2025, 11, 2, 4)
    instants = every(lo, hi, 15)
    lag = int((datetime.now(UTC) - cutoff).total_seconds() // 60)  # now - lag: 10:30-10:31Z
    pipeline, name = make_pipeline(
        tmp_path, instants, timezone=LA, granularity="1h", start=lo, end=hi, x_time_back=f"{lag}m"
    )
    assert run(name).is_completed()
    windows = cli("windows", "-c", name)
    assert [(w["start"], w["end"]) for w in windows] == [
        ("2025-11-02T07:00:00Z", "2025-11-02T08:00:00Z"),
        ("2025-11-02T08:00:00Z", "2025-11-02T10:00:00Z"),
    ]
    assert loaded_ids(pipeline) == sorted(
        i for i, t in source_rows(pipeline) if t < utc("2025-11-02T10:00:00Z")
    )
    asyncio.run(pipeline.save(timezone=LA, granularity="1h", start=lo, end=hi, x_time_back="0m"))
    assert run(name).is_completed()
    assert_each_row_once_in_its_window(pipeline, name, LA)
    assert len(loaded_ids(pipeline)) == len(instants)


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("America/Santiago", date(2025, 9, 7)),
        ("Asia/Beirut", date(2025, 3, 30)),
        ("America/Havana", date(2025, 3, 9)),
    ],
)
def test_start_at_a_local_midnight_that_does_not_exist(
    tmp_path: Path, zone: str, day: date
) -> None:
    """The config's start given as that day's midnight in the zone (zoneinfo reads it with the
    offset before the gap: the day's first instant, 01:00 local): the first window is the
    day's first, labelled with that day; the row a microsecond earlier is the day before's."""
    tz = ZoneInfo(zone)
    start = datetime.combine(day, datetime.min.time(), tzinfo=tz)
    first = start.astimezone(UTC)
    assert first.astimezone(tz).hour == 1  # the day has no 00:00
    end = first + timedelta(hours=5)
    instants = [first - US, first, first + timedelta(minutes=30), first + timedelta(hours=1) - US]
    pipeline, name = make_pipeline(
        tmp_path, instants, timezone=zone, granularity="2h", start=start, end=end
    )
    assert run(name).is_completed()
    windows = assert_each_row_once_in_its_window(pipeline, name, zone)
    assert utc(windows[0]["start"]) == first
    assert windows[0]["target_day"] == day.isoformat()
    assert loaded_ids(pipeline) == ["e0001", "e0002", "e0003"]
    status = runner.invoke(app, ["status", "-c", name, "--json"])
    assert status.exit_code == 0, output(status)
    listed = cli(
        "windows",
        "-c",
        name,
        "--start",
        day.isoformat(),
        "--end",
        (day + timedelta(days=1)).isoformat(),
    )
    assert [w["id"] for w in listed] == [w["id"] for w in windows]


# --- breaks -------------------------------------------------------------------------------------


def test_a_skipped_local_day_is_not_refused_with_a_false_reason(tmp_path: Path) -> None:
    zone = "Pacific/Apia"
    lo, hi = local(zone, 2011, 12, 29), local(zone, 2012, 1, 1)
    _, name = make_pipeline(
        tmp_path, every(lo, hi, 120), timezone=zone, granularity="1d", start=lo, end=hi
    )
    assert run(name).is_completed()
    span = ["--start", "2011-12-30", "--end", "2011-12-31"]
    commands = [
        ["windows", "-c", name, *span],
        ["reload", "-c", name, *span],
        ["retry", "-c", name, *span],
        ["backfill", "-c", name, *span, "--dry-run"],
        ["plan", "--timezone", zone, "--granularity", "1d", *span],
    ]
    unclear = []
    for args in commands:
        result = runner.invoke(app, args)
        text = output(result)
        # Either the day holds no window (nothing listed, reopened or registered), or the
        # refusal says why: the zone skipped that day.
        if result.exit_code != 0 and not (zone in text and "2011-12-30" in text):
            unclear.append(f"{args[0]}: exit {result.exit_code}: {text.strip()}")
    assert not unclear, "\n".join(unclear)


@pytest.mark.parametrize("ts_type", ["TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S"])
def test_a_timestamp_column_of_another_precision_loads_each_row_once(
    tmp_path: Path, ts_type: str
) -> None:
    """Naive Parquet timestamps written by pandas/pyarrow are nanoseconds (TIMESTAMP_NS in
    DuckDB). Rows at the last instant before the 02:00 PST boundary, on it, and in the
    repeated hour must each load once, in the window that holds them."""
    lo, hi = local(LA, 2025, 11, 2), local(LA, 2025, 11, 2, 4)
    pipeline, name = make_pipeline(
        tmp_path, [], ts_type=ts_type, timezone=LA, granularity="1h", start=lo, end=hi
    )
    con = duckdb.connect(str(pipeline.source_path))
    try:
        con.execute(
            "INSERT INTO web_events VALUES ('a', '2025-11-02 09:59:59.999999999'), "
            "('b', '2025-11-02 10:00:00'), ('c', '2025-11-02 08:30:00'), "
            "('d', '2025-11-02 09:30:00')"
        )
    finally:
        con.close()
    state = run(name)
    assert state.is_completed(), state.message
    assert loaded_ids(pipeline) == ["a", "b", "c", "d"]
    counts = {w["start"]: w["target_count"] for w in cli("windows", "-c", name)}
    assert counts["2025-11-02T08:00:00Z"] == 3 - (ts_type != "TIMESTAMP_NS")  # 'a' rounds in _MS/_S
    assert counts["2025-11-02T10:00:00Z"] == 1 + (ts_type != "TIMESTAMP_NS")
