"""Each pipeline's target, recorded by the ledger (red-team finding 12).

Windows loaded into one table and the next ones into another leave the configured target holding
part of what the ledger calls loaded. The ledger records where a pipeline loads, refuses a
registration or a claim from a worker whose target says otherwise, and moves a pipeline only by
the operator's `retarget`, which waits for windows in progress and reopens every loaded one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from ledgerflow.blocks.config import load_final_config
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.demo import DEMO_START
from ledgerflow.errors import ConfigError
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Ledger, Status
from ledgerflow.ledger.models import PIPELINES
from ledgerflow.tasks.store_and_validate import claim_window, register_windows
from ledgerflow.windows import Grid, build_record, scheduled_windows
from ledgerflow.wiring import load_systems, settings_from

from .kit import Pipeline

PIPE = "orders"
T0 = datetime(2025, 3, 8, 8, tzinfo=UTC)
FAR = datetime(2100, 1, 1, tzinfo=UTC)
GRID = Grid.of("UTC", "1h")
OLD, NEW = "duckdb:/data/warehouse.duckdb#events", "duckdb:/data/warehouse.duckdb#events_v2"


async def register(ledger: Ledger, target: str | None, hours: int = 3) -> None:
    await ledger.register_windows(
        PIPE,
        GRID,
        lambda wm, cutoff: scheduled_windows(wm, T0, None, cutoff, "UTC", "1h"),
        lambda w: build_record(PIPE, w, "UTC"),
        lag=timedelta(0),
        scheduled=True,
        now=T0 + timedelta(hours=hours),
        target=target,
    )


async def test_the_first_registration_records_the_target_and_another_is_refused(
    ledger: Ledger,
) -> None:
    await register(ledger, OLD)
    assert await ledger.target_of(PIPE) == OLD
    with pytest.raises(ConfigError, match=r"#events, but its target is now .*#events_v2"):
        await register(ledger, NEW, hours=5)
    assert len(await ledger.windows(PIPE)) == 3  # the refused registration added nothing
    await register(ledger, OLD, hours=4)
    assert len(await ledger.windows(PIPE)) == 4


async def test_a_pipeline_without_a_recorded_target_adopts_the_configured_one(
    ledger: Ledger,
) -> None:
    """A ledger upgraded from version 2 holds no target: its next registration records it."""
    await register(ledger, None)
    assert await ledger.target_of(PIPE) is None
    await register(ledger, OLD, hours=4)
    assert await ledger.target_of(PIPE) == OLD


async def test_retarget_waits_for_windows_in_progress_then_reopens_every_loaded_one(
    ledger: Ledger,
) -> None:
    await register(ledger, OLD, hours=4)  # four windows
    done = await ledger.claim(PIPE, "a", cutoff=FAR)
    failed = await ledger.claim(PIPE, "b", cutoff=FAR)
    busy = await ledger.claim(PIPE, "c", cutoff=FAR)
    assert done and failed and busy
    await ledger.complete(done, {"audit_result": "PASS"})
    await ledger.fail(failed, "boom")

    with pytest.raises(ConfigError, match=r"in progress .*id=3.*release"):
        await ledger.retarget(PIPE, NEW)
    assert await ledger.target_of(PIPE) == OLD  # nothing changed
    assert (await ledger.get(done.id)).pipeline_status == Status.COMPLETED  # type: ignore[union-attr]

    await ledger.complete(busy)
    moved = await ledger.retarget(PIPE, NEW)

    assert (moved.old, moved.new, moved.reopened) == (OLD, NEW, 2)
    rows = {r.id: r for r in await ledger.windows(PIPE)}
    assert {i: (r.pipeline_status, r.force_reload) for i, r in rows.items()} == {
        done.id: (Status.PENDING, True),
        failed.id: (Status.FAILED, False),  # retried by the operator, into the new target
        busy.id: (Status.PENDING, True),
        4: (Status.PENDING, False),
    }
    assert rows[done.id].audit_result is None and rows[done.id].stage_manifest is None
    assert "retargeted" in (rows[done.id].error_message or "")
    assert await ledger.target_of(PIPE) == NEW
    with pytest.raises(ConfigError, match="retarget"):  # the old config is refused now
        await register(ledger, OLD, hours=5)
    assert (await ledger.retarget(PIPE, NEW)).reopened == 0  # again: nothing to do


async def test_retarget_with_rows_moved_reopens_without_forcing(ledger: Ledger) -> None:
    await register(ledger, OLD, hours=1)
    lease = await ledger.claim(PIPE, "a", cutoff=FAR)
    assert lease is not None
    await ledger.complete(lease, {"audit_result": "PASS"})
    assert (await ledger.retarget(PIPE, NEW, rows_moved=True)).reopened == 1
    [row] = await ledger.windows(PIPE)
    assert (row.pipeline_status, row.force_reload) == (Status.PENDING, False)


async def test_retarget_of_a_pipeline_that_never_registered_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ConfigError, match="no window yet"):
        await ledger.retarget(PIPE, NEW)


@pytest.mark.usefixtures("prefect_harness")
async def test_a_worker_with_the_old_target_gives_back_what_it_claims(tmp_path: Path) -> None:
    """A worker loaded its config before the operator renamed the table and retargeted: its
    claim is given back untouched (no attempt counted), and it loads nothing."""
    pipeline = Pipeline(tmp_path, rows=300)
    name = await pipeline.save(end=DEMO_START + timedelta(hours=4))
    config = await load_final_config(name)
    stale, settings = await load_systems(config), settings_from(config)
    await register_windows.fn(stale, settings)

    await DuckDBTarget.parse_obj({"path": str(pipeline.warehouse), "table": "events_v2"}).save(
        name, overwrite=True
    )
    fresh = await load_systems(await load_final_config(name))
    async with fresh.ledger.open() as ledger:
        assert (await ledger.retarget(name, fresh.target.identity())).reopened == 0

    with pytest.raises(ConfigError, match=r"#web_events.*#events_v2|#events_v2.*#web_events"):
        await claim_window.fn(stale, settings, "stale-worker")
    rows = await pipeline.records()
    assert [(r.pipeline_status, r.retry_attempt) for r in rows] == [(Status.PENDING, 0)] * 2
    assert "another target" in (rows[0].error_message or "")
    assert not pipeline.warehouse.exists()  # nothing was loaded anywhere

    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    assert [r.pipeline_status for r in await pipeline.records()] == [Status.COMPLETED] * 2


async def test_a_version_2_ledger_gains_the_target_column(ledger_url: str) -> None:
    async with Ledger.from_url(ledger_url) as ledger:
        await ledger.create_schema()
        await register(ledger, None)
    engine = sa.ext.asyncio.create_async_engine(ledger_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"ALTER TABLE {PIPELINES.name} DROP COLUMN target")
            await conn.exec_driver_sql("UPDATE ledgerflow_schema SET version = 2")
    finally:
        await engine.dispose()
    async with Ledger.from_url(ledger_url) as ledger:
        assert await ledger.create_schema() == [3]
        await ledger.check_schema()
        await register(ledger, OLD, hours=4)
        assert await ledger.target_of(PIPE) == OLD
        assert len(await ledger.windows(PIPE)) == 4
