"""A run's own stale-lock cleanup marks a window FAILED (its attempts used up), and the run still
ends Completed: "0 window(s): 0 completed, 0 failed". The README: "A run with an audit mismatch or
a failed window ends `Failed`"; the promise: a run state never says fine when it is not."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerflow.demo import DEMO_START
from ledgerflow.ledger import Status

from tests.integration.kit import Pipeline

from .helpers import run

pytestmark = pytest.mark.usefixtures("prefect_harness")
LA = "America/Los_Angeles"


def test_a_run_whose_cleanup_fails_a_window_does_not_end_completed(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, rows=300)
    hi = DEMO_START + timedelta(hours=2)
    name = asyncio.run(pipeline.save(end=hi, max_window_attempts=1))

    # A worker claimed the one window 3 h ago (past the 2 h stale threshold) and died.
    record_id = asyncio.run(pipeline.dead_worker(name, ago=timedelta(hours=3), register_until=hi))
    state = run(name)
    [record] = asyncio.run(pipeline.records())
    assert record.id == record_id
    # The run's own cleanup gave up on the window: it is FAILED now, nothing loaded.
    assert record.pipeline_status == Status.FAILED, record
    assert not state.is_completed(), (
        f"the run failed window id={record_id} in its cleanup and still ended "
        f"{state.type.value}: {state.message!r}"
    )
