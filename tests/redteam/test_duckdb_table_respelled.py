"""One DuckDB table spelled `database.table` is taken for another target.

History: pipeline loads windows [LO, MID) into `web_events` of `warehouse.duckdb`. The operator
rewrites the target block's table as `warehouse.web_events` (the file's own database name and the
table: DuckDB resolves it to `main.web_events`, the very same table; `duckdb_fences.table_key`
says so, and its docstring lists this spelling as one of the four of one table) and moves `end`
to HI.

What happened: `DuckDBTarget.identity()` strips the file's database name only from a
three-part name and `main` only from a two-part one, so `warehouse.web_events` got another
identity and the run was refused, with `retarget` (reload everything) as the only way on.

Kept, on purpose: a two-part name's first part may be a schema of that name, which DuckDB
prefers, and the identity is computed without opening the file; taking `warehouse.` for the file
would give two different tables one identity, and a move between them would go unnoticed. A
refusal costs a recount: the message names `--rows-moved` for "the same table spelled
otherwise", which recounts each loaded window in place and loads nothing that is already there."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.demo import DEMO_START

from tests.integration.kit import Pipeline

from .helpers import cli, ids, run

pytestmark = pytest.mark.usefixtures("prefect_harness")

LO, MID, HI = DEMO_START, DEMO_START + timedelta(hours=4), DEMO_START + timedelta(hours=8)


def test_database_dot_table_is_refused_and_rows_moved_recounts_without_loading(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path, rows=500)
    name = asyncio.run(pipeline.save(end=MID))
    assert run(name).is_completed()
    asyncio.run(pipeline.save(end=HI))
    same = DuckDBTarget.parse_obj(
        {"path": str(pipeline.warehouse), "table": "warehouse.web_events"}
    )
    same.save(name, overwrite=True)

    refused = run(name)
    assert refused.is_failed()
    assert "same table spelled otherwise" in str(refused.message), refused.message

    assert cli("retarget", "-c", name, "--rows-moved")["reopened"] == 2
    state = run(name)

    assert state.is_completed(), state.message
    shown = cli("windows", "-c", name)
    assert [w["audit_result"] for w in shown[:2]] == ["MATCH", "MATCH"], shown  # not loaded
    assert ids(pipeline.warehouse, LO, HI) == ids(pipeline.source_path, LO, HI)
