"""A resumed stage after a source schema migration that keeps the DuckDB fingerprint.

`DuckDBSource.fingerprint` is count + sum(hash(row)). DuckDB's `hash` of a row hashes its
values' physical bits only: not the column names, and not a DECIMAL's scale. So migrating
`latency_ms INTEGER` (250) to `latency_s DECIMAL(12,3)` (0.250, stored as 250) changes every
row and no fingerprint. A worker that staged the window before the migration and crashed is
resumed from its stale stage: the target gets the old column and the old values, the audit
passes (counts match), and nothing says so. Without the crash the run would extract the new
rows."""

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

from .helpers import query, run

pytestmark = pytest.mark.usefixtures("prefect_harness")

LO, HI = DEMO_START, DEMO_START + timedelta(hours=2)  # one 2h window


def _rows(path: Path) -> tuple[list[str], list[tuple[object, ...]]]:
    """Column names and (event_id, latency) of the window, in event_id order."""
    names = [r[0] for r in query(path, "DESCRIBE web_events")]
    latency = next(n for n in names if n.startswith("latency"))
    rows = query(
        path,
        f'SELECT event_id, "{latency}" FROM web_events WHERE ts >= ? AND ts < ? ORDER BY 1',
        [LO, HI],
    )
    return names, rows


def test_a_resumed_stage_is_not_loaded_after_a_schema_migration_of_the_source(
    tmp_path: Path, ledger_url: str
) -> None:
    pipeline = Pipeline(tmp_path, rows=400, ledger_url=ledger_url)
    name = asyncio.run(pipeline.save(granularity="2h", end=HI))

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
    # While the worker is down, the source migrates latency from integer ms to decimal seconds.
    query(
        pipeline.source_path,
        "ALTER TABLE web_events ALTER latency_ms TYPE DECIMAL(12,3) USING latency_ms / 1000",
    )
    query(pipeline.source_path, "ALTER TABLE web_events RENAME latency_ms TO latency_s")

    async def release() -> None:
        async with Ledger.from_url(pipeline.ledger_url) as ledger:
            later = datetime.now(UTC) + timedelta(hours=3)
            released = await ledger.release_stale(
                name, older_than=timedelta(hours=2), max_attempts=3, now=later
            )
            assert [r.pipeline_status for r in released] == [Status.PENDING]

    asyncio.run(release())
    state = run(name)
    records = asyncio.run(pipeline.records())
    fine = state.is_completed() and all(r.pipeline_status == Status.COMPLETED for r in records)
    source_names, source_rows = _rows(pipeline.source_path)
    target_names, target_rows = _rows(pipeline.warehouse)
    assert (target_names, target_rows) == (source_names, source_rows) or not fine, (
        f"the run ended {state.message!r} with every window COMPLETED, yet the target holds "
        f"the stale stage: columns {target_names} (source: {source_names}), first rows "
        f"{target_rows[:2]} (source: {source_rows[:2]})"
    )
