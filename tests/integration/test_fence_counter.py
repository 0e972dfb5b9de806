"""The ledger's fence numbers: one counter per pipeline, so no claim ever repeats a number.

A re-tile replaces PENDING windows with rows cut on another grid. A claim of a re-cut window must
carry a number greater than every earlier claim of any window of the pipeline, or the target's
fence cannot tell the newer claim from a worker frozen since before the re-tile.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from ledgerflow.ledger import Ledger, Status
from ledgerflow.ledger.models import FENCE_COUNTERS
from ledgerflow.windows import Grid, build_record, scheduled_windows

PIPE = "orders"
T0 = datetime(2025, 3, 8, 8, tzinfo=UTC)
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def grid(granularity: str) -> Grid:
    return Grid.of("UTC", granularity)


async def scheduled(ledger: Ledger, g: Grid, at: datetime, pipeline: str = PIPE) -> None:
    await ledger.register_windows(
        pipeline,
        g,
        lambda wm, cutoff: scheduled_windows(wm, T0, None, cutoff, g.timezone, g.granularity),
        lambda w: build_record(pipeline, w, g.timezone),
        lag=timedelta(0),
        scheduled=True,
        now=at,
    )


async def test_a_re_cut_window_is_claimed_with_a_number_above_every_earlier_claim(
    ledger: Ledger,
) -> None:
    await scheduled(ledger, grid("1h"), T0 + timedelta(hours=2))  # [T0, +1h), [+1h, +2h)
    first = await ledger.claim(PIPE, "a", cutoff=FAR)
    second = await ledger.claim(PIPE, "b", cutoff=FAR)
    assert first is not None and second is not None
    assert (first.fence, second.fence) == (1, 2)  # one counter, not one per window
    # Both workers freeze; their locks are released; the operator re-tiles to 2h at T0.
    later = datetime.now(UTC) + timedelta(hours=3)
    released = await ledger.release_stale(
        PIPE, older_than=timedelta(hours=2), max_attempts=3, now=later
    )
    assert {r.pipeline_status for r in released} == {Status.PENDING}
    await ledger.retile(PIPE, grid("2h"), T0)
    await scheduled(ledger, grid("2h"), T0 + timedelta(hours=2))
    [window] = await ledger.windows(PIPE)
    assert (window.window_start_time, window.fence_token) == (T0, 0)
    newer = await ledger.claim(PIPE, "c", cutoff=FAR)
    assert newer is not None and newer.window.start == T0
    assert newer.fence > max(first.fence, second.fence)


async def test_concurrent_claims_of_one_pipeline_never_draw_one_number_twice(
    ledger: Ledger,
) -> None:
    await scheduled(ledger, grid("1h"), T0 + timedelta(hours=40))
    await scheduled(ledger, grid("1h"), T0 + timedelta(hours=5), pipeline="other")

    async def claimer(pipeline: str) -> list[int]:
        got = []
        while (lease := await ledger.claim(pipeline, "r", cutoff=FAR)) is not None:
            got.append(lease.fence)
        return got

    drawn = await asyncio.gather(*(claimer(PIPE) for _ in range(6)), claimer("other"))
    mine = sorted(n for numbers in drawn[:-1] for n in numbers)
    assert len(mine) == 40 and len(set(mine)) == 40, mine
    assert sorted(drawn[-1]) == [1, 2, 3, 4, 5]  # pipelines count on their own
    # Every number drawn is stored in the counter: the next claim goes above all of them.
    async with ledger.engine.connect() as conn:
        stored = await conn.scalar(
            sa.select(FENCE_COUNTERS.c.fence).where(FENCE_COUNTERS.c.pipeline_id == PIPE)
        )
    assert stored is not None and stored >= max(mine)
