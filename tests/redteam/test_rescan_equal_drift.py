"""Rescan sees a window whose source and target both changed by the same amount, says it
reopened it, and the next run skips it: the target keeps a duplicate and misses the late row."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerflow.demo import DEMO_START
from ledgerflow.ledger import Status

from tests.integration.kit import Pipeline

from .helpers import cli, ids, query, run

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_rescanned_window_whose_counts_drifted_equally_is_loaded_again(
    tmp_path: Path, ledger_url: str
) -> None:
    pipeline = Pipeline(tmp_path, rows=600, ledger_url=ledger_url)
    lo, hi = DEMO_START, DEMO_START + timedelta(hours=2)
    name = asyncio.run(pipeline.save(end=hi))
    assert run(name).is_completed()

    # A late document arrives in the source, and someone duplicates a row in the target.
    pipeline.add_late_rows(lo + timedelta(minutes=1), 1)
    query(
        pipeline.warehouse,
        "INSERT INTO web_events SELECT * FROM web_events WHERE ts >= ? AND ts < ? LIMIT 1",
        [lo, hi],
    )
    report = cli("rescan", "-c", name, "--last", "5")
    [changed] = report["changed"]
    assert changed["reopened"] is True and changed["source_now"] == changed["target_now"]

    assert run(name).is_completed()
    [record] = asyncio.run(pipeline.records())
    assert record.pipeline_status == Status.COMPLETED
    # The promise: after the reload the target holds exactly the source's rows, each once.
    assert ids(pipeline.warehouse, lo, hi) == ids(pipeline.source_path, lo, hi), (
        f"rescan reopened the window but the reload was skipped ({record.error_message!r}, "
        f"transfer {record.stage_to_target_ingestion_status}, audit {record.audit_result})"
    )
