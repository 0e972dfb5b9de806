"""The whole flow on the embedded blocks: DuckDB source, local stage, DuckDB target, SQLite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from ledgerflow.blocks.config import validate_config
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.blocks.local_stage import LocalStage
from ledgerflow.demo import DEMO_END, DEMO_START, generate_events
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Ledger, Status
from ledgerflow.ports import Manifest
from ledgerflow.windows import Window

pytestmark = pytest.mark.usefixtures("prefect_harness")


class CountingSource(DuckDBSource):
    """The real DuckDB source, counting extractions (to prove resume skips them)."""

    _block_type_name = "Test Counting Source"
    _block_type_slug = "test-counting-source"
    marker: str = "counting"

    async def extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        path = Path(self.path).with_suffix(".extracts")
        with path.open("a") as log:
            log.write(window.key + "\n")
        async for batch in super().extract(window):
            yield batch


class DriftingTarget(DuckDBTarget):
    """The real DuckDB target plus a rogue writer that adds a row right after each load."""

    _block_type_name = "Test Drifting Target"
    _block_type_slug = "test-drifting-target"
    marker: str = "drifting"

    async def replace(self, window: Window, manifest: Manifest) -> int:
        loaded = await super().replace(window, manifest)
        table = self.table

        def rogue(cur: duckdb.DuckDBPyConnection) -> None:
            cur.execute(
                f'INSERT INTO "{table}" SELECT * FROM "{table}" WHERE ts >= ? AND ts < ? LIMIT 1',
                [window.start, window.end],
            )

        await self.handle.run(rogue)
        return loaded


class FlakyCountTarget(DuckDBTarget):
    """The real DuckDB target whose count fails after the load (an audit process failure)."""

    _block_type_name = "Test Flaky Count Target"
    _block_type_slug = "test-flaky-count-target"
    marker: str = "flaky"

    async def count(self, window: Window) -> int:
        if Path(self.path).with_suffix(".loaded").exists():
            raise ConnectionError("warehouse went away during the audit")
        return await super().count(window)

    async def replace(self, window: Window, manifest: Manifest) -> int:
        loaded = await super().replace(window, manifest)
        Path(self.path).with_suffix(".loaded").touch()
        return loaded


class Pipeline:
    """One pipeline's blocks and files in a temp folder, saved under a unique name."""

    def __init__(self, root: Path, rows: int = 3000) -> None:
        self.root = root
        self.name = f"t{uuid.uuid4().hex[:10]}"
        self.source_path = root / "source.duckdb"
        self.warehouse = root / "warehouse.duckdb"
        self.ledger_url = f"sqlite+aiosqlite:///{root / 'ledger.db'}"
        self.rows = generate_events(self.source_path, rows)

    async def save(
        self,
        source: type[DuckDBSource] = DuckDBSource,
        target: type[DuckDBTarget] = DuckDBTarget,
        **config: Any,
    ) -> str:
        await LedgerDatabase.parse_obj({"url": self.ledger_url}).save(self.name)
        await source.parse_obj({"path": str(self.source_path), "table": "web_events"}).save(
            self.name
        )
        await LocalStage.parse_obj({"root": str(self.root / "stage")}).save(self.name)
        await target.parse_obj({"path": str(self.warehouse), "table": "web_events"}).save(self.name)
        fields = {
            "pipeline_id": self.name,
            "start": DEMO_START,
            "end": DEMO_END,
            "windows_per_run": 100,
            "concurrency": 4,
            "max_retry_task": 1,
            "retry_backoff_seconds": 0,
            "ledger_block": f"ledgerflow-ledger-database/{self.name}",
            "source_block": f"{source.get_block_type_slug()}/{self.name}",
            "stage_block": f"ledgerflow-local-stage/{self.name}",
            "target_block": f"{target.get_block_type_slug()}/{self.name}",
            **config,
        }
        await validate_config(fields).save(self.name)
        return self.name

    def warehouse_rows(self) -> tuple[int, int]:
        con = duckdb.connect(str(self.warehouse))
        try:
            total, distinct = con.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM web_events"
            ).fetchone()  # type: ignore[misc]
        finally:
            con.close()
        return int(total), int(distinct)

    def source_rows_with_ts(self) -> int:
        con = duckdb.connect(str(self.source_path))
        try:
            return int(con.execute("SELECT count(ts) FROM web_events").fetchone()[0])  # type: ignore[index]
        finally:
            con.close()

    async def records(self) -> list[Any]:
        async with Ledger.from_url(self.ledger_url) as ledger:
            return await ledger.windows(self.name)


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(tmp_path)


async def test_every_window_loads_once_and_a_rerun_reloads_nothing(pipeline: Pipeline) -> None:
    name = await pipeline.save()
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    records = await pipeline.records()
    assert len(records) == 24  # 12 windows on 03-08, 12 on the 23-hour 03-09
    assert {r.pipeline_status for r in records} == {Status.COMPLETED}
    assert {r.audit_result for r in records} <= {"PASS", "MATCH"}
    expected = pipeline.source_rows_with_ts()
    assert pipeline.warehouse_rows() == (expected, expected)
    assert sum(r.target_count for r in records) == expected
    loaded = [r for r in records if r.phase_completed == "AUDIT"]
    assert all(r.extracted_count == r.source_count == r.loaded_count for r in loaded)

    again = await windowed_pipeline(config_block=name, return_state=True)
    assert again.is_completed()
    assert again.message.startswith("0 window(s)")
    assert pipeline.warehouse_rows() == (expected, expected)


async def test_max_windows_and_concurrency_bound_a_run(pipeline: Pipeline) -> None:
    name = await pipeline.save(concurrency=2)
    state = await windowed_pipeline(config_block=name, max_windows=5, return_state=True)
    assert state.is_completed()
    rows = await state.result(fetch=True)
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
    name = await pipeline.save()
    await windowed_pipeline(config_block=name, return_state=True)
    first = (await pipeline.records())[0]
    con = duckdb.connect(str(pipeline.source_path))
    con.execute("SET TimeZone='UTC'")
    con.execute(
        "DELETE FROM web_events WHERE ts >= ? AND ts < ?",
        [first.window_start_time, first.window_end_time],
    )
    con.close()
    async with Ledger.from_url(pipeline.ledger_url) as ledger:
        await ledger.reopen(name, [first.id], "source window deleted")
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    row = (await pipeline.records())[0]
    assert (row.source_count, row.target_count, row.audit_result) == (0, 0, "PASS")
    assert row.stage_to_target_ingestion_status == "COMPLETED"


async def test_audit_mismatch_fails_the_window_and_the_run_without_retry(
    pipeline: Pipeline,
) -> None:
    name = await pipeline.save(
        target=DriftingTarget, end=DEMO_START + timedelta(hours=2), max_retry_task=3
    )
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()
    assert "audit failed" in state.message
    [row] = await pipeline.records()
    assert row.pipeline_status == Status.FAILED
    assert row.audit_result == "FAIL"
    assert row.target_count == row.source_count + 1
    assert row.count_difference == -1
    assert row.error_message.startswith("audit failed: source has")
    # No retry hid it: one load, one rogue row.
    assert pipeline.warehouse_rows()[0] == row.source_count + 1


async def test_audit_process_failure_retries_then_fails_the_window(pipeline: Pipeline) -> None:
    name = await pipeline.save(target=FlakyCountTarget, end=DEMO_START + timedelta(hours=2))
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()
    [row] = await pipeline.records()
    assert row.pipeline_status == Status.FAILED
    assert row.audit_result is None
    assert "[audit] ConnectionError: warehouse went away" in row.error_message
    assert row.lease_token is not None and row.pipeline_locked_at is None


async def test_a_reclaimed_window_with_an_intact_stage_resumes_at_load(pipeline: Pipeline) -> None:
    from ledgerflow.blocks.config import load_final_config
    from ledgerflow.flows.pipeline import load_parts, settings_from
    from ledgerflow.tasks.source_to_stage import source_to_stage

    name = await pipeline.save(source=CountingSource, end=DEMO_START + timedelta(hours=2))
    config = await load_final_config(name)
    parts = await load_parts(config)
    settings = settings_from(config)
    ledger = await parts.ledger.get_ledger()
    from ledgerflow.tasks.store_and_validate import claim_window, register_windows

    await register_windows.fn(parts, settings)
    lease = (await claim_window.fn(parts, settings, "crashed-run")).data
    count = await parts.source.count(lease.window)
    await source_to_stage.fn(parts, settings, lease, count)
    # The worker dies here; cleanup finds the stale lock and gives the window back.
    released = await ledger.release_stale(
        name, older_than=timedelta(0), max_attempts=3, now=datetime.now(UTC) + timedelta(seconds=1)
    )
    assert [r.phase_completed for r in released] == ["SOURCE_TO_STAGE"]
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    [row] = await pipeline.records()
    assert row.pipeline_status == Status.COMPLETED and row.retry_attempt == 1
    extracts = pipeline.source_path.with_suffix(".extracts").read_text().split()
    assert extracts == [lease.window.key], "the resumed window was extracted again"


async def test_a_missing_block_is_a_clear_error(pipeline: Pipeline) -> None:
    name = await pipeline.save(target_block="ledgerflow-duckdb-target/nope")
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_failed()
    with pytest.raises(
        Exception, match=r"target_block='ledgerflow-duckdb-target/nope' names no saved block"
    ):
        await state.result(fetch=True)


async def test_a_missing_config_is_a_clear_error() -> None:
    state = await windowed_pipeline(config_block="never-saved", return_state=True)
    with pytest.raises(Exception, match="no pipeline config block named 'never-saved'"):
        await state.result(fetch=True)
