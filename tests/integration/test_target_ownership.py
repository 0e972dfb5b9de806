"""One pipeline per target table, through the flow and the CLI.

A window's load replaces every row of the table in its time range, whichever pipeline loaded it,
so a second pipeline pointed at a table another one loads would silently erase its rows. It is
refused before writing anything: its windows end FAILED with a message saying why and what to do,
the first pipeline's rows stay, and nothing retries it forever.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerflow.cli import app
from ledgerflow.demo import DEMO_START
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Status
from typer.testing import CliRunner

from tests.redteam.helpers import ids, query

from .kit import Pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
LO, HI = DEMO_START, DEMO_START + timedelta(hours=4)


def test_a_second_pipeline_loading_a_table_another_one_loads_fails_and_writes_nothing(
    tmp_path: Path, ledger_url: str
) -> None:
    first = Pipeline(tmp_path / "a", rows=400, ledger_url=ledger_url)
    second = Pipeline(tmp_path / "b", rows=300, ledger_url=ledger_url)
    second.warehouse = first.warehouse  # same file, same table `web_events`
    query(second.source_path, "UPDATE web_events SET event_id = 'b-' || event_id")
    a, b = asyncio.run(first.save(end=HI)), asyncio.run(second.save(end=HI))
    assert asyncio.run(windowed_pipeline(config_block=a, return_state=True)).is_completed()
    loaded = ids(first.warehouse, LO, HI)
    assert loaded == ids(first.source_path, LO, HI)

    state = asyncio.run(windowed_pipeline(config_block=b, return_state=True))
    assert state.is_failed()
    assert "loaded by pipeline" in (state.message or ""), state.message
    records = asyncio.run(second.records())
    assert records and {r.pipeline_status for r in records} == {Status.FAILED}
    assert ids(first.warehouse, LO, HI) == loaded  # nothing of b's was written, nothing erased

    result = CliRunner().invoke(app, ["windows", "-c", b, "--status", "FAILED", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert len(listed) == len(records)
    for window in listed:
        error = window["error"]
        for said in (
            "'main.web_events'",
            f"loaded by pipeline {a!r}",
            f"pipeline {b!r} may not load it too",
            "Each target table belongs to one pipeline",
            "at another table",
            "Nothing was written",
        ):
            assert said in error, error
        assert window["retry_attempt"] == 0  # terminal: no retry spent on it

    # Not retried forever: the next run claims nothing, and the first pipeline goes on loading.
    again = asyncio.run(windowed_pipeline(config_block=b, return_state=True))
    assert {r.pipeline_status for r in asyncio.run(second.records())} == {Status.FAILED}
    assert "nothing to claim" in (again.message or "") or again.is_completed(), again.message
    assert ids(first.warehouse, LO, HI) == loaded
