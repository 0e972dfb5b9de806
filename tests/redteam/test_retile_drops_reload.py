"""A config change with its documented step: `granularity` 2h -> 1h, then `ledgerflow retile`.

A window was loaded, then a target row was damaged in place (the count is unchanged), so the
operator ran `ledgerflow reload` on it: the window is PENDING and forced ("a pending `reload`
stays forced"). Before the next run the operator changes the granularity and re-tiles at that
window's start, which the README allows ("only PENDING windows after it: they are removed and
registered again on the new grid"). The re-cut windows were registered without the force, so
pre-validation found equal counts and skipped them: COMPLETED with "MATCH ... transfer skipped",
while the damaged row stayed in the target and the source row was missing. Now the re-tile is
refused, naming the forced window and what to do, and changes nothing; done that way, the reload
loads and the re-tile after it succeeds."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from ledgerflow.cli import app
from ledgerflow.demo import DEMO_START

from tests.integration.kit import Pipeline

from .helpers import cli, ids, query, run, runner

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_reload_pending_across_a_retile_is_still_loaded(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, rows=500)
    lo, mid, hi = DEMO_START, DEMO_START + timedelta(hours=2), DEMO_START + timedelta(hours=4)
    name = asyncio.run(pipeline.save(end=hi))
    assert run(name).is_completed()
    assert ids(pipeline.warehouse, lo, hi) == ids(pipeline.source_path, lo, hi)

    # Someone damages one loaded row of [mid, hi) in place; the operator asks for a reload.
    query(
        pipeline.warehouse,
        "UPDATE web_events SET event_id = 'damaged' WHERE event_id = "
        "(SELECT min(event_id) FROM web_events WHERE ts >= ? AND ts < ?)",
        [mid, hi],
    )
    reopened = cli("reload", "-c", name, "--start", mid.isoformat(), "--end", hi.isoformat())
    assert len(reopened["reopened"]) == 1

    # Then the config moves to 1h windows, with the retile at the reopened start: refused.
    asyncio.run(pipeline.save(end=hi, granularity="1h"))
    refused = runner.invoke(app, ["retile", "-c", name, "--at", mid.isoformat()])
    assert refused.exit_code != 0
    words = " ".join(refused.output.split())
    assert "wait for a forced reload" in words and "put the config's grid back" in words, words
    [pending] = [w for w in cli("windows", "-c", name) if w["status"] == "PENDING"]
    assert pending["id"] == reopened["reopened"][0]

    # The operator does as told: the old grid, a run (the reload loads), then the re-tile after.
    asyncio.run(pipeline.save(end=hi))
    state = run(name)
    # The promise: what `reload` asked for is loaded; a window shown COMPLETED holds the source.
    assert ids(pipeline.warehouse, mid, hi) == ids(pipeline.source_path, mid, hi), state.message
    assert "damaged" not in ids(pipeline.warehouse, lo, hi)
    asyncio.run(pipeline.save(end=hi + timedelta(hours=2), granularity="1h"))
    retiled = cli("retile", "-c", name, "--at", hi.isoformat())
    assert datetime.fromisoformat(retiled["at"]) == hi
    assert run(name).is_completed()
    assert ids(pipeline.warehouse, lo, hi + timedelta(hours=2)) == ids(
        pipeline.source_path, lo, hi + timedelta(hours=2)
    )
