"""The seed's Cleanup Stale Locks: runs at the end of every flow run, whatever happened before."""

from __future__ import annotations

from prefect import task

from ledgerflow.compat import uncached
from ledgerflow.ledger import PipelineRecord
from ledgerflow.ports import Systems
from ledgerflow.tasks.common import RunSettings, logger, timed


@task(name="cleanup_stale_locks", persist_result=False, **uncached())
async def cleanup_stale_locks(systems: Systems, settings: RunSettings) -> list[PipelineRecord]:
    """Release IN_PROGRESS windows with no heartbeat for the stale threshold."""
    async with timed("cleanup stale locks"), systems.ledger.open() as ledger:
        released = await ledger.release_stale(
            settings.pipeline_id,
            older_than=settings.stale_after,
            max_attempts=settings.max_window_attempts,
        )
    for row in released:
        logger().warning(
            "released stale lock on window %s (id=%s, run %s): now %s after %s attempt(s)",
            row.window_start_time.isoformat(),
            row.id,
            row.dag_run_id,
            row.pipeline_status,
            row.retry_attempt,
        )
    return released
