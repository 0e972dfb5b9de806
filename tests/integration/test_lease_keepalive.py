"""A healthy worker never loses its lease: the keepalive covers the whole chain of a window."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.demo import DEMO_START
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Ledger, PipelineRecord, Status
from ledgerflow.windows import Window

from .kit import Pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
STALE_SECONDS = 12  # heartbeats every 3 s: four chances before a lock looks stale
SLOW_COUNT_SECONDS = 2 * STALE_SECONDS


class SlowCountSource(DuckDBSource):
    """The real DuckDB source whose first count is slow (a big index under load)."""

    _block_type_name = "Test Slow Count Source"
    _block_type_slug = "test-slow-count-source"
    marker: str = "slow"

    async def count(self, window: Window) -> int:
        flag = Path(self.path).with_suffix(".slow")
        if flag.exists():
            flag.unlink()
            await asyncio.sleep(SLOW_COUNT_SECONDS)
        return await super().count(window)


async def test_a_count_phase_longer_than_the_stale_threshold_keeps_its_lease(
    tmp_path: Path, ledger_url: str
) -> None:
    pipeline = Pipeline(tmp_path, rows=200, ledger_url=ledger_url)
    name = await pipeline.save(
        source=SlowCountSource,
        end=DEMO_START + timedelta(hours=2),
        stale_threshold_hours=STALE_SECONDS / 3600,
    )
    pipeline.source_path.with_suffix(".slow").touch()
    released: list[PipelineRecord] = []

    async def releaser() -> None:
        """Another worker's stale-lock cleanup, running all along."""
        async with Ledger.from_url(ledger_url) as ledger:
            while True:
                with contextlib.suppress(Exception):  # the schema may not exist yet
                    released.extend(
                        await ledger.release_stale(
                            name, older_than=timedelta(seconds=STALE_SECONDS), max_attempts=3
                        )
                    )
                await asyncio.sleep(1)

    cleanup = asyncio.create_task(releaser())
    try:
        state = await windowed_pipeline(config_block=name, return_state=True)
    finally:
        cleanup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cleanup
    assert not pipeline.source_path.with_suffix(".slow").exists(), "the slow count never ran"
    assert released == [], "a healthy worker's lease was taken during its count phase"
    assert state.is_completed(), state.message
    [row] = await pipeline.records()
    assert (row.pipeline_status, row.retry_attempt) == (Status.COMPLETED, 0)
