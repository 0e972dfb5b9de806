"""Registration: every window registered exactly once, whatever the config history or the clock."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.blocks.config import load_final_config, validate_config
from ledgerflow.demo import DEMO_START
from ledgerflow.errors import ConfigError
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Ledger
from ledgerflow.ledger.store import Registration
from ledgerflow.operate import backfill
from ledgerflow.tasks.store_and_validate import register_windows
from ledgerflow.windows import (
    Grid,
    Window,
    build_record,
    scheduled_windows,
    window_containing,
    windows_between,
)
from ledgerflow.wiring import load_systems, settings_from

from .kit import Pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
LA = "America/Los_Angeles"
FAR = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
def pipeline_any(tmp_path: Path, ledger_url: str) -> Pipeline:
    return Pipeline(tmp_path, rows=10, ledger_url=ledger_url)


async def test_unset_start_registers_the_latest_eligible_window_then_every_later_one(
    pipeline_any: Pipeline,
) -> None:
    name = await pipeline_any.save(start=None, end=None)
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    [first] = await pipeline_any.records()
    cutoff = datetime.now(UTC) - timedelta(days=1)
    assert first.window_end_time <= cutoff
    assert window_containing(first.window_end_time, LA, "2h").end > cutoff - timedelta(minutes=5)
    assert first.pipeline_status == "COMPLETED"

    # Later runs register every window after it, with no gap, up to their own cutoff.
    config = await load_final_config(name)
    systems, settings = await load_systems(config), settings_from(config)
    later = first.window_end_time + timedelta(days=1, hours=5)
    await register_windows.fn(systems, settings, at=later)
    rows = await pipeline_any.records()
    expected = windows_between(first.window_start_time, later - timedelta(days=1), LA, "2h")
    assert [(r.window_start_time, r.window_end_time) for r in rows] == [
        (w.start, w.end) for w in expected if w.end <= later - timedelta(days=1)
    ]


# --- the ledger's registration path, directly (both backends) -------------------------------

PIPE = "events"
T0 = datetime(2025, 3, 1, 8, tzinfo=UTC)  # local midnight in Los Angeles


def grid(granularity: str = "2h", timezone: str = LA) -> Grid:
    return Grid.of(timezone, granularity)


async def scheduled(
    ledger: Ledger, g: Grid, at: datetime, start: datetime | None = T0
) -> Registration:
    """One scheduled registration at `at` (x_time_back 0)."""
    return await ledger.register_windows(
        PIPE,
        g,
        lambda wm, cutoff: scheduled_windows(wm, start, None, cutoff, g.timezone, g.granularity),
        lambda w: build_record(PIPE, w, g.timezone),
        lag=timedelta(0),
        scheduled=True,
        now=at,
        start=start,
    )


def config(g: Grid) -> Any:
    return validate_config(
        {
            "pipeline_id": PIPE,
            "timezone": g.timezone,
            "granularity": g.granularity,
            "x_time_back": "0m",
            "source_block": "a-source/x",
            "stage_block": "a-stage/x",
            "target_block": "a-target/x",
        }
    )


async def spans(ledger: Ledger) -> list[tuple[datetime, datetime]]:
    return [(r.window_start_time, r.window_end_time) for r in await ledger.windows(PIPE)]


def assert_tiles(pairs: list[tuple[datetime, datetime]]) -> None:
    for (_, end), (start, _) in itertools.pairwise(pairs):
        assert start == end, f"gap or overlap between {end} and {start}"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (grid("2h"), grid("4h"), "granularity: the ledger has '2h', the config says '4h'"),
        (grid("1h"), grid("1d"), "granularity: the ledger has '1h', the config says '1d'"),
        (grid("2h"), grid("3h"), "granularity: the ledger has '2h', the config says '3h'"),
        (grid("2h"), grid("2h", "UTC"), "timezone: the ledger has 'America/Los_Angeles'"),
    ],
)
async def test_a_run_or_backfill_on_another_grid_is_refused_naming_the_field(
    ledger: Ledger, old: Grid, new: Grid, field: str
) -> None:
    await scheduled(ledger, old, T0 + timedelta(hours=15))
    before = await spans(ledger)
    with pytest.raises(ConfigError, match="cuts its windows on another grid") as info:
        await scheduled(ledger, new, T0 + timedelta(days=2))
    assert field in str(info.value) and "ledgerflow retile" in str(info.value)
    with pytest.raises(ConfigError, match=field.replace("'", ".")):
        await backfill(ledger, config(new), T0 - timedelta(days=2), T0, dry_run=False, now=T0)
    assert await spans(ledger) == before
    # The same grid written differently is the same grid.
    assert (await scheduled(ledger, grid(old.granularity.replace("1d", "24h")), T0)).new == 0


async def test_a_ledger_from_before_identities_is_adopted_only_on_its_own_grid(
    ledger: Ledger,
) -> None:
    legacy = windows_between(T0, T0 + timedelta(hours=12), LA, "2h")
    await ledger.register([build_record(PIPE, w, LA) for w in legacy])
    with pytest.raises(ConfigError, match="not on the configured grid") as info:
        await scheduled(ledger, grid("4h"), T0 + timedelta(days=1))
    assert "granularity: the ledger has '2h', the config says '4h'" in str(info.value)
    assert await ledger.identity(PIPE) is None
    # On its own grid it is adopted and continues after its last window.
    done = await scheduled(ledger, grid("2h"), T0 + timedelta(hours=16))
    assert done.new == 2 and done.watermark == T0 + timedelta(hours=16)
    assert await ledger.identity(PIPE) == (grid("2h"), T0 + timedelta(hours=16))
    assert_tiles(await spans(ledger))


async def test_backfill_registers_inside_its_range_and_never_moves_the_watermark(
    ledger: Ledger,
) -> None:
    await scheduled(ledger, grid(), T0 + timedelta(hours=4))  # 2 windows; watermark T0+4h
    # An outage; then someone backfills one later day first.
    later_day = T0 + timedelta(days=5)
    plan = await backfill(
        ledger,
        config(grid()),
        later_day,
        later_day + timedelta(days=1),
        dry_run=False,
        now=T0 + timedelta(days=7),
    )
    assert plan.registered == 12
    assert (await ledger.identity(PIPE)) == (grid(), T0 + timedelta(hours=4))
    registered = await spans(ledger)
    assert registered[2][0] == later_day and registered[-1][1] == later_day + timedelta(days=1)
    # The schedule resumes at its watermark: nothing between is skipped, nothing twice.
    done = await scheduled(ledger, grid(), T0 + timedelta(days=7))
    rows = await spans(ledger)
    assert_tiles(rows)
    assert rows[0][0] == T0 and rows[-1][1] == T0 + timedelta(days=7)
    assert len(rows) == len(set(rows)) == 7 * 12
    assert done.new == len(rows) - 14


async def test_retile_from_a_shared_boundary_leaves_no_gap_and_no_overlap(ledger: Ledger) -> None:
    await scheduled(ledger, grid("2h"), T0 + timedelta(hours=12))  # 6 windows, to 20:00Z
    for _ in range(2):  # the first two (T0 .. T0+4h) are loaded
        lease = await ledger.claim(PIPE, "r", cutoff=FAR)
        assert lease is not None
        await ledger.complete(lease)
    # Not a boundary of the new grid; inside a window; after the watermark; over a loaded window.
    with pytest.raises(ConfigError, match="not a window boundary of the new grid"):
        await ledger.retile(PIPE, grid("4h"), T0 + timedelta(hours=2))
    with pytest.raises(ConfigError, match="is not the start or end of a registered window"):
        await ledger.retile(PIPE, grid("4h"), T0 - timedelta(hours=4))
    with pytest.raises(ConfigError, match="falls inside the registered window"):
        await ledger.retile(PIPE, grid("1h", "UTC"), T0 + timedelta(hours=1))
    # A backfill beyond the watermark: re-tiling at its edge would leave the span between bare.
    beyond = T0 + timedelta(days=1)
    await backfill(ledger, config(grid()), beyond, beyond + timedelta(hours=4), dry_run=False)
    with pytest.raises(ConfigError, match="after the registration watermark"):
        await ledger.retile(PIPE, grid("4h"), beyond)
    with pytest.raises(ConfigError, match="already in progress, loaded or failed"):
        await ledger.retile(PIPE, grid("4h"), T0)
    assert len(await spans(ledger)) == 8
    assert await ledger.identity(PIPE) == (grid("2h"), T0 + timedelta(hours=12))

    done = await ledger.retile(PIPE, grid("4h"), T0 + timedelta(hours=4))
    assert (done.old, done.new, done.removed) == (grid("2h"), grid("4h"), 6)
    assert await ledger.identity(PIPE) == (grid("4h"), T0 + timedelta(hours=4))
    await scheduled(ledger, grid("4h"), T0 + timedelta(days=1))
    rows = await spans(ledger)
    assert_tiles(rows)
    assert rows[:2] == [
        (T0, T0 + timedelta(hours=2)),
        (T0 + timedelta(hours=2), T0 + timedelta(hours=4)),
    ]
    assert {e - s for s, e in rows[2:]} == {timedelta(hours=4)}
    assert rows[-1][1] == T0 + timedelta(days=1)
    # A backfill on the new grid over the old grid's windows would overlap them: refused.
    with pytest.raises(ConfigError, match="overlaps the registered window"):
        await backfill(ledger, config(grid("4h")), T0, T0 + timedelta(hours=4), dry_run=False)
    # The old grid is refused now.
    with pytest.raises(ConfigError, match="the ledger has '4h', the config says '2h'"):
        await scheduled(ledger, grid("2h"), T0 + timedelta(days=2))


def test_a_changed_granularity_fails_the_run_until_the_operator_retiles(tmp_path: Path) -> None:
    import json

    from ledgerflow.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    pipeline = Pipeline(tmp_path, rows=500)
    name = asyncio.run(pipeline.save(end=DEMO_START + timedelta(hours=12)))
    assert asyncio.run(windowed_pipeline(config_block=name, return_state=True)).is_completed()
    asyncio.run(pipeline.save(end=DEMO_START + timedelta(days=1), granularity="4h"))
    state = asyncio.run(windowed_pipeline(config_block=name, return_state=True))
    assert state.is_failed()
    assert "granularity: the ledger has '2h', the config says '4h'" in (state.message or "")
    day = ("--start", "2025-03-01T00:00:00Z", "--end", "2025-03-02T00:00:00Z")
    bad = runner.invoke(app, ["backfill", "-c", name, *day])
    assert bad.exit_code == 2 and "the ledger has '2h'" in " ".join(bad.output.split())

    at = (DEMO_START + timedelta(hours=12)).isoformat()
    result = runner.invoke(app, ["retile", "-c", name, "--at", at, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new"] == {"timezone": LA, "granularity": "4h"}
    assert asyncio.run(windowed_pipeline(config_block=name, return_state=True)).is_completed()
    rows = asyncio.run(pipeline.records())
    assert [r.time_interval for r in rows] == ["2h"] * 6 + ["4h"] * 3
    assert_tiles([(r.window_start_time, r.window_end_time) for r in rows])
    expected = pipeline.source_rows_with_ts()
    loaded = pipeline.warehouse_rows()
    assert loaded[0] == loaded[1] == sum(r.target_count or 0 for r in rows) <= expected


async def test_status_reports_gaps_and_overlaps_between_registered_windows(
    tmp_path: Path, ledger_url: str
) -> None:
    import json

    from ledgerflow.cli import app
    from typer.testing import CliRunner

    pipeline = Pipeline(tmp_path, rows=10, ledger_url=ledger_url)
    name = await pipeline.save()
    twos = windows_between(T0, T0 + timedelta(hours=12), LA, "2h")
    stray = Window(T0 + timedelta(hours=11), T0 + timedelta(hours=15), T0.date(), "4h")
    async with Ledger.from_url(ledger_url) as ledger:
        await ledger.create_schema()
        # Written the way older versions could: a missing window and one from another grid.
        await ledger.register([build_record(name, w, LA) for w in [*twos[:2], *twos[3:], stray]])
        faults = await ledger.tiling_faults(name)
    assert [(f.kind, f.start, f.end) for f in faults] == [
        ("gap", T0 + timedelta(hours=4), T0 + timedelta(hours=6)),
        ("overlap", T0 + timedelta(hours=11), T0 + timedelta(hours=12)),
    ]
    result = await asyncio.to_thread(CliRunner().invoke, app, ["status", "-c", name, "--json"])
    assert result.exit_code == 1, result.output  # no run mends either: a person must act
    data = json.loads(result.stdout)
    assert data["attention"] == [
        f"1 gap(s) never registered: `ledgerflow backfill -c {name}` over each span",
        "1 overlap(s): a span registered twice (its rows may load twice)",
    ]
    assert data["gaps"] == [
        {"start": "2025-03-01T12:00:00+00:00", "end": "2025-03-01T14:00:00+00:00"}
    ]
    assert data["overlaps"] == [
        {"start": "2025-03-01T19:00:00+00:00", "end": "2025-03-01T20:00:00+00:00"}
    ]
    text = await asyncio.to_thread(CliRunner().invoke, app, ["status", "-c", name])
    assert "gap in the registered windows" in text.output


# --- moving start earlier ---------------------------------------------------------------------


def test_moving_start_earlier_registers_and_loads_the_earlier_windows(
    tmp_path: Path, ledger_url: str
) -> None:
    import json

    from ledgerflow.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    pipeline = Pipeline(tmp_path, rows=500, ledger_url=ledger_url)
    lo, mid, hi = DEMO_START, DEMO_START + timedelta(hours=6), DEMO_START + timedelta(hours=10)
    name = asyncio.run(pipeline.save(start=mid, end=hi))
    assert asyncio.run(windowed_pipeline(config_block=name, return_state=True)).is_completed()
    watermark = asyncio.run(identity(pipeline.ledger_url, name))

    # Off the grid: refused, naming the nearest boundaries; status shows the gap meanwhile.
    asyncio.run(pipeline.save(start=lo + timedelta(minutes=30), end=hi))
    state = asyncio.run(windowed_pipeline(config_block=name, return_state=True))
    assert state.is_failed()
    message = " ".join((state.message or "").split())
    assert "is not a window boundary of the grid" in message, message
    assert "the nearest boundaries are 2025-03-08T00:00:00-08:00 and 2025-03-08T02:00:00-08:00" in (
        message
    )
    status = json.loads(runner.invoke(app, ["status", "-c", name, "--json"]).stdout)
    gaps = [
        (datetime.fromisoformat(g["start"]), datetime.fromisoformat(g["end"]))
        for g in status["gaps"]
    ]
    assert gaps == [(lo + timedelta(minutes=30), mid)]

    # On the grid: the next run registers [lo, mid) and loads it; the watermark stays.
    asyncio.run(pipeline.save(start=lo, end=hi))
    state = asyncio.run(windowed_pipeline(config_block=name, return_state=True))
    assert state.is_completed(), state.message
    rows = asyncio.run(pipeline.records())
    assert rows[0].window_start_time == lo and rows[-1].window_end_time == hi
    assert_tiles([(r.window_start_time, r.window_end_time) for r in rows])
    assert {r.pipeline_status for r in rows} == {"COMPLETED"}
    assert asyncio.run(identity(pipeline.ledger_url, name)) == watermark
    expected = pipeline._scalar_row(
        pipeline.source_path, "SELECT count(*) FROM web_events WHERE ts >= ? AND ts < ?", [lo, hi]
    )[0]
    assert pipeline.warehouse_rows() == (expected, expected)
    status = json.loads(runner.invoke(app, ["status", "-c", name, "--json"]).stdout)
    assert status["gaps"] == [] and status["overlaps"] == []


async def identity(url: str, name: str) -> Any:
    async with Ledger.from_url(url) as ledger:
        return await ledger.identity(name)


async def test_an_earlier_start_registers_up_to_the_first_window_keeping_the_watermark(
    ledger: Ledger,
) -> None:
    g = grid("2h")
    await scheduled(ledger, g, T0 + timedelta(hours=9), start=T0 + timedelta(hours=4))
    assert await ledger.identity(PIPE) == (g, T0 + timedelta(hours=8))
    done = await scheduled(ledger, g, T0 + timedelta(hours=9), start=T0)
    assert done.watermark == T0 + timedelta(hours=8)
    assert await ledger.identity(PIPE) == (g, T0 + timedelta(hours=8))
    assert [(w.start, w.end) for w in done.earlier] == [
        (T0, T0 + timedelta(hours=2)),
        (T0 + timedelta(hours=2), T0 + timedelta(hours=4)),
    ]
    assert done.new == 2
    assert_tiles(await spans(ledger))
