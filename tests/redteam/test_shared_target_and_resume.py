"""Two hostile histories on the embedded stack.

- Two pipelines load one target table: the second pipeline's window replace deletes the first's
  rows, both audits pass, and status says both are fine.
- A crashed worker's stage is resumed because the staged rows still equal the source's count,
  though a document was deleted and another arrived since: the target loads the stale rows and
  the audit passes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ledgerflow.blocks.config import load_final_config
from ledgerflow.demo import DEMO_START
from ledgerflow.ledger import Ledger, Status
from ledgerflow.tasks.source_to_stage import source_to_stage
from ledgerflow.tasks.store_and_validate import register_windows
from ledgerflow.wiring import load_systems, settings_from

from tests.integration.kit import Pipeline

from .helpers import ids, query, run

pytestmark = pytest.mark.usefixtures("prefect_harness")

LO, HI = DEMO_START, DEMO_START + timedelta(hours=2)


def test_two_pipelines_sharing_a_target_table_lose_no_rows_silently(tmp_path: Path) -> None:
    first = Pipeline(tmp_path / "a", rows=400)
    second = Pipeline(tmp_path / "b", rows=300)
    second.warehouse = first.warehouse  # same file, same table `web_events`
    query(second.source_path, "UPDATE web_events SET event_id = 'b-' || event_id")
    a = asyncio.run(first.save(end=HI))
    b = asyncio.run(second.save(end=HI))
    ran = [run(a), run(b)]
    expected = sorted(ids(first.source_path, LO, HI) + ids(second.source_path, LO, HI))
    loaded = ids(first.warehouse, LO, HI)
    statuses = {r.pipeline_status for p in (first, second) for r in asyncio.run(p.records())}
    # Either both pipelines' rows are there, or something says it is not fine.
    fine = all(s.is_completed() for s in ran) and statuses == {Status.COMPLETED}
    assert loaded == expected or not fine, (
        f"both runs Completed and every window COMPLETED, yet the shared table holds "
        f"{len(loaded)} of {len(expected)} rows: the second pipeline deleted the first's"
    )


def test_a_resumed_stage_never_loads_rows_the_source_no_longer_holds(
    tmp_path: Path, ledger_url: str
) -> None:
    pipeline = Pipeline(tmp_path, rows=500, ledger_url=ledger_url)
    name = asyncio.run(pipeline.save(end=HI))

    async def crash_after_staging() -> None:
        config = await load_final_config(name)
        systems, settings = await load_systems(config), settings_from(config)
        await register_windows.fn(systems, settings)
        async with systems.ledger.open() as ledger:
            lease = await ledger.claim(name, "doomed", lag=config.lag)
        assert lease is not None
        count = await systems.source.count(lease.window)
        await source_to_stage.fn(systems, settings, lease, count)  # then SIGKILL

    asyncio.run(crash_after_staging())
    # The source changes: one document is deleted, a late one arrives (the count is the same).
    [(gone,)] = query(
        pipeline.source_path,
        "SELECT min(event_id) FROM web_events WHERE ts >= ? AND ts < ?",
        [LO, HI],
    )
    query(pipeline.source_path, "DELETE FROM web_events WHERE event_id = ?", [gone])
    pipeline.add_late_rows(LO + timedelta(minutes=7), 1)

    async def release() -> None:
        async with Ledger.from_url(pipeline.ledger_url) as ledger:
            later = datetime.now(UTC) + timedelta(hours=3)
            released = await ledger.release_stale(
                name, older_than=timedelta(hours=2), max_attempts=3, now=later
            )
            assert [r.pipeline_status for r in released] == [Status.PENDING]

    asyncio.run(release())
    assert run(name).is_completed()
    loaded = ids(pipeline.warehouse, LO, HI)
    assert gone not in loaded, f"{gone} was deleted from the source but loaded from a stale stage"
    assert loaded == ids(pipeline.source_path, LO, HI)
