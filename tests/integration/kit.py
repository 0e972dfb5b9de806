"""Test kit for flow tests: a pipeline in a temp folder, and real blocks with injected faults.

The fault blocks subclass the real DuckDB blocks and fail the way production systems do (a load
that breaks inside its transaction, a row deleted behind the pipeline's back, a count that errors);
they are not fakes of any client library.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from ledgerflow.blocks.config import validate_config
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.blocks.local_stage import LocalStage
from ledgerflow.demo import DEMO_END, DEMO_START, generate_events
from ledgerflow.ledger import Ledger, PipelineRecord
from ledgerflow.ports import Fence, Manifest, StagedFile
from ledgerflow.windows import Window, build_record, windows_between

LA = "America/Los_Angeles"


class CountingSource(DuckDBSource):
    """The real DuckDB source, logging each extraction (to prove resume skips them)."""

    _block_type_name = "Test Counting Source"
    _block_type_slug = "test-counting-source"
    marker: str = "counting"

    async def extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        with Path(self.path).with_suffix(".extracts").open("a") as log:
            log.write(window.key + "\n")
        async for batch in super().extract(window):
            yield batch


class DriftingTarget(DuckDBTarget):
    """The real DuckDB target, plus someone deleting a row behind the pipeline's back."""

    _block_type_name = "Test Drifting Target"
    _block_type_slug = "test-drifting-target"
    marker: str = "drifting"

    async def replace(self, window: Window, manifest: Manifest, fence: Fence) -> int:
        loaded = await super().replace(window, manifest, fence)
        table = self.table

        def rogue(cur: duckdb.DuckDBPyConnection) -> None:
            cur.execute(
                f'DELETE FROM "{table}" WHERE event_id = '
                f'(SELECT min(event_id) FROM "{table}" WHERE ts >= ? AND ts < ?)',
                [window.start, window.end],
            )

        await self.handle.run(rogue)
        return loaded


class BrokenLoadTarget(DuckDBTarget):
    """The real DuckDB target whose load fails inside its transaction, after the DELETE.

    While `<warehouse>.broken` exists, a file that is not Parquet joins the load, so DuckDB's
    INSERT fails after the window's rows were deleted in the same transaction.
    """

    _block_type_name = "Test Broken Load Target"
    _block_type_slug = "test-broken-load-target"
    marker: str = "broken"

    async def replace(self, window: Window, manifest: Manifest, fence: Fence) -> int:
        broken = Path(self.path).with_suffix(".broken")
        if broken.exists():
            junk = StagedFile(str(broken), 1, broken.stat().st_size)
            manifest = Manifest(manifest.location, (*manifest.files, junk))
        return await super().replace(window, manifest, fence)


class FlakyCountTarget(DuckDBTarget):
    """The real DuckDB target whose count fails after the load (an audit process failure)."""

    _block_type_name = "Test Flaky Count Target"
    _block_type_slug = "test-flaky-count-target"
    marker: str = "flaky"

    async def count(self, window: Window, pipeline_id: str) -> int:
        if Path(self.path).with_suffix(".loaded").exists():
            raise ConnectionError("warehouse went away during the audit")
        return await super().count(window, pipeline_id)

    async def replace(self, window: Window, manifest: Manifest, fence: Fence) -> int:
        loaded = await super().replace(window, manifest, fence)
        Path(self.path).with_suffix(".loaded").touch()
        return loaded


class Pipeline:
    """One pipeline's blocks and files in a temp folder, saved under a unique name."""

    def __init__(self, root: Path, rows: int = 3000, ledger_url: str | None = None) -> None:
        self.root = root
        self.name = f"t{uuid.uuid4().hex[:10]}"
        self.source_path = root / "source.duckdb"
        self.warehouse = root / "warehouse.duckdb"
        self.ledger_url = ledger_url or f"sqlite+aiosqlite:///{root / 'ledger.db'}"
        self.rows = generate_events(self.source_path, rows)

    @classmethod
    def attach(cls, root: Path, name: str, ledger_url: str) -> Pipeline:
        """The pipeline another process generated under `root` (no new data)."""
        pipeline = cls.__new__(cls)
        pipeline.root, pipeline.name, pipeline.ledger_url = root, name, ledger_url
        pipeline.source_path, pipeline.warehouse = root / "source.duckdb", root / "warehouse.duckdb"
        pipeline.rows = 0
        return pipeline

    async def save(
        self,
        source: type[DuckDBSource] = DuckDBSource,
        target: type[DuckDBTarget] = DuckDBTarget,
        **config: Any,
    ) -> str:
        name = self.name
        await LedgerDatabase.parse_obj({"url": self.ledger_url}).save(name, overwrite=True)
        await source.parse_obj({"path": str(self.source_path), "table": "web_events"}).save(
            name, overwrite=True
        )
        await LocalStage.parse_obj({"root": str(self.root / "stage")}).save(name, overwrite=True)
        await target.parse_obj({"path": str(self.warehouse), "table": "web_events"}).save(
            name, overwrite=True
        )
        fields = {
            "pipeline_id": name,
            "start": DEMO_START,
            "end": DEMO_END,
            "windows_per_run": 100,
            "concurrency": 4,
            "max_retry_task": 1,
            "retry_backoff_seconds": 0,
            "ledger_block": f"ledgerflow-ledger-database/{name}",
            "source_block": f"{source.get_block_type_slug()}/{name}",
            "stage_block": f"ledgerflow-local-stage/{name}",
            "target_block": f"{target.get_block_type_slug()}/{name}",
            **config,
        }
        await validate_config(fields).save(name, overwrite=True)
        return name

    def _scalar_row(self, path: Path, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
        con = duckdb.connect(str(path))
        try:
            con.execute("SET TimeZone='UTC'")
            row = con.execute(sql, params or []).fetchone()
        finally:
            con.close()
        assert row is not None
        return tuple(row)

    def warehouse_rows(self, id_column: str = "event_id") -> tuple[int, int]:
        """(rows, distinct ids) in the warehouse."""
        total, distinct = self._scalar_row(
            self.warehouse, f'SELECT count(*), count(DISTINCT "{id_column}") FROM web_events'
        )
        return int(total), int(distinct)

    def source_rows_with_ts(self) -> int:
        return int(self._scalar_row(self.source_path, "SELECT count(ts) FROM web_events")[0])

    def add_late_rows(self, start: datetime, rows: int) -> None:
        """Late documents: rows that arrive in the source after their window was loaded."""
        self._scalar_row(
            self.source_path,
            "INSERT INTO web_events (event_id, ts) "
            "SELECT 'late-' || i, ?::TIMESTAMPTZ + to_seconds(i) FROM range(?) t(i)",
            [start, rows],
        )

    def delete_source_window(self, start: datetime, end: datetime) -> None:
        self._scalar_row(
            self.source_path, "DELETE FROM web_events WHERE ts >= ? AND ts < ?", [start, end]
        )

    async def records(self) -> list[PipelineRecord]:
        async with Ledger.from_url(self.ledger_url) as ledger:
            return await ledger.windows(self.name)

    async def dead_worker(
        self, name: str, *, ago: timedelta, register_until: datetime | None = None
    ) -> int:
        """A worker that claimed the oldest eligible window `ago` (by the ledger's clock) and
        died holding it: the window's id. With `register_until`, the 2h windows from DEMO_START
        to there are registered first (the schema created if need be), as a run would."""
        async with Ledger.from_url(self.ledger_url) as ledger:
            if register_until is not None:
                await ledger.create_schema()
                windows = windows_between(DEMO_START, register_until, LA, "2h")
                await ledger.register([build_record(name, w, LA) for w in windows])
            now = datetime.now(UTC)
            lease = await ledger.claim(name, "dead-worker", cutoff=now, now=now - ago)
        assert lease is not None, "nothing to claim"
        return lease.id


async def run_logs(state: Any) -> str:
    """Every log line of a flow run and its task runs, as the Prefect API holds them."""
    from ledgerflow.compat import flush_run_logs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    await flush_run_logs()
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    assert logs, "no logs to inspect: the test proves nothing"
    return "\n".join(log.message for log in logs)
