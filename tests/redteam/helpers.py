"""Shared bits for the red-team reproductions: run the flow, read the two DuckDB files."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
from ledgerflow.cli import app
from ledgerflow.flows.pipeline import windowed_pipeline
from typer.testing import CliRunner

runner = CliRunner()


def cli(*args: str) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def run(name: str) -> Any:
    return asyncio.run(windowed_pipeline(config_block=name, return_state=True))


def query(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone='UTC'")
        return [tuple(r) for r in con.execute(sql, params or []).fetchall()]
    finally:
        con.close()


def ids(path: Path, start: datetime, end: datetime, table: str = "web_events") -> list[str]:
    """Every event_id in [start, end) of `table` in `path`, sorted, repeats kept."""
    rows = query(
        path,
        f"SELECT event_id FROM {table} WHERE ts >= ? AND ts < ? ORDER BY event_id",
        [start, end],
    )
    return [r[0] for r in rows]
