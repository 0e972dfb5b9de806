"""One pipeline per target table, bypassed: DuckDB resolves `warehouse.web_events` (catalog
`warehouse`, the file's stem, then table) to the same table as `web_events`, but the fence rows
name the table by its spelling, so a second pipeline that spells it the long way is not refused
and its window replace deletes the first pipeline's rows. Both runs end Completed, audit MATCH."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.demo import DEMO_START
from ledgerflow.ledger import Status

from tests.integration.kit import Pipeline

from .helpers import ids, query, run

pytestmark = pytest.mark.usefixtures("prefect_harness")

LO, HI = DEMO_START, DEMO_START + timedelta(hours=2)


def test_a_second_pipeline_naming_the_table_with_its_catalog_is_refused(tmp_path: Path) -> None:
    first = Pipeline(tmp_path / "a", rows=400)
    second = Pipeline(tmp_path / "b", rows=300)
    second.warehouse = first.warehouse  # same file: <tmp>/a/warehouse.duckdb, catalog `warehouse`
    query(second.source_path, "UPDATE web_events SET event_id = 'b-' || event_id")
    a = asyncio.run(first.save(end=HI))
    b = asyncio.run(second.save(end=HI))
    # The second pipeline's target names the same table catalog-qualified, as DuckDB's own
    # `SHOW ALL TABLES` lists it (database `warehouse`, schema `main`, table `web_events`).
    target = {"path": str(first.warehouse), "table": "warehouse.web_events"}
    DuckDBTarget.parse_obj(target).save(b, overwrite=True)  # sync here: returns its id
    assert run(a).is_completed()
    before = ids(first.warehouse, LO, HI)
    assert before == ids(first.source_path, LO, HI)  # the first pipeline loaded its rows
    second_run = run(b)
    statuses = {r.pipeline_status for r in asyncio.run(second.records())}
    after = ids(first.warehouse, LO, HI)
    lost = sorted(set(before) - set(after))
    refused = not second_run.is_completed() or statuses != {Status.COMPLETED}
    assert refused and not lost, (
        f"pipeline {b} loaded 'warehouse.web_events' (the table pipeline {a} owns as "
        f"'web_events'): its run ended {second_run.message!r}, its windows "
        f"{sorted(str(s) for s in statuses)}, and {len(lost)} of {len(before)} rows of "
        f"pipeline {a} were deleted (e.g. {lost[:2]})"
    )
