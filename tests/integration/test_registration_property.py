"""Property: whatever runs, backfills, re-tiles and moves of `start` earlier happen, registered
windows never overlap and the scheduled span (from the first scheduled window, or the config's
start once moved before it, to the watermark) has no gap.

The ledger is driven directly on SQLite (fast); the examples are few, the machine is shared.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from ledgerflow.errors import ConfigError
from ledgerflow.ledger import Ledger
from ledgerflow.operate import backfill
from ledgerflow.windows import Grid, build_record, last_window_ending_by, scheduled_windows

from .test_registration import config

PIPE = "events"
T0 = datetime(2025, 3, 8, 8, tzinfo=UTC)  # local midnight in Los Angeles, before spring-forward
FAR = datetime(2100, 1, 1, tzinfo=UTC)
GRIDS = [Grid.of(tz, g) for tz in ("America/Los_Angeles", "UTC") for g in ("1h", "2h", "4h", "1d")]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("run"), st.integers(1, 30)),
        st.tuples(st.just("backfill"), st.integers(-72, 72), st.integers(1, 48)),
        st.tuples(st.just("retile"), st.sampled_from(GRIDS), st.integers(0, 5)),
        st.tuples(st.just("load"), st.integers(1, 4)),
        # The operator moves the config's start earlier (by hours: on or off the grid), then
        # a run.
        st.tuples(st.just("start"), st.integers(1, 30)),
    ),
    max_size=8,
)


async def play(url: str, first: Grid, history: list[tuple[Any, ...]]) -> None:
    async with Ledger.from_url(url) as ledger:
        await ledger.create_schema()
        grid, now, scheduled_from, start = first, T0, None, T0
        for step in history:
            before = await ledger.windows(PIPE)
            try:
                if step[0] == "start":  # then a run with it
                    start -= timedelta(hours=step[1])
                    step = ("run", 1)
                if step[0] == "run":
                    now += timedelta(hours=step[1])
                    g, s = grid, start
                    held = await ledger.identity(PIPE)
                    first_before = min((r.window_start_time for r in before), default=None)
                    done = await ledger.register_windows(
                        PIPE,
                        g,
                        lambda wm, cutoff, g=g, s=s: scheduled_windows(
                            wm, s, None, cutoff, g.timezone, g.granularity
                        ),
                        lambda w, g=g: build_record(PIPE, w, g.timezone),
                        lag=timedelta(0),
                        scheduled=True,
                        now=now,
                        start=s,
                    )
                    if scheduled_from is None and done.windows:
                        scheduled_from = done.windows[0].start
                    if held is not None and held[1] is not None and first_before is not None:
                        assert done.watermark == max(held[1], done.watermark), step
                        if s < min(first_before, held[1]):
                            # The earlier windows are registered, from start on, no gap. (From
                            # a watermark at or before start, the schedule itself covers them.)
                            assert done.earlier and done.earlier[0].start == s, step
                            first_now = (await ledger.windows(PIPE))[0].window_start_time
                            assert first_now == s, step
                            event("start moved earlier: registered")
                            if scheduled_from is not None:
                                scheduled_from = min(scheduled_from, s)
                    latest = last_window_ending_by(now, g.timezone, g.granularity)
                    assert done.watermark is None or done.watermark >= latest.end
                elif step[0] == "backfill":
                    lo = T0 + timedelta(hours=step[1])
                    await backfill(
                        ledger,
                        config(grid),
                        lo,
                        lo + timedelta(hours=step[2]),
                        dry_run=False,
                        now=now,
                    )
                elif step[0] == "retile":
                    ends = sorted(
                        {r.window_end_time for r in before} | {r.window_start_time for r in before}
                    )
                    if not ends:
                        continue  # nothing registered: nothing to re-tile
                    at = ends[-1 - min(step[2], len(ends) - 1)]
                    await ledger.retile(PIPE, step[1], at, now=now)
                    grid = step[1]
                    # The schedule goes on from `at`, which may lie before where it began.
                    if scheduled_from is not None:
                        scheduled_from = min(scheduled_from, at)
                else:
                    for _ in range(step[1]):
                        lease = await ledger.claim(PIPE, "w", cutoff=FAR, now=now)
                        if lease is not None:
                            await ledger.complete(lease, now=now)
                event(f"{step[0]} done")
            except ConfigError:
                event(f"{step[0]} refused")
                # A refusal changes nothing.
                assert await ledger.windows(PIPE) == before, step
            faults = await ledger.tiling_faults(PIPE, limit=10_000)
            assert [f for f in faults if f.kind == "overlap"] == [], (step, faults)
            identity = await ledger.identity(PIPE)
            watermark = None if identity is None else identity[1]
            if scheduled_from is not None and watermark is not None:
                for gap in faults:
                    assert gap.end <= scheduled_from or gap.start >= watermark, (step, gap)
                covered = [r for r in await ledger.windows(PIPE) if r.window_start_time < watermark]
                if watermark > scheduled_from:
                    assert covered and covered[-1].window_end_time == watermark, step


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.sampled_from(GRIDS), history=steps)
# Found by this property: a backfilled island before the schedule's first window, then start
# moved before the island; the span between island and schedule stayed unregistered.
@example(
    first=Grid.of("America/Los_Angeles", "1h"),
    history=[("run", 1), ("backfill", -2, 1), ("start", 3)],
)
def test_registered_windows_never_overlap_and_the_schedule_leaves_no_gap(
    first: Grid, history: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(play(f"sqlite+aiosqlite:///{Path(folder) / 'ledger.db'}", first, history))
