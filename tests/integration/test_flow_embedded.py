"""The whole flow on the embedded blocks: DuckDB source, local stage, DuckDB target, SQLite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from ledgerflow.blocks.config import load_final_config
from ledgerflow.compat import state_result
from ledgerflow.demo import DEMO_END, DEMO_START
from ledgerflow.errors import ConfigError
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Ledger, Status
from ledgerflow.tasks.source_to_stage import source_to_stage
from ledgerflow.tasks.store_and_validate import claim_window, register_windows
from ledgerflow.windows import Window
from ledgerflow.wiring import load_systems, settings_from
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from .kit import BrokenLoadTarget, CountingSource, DriftingTarget, FlakyCountTarget, Pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
LA = "America/Los_Angeles"
FIRST_WINDOW_END = DEMO_START + timedelta(hours=2)


async def artifacts(key: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    """A pipeline with an SQLite ledger."""
    return Pipeline(tmp_path)


@pytest.fixture
def pipeline_any(tmp_path: Path, ledger_url: str) -> Pipeline:
    """A pipeline whose ledger is SQLite, then Postgres."""
    return Pipeline(tmp_path, ledger_url=ledger_url)


async def test_every_window_loads_once_and_a_rerun_reloads_nothing(pipeline_any: Pipeline) -> None:
    pipeline = pipeline_any
    name = await pipeline.save()
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    records = await pipeline.records()
    assert len(records) == 24  # 12 windows on 03-08, 12 on the 23-hour 03-09
    assert sum(r.window_end_time - r.window_start_time == timedelta(hours=1) for r in records) == 1
    assert {r.pipeline_status for r in records} == {Status.COMPLETED}
    assert {r.audit_result for r in records} <= {"PASS", "MATCH"}
    expected = pipeline.source_rows_with_ts()
    assert pipeline.warehouse_rows() == (expected, expected)
    assert sum(r.target_count or 0 for r in records) == expected
    loaded = [r for r in records if r.phase_completed == "AUDIT"]
    assert loaded and all(r.extracted_count == r.source_count == r.loaded_count for r in loaded)

    again = await windowed_pipeline(config_block=name, return_state=True)
    assert again.is_completed()
    assert again.message.startswith("0 window(s)")
    assert pipeline.warehouse_rows() == (expected, expected)


async def test_max_windows_and_concurrency_bound_a_run(pipeline: Pipeline) -> None:
    name = await pipeline.save(concurrency=2)
    state = await windowed_pipeline(config_block=name, max_windows=5, return_state=True)
    assert state.is_completed()
    rows = await state_result(state)
    assert len(rows) == 5
    statuses = [r.pipeline_status for r in await pipeline.records()]
    assert statuses.count(Status.COMPLETED) == 5 and statuses.count(Status.PENDING) == 19


async def test_empty_windows_complete_with_transfer_skipped(pipeline: Pipeline) -> None:
    # One window beyond the data: empty on both sides.
    name = await pipeline.save(end=DEMO_END + timedelta(hours=2))
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    last = (await pipeline.records())[-1]
    assert last.window_start_time == DEMO_END.astimezone(UTC)
    assert (last.source_count, last.target_count) == (0, 0)
    assert last.pipeline_status == Status.COMPLETED
    assert last.source_to_stage_ingestion_status == "SKIPPED"
    assert last.stage_to_target_ingestion_status == "SKIPPED"


async def test_an_emptied_source_window_empties_the_target(pipeline: Pipeline) -> None:
    name = await pipeline.save(end=FIRST_WINDOW_END)
    await windowed_pipeline(config_block=name, return_state=True)
    [first] = await pipeline.records()
    pipeline.delete_source_window(first.window_start_time, first.window_end_time)
    async with Ledger.from_url(pipeline.ledger_url) as ledger:
        await ledger.reopen(name, [first.id], "source window deleted")
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    [row] = await pipeline.records()
    assert (row.source_count, row.target_count, row.audit_result) == (0, 0, "PASS")
    assert row.stage_to_target_ingestion_status == "COMPLETED"
    assert pipeline.warehouse_rows() == (0, 0)


async def test_audit_mismatch_fails_the_window_and_the_run_without_retry(
    pipeline_any: Pipeline,
) -> None:
    pipeline = pipeline_any
    name = await pipeline.save(target=DriftingTarget, end=FIRST_WINDOW_END, max_retry_task=3)
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()
    assert "audit failed" in state.message
    [row] = await pipeline.records()
    assert row.pipeline_status == Status.FAILED
    assert row.audit_result == "FAIL"
    assert row.source_count is not None
    assert row.target_count == row.source_count - 1
    assert row.count_difference == 1
    assert (row.error_message or "").startswith(
        f"audit failed: source {row.source_count:,}, target {row.target_count:,}: 1 missing"
    )
    # No retry hid it: a retried load would have put the deleted row back.
    assert pipeline.warehouse_rows()[0] == row.source_count - 1
    # The run left a table of its windows and a note explaining the mismatch.
    table, note = await artifacts(f"ledgerflow-{name}"), await artifacts(f"ledgerflow-audit-{name}")
    assert json.loads(table[0].data)[0]["status"] == "FAILED"
    assert f"ledgerflow retry -c <config> --id {row.id}" in str(note[0].data)
    assert "| target rows | " in str(note[0].data)


async def test_audit_process_failure_retries_then_fails_the_window(pipeline: Pipeline) -> None:
    name = await pipeline.save(target=FlakyCountTarget, end=FIRST_WINDOW_END)
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()
    [row] = await pipeline.records()
    assert row.pipeline_status == Status.FAILED
    assert row.audit_result is None
    assert "[audit] ConnectionError: warehouse went away" in (row.error_message or "")
    assert row.pipeline_locked_at is None


async def test_a_failed_load_leaves_the_target_unchanged_and_a_rerun_resumes_at_load(
    pipeline_any: Pipeline,
) -> None:
    pipeline = pipeline_any
    name = await pipeline.save(source=CountingSource, target=BrokenLoadTarget, end=FIRST_WINDOW_END)
    assert (await windowed_pipeline(config_block=name, return_state=True)).is_completed()
    [first] = await pipeline.records()
    before = pipeline.warehouse_rows()
    # Late rows make the window differ; the warehouse's next load fails mid-transaction.
    pipeline.add_late_rows(first.window_start_time, 5)
    async with Ledger.from_url(pipeline.ledger_url) as ledger:
        await ledger.reopen(name, [first.id], "late data")
    broken = pipeline.warehouse.with_suffix(".broken")
    broken.write_text("this is not parquet")

    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()
    [row] = await pipeline.records()
    assert row.pipeline_status == Status.FAILED
    assert (row.error_message or "").startswith("[stage to target]")
    assert row.phase_completed == "SOURCE_TO_STAGE"
    assert row.extracted_count == before[0] + 5
    assert pipeline.warehouse_rows() == before, "a failed load changed the target"

    broken.unlink()
    async with Ledger.from_url(pipeline.ledger_url) as ledger:
        await ledger.reset_failed(name)
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    [row] = await pipeline.records()
    assert (row.pipeline_status, row.audit_result) == (Status.COMPLETED, "PASS")
    assert pipeline.warehouse_rows() == (before[0] + 5, before[0] + 5)
    extracts = pipeline.source_path.with_suffix(".extracts").read_text().split()
    assert len(extracts) == 2, "the rerun extracted again instead of resuming at the load"


async def test_a_reclaimed_window_with_an_intact_stage_resumes_at_load(pipeline: Pipeline) -> None:
    name = await pipeline.save(source=CountingSource, end=FIRST_WINDOW_END)
    config = await load_final_config(name)
    systems = await load_systems(config)
    settings = settings_from(config)
    await register_windows.fn(systems, settings)
    lease = (await claim_window.fn(systems, settings, "crashed-run")).data
    count = await systems.source.count(lease.window)
    await source_to_stage.fn(systems, settings, lease, count)
    # The worker dies here; cleanup finds the stale lock and gives the window back.
    async with systems.ledger.open() as ledger:
        released = await ledger.release_stale(
            name,
            older_than=timedelta(0),
            max_attempts=3,
            now=datetime.now(UTC) + timedelta(seconds=1),
        )
    assert [r.phase_completed for r in released] == ["SOURCE_TO_STAGE"]
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    [row] = await pipeline.records()
    assert row.pipeline_status == Status.COMPLETED and row.retry_attempt == 1
    extracts = pipeline.source_path.with_suffix(".extracts").read_text().split()
    assert extracts == [lease.window.key], "the resumed window was extracted again"


async def crash_after_staging(name: str) -> str:
    """A worker claims the first window, stages it, and dies; cleanup gives the window back.
    Returns the window's key."""
    config = await load_final_config(name)
    systems, settings = await load_systems(config), settings_from(config)
    await register_windows.fn(systems, settings)
    lease = (await claim_window.fn(systems, settings, "crashed-run")).data
    await source_to_stage.fn(systems, settings, lease, await systems.source.count(lease.window))
    async with systems.ledger.open() as ledger:
        released = await ledger.release_stale(
            name, older_than=timedelta(0), max_attempts=3, now=datetime.now(UTC) + timedelta(1)
        )
    assert [r.phase_completed for r in released] == ["SOURCE_TO_STAGE"]
    return str(lease.window.key)


def edit_in_place(pipeline: Pipeline, path: str) -> str:
    """Edit one row of the first window in the source (the count stays the same)."""
    con = duckdb.connect(str(pipeline.source_path))
    try:
        row = con.execute(
            "SELECT min(event_id) FROM web_events WHERE ts >= ? AND ts < ?",
            [DEMO_START, FIRST_WINDOW_END],
        ).fetchone()
        assert row is not None
        con.execute("UPDATE web_events SET path = ? WHERE event_id = ?", [path, row[0]])
    finally:
        con.close()
    return str(row[0])


async def test_a_reclaimed_window_whose_source_was_edited_in_place_is_extracted_again(
    pipeline_any: Pipeline,
) -> None:
    pipeline = pipeline_any
    name = await pipeline.save(source=CountingSource, end=FIRST_WINDOW_END)
    key = await crash_after_staging(name)
    edited = edit_in_place(pipeline, "/edited-after-staging")
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    con = duckdb.connect(str(pipeline.warehouse), read_only=True)
    try:
        loaded = con.execute("SELECT path FROM web_events WHERE event_id = ?", [edited]).fetchall()
    finally:
        con.close()
    assert loaded == [("/edited-after-staging",)], "the stale staged row was loaded"
    extracts = pipeline.source_path.with_suffix(".extracts").read_text().split()
    assert extracts == [key, key], "the changed window was resumed instead of extracted again"


class EditedDuringExtractSource(CountingSource):
    """The source changes while the first extraction reads it (someone edits a row)."""

    _block_type_name = "Test Edited During Extract Source"
    _block_type_slug = "test-edited-during-extract-source"
    marker: str = "edited-during-extract"

    async def extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        first = not Path(self.path).with_suffix(".extracts").exists()
        async for batch in super().extract(window):
            yield batch
        if first:
            con = duckdb.connect(self.path)
            try:
                con.execute(
                    "UPDATE web_events SET path = '/during' WHERE ts >= ? AND ts < ?",
                    [window.start, window.end],
                )
            finally:
                con.close()


async def test_a_stage_written_while_the_source_changed_is_never_resumed(
    pipeline: Pipeline,
) -> None:
    name = await pipeline.save(source=EditedDuringExtractSource, end=FIRST_WINDOW_END)
    key = await crash_after_staging(name)
    [row] = await pipeline.records()
    assert json.loads(row.stage_manifest or "{}")["fingerprint"] is None
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    extracts = pipeline.source_path.with_suffix(".extracts").read_text().split()
    assert extracts == [key, key], "a stage of a source that moved under it was trusted"
    assert (
        pipeline.warehouse_rows()[0]
        == pipeline._scalar_row(
            pipeline.source_path,
            "SELECT count(*) FROM web_events WHERE path = '/during' AND ts >= ? AND ts < ?",
            [DEMO_START, FIRST_WINDOW_END],
        )[0]
    )


async def test_cleanup_runs_after_a_failure(pipeline: Pipeline) -> None:
    name = await pipeline.save(target=DriftingTarget, end=DEMO_START + timedelta(hours=4))
    crashed = await pipeline.dead_worker(
        name, ago=timedelta(hours=3), register_until=FIRST_WINDOW_END
    )
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()  # the other window's audit fails
    rows = {r.id: r for r in await pipeline.records()}
    released = rows.pop(crashed)
    assert released.pipeline_status == Status.PENDING and released.retry_attempt == 1
    assert "stale lock released" in (released.error_message or "")
    assert [r.pipeline_status for r in rows.values()] == [Status.FAILED]


async def test_a_missing_block_is_a_clear_error(pipeline: Pipeline) -> None:
    name = await pipeline.save(target_block="ledgerflow-duckdb-target/nope")
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match=r"target_block='ledgerflow-duckdb-target/nope' names no"):
        await state_result(state)


async def test_a_missing_config_is_a_clear_error() -> None:
    state = await windowed_pipeline(config_block="never-saved", return_state=True)
    with pytest.raises(ConfigError, match="no pipeline config block named 'never-saved'"):
        await state_result(state)


async def test_a_pipelines_blocks_load_through_one_prefect_client(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Prefect client builds an HTTP client with its TLS context and, in ephemeral mode, may
    start the in-process API again: a tenth of a second or more per block before the first
    task ran. The four blocks of a pipeline are read through one client, or through the one
    the caller holds."""
    from prefect.client.orchestration import PrefectClient

    name = await pipeline.save(end=FIRST_WINDOW_END)
    config = await load_final_config(name)
    opened: list[PrefectClient] = []
    real_init = PrefectClient.__init__

    def counting(self: PrefectClient, *args: Any, **kwargs: Any) -> None:
        opened.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(PrefectClient, "__init__", counting)
    systems = await load_systems(config)
    assert len(opened) == 1
    async with get_client() as client:
        again = await load_systems(config, client)
    assert len(opened) == 2, "a client was opened beside the one given"
    assert again.target.path == systems.target.path  # type: ignore[attr-defined]


async def test_a_window_of_wide_documents_loads_with_the_default_blocks(tmp_path: Path) -> None:
    """A document of 250 keyword fields (ECS-style logs) in the embedded target: DuckDB holds
    about 0.7 MB per column while it loads, beyond what a fixed 128MB let it have."""
    pipeline = Pipeline(tmp_path, rows=1)
    fields = ", ".join(f"'v' || ((i * 31 + {c}) % 99991) AS field_{c:03d}" for c in range(248))
    con = duckdb.connect(str(pipeline.source_path))
    try:
        con.execute(
            "CREATE OR REPLACE TABLE web_events AS SELECT 'w-' || i AS event_id, "
            f"?::TIMESTAMPTZ + to_microseconds(i * 300000) AS ts, {fields} FROM range(20000) t(i)",
            [DEMO_START],
        )
    finally:
        con.close()
    name = await pipeline.save(end=FIRST_WINDOW_END)
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    [row] = await pipeline.records()
    assert (row.source_count, row.target_count, row.audit_result) == (20000, 20000, "PASS")
    assert pipeline.warehouse_rows() == (20000, 20000)
