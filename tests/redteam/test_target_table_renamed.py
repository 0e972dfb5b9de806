"""A config change (finding 12): the target block's `table` is renamed (same pipeline_id, same
DuckDB file) after windows were loaded. Before the fix the next run loaded only the new windows
into the new table and ended Completed, while the windows loaded before stayed COMPLETED / PASS
with their rows in the old table: the configured target held part of what the ledger called
loaded, and nothing said so.

Now the ledger records each pipeline's target, a run into another one is refused with a message
naming both, and `ledgerflow retarget` moves the pipeline: every loaded window is loaded again
into the new table, or, with `--rows-moved` after the operator renamed the table, recounted there
and loaded only where the counts differ."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.cli import app
from ledgerflow.demo import DEMO_START

from tests.integration.kit import Pipeline

from .helpers import cli, ids, query, run, runner

pytestmark = pytest.mark.usefixtures("prefect_harness")

LO, MID, HI = DEMO_START, DEMO_START + timedelta(hours=4), DEMO_START + timedelta(hours=8)


def _tables(pipeline: Pipeline) -> set[str]:
    return {r[0] for r in query(pipeline.warehouse, "SELECT table_name FROM duckdb_tables()")}


def _loaded_then_renamed(tmp_path: Path) -> tuple[Pipeline, str]:
    """Windows [LO, MID) loaded into web_events; then the config's end moves to HI and the target
    block's table becomes web_events_v2."""
    pipeline = Pipeline(tmp_path, rows=500)
    name = asyncio.run(pipeline.save(end=MID))
    assert run(name).is_completed()
    assert ids(pipeline.warehouse, LO, MID) == ids(pipeline.source_path, LO, MID)
    asyncio.run(pipeline.save(end=HI))
    DuckDBTarget.parse_obj({"path": str(pipeline.warehouse), "table": "web_events_v2"}).save(
        name, overwrite=True
    )
    return pipeline, name


def test_a_run_into_a_renamed_target_table_is_refused_and_loads_nothing(tmp_path: Path) -> None:
    pipeline, name = _loaded_then_renamed(tmp_path)
    before = cli("windows", "-c", name)

    state = run(name)

    assert state.is_failed()
    message = str(state.message)
    assert "#web_events," in message and "#web_events_v2" in message, message
    assert "ledgerflow retarget" in message, message
    assert "web_events_v2" not in _tables(pipeline)  # nothing was loaded anywhere
    assert cli("windows", "-c", name) == before  # and the ledger is as it was
    status = runner.invoke(app, ["status", "-c", name, "--json"])
    assert status.exit_code == 1, status.output  # a moved target needs a person
    shown = json.loads(status.stdout)
    target = shown["target"]
    assert target["moved"] and target["configured"].endswith("#web_events_v2"), target
    assert shown["attention"] == [f"the target moved: `ledgerflow retarget -c {name}`"]
    # The CLI commands that read the target refuse too, before counting the wrong table.
    refused = runner.invoke(app, ["rescan", "-c", name, "--last", "5"])
    assert refused.exit_code != 0 and "retarget" in refused.output, refused.output


def test_retarget_loads_every_window_again_into_the_new_table(tmp_path: Path) -> None:
    pipeline, name = _loaded_then_renamed(tmp_path)
    loaded = [w for w in cli("windows", "-c", name) if w["status"] == "COMPLETED"]

    moved = cli("retarget", "-c", name)

    assert moved["old"].endswith("#web_events") and moved["new"].endswith("#web_events_v2")
    assert moved["reopened"] == len(loaded) == 2
    assert run(name).is_completed()
    shown = cli("windows", "-c", name)
    assert [w["status"] for w in shown] == ["COMPLETED"] * 4
    assert ids(pipeline.warehouse, LO, HI, "web_events_v2") == ids(pipeline.source_path, LO, HI)
    # A second retarget to the same table changes nothing.
    assert cli("retarget", "-c", name)["reopened"] == 0


def test_retarget_rows_moved_recounts_the_renamed_table_and_reloads_only_what_differs(
    tmp_path: Path,
) -> None:
    pipeline, name = _loaded_then_renamed(tmp_path)
    con = duckdb.connect(str(pipeline.warehouse))
    try:  # the operator renames the table and, by mistake, loses one row of the first window
        con.execute("ALTER TABLE web_events RENAME TO web_events_v2")
        con.execute(
            "DELETE FROM web_events_v2 WHERE event_id = "
            "(SELECT min(event_id) FROM web_events_v2 WHERE ts >= ? AND ts < ?)",
            [LO, LO + timedelta(hours=2)],
        )
    finally:
        con.close()

    moved = cli("retarget", "-c", name, "--rows-moved")

    assert moved["reopened"] == 2
    assert run(name).is_completed()
    shown = cli("windows", "-c", name)
    assert [w["status"] for w in shown] == ["COMPLETED"] * 4
    # The intact window was recounted and skipped; the one missing a row was loaded again.
    audits = [w["audit_result"] for w in shown[:2]]
    assert audits == ["PASS", "MATCH"], shown[:2]
    assert ids(pipeline.warehouse, LO, HI, "web_events_v2") == ids(pipeline.source_path, LO, HI)
