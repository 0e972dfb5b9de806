"""key_x is a label recorded in the ledger; the stage path is `stage_location(...)` whatever hook
computes key_x (issue 17 item 6: a custom hook used to look as if it moved the data)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
from ledgerflow.blocks.config import validate_config
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.blocks.local_stage import LocalStage
from ledgerflow.tasks.source_to_stage import source_to_stage
from ledgerflow.tasks.store_and_validate import register_windows
from ledgerflow.windows import Window, stage_location
from ledgerflow.wiring import settings_from, wire

PIPE = "tickets"
START = datetime(2025, 3, 3, tzinfo=UTC)
END = datetime(2025, 3, 3, 4, tzinfo=UTC)


def ticket_key(pipeline_id: str, window: Window, _timezone: str) -> str:
    """A custom key_x: the kind of label a team might want (not a path)."""
    return f"TICKET-{pipeline_id}-{window.start.strftime('%Y%m%d%H')}"


async def test_a_custom_key_x_hook_changes_the_recorded_key_not_where_the_window_is_staged(
    tmp_path: Path,
) -> None:
    source_path = tmp_path / "source.duckdb"
    con = duckdb.connect(str(source_path))
    con.execute("CREATE TABLE events (id INTEGER, ts TIMESTAMP)")
    con.execute("INSERT INTO events VALUES (1, '2025-03-03 00:30:00'), (2, '2025-03-03 01:30:00')")
    con.close()
    config = validate_config(
        {
            "pipeline_id": PIPE,
            "timezone": "UTC",
            "granularity": "2h",
            "start": START.isoformat(),
            "end": END.isoformat(),
            "key_x_hook": f"{__name__}:ticket_key",
            "ledger_block": "ledgerflow-ledger-database/unit",
            "source_block": "ledgerflow-duckdb-source/unit",
            "stage_block": "ledgerflow-local-stage/unit",
            "target_block": "ledgerflow-duckdb-target/unit",
        }
    )
    settings = settings_from(config)
    stage_root = tmp_path / "stage"
    systems = wire(
        ledger=LedgerDatabase.parse_obj({"url": f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"}),
        source=DuckDBSource.parse_obj({"path": str(source_path), "table": "events"}),
        stage=LocalStage.parse_obj({"root": str(stage_root)}),
        target=DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb"), "table": "events"}),
    )

    await register_windows.fn(systems, settings, at=datetime(2025, 3, 10, tzinfo=UTC))
    async with systems.ledger.open() as ledger:
        lease = await ledger.claim(PIPE, "run-1", cutoff=END)
    assert lease is not None
    window = lease.window
    assert lease.record.key_x == ticket_key(PIPE, window, "UTC") == "TICKET-tickets-2025030300"

    manifest = await source_to_stage.fn(
        systems, settings, lease, await systems.source.count(window)
    )

    assert manifest.rows == 2
    assert manifest.location == stage_location(PIPE, window) == f"{PIPE}/2025-03-03/{window.key}"
    staged = stage_root / stage_location(PIPE, window)
    assert staged.is_dir()
    assert sorted(str(p) for p in staged.iterdir()) == sorted(f.uri for f in manifest.files)
    # Nothing landed anywhere else under the stage's root (e.g. at the key_x label).
    everything = {p for p in stage_root.rglob("*") if p.is_file()}
    assert everything == set(staged.iterdir())
    assert not list(stage_root.rglob("TICKET-*"))
