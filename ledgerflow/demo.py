"""`ledgerflow demo`: the whole pipeline on the embedded defaults, with nothing installed.

It writes two days of synthetic web events across the 2025-03-09 DST change in Los Angeles into
a DuckDB source, registers the embedded blocks, loads every window through a local Parquet stage
into a DuckDB warehouse, shows the windows, and runs again to show nothing is loaded twice.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
from prefect.blocks.core import Block
from rich.console import Console

from ledgerflow.blocks.config import PipelineConfig, validate_config
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.blocks.local_stage import LocalStage
from ledgerflow.compat import model_validate
from ledgerflow.errors import LedgerflowError
from ledgerflow.ledger import AuditResult, Ledger
from ledgerflow.report import windows_table

LA = ZoneInfo("America/Los_Angeles")
DEMO_START = datetime(2025, 3, 8, tzinfo=LA)
DEMO_END = datetime(2025, 3, 10, tzinfo=LA)


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def source(self) -> Path:
        return self.root / "source.duckdb"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def stage(self) -> Path:
        return self.root / "stage"

    @property
    def ledger_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.root / 'ledger.db'}"


def generate_events(path: Path, rows: int = 40_000, seed: float = 0.42) -> int:
    """Write `rows` web events between DEMO_START and DEMO_END with a day/night traffic curve.

    Some events share a timestamp to the microsecond (retries, batched beacons), and a few carry
    no timestamp at all: those belong to no window and are never loaded.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # Subtracting two datetimes of the same zone is wall-clock arithmetic in Python (48h here);
    # the real span is 47h, so subtract instants.
    span = (DEMO_END.astimezone(UTC) - DEMO_START.astimezone(UTC)).total_seconds()
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SELECT setseed({seed})")
        con.execute(
            """
            CREATE TABLE web_events AS
            WITH raw AS (
                -- a day/night curve: 70% of traffic between 07:00 and 23:00 local
                SELECT i,
                       (CASE WHEN random() < 0.5 THEN 0 ELSE 86400 END
                        + CASE WHEN random() < 0.7 THEN 25200 + random() * 57600
                               ELSE random() * 86400 END) % ? AS offset_s
                FROM range(?) t(i)
            )
            SELECT
                'evt-' || lpad(i::VARCHAR, 7, '0') AS event_id,
                CASE WHEN i % 997 = 0 THEN NULL
                     WHEN i % 50 = 1 THEN ?::TIMESTAMPTZ + to_seconds(floor(offset_s))
                     ELSE ?::TIMESTAMPTZ + to_microseconds((offset_s * 1e6)::BIGINT) END AS ts,
                'user-' || (hash(i // 7) % 5000)::VARCHAR AS user_id,
                ['/', '/search', '/item', '/cart', '/pay'][1 + (hash(i) % 5)::INT] AS path,
                ['US', 'CA', 'MX', 'DE', 'IN', 'BR'][1 + (hash(i * 3) % 6)::INT] AS country,
                ['mobile', 'desktop', 'tablet'][1 + (hash(i * 5) % 3)::INT] AS device,
                CASE WHEN hash(i * 11) % 50 = 0 THEN 500 ELSE 200 END AS status,
                (20 + hash(i * 13) % 480)::INT AS latency_ms
            FROM raw
            """,
            [span, rows, DEMO_START, DEMO_START],
        )
        count = con.execute("SELECT count(*) FROM web_events").fetchone()
    finally:
        con.close()
    return int(count[0]) if count else 0


async def register_demo_blocks(paths: DemoPaths, name: str = "demo") -> PipelineConfig:
    """Save the embedded blocks and the demo pipeline config under `name`."""
    blocks: list[tuple[type[Block], dict[str, Any]]] = [
        (LedgerDatabase, {"url": paths.ledger_url}),
        (DuckDBSource, {"path": str(paths.source), "table": "web_events"}),
        (LocalStage, {"root": str(paths.stage), "target_file_mb": 8}),
        (DuckDBTarget, {"path": str(paths.warehouse), "table": "web_events"}),
    ]
    for kind, fields in blocks:
        await model_validate(kind, fields).save(name, overwrite=True)
    config = validate_config(
        {
            "pipeline_id": "demo_web_events",
            "timezone": "America/Los_Angeles",
            "granularity": "2h",
            "x_time_back": "1d",
            "start": DEMO_START,
            "end": DEMO_END,
            "windows_per_run": 100,
            "concurrency": 4,
            "max_retry_task": 2,
            "retry_backoff_seconds": 1,
            "ledger_block": f"ledgerflow-ledger-database/{name}",
            "source_block": f"ledgerflow-duckdb-source/{name}",
            "stage_block": f"ledgerflow-local-stage/{name}",
            "target_block": f"ledgerflow-duckdb-target/{name}",
        },
        name,
    )
    await config.save(name, overwrite=True)
    return config


def _fresh_source(paths: DemoPaths, rows: int) -> int:
    # The demo's data always starts from nothing; its Prefect home (set by `ledgerflow demo`,
    # possibly under the same folder) stays, so later runs skip Prefect's database migrations.
    home = Path(os.environ.get("PREFECT_HOME", "")).absolute()
    for item in [*paths.root.iterdir()] if paths.root.is_dir() else []:
        if item != home:
            if item.is_dir():
                shutil.rmtree(item)
            else:
                item.unlink()
    return generate_events(paths.source, rows)


async def run_demo(root: Path, rows: int, console: Console) -> None:
    """Generate, register, load, show; then load again to show nothing is reloaded."""
    from ledgerflow.flows.pipeline import windowed_pipeline

    paths = DemoPaths(root)
    written = await asyncio.to_thread(_fresh_source, paths, rows)
    src = duckdb.connect(str(paths.source), read_only=True)
    no_ts = src.execute("SELECT count(*) FROM web_events WHERE ts IS NULL").fetchone()[0]  # type: ignore[index]
    src.close()
    console.rule("[bold]ledgerflow demo")
    console.print(
        f"source: {written:,} synthetic web events, {DEMO_START:%Y-%m-%d} to {DEMO_END:%Y-%m-%d} "
        f"in America/Los_Angeles (2025-03-09 is the 23-hour spring-forward day); "
        f"{no_ts} have no timestamp and belong to no window"
    )
    config = await register_demo_blocks(paths)
    console.print(
        "blocks saved (all named 'demo'): pipeline config, SQLite ledger, DuckDB source, "
        f"local stage, DuckDB target; in {os.environ.get('PREFECT_HOME', 'the Prefect home')}",
        markup=False,
        highlight=False,
    )

    console.print("\n[bold]run 1[/]: load every eligible window")
    started = time.perf_counter()
    first = await windowed_pipeline(config_block="demo", return_state=True)
    console.print(f"  {first.type.value}: {first.message}  ({time.perf_counter() - started:.1f}s)")

    ledger = Ledger.from_url(paths.ledger_url)
    try:
        records = await ledger.windows(config.pipeline_id)
        console.print(windows_table(records, config.timezone, f"windows of {config.pipeline_id}"))
        audited = sum(r.audit_result in (AuditResult.PASS, AuditResult.MATCH) for r in records)
        loaded = sum(r.target_count or 0 for r in records)

        console.print("\n[bold]run 2[/]: the same flow again")
        started = time.perf_counter()
        second = await windowed_pipeline(config_block="demo", return_state=True)
        console.print(
            f"  {second.type.value}: {second.message}  ({time.perf_counter() - started:.1f}s)"
        )
        summary = await ledger.summary(config.pipeline_id)
    finally:
        await ledger.close()
    wh = duckdb.connect(str(paths.warehouse), read_only=True)
    in_warehouse, distinct = wh.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM web_events"
    ).fetchone()  # type: ignore[misc]
    wh.close()
    ok = in_warehouse == distinct == written - no_ts and audited == len(records)
    console.print(
        f"\nfiles under {paths.root}; the demo's blocks live in its own Prefect home, so look "
        f"with: PREFECT_HOME={os.environ.get('PREFECT_HOME', '~/.prefect')} PREFECT_API_URL= "
        ".venv/bin/ledgerflow windows -c demo",
        markup=False,
        highlight=False,
    )
    verdict = "[bold green]OK[/]" if ok else "[bold red]MISMATCH[/]"
    # The verdict is the last line, on one line even when piped (soft_wrap: no wrapping).
    console.print(
        f"{verdict}  windows: {len(records)} ({summary.counts['COMPLETED']} completed, "
        f"{summary.counts['FAILED']} failed), audited {audited}/{len(records)}; "
        f"warehouse rows: {in_warehouse:,} ({distinct:,} distinct event ids) = "
        f"{written - no_ts:,} source rows with a timestamp; ledger rows loaded: {loaded:,}",
        soft_wrap=True,
    )
    if not ok or not first.is_completed():
        raise LedgerflowError("the demo's audit did not come out clean; see the table above")
