"""A version-2 ledger upgraded to version 3 after the target table was renamed in the config.

History:

1. With the previous release (ledger schema version 2, no recorded target), pipeline windows
   [LO, MID) are loaded into `web_events` and are COMPLETED.
2. The operator renames the target block's table to `web_events_v2` (and moves `end` to HI), and
   upgrades ledgerflow. Finding 12 is exactly this change, made before the fix was installed.
3. The first run after the upgrade migrates the ledger to version 3 (`_v3` leaves `target` NULL),
   and its registration records the configured target `...#web_events_v2` as if the earlier
   windows had been loaded there. The run loads only [MID, HI) into `web_events_v2` and ends
   Completed.

What goes wrong: finding 12, unchanged, for every ledger that is upgraded after its config
changed. Every window is COMPLETED / PASS, `status` says nothing, the recorded target is
`web_events_v2`, and `web_events_v2` lacks every row of [LO, MID) (they are in `web_events`).
`retarget` cannot help: the ledger already believes the windows are in `web_events_v2`. Nothing
in the README says that the first run after the upgrade must use the target the windows were
loaded into; and the DuckDB target's own fence rows name the table each window was loaded into,
so the adoption could have been checked."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.demo import DEMO_START
from ledgerflow.ledger import Status
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.kit import Pipeline

from .helpers import cli, ids, run

pytestmark = pytest.mark.usefixtures("prefect_harness")

LO, MID, HI = DEMO_START, DEMO_START + timedelta(hours=4), DEMO_START + timedelta(hours=8)


async def _as_version_2(url: str) -> None:
    """The ledger as the previous release left it: no `target` column, version 2."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE ledgerflow_pipelines DROP COLUMN target"))
            await conn.execute(sa.text("UPDATE ledgerflow_schema SET version = 2"))
    finally:
        await engine.dispose()


def test_the_first_run_after_the_upgrade_adopts_a_target_that_holds_none_of_the_windows(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path, rows=500)
    name = asyncio.run(pipeline.save(end=MID))
    assert run(name).is_completed()
    assert ids(pipeline.warehouse, LO, MID) == ids(pipeline.source_path, LO, MID)
    asyncio.run(_as_version_2(pipeline.ledger_url))

    # The config changed under the old release; then the upgrade.
    asyncio.run(pipeline.save(end=HI))
    DuckDBTarget.parse_obj({"path": str(pipeline.warehouse), "table": "web_events_v2"}).save(
        name, overwrite=True
    )
    state = run(name)
    if state.is_failed():  # refused: it names the way out, which loads every row there
        assert "retarget" in str(state.message) and "#web_events_v2" in str(state.message)
        assert cli("retarget", "-c", name)["reopened"] == 2
        state = run(name)
        assert state.is_completed(), state.message

    records = asyncio.run(pipeline.records())
    all_completed = all(r.pipeline_status == Status.COMPLETED for r in records)
    v2 = ids(pipeline.warehouse, LO, HI, "web_events_v2")
    source = ids(pipeline.source_path, LO, HI)
    # The promise: the configured target holds every source row once, or the run/status say not.
    assert state.is_failed() or not all_completed or v2 == source, (
        f"run {state.type.value} ({state.message}); all {len(records)} windows COMPLETED; "
        f"web_events_v2 holds {len(v2)} of the {len(source)} source rows of [LO, HI): "
        f"the {len(ids(pipeline.warehouse, LO, MID))} rows of [LO, MID) are in web_events"
    )
